// An @xmpp/client 0.14 login over WebSocket with its own SASL2 (@xmpp/sasl2),
// Bind 2 (client-core bind2) and inline stream management, driven by
// tests/integration/test_sasl2.py. It reports, one JSON line each, the
// <authenticate/> it sent (mechanism, inline requests), the <success/> it
// got, "online" with the bound address,
// the answer to a ping with the stream management state, then stops and exits 0.
//
// Environment: WS_URL, DOMAIN, USERNAME, PASSWORD, RESOURCE.
// Node 20 needs --experimental-websocket (the WebSocket global).

import { client, xml } from "@xmpp/client";

const { WS_URL, DOMAIN, USERNAME, PASSWORD, RESOURCE } = process.env;
const SASL2 = "urn:xmpp:sasl:2";
const TIMEOUT_MS = 30_000;

function report(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

const timer = setTimeout(() => {
  report({ event: "timeout" });
  process.exit(2);
}, TIMEOUT_MS);
timer.unref();

const credentials = { username: USERNAME, password: PASSWORD };
const xmpp = client({ service: WS_URL, domain: DOMAIN, resource: RESOURCE, ...credentials });
xmpp.reconnect.stop();

xmpp.on("error", (error) => {
  report({ event: "error", message: String(error) });
  process.exit(1);
});

xmpp.on("send", (element) => {
  if (element.is("authenticate", SASL2)) {
    report({
      event: "authenticate",
      mechanism: element.attrs.mechanism,
      children: element.getChildElements().map((child) => `${child.name} ${child.getNS()}`),
      xml: element.toString(),
    });
  } else if (element.is("auth", "urn:ietf:params:xml:ns:xmpp-sasl")) {
    report({ event: "legacy-auth", mechanism: element.attrs.mechanism });
  }
});

xmpp.on("element", (element) => {
  if (element.is("success", SASL2)) {
    report({ event: "success", xml: element.toString() });
  }
});

xmpp.on("online", async (address) => {
  const sm = xmpp.streamManagement;
  report({ event: "online", jid: address.toString() });
  const pong = await xmpp.iqCaller.request(
    xml("iq", { type: "get", to: DOMAIN }, xml("ping", { xmlns: "urn:xmpp:ping" })),
  );
  // The library handles <bound/>'s <enabled/> right after "online".
  report({ event: "pong", type: pong.attrs.type, sm_enabled: sm.enabled, sm_id: sm.id });
  await xmpp.stop();
  report({ event: "stopped" });
  process.exit(0);
});

await xmpp.start();
