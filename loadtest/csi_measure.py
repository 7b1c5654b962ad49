#!/usr/bin/env python3
"""What XEP-0352 client state indication saves an idle phone: bytes and
wake-ups at one observer whose 100 contacts change presence, active vs
inactive (docs/performance.md "Client state indication").

It starts its own `starling serve` (a temporary data directory, free loopback
ports), creates the observer and the contacts with `starling user add`, makes
every contact a mutual subscription of the observer (slixmpp clients approving
automatically), then logs the observer in with a raw client that counts what
it reads from its socket: TLS bytes on the wire, socket reads (each read is
a wake-up of the process; on a phone, of the radio too) and presence stanzas.
Each contact then changes its presence `--changes` times, `--rate` changes per
second in total, spread over all contacts, twice:

1. the observer is active: every change reaches it as it happens;
2. the observer has sent `<inactive/>`: nothing reaches it until it sends
   `<active/>`, and then only the latest presence of each contact does.

Run it with the test venv (slixmpp):

    /var/cache/starling-ci/venv/bin/python loadtest/csi_measure.py \\
        --bin target/debug/starling --contacts 100 --changes 10 --rate 100
"""

import argparse
import asyncio
import base64
import json
import os
import pathlib
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import slixmpp

CSI = "urn:xmpp:csi:0"
REPO = pathlib.Path(__file__).resolve().parents[1]


def start_server(binary, directory):
    """`starling serve` as the integration tests start it (tests/integration/conftest.py)."""
    os.environ["STARLING_BIN"] = binary
    # Quiet logs, and room for every contact's connection from loopback.
    os.environ["STARLING_LOG_LEVEL"] = "warn"
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    import conftest

    return conftest.Server(directory, extra_toml="[limits]\nmax_connections_per_ip = 4096\n").start()


def add_users(server, jids, password):
    """`starling user add`, eight at a time."""
    pending = list(jids)
    while pending:
        batch, pending = pending[:8], pending[8:]
        running = [
            subprocess.Popen(
                [server_binary(), "user", "add", jid, password, "--config", str(server.config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for jid in batch
        ]
        for process in running:
            if process.wait() != 0:
                raise RuntimeError(process.stderr.read().decode())


def server_binary():
    return os.environ["STARLING_BIN"]


def metric(server, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def insecure_context():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class CountingClient:
    """A raw XMPP client over STARTTLS whose TLS runs on memory buffers, so
    that every byte and every read of the socket itself is counted."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.tls = None
        self.text = ""
        self.lock = threading.Lock()
        # The TLS object is shared by the reading thread and the sender.
        self.tls_lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.wire_bytes = 0
            self.reads = 0
            self.xml_bytes = 0
            self.presences = 0

    def counters(self):
        with self.lock:
            return {
                "wire_bytes": self.wire_bytes,
                "socket_reads": self.reads,
                "xml_bytes": self.xml_bytes,
                "presences": self.presences,
            }

    def send(self, data):
        data = data.encode()
        if self.tls is None:
            self.sock.sendall(data)
            return
        with self.tls_lock:
            self.tls.write(data)
            self._flush()

    def _flush(self):
        pending = self.outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def _read_socket(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        with self.lock:
            self.wire_bytes += len(chunk)
            self.reads += 1
        return chunk

    def _read_text(self):
        if self.tls is None:
            return self._read_socket().decode()
        while True:
            with self.tls_lock:
                try:
                    data = self.tls.read(65536)
                    break
                except ssl.SSLWantReadError:
                    self._flush()
            chunk = self._read_socket()
            with self.tls_lock:
                self.incoming.write(chunk)
        text = data.decode()
        with self.lock:
            self.xml_bytes += len(data)
            self.presences += text.count("<presence")
        return text

    def recv_until(self, marker):
        while marker not in self.text:
            self.text += self._read_text()
        index = self.text.index(marker) + len(marker)
        out, self.text = self.text[:index], self.text[index:]
        return out

    def open_stream(self):
        self.send(
            "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )
        return self.recv_until("</stream:features>")

    def login(self, localpart, password, resource):
        self.open_stream()
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.recv_until("<proceed")
        self.recv_until(">")
        self.text = ""
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = insecure_context().wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self.incoming.write(self._read_socket())
        self._flush()
        self.open_stream()
        token = base64.b64encode(f"\0{localpart}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        self.recv_until("success")
        self.recv_until(">")
        features = self.open_stream()
        assert f"xmlns='{CSI}'" in features, features
        self.send(
            f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}"
            "</resource></bind></iq>"
        )
        bound = self.recv_until("</iq>")
        return bound[bound.index("<jid>") + 5 : bound.index("</jid>")]

    def read_presences(self, count, timeout):
        """Read until `count` presence stanzas were counted since the last reset."""
        deadline = time.monotonic() + timeout
        while self.counters()["presences"] < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.counters()['presences']} of {count} presences arrived")
            self.text += self._read_text()
            self.text = self.text[-4096:]


class Contact(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.ssl_context = insecure_context()
        self.auto_authorize = True
        self.auto_subscribe = True
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.started.done() or self.started.set_result(True))


async def connect(server, jid, password):
    client = Contact(jid, password)
    client.connect(host="127.0.0.1", port=server.c2s)
    await asyncio.wait_for(client.started, 60)
    await client.get_roster()
    client.send_presence()
    return client


async def make_contacts(server, observer_jid, contact_jids, password):
    """Log every contact in and make it a mutual subscription of the observer."""
    setup = await connect(server, observer_jid, password)
    contacts = []
    for index in range(0, len(contact_jids), 20):
        contacts += await asyncio.gather(*(connect(server, jid, password) for jid in contact_jids[index : index + 20]))
    for contact in contacts:
        contact.send_presence(pto=observer_jid, ptype="subscribe")
    deadline = time.monotonic() + 120
    while True:
        mutual = sum(
            1
            for jid in contact_jids
            if jid in setup.client_roster and setup.client_roster[jid]["subscription"] == "both"
        )
        if mutual == len(contact_jids):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {mutual} of {len(contact_jids)} mutual subscriptions")
        await asyncio.sleep(0.1)
    setup.disconnect()
    await asyncio.sleep(0.5)
    return contacts


async def change_presences(contacts, changes, rate):
    """`changes` presence changes per contact, `rate` per second in total."""
    shows = ["away", "xa", "dnd", "chat"]
    interval = 1.0 / rate
    start = time.monotonic()
    sent = 0
    for round_index in range(changes):
        for index, contact in enumerate(contacts):
            contact.send_presence(
                pshow=shows[(round_index + index) % len(shows)], pstatus=f"status {round_index} of contact {index}"
            )
            sent += 1
            delay = start + sent * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    return time.monotonic() - start


async def wait_quiet(observer, seconds=1.0):
    """Until the observer read nothing for `seconds`."""
    last = observer.counters()
    while True:
        await asyncio.sleep(seconds)
        now = observer.counters()
        if now == last:
            return
        last = now


async def measure(args):
    binary = str(pathlib.Path(args.bin).resolve())
    with tempfile.TemporaryDirectory(prefix="csi-measure-") as directory:
        server = start_server(binary, pathlib.Path(directory))
        observers = []
        try:
            password = "measure-pass"
            observer_jid = "observer@localhost"
            contact_jids = [f"contact{n}@localhost" for n in range(args.contacts)]
            add_users(server, [observer_jid, *contact_jids], password)
            contacts = await make_contacts(server, observer_jid, contact_jids, password)
            print(f"{len(contacts)} contacts, mutual subscriptions made", file=sys.stderr)

            observer = CountingClient(server.c2s)
            observers.append(observer)
            await asyncio.to_thread(observer.login, "observer", password, "phone")

            def read_forever():
                try:
                    while True:
                        observer.text += observer._read_text()
                        observer.text = observer.text[-4096:]
                except (ConnectionError, OSError, ssl.SSLError):
                    pass

            observer.reset()
            observer.send("<presence/>")
            # Each contact's current presence, then quiet.
            await asyncio.to_thread(observer.read_presences, args.contacts, 60)
            reader = threading.Thread(target=read_forever, daemon=True)
            reader.start()
            await wait_quiet(observer)
            expected = args.contacts * args.changes
            results = {}

            observer.reset()
            elapsed = await change_presences(contacts, args.changes, args.rate)
            deadline = time.monotonic() + 60
            while observer.counters()["presences"] < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await wait_quiet(observer)
            results["active"] = {**observer.counters(), "seconds": round(elapsed, 1)}

            held_before = metric(server, "starling_csi_stanzas_held_total")
            observer.send(f"<inactive xmlns='{CSI}'/>")
            await asyncio.sleep(0.5)
            observer.reset()
            elapsed = await change_presences(contacts, args.changes, args.rate)
            deadline = time.monotonic() + 60
            while metric(server, "starling_csi_stanzas_held_total") < held_before + expected:
                if time.monotonic() > deadline:
                    raise TimeoutError("the presence changes were not all held")
                await asyncio.sleep(0.1)
            await wait_quiet(observer)
            results["inactive"] = {**observer.counters(), "seconds": round(elapsed, 1)}

            observer.reset()
            observer.send(f"<active xmlns='{CSI}'/>")
            deadline = time.monotonic() + 30
            while observer.counters()["presences"] < args.contacts and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await wait_quiet(observer)
            results["flush on <active/>"] = observer.counters()
            results["server"] = {
                "held": metric(server, "starling_csi_stanzas_held_total"),
                "superseded": metric(server, "starling_csi_stanzas_superseded_total"),
                "flushed_active": metric(server, 'starling_csi_stanzas_flushed_total{reason="active"}'),
            }
            for contact in contacts:
                contact.disconnect()
            await asyncio.sleep(0.5)
            return results
        finally:
            for observer in observers:
                try:
                    observer.sock.close()
                except OSError:
                    pass
            server.stop()


def report(results, args):
    active = results["active"]
    inactive = results["inactive"]
    flush = results["flush on <active/>"]
    spent = {key: inactive[key] + flush[key] for key in ("wire_bytes", "socket_reads", "xml_bytes", "presences")}
    lines = [
        f"{args.contacts} contacts x {args.changes} presence changes at {args.rate}/s "
        f"({args.contacts * args.changes} changes, {active['seconds']} s per phase)",
        "",
        "| observer | presences received | TLS bytes read | XML bytes | socket reads (wake-ups) |",
        "|---|---|---|---|---|",
    ]
    for name, row in (
        ("active", active),
        ("inactive, during the changes", inactive),
        ("inactive, flush on `<active/>`", flush),
        ("inactive, total", spent),
    ):
        lines.append(
            f"| {name} | {row['presences']} | {row['wire_bytes']:,} | {row['xml_bytes']:,} | {row['socket_reads']:,} |"
        )

    def saved(key):
        if not active[key]:
            return "n/a"
        return f"{100 * (1 - spent[key] / active[key]):.1f}%"

    lines += [
        "",
        f"saved: {saved('wire_bytes')} of the bytes, {saved('socket_reads')} of the wake-ups",
        f"server: {json.dumps(results['server'])}",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default="target/debug/starling", help="the starling executable")
    parser.add_argument("--contacts", type=int, default=100)
    parser.add_argument("--changes", type=int, default=10, help="presence changes per contact and phase")
    parser.add_argument("--rate", type=float, default=100.0, help="presence changes per second, all contacts together")
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args()
    results = asyncio.run(measure(args))
    print(report(results, args))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
