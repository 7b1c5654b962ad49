// An @xmpp/client 0.14 login over WebSocket with its own SASL2 (@xmpp/sasl2),
// Bind 2 (client-core bind2) and inline stream management, driven by
// tests/integration/test_sasl2.py. It reports, one JSON line each, the
// <authenticate/> it sent (mechanism, inline requests), the <success/> it
// got, "online" with the bound address,
// the answer to a ping with the stream management state, then stops and exits 0.
// With RECONNECT_URL it stays online after the ping; when the test has
// dropped its connection (a relay reset, no closing of the stream) and writes
// a line on stdin, it reconnects there with the library's reconnect step:
// the FAST token it was given (@xmpp/client-core fast, HT-SHA-256-NONE) and
// an inline XEP-0198 resumption; it reports the second login the same way,
// pings again, then stops.
//
// Environment: WS_URL, DOMAIN, USERNAME, PASSWORD, RESOURCE, RECONNECT_URL.
// Node 20 needs --experimental-websocket (the WebSocket global).

import readline from "node:readline";

import { client, xml } from "@xmpp/client";

const { WS_URL, DOMAIN, USERNAME, PASSWORD, RESOURCE, RECONNECT_URL } = process.env;
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
const saveToken = xmpp.fast.saveToken.bind(xmpp.fast);
xmpp.fast.saveToken = async (token) => {
  report({ event: "token", mechanism: token.mechanism, expiry: token.expiry });
  await saveToken(token);
};

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

const sm = xmpp.streamManagement;

async function ping() {
  const pong = await xmpp.iqCaller.request(
    xml("iq", { type: "get", to: DOMAIN }, xml("ping", { xmlns: "urn:xmpp:ping" })),
  );
  // The library handles <bound/>'s <enabled/> right after "online".
  report({ event: "pong", type: pong.attrs.type, sm_enabled: sm.enabled, sm_id: sm.id });
}

async function stop() {
  await xmpp.stop();
  report({ event: "stopped" });
  process.exit(0);
}

sm.on("resumed", async () => {
  report({ event: "resumed", sm_id: sm.id });
  await ping();
  await stop();
});

xmpp.on("disconnect", ({ clean }) => report({ event: "disconnect", clean }));

xmpp.on("online", async (address) => {
  report({ event: "online", jid: address.toString() });
  await ping();
  if (!RECONNECT_URL) {
    await stop();
  }
});

if (RECONNECT_URL) {
  // The test says when: after it dropped the connection and the server noticed.
  const input = readline.createInterface({ input: process.stdin });
  input.once("line", async () => {
    xmpp.options.service = RECONNECT_URL;
    await xmpp.reconnect.reconnect();
  });
}

await xmpp.start();
