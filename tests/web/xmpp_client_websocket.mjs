// An @xmpp/client session over WebSocket (RFC 7395), driven by
// tests/integration/test_websocket.py. It logs in (SCRAM-SHA-1), subscribes
// to PEER's presence, approves PEER's subscription, sends PEER a message
// once subscribed, and exits 0 when it has both seen PEER's presence status
// and received PEER's reply. Every event goes to stdout as one JSON line.
//
// Environment: WS_URL, DOMAIN, USERNAME, PASSWORD, PEER (a bare JID).
// Node 20 needs --experimental-websocket (the WebSocket global).

import { client, xml } from "@xmpp/client";

const { WS_URL, DOMAIN, USERNAME, PASSWORD, PEER } = process.env;
const TIMEOUT_MS = 30_000;

function report(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

const xmpp = client({
  service: WS_URL,
  domain: DOMAIN,
  username: USERNAME,
  password: PASSWORD,
  resource: "web",
});

let sawPresence = false;
let sawReply = false;
let pinged = false;

async function finishIfDone() {
  if (sawPresence && sawReply) {
    await xmpp.stop();
    report({ event: "stopped" });
    process.exit(0);
  }
}

const timer = setTimeout(() => {
  report({ event: "timeout", sawPresence, sawReply, pinged });
  process.exit(2);
}, TIMEOUT_MS);
timer.unref();

xmpp.on("error", (error) => {
  report({ event: "error", message: String(error) });
  process.exit(1);
});

xmpp.on("online", async (address) => {
  report({ event: "online", jid: address.toString() });
  await xmpp.send(xml("presence"));
  await xmpp.send(xml("presence", { to: PEER, type: "subscribe" }));
});

xmpp.on("stanza", async (stanza) => {
  const from = stanza.attrs.from || "";
  const fromBare = from.split("/")[0];
  if (fromBare !== PEER) {
    return;
  }
  if (stanza.is("presence")) {
    const type = stanza.attrs.type;
    if (type === "subscribe") {
      await xmpp.send(xml("presence", { to: PEER, type: "subscribed" }));
    } else if (type === "subscribed" && !pinged) {
      pinged = true;
      await xmpp.send(
        xml("message", { to: PEER, type: "chat", id: "ping1" }, xml("body", {}, "ping from @xmpp/client")),
      );
    } else if (!type) {
      const status = stanza.getChildText("status");
      report({ event: "presence", from, status });
      if (status) {
        sawPresence = true;
      }
    }
  } else if (stanza.is("message")) {
    const body = stanza.getChildText("body");
    if (body) {
      report({ event: "message", from, body });
      sawReply = true;
    }
  }
  await finishIfDone();
});

await xmpp.start();
