// A TLS client for the channel binding tests: Python's ssl module cannot
// export keying material (no tls-exporter, RFC 9266), node's can. This
// script connects to HOST:PORT over direct TLS (XEP-0368, ALPN xmpp-client),
// prints one JSON line with what channel binding needs (the TLS version, the
// tls-exporter value and the server's DER certificate, base64), then relays
// bytes between that TLS connection and one plain TCP connection it accepts
// on loopback (its port is on the first line). The test speaks XMPP over the
// plain side; the TLS session is node's.
//
// usage: node tls_pipe.js HOST PORT [TLSv1.3|TLSv1.2]
"use strict";

const net = require("net");
const tls = require("tls");

const [host, port, version = "TLSv1.3"] = process.argv.slice(2);

const listener = net.createServer((local) => {
  listener.close();
  const remote = tls.connect(
    {
      host,
      port: Number(port),
      servername: "localhost",
      rejectUnauthorized: false,
      minVersion: version,
      maxVersion: version,
      ALPNProtocols: ["xmpp-client"],
    },
    () => {
      const info = {
        protocol: remote.getProtocol(),
        // RFC 9266 section 2: label EXPORTER-Channel-Binding, no context, 32 bytes.
        exporter: remote.exportKeyingMaterial(32, "EXPORTER-Channel-Binding").toString("base64"),
        certificate: remote.getPeerCertificate(true).raw.toString("base64"),
      };
      process.stdout.write(JSON.stringify(info) + "\n");
      local.pipe(remote);
      remote.pipe(local);
    },
  );
  const end = () => {
    local.destroy();
    remote.destroy();
  };
  remote.on("error", end);
  local.on("error", end);
  remote.on("close", end);
  local.on("close", end);
});

listener.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: listener.address().port }) + "\n");
});
