// An @xmpp/client session with its stream management (XEP-0198) over
// WebSocket, driven line by line by tests/integration/test_sm_clients.py.
// It logs in and lets the library enable resumable stream management; then
// it follows JSON commands on stdin and reports every event as one JSON line
// on stdout:
//
//   {"cmd": "send", "to": JID, "body": TEXT}   send a chat message
//   {"cmd": "reconnect", "url": URL?}           after the connection was lost,
//       reconnect with the library's own reconnect step (@xmpp/reconnect:
//       connect + open), to URL when given (another node), which resumes
//   {"cmd": "acked"}                            <r/>, then report once the
//       server acknowledged everything sent ("acked" with the counts)
//   {"cmd": "stop"}                             close the stream and exit 0
//
// With AUTO_RECONNECT=1 the library reconnects by itself (@xmpp/reconnect,
// one second after the loss) and resumes; otherwise the test decides when
// the client comes back, and where.
//
// Environment: WS_URL, DOMAIN, USERNAME, PASSWORD, RESOURCE, AUTO_RECONNECT.
// Node 20 needs --experimental-websocket (the WebSocket global).

import readline from "node:readline";

import { client, xml } from "@xmpp/client";

const { WS_URL, DOMAIN, USERNAME, PASSWORD, RESOURCE, AUTO_RECONNECT } = process.env;
const SM = "urn:xmpp:sm:3";

function report(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

const xmpp = client({
  service: WS_URL,
  domain: DOMAIN,
  username: USERNAME,
  password: PASSWORD,
  resource: RESOURCE,
});
if (AUTO_RECONNECT !== "1") {
  xmpp.reconnect.stop();
}
xmpp.reconnect.on("reconnected", () =>
  report({ event: "reconnected", status: xmpp.status, service: xmpp.options.service }),
);
const sm = xmpp.streamManagement;

xmpp.on("error", (error) => report({ event: "error", message: String(error) }));
xmpp.on("online", (address) => report({ event: "online", jid: address.toString() }));
xmpp.on("disconnect", ({ clean }) => report({ event: "disconnect", clean }));
xmpp.on("nonza", (element) => {
  if (element.is("enabled", SM)) {
    report({ event: "enabled", id: element.attrs.id, resume: element.attrs.resume, max: element.attrs.max });
  } else if (element.is("resumed", SM)) {
    report({ event: "resumed", previd: element.attrs.previd, h: element.attrs.h });
  } else if (element.is("failed", SM)) {
    report({ event: "failed", xml: element.toString() });
  }
});
sm.on("resumed", () => report({ event: "sm-resumed", inbound: sm.inbound, outbound: sm.outbound }));
sm.on("fail", (stanza) => report({ event: "sm-fail", stanza: stanza.toString() }));
xmpp.on("stanza", (stanza) => {
  if (stanza.is("message")) {
    const body = stanza.getChildText("body");
    if (body) {
      report({ event: "message", from: stanza.attrs.from, body });
    }
  }
});

async function untilAcked(timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  await xmpp.send(xml("r", { xmlns: SM }));
  while (sm.outbound_q.length > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  report({ event: "acked", outbound: sm.outbound, unacked: sm.outbound_q.length, inbound: sm.inbound });
}

async function command(line) {
  const cmd = JSON.parse(line);
  if (cmd.cmd === "send") {
    await xmpp.send(xml("message", { to: cmd.to, type: "chat" }, xml("body", {}, cmd.body)));
    report({ event: "sent", body: cmd.body });
  } else if (cmd.cmd === "reconnect") {
    if (cmd.url) {
      xmpp.options.service = cmd.url;
    }
    await xmpp.reconnect.reconnect();
  } else if (cmd.cmd === "acked") {
    await untilAcked(10_000);
  } else if (cmd.cmd === "stop") {
    await xmpp.stop();
    report({ event: "stopped" });
    process.exit(0);
  }
}

const input = readline.createInterface({ input: process.stdin });
// One command at a time, in order.
let chain = Promise.resolve();
input.on("line", (line) => {
  chain = chain.then(() => command(line)).catch((error) => report({ event: "error", message: String(error) }));
});

await xmpp.start();
await xmpp.send(xml("presence"));
report({ event: "ready" });
