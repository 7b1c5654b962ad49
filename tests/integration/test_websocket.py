"""XMPP over WebSocket (RFC 7395) on the real `starling serve` HTTP listener:
XEP-0156 discovery, and a real web client library (npm @xmpp/client, run by
Node) chatting with a TCP user connected by slixmpp. The framing, SASL and
bad-frame cases are covered by the connection-manager's Rust tests
(services/connection-manager/tests/websocket.rs)."""

import asyncio
import json
import os
import shutil
import subprocess
import urllib.request

import pytest

from conftest import REPO, login, logout

WEB_DIR = REPO / "tests" / "web"
SCRIPT = WEB_DIR / "xmpp_client_websocket.mjs"
NODE = shutil.which("node")


def node_arguments():
    """Node before 22 has the WebSocket global behind a flag."""
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(version.strip().lstrip("v").split(".")[0])
    return ["--experimental-websocket"] if major < 22 else []


def test_host_meta_advertises_the_websocket_and_bosh_endpoints(server):
    # XEP-0156 section 3: the URL is built from the Host the client used.
    base = f"http://127.0.0.1:{server.http}"
    with urllib.request.urlopen(f"{base}/.well-known/host-meta.json", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        links = json.load(response)["links"]
    assert links == [
        {
            "rel": "urn:xmpp:alt-connections:websocket",
            "href": f"ws://127.0.0.1:{server.http}/xmpp-websocket",
        },
        {
            "rel": "urn:xmpp:alt-connections:xbosh",
            "href": f"http://127.0.0.1:{server.http}/http-bind",
        },
    ]
    with urllib.request.urlopen(f"{base}/.well-known/host-meta", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/xrd+xml"
        xrd = response.read().decode()
    assert (
        f"<Link rel='urn:xmpp:alt-connections:websocket' href='ws://127.0.0.1:{server.http}/xmpp-websocket'/>"
        in xrd
    )
    bosh = f"<Link rel='urn:xmpp:alt-connections:xbosh' href='http://127.0.0.1:{server.http}/http-bind'/>"
    assert bosh in xrd


@pytest.mark.skipif(
    NODE is None or not (WEB_DIR / "node_modules" / "@xmpp" / "client").is_dir(),
    reason="needs node and `npm ci --prefix tests/web` (scripts/test.sh installs them)",
)
async def test_xmpp_client_over_websocket_chats_with_slixmpp_over_tcp(server):
    juliet, juliet_pw = server.add_user("juliet")
    romeo, romeo_pw = server.add_user("romeo")
    tcp = await login(server, romeo, romeo_pw, "orchard")
    tcp.auto_authorize = True
    tcp.auto_subscribe = True

    web = await asyncio.create_subprocess_exec(
        NODE,
        *node_arguments(),
        str(SCRIPT),
        cwd=str(WEB_DIR),
        env={
            **os.environ,
            "WS_URL": f"ws://127.0.0.1:{server.http}/xmpp-websocket",
            "DOMAIN": server.domain,
            "USERNAME": "juliet",
            "PASSWORD": juliet_pw,
            "PEER": romeo,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # The web client subscribes, is approved, then says hello.
        msg = await tcp.next_message(timeout=30)
        assert str(msg["from"]) == f"{juliet}/web"
        assert msg["body"] == "ping from @xmpp/client"
        # Presence and a reply from the TCP side reach the browser-style session.
        tcp.send_presence(pstatus="in the orchard")
        tcp.send_message(mto=msg["from"], mbody="pong from slixmpp", mtype="chat")
        stdout, stderr = await asyncio.wait_for(web.communicate(), 40)
    finally:
        if web.returncode is None:
            web.kill()
            await web.wait()
        await logout(tcp)

    events = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    assert web.returncode == 0, (events, stderr.decode(errors="replace"), server.log_text()[-4000:])
    assert {"event": "online", "jid": f"{juliet}/web"} in events
    assert {"event": "presence", "from": f"{romeo}/orchard", "status": "in the orchard"} in events
    assert {"event": "message", "from": f"{romeo}/orchard", "body": "pong from slixmpp"} in events


def ws_upgrade(sock, host: str) -> str:
    """The RFC 6455 opening handshake with subprotocol xmpp (RFC 7395 section
    3.1) on a connected socket; the response head, lower case."""
    import base64
    import os

    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /xmpp-websocket HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: xmpp\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    return response.decode().lower()


def _ws_frame(text: str) -> bytes:
    """One masked text frame (RFC 6455 section 5.2), as a client must send."""
    import os
    import struct

    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
    return header + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def _ws_read_text(sock) -> str:
    import struct

    def read_exactly(count):
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    first, second = read_exactly(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack(">H", read_exactly(2))[0]
    elif length == 127:
        length = struct.unpack(">Q", read_exactly(8))[0]
    return read_exactly(length).decode()


def test_websocket_over_tls_listener(server):
    """wss:// on listen.https: the TLS handshake with the node's certificate,
    the RFC 7395 upgrade with subprotocol xmpp, <open/> answered with features."""
    import socket
    import urllib.request

    from conftest import insecure_context

    with urllib.request.urlopen(f"https://127.0.0.1:{server.https}/healthz", context=insecure_context(), timeout=10) as response:
        assert response.status == 200

    context = insecure_context()
    context.set_alpn_protocols(["http/1.1"])
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", server.https), timeout=10), server_hostname="localhost")
    assert sock.version() in ("TLSv1.2", "TLSv1.3")
    head = ws_upgrade(sock, f"localhost:{server.https}")
    assert head.startswith("http/1.1 101"), head
    assert "sec-websocket-protocol: xmpp" in head
    sock.sendall(_ws_frame("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>"))
    frames = [_ws_read_text(sock) for _ in range(2)]
    assert "<open" in frames[0]
    assert "SCRAM-SHA-256" in frames[1]
    sock.close()


def test_a_client_that_pings_without_reading_grows_no_memory(server):
    """Issue 18: every WebSocket ping is answered with a pong by the WebSocket
    layer; a client that floods pings and reads nothing must not grow the
    server's memory (the pending pong is replaced, and the write buffer is
    bounded: past it the connection ends)."""
    import socket as _socket
    import struct

    def rss_kib():
        for line in open(f"/proc/{server.process.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    sock = _socket.create_connection(("127.0.0.1", server.http), timeout=10)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 4096)
    answer = ws_upgrade(sock, "localhost")
    assert " 101 " in answer, answer
    payload = b"p" * 125
    mask = b"\x01\x02\x03\x04"
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    frame = struct.pack("!BB", 0x89, 0x80 | len(payload)) + mask + masked
    burst = frame * 1000
    before = rss_kib()
    try:
        for _ in range(300):  # 300,000 pings, 40 MB of pongs if they were kept
            sock.sendall(burst)
    except OSError:
        pass  # cut off: the write buffer's bound
    grown = rss_kib() - before
    sock.close()
    print(f"RSS grew by {grown} KiB")
    assert grown < 16 * 1024, f"RSS grew by {grown} KiB"
    assert server.process.poll() is None
