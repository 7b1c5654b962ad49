"""Fixtures that start the real `starling serve` on free loopback ports and
connect real clients (slixmpp) or raw sockets to it."""

import asyncio
import base64
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import time
import uuid

import pytest
import slixmpp

from waiting import wait_until, wait_until_async  # noqa: F401 (shared with the tests)

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("STARLING_BIN") or str(REPO / "target" / "debug" / "starling")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list:
    """`count` distinct free loopback ports (held open together while chosen,
    so one call never returns the same port twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Server:
    """One `starling serve` process with its own data directory and ports."""

    def __init__(self, tmp_path: pathlib.Path, domain="localhost", extra_toml=""):
        self.domain = domain
        self.dir = tmp_path
        self.extra_toml = extra_toml
        self.pick_ports()
        self.config = tmp_path / "starling.toml"
        self.log_path = tmp_path / "server.log"
        self.process = None

    def pick_ports(self):
        self.c2s, self.c2s_tls, self.http, self.https = free_ports(4)

    def write_config(self):
        self.config.write_text(
            f"""
domain = "{self.domain}"
data_dir = "{self.dir / 'data'}"
[listen]
c2s = "127.0.0.1:{self.c2s}"
c2s_tls = "127.0.0.1:{self.c2s_tls}"
http = "127.0.0.1:{self.http}"
https = "127.0.0.1:{self.https}"
[log]
level = "info,starling=debug"
{self.extra_toml}
"""
        )

    def start(self, attempts=3):
        """Start the server; if another process took one of its ports in the
        meantime (address in use), pick new ports and try again."""
        for attempt in range(attempts):
            try:
                return self._start_once()
            except RuntimeError as error:
                if "Address already in use" not in str(error) or attempt == attempts - 1:
                    raise
                self.pick_ports()

    def _start_once(self):
        self.write_config()
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [BIN, "serve", "--config", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT
        )

        def listening():
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.c2s), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(listening, what="the c2s listener")
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args, check=True):
        return subprocess.run(
            [BIN, *args, "--config", str(self.config)], capture_output=True, text=True, check=check, timeout=60
        )

    def add_user(self, localpart=None, password="secret-pass"):
        localpart = localpart or f"u{uuid.uuid4().hex[:10]}"
        jid = f"{localpart}@{self.domain}"
        self.cli("user", "add", jid, password)
        return jid, password

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()
        return self.process.returncode if self.process else None


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path).start()
    yield srv
    srv.stop()
    if os.environ.get("STARLING_TEST_SHOW_LOGS"):
        print(srv.log_text())


@pytest.fixture
def server_factory(tmp_path):
    started = []

    def make(extra_toml="", domain="localhost"):
        index = len(started)
        directory = tmp_path / f"server{index}"
        directory.mkdir()
        srv = Server(directory, domain=domain, extra_toml=extra_toml).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that queues what it receives."""

    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.ssl_context = insecure_context()
        self.messages: asyncio.Queue = asyncio.Queue()
        self.presences: asyncio.Queue = asyncio.Queue()
        self.roster_pushes: asyncio.Queue = asyncio.Queue()
        self.started = asyncio.get_event_loop().create_future()
        self.failed = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("failed_auth", self._on_failed)
        self.add_event_handler("message", lambda msg: self.messages.put_nowait(msg))
        self.add_event_handler("presence", lambda pres: self.presences.put_nowait(pres))
        self.add_event_handler("roster_update", lambda iq: self.roster_pushes.put_nowait(iq))
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0092")
        self.register_plugin("xep_0199")

    def _on_start(self, _event):
        if not self.started.done():
            self.started.set_result(True)

    def _on_failed(self, _event):
        if not self.failed.done():
            self.failed.set_result(True)

    async def next_message(self, timeout=10.0, body=True):
        while True:
            msg = await asyncio.wait_for(self.messages.get(), timeout)
            if not body or msg["body"]:
                return msg

    async def next_presence(self, predicate=lambda p: True, timeout=10.0):
        return await next_matching(self.presences, predicate, timeout)


async def next_matching(queue, predicate, timeout):
    """The next item of `queue` that `predicate` accepts, skipping the others."""
    deadline = asyncio.get_event_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_event_loop().time()
        item = await asyncio.wait_for(queue.get(), max(remaining, 0.01))
        if predicate(item):
            return item


async def login(server, jid, password, resource=None, presence=True, roster=True, timeout=15.0) -> Client:
    full = f"{jid}/{resource}" if resource else jid
    client = Client(full, password)
    client.connect(host="127.0.0.1", port=server.c2s)
    done, _ = await asyncio.wait([client.started, client.failed], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if client.failed in done or not done:
        client.disconnect()
        raise AssertionError(f"login of {full} failed")
    if roster:
        await client.get_roster()
    if presence:
        client.send_presence()
    return client


async def handled(client, timeout=30.0):
    """Return once the server has handled every stanza `client` sent before:
    one session's stanzas are routed one after another, each to its end, so
    the answer to a ping comes after them (a message stored offline is stored,
    a bounce is on its way back before the pong)."""
    await client.plugin["xep_0199"].ping(jid=client.boundjid.domain, timeout=timeout)


async def presence_applied(client, priority=None, timeout=10.0):
    """Return once the server has applied the last available presence `client`
    sent (with `priority`, when given): the server records it with the session,
    then sends it to all of the user's resources, the sender included (RFC 6121
    sections 4.2.2 and 4.4.2)."""
    await client.next_presence(
        lambda p: p["from"] == client.boundjid.full
        and p["type"] != "unavailable"
        and (priority is None or p["priority"] == priority),
        timeout=timeout,
    )


async def logout(*clients):
    for client in clients:
        client.disconnect()
    for client in clients:
        try:
            await asyncio.wait_for(client.disconnected, 5)
        except (asyncio.TimeoutError, AttributeError):
            pass


class RawClient:
    """A raw-bytes XMPP client for the error paths: speaks the protocol by hand."""

    def __init__(self, server, timeout=10.0):
        self.server = server
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", server.c2s), timeout=timeout)
        self.buffer = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def recv_until(self, marker, timeout=None):
        """Read until `marker` (bytes or str) appears; return everything read so far."""
        if isinstance(marker, str):
            marker = marker.encode()
        deadline = time.monotonic() + (timeout or self.timeout)
        while marker not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {marker!r} in {self.buffer[-2000:]!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}; got {self.buffer[-2000:]!r}")
            self.buffer += chunk
        index = self.buffer.index(marker) + len(marker)
        out, self.buffer = self.buffer[:index], self.buffer[index:]
        return out.decode(errors="replace")

    def read_until_closed(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"connection still open; got {self.buffer[-2000:]!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                chunk = b""
            if not chunk:
                out, self.buffer = self.buffer, b""
                return out.decode(errors="replace")
            self.buffer += chunk

    def open_stream(self, to=None):
        to = to or self.server.domain
        self.send(
            f"<?xml version='1.0'?><stream:stream to='{to}' version='1.0' xml:lang='en' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )
        return self.recv_until("</stream:features>")

    def starttls(self):
        self.open_stream()
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.recv_until("<proceed")
        self.recv_until(">")
        self.sock = insecure_context().wrap_socket(self.sock, server_hostname=self.server.domain)
        self.buffer = b""
        return self.open_stream()

    def authenticate(self, jid, password):
        """STARTTLS and SASL PLAIN; returns the features of the restarted stream."""
        self.starttls()
        localpart = jid.split("@")[0]
        token = base64.b64encode(f"\0{localpart}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        answer = self.recv_until("success")
        assert "success" in answer, answer
        self.recv_until(">")
        return self.open_stream()

    def login(self, jid, password, resource="raw"):
        """STARTTLS, SASL PLAIN, bind; returns the bound full JID."""
        self.authenticate(jid, password)
        self.send(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        bound = self.recv_until("</iq>")
        start = bound.index("<jid>") + 5
        return bound[start : bound.index("</jid>")]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
