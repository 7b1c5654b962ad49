"""Issue 15, "client addresses behind a load balancer": the PROXY protocol
(v1 and v2) on the c2s listeners and X-Forwarded-For on the HTTP listener,
believed from `proxy.trusted` only. The tests stand where the balancer would
(127.0.0.1, trusted) and where a stranger would (127.0.0.2, another loopback
address: not trusted), and watch the per-address connection limit count the
clients the headers name."""

import base64
import re
import socket
import ssl
import struct

import pytest

from conftest import Server, insecure_context
from test_bounds import metric, scrape

PER_ADDRESS = 2  # limits.max_connections_per_ip in these tests


def plain_log(server):
    return re.sub(r"\x1b\[[0-9;]*m", "", server.log_text())


@pytest.fixture
def proxied(tmp_path):
    server = Server(
        tmp_path,
        extra_toml=f"""
[proxy]
trusted = ["127.0.0.1/32"]
protocol = true
forwarded_for = true
[limits]
max_connections_per_ip = {PER_ADDRESS}
""",
    ).start()
    yield server
    server.stop()


def v1(client_ip, client_port=40000):
    return f"PROXY TCP4 {client_ip} 127.0.0.1 {client_port} 5222\r\n".encode()


def v2(client_ip, client_port=40000, local=False):
    header = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 if local else 0x21, 0x11])
    addresses = socket.inet_aton(client_ip) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", client_port, 5222)
    tlv = bytes([0x04]) + struct.pack("!H", 5) + b"\x00" * 5  # a NOOP TLV, as balancers add
    return header + struct.pack("!H", len(addresses) + len(tlv)) + addresses + tlv


def connect(server, port=None, source="127.0.0.1"):
    sock = socket.create_connection(("127.0.0.1", port or server.c2s), timeout=10, source_address=(source, 0))
    return sock


def stream_header(server):
    return (
        f"<?xml version='1.0'?><stream:stream to='{server.domain}' version='1.0' xml:lang='en' "
        "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    ).encode()


def read_until(sock, marker, limit=65536):
    got = b""
    while marker not in got:
        chunk = sock.recv(limit)
        if not chunk:
            break
        got += chunk
    return got.decode(errors="replace")


def dropped_unanswered(sock):
    """The server closed the connection (a close, or a reset: it left the
    bytes it was sent unread) without writing anything."""
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got == b""


def open_stream(server, header, source="127.0.0.1"):
    """A connection that sends `header` (PROXY, or nothing) and opens a
    stream; returns the socket and what the server answered up to its features
    or its stream error."""
    sock = connect(server, source=source)
    sock.sendall(header + stream_header(server))
    answer = read_until(sock, b"</stream:features>")
    return sock, answer


def refused(answer):
    return "<policy-violation" in answer


def test_proxy_headers_name_the_clients_the_per_address_limit_counts(proxied):
    """Every connection comes from 127.0.0.1, the balancer. The v1 and v2
    headers name the clients: two per client address are served, the third of
    one client is refused with policy-violation while other clients still get
    in. Without the header the balancer itself would be one address."""
    held = []
    for header in [v1("198.51.100.1"), v2("198.51.100.1", 40001)]:
        sock, answer = open_stream(proxied, header)
        assert "<stream:features>" in answer and not refused(answer), answer
        held.append(sock)
    sock = connect(proxied)
    sock.sendall(v1("198.51.100.1", 40002) + stream_header(proxied))
    answer = read_until(sock, b"</stream:stream>")
    assert refused(answer), answer
    sock.close()
    for n in range(2, 2 + 2 * PER_ADDRESS):
        sock, answer = open_stream(proxied, (v1 if n % 2 else v2)(f"203.0.113.{n}"))
        assert "<stream:features>" in answer and not refused(answer), answer
        held.append(sock)
    log = plain_log(proxied)
    assert "peer=198.51.100.1:40000" in log and "peer=203.0.113.3:40000" in log, log[-3000:]
    metrics = scrape(proxied)
    assert metric(metrics, 'starling_proxy_headers_total{outcome="client"}') >= 3 + 2 * PER_ADDRESS
    assert metric(metrics, 'starling_limits_hit_total{limit="connections_per_ip"}') >= 1
    for sock in held:
        sock.close()


def test_a_trusted_peer_without_a_valid_header_is_dropped_and_a_health_check_is_the_balancer(proxied):
    # No header from the balancer: nothing says whose connection it is.
    sock = connect(proxied)
    sock.sendall(stream_header(proxied))
    assert dropped_unanswered(sock), "a connection without its PROXY header is dropped unanswered"
    sock.close()
    # A malformed one.
    sock = connect(proxied)
    sock.sendall(b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n" + stream_header(proxied))
    assert dropped_unanswered(sock)
    sock.close()
    # The balancer's own health check (v2 LOCAL) is served as the balancer.
    sock, answer = open_stream(proxied, v2("0.0.0.0", 0, local=True))
    assert "<stream:features>" in answer, answer
    sock.close()
    metrics = scrape(proxied)
    assert metric(metrics, 'starling_proxy_headers_total{outcome="invalid"}') >= 2
    assert metric(metrics, 'starling_proxy_headers_total{outcome="local"}') >= 1


def test_a_stranger_is_never_asked_for_a_header_nor_believed(proxied):
    """127.0.0.2 is not a trusted proxy: it is served as the client it is,
    and a PROXY header it sends is not a header but bytes that are not XML."""
    sock, answer = open_stream(proxied, b"", source="127.0.0.2")
    assert "<stream:features>" in answer, answer
    sock.close()
    sock = connect(proxied, source="127.0.0.2")
    sock.sendall(v1("198.51.100.9") + stream_header(proxied))
    answer = read_until(sock, b"</stream:stream>")
    assert "<not-well-formed" in answer, answer
    sock.close()


def test_direct_tls_behind_the_header_and_the_login_after_it(proxied):
    """On the direct TLS listener the header comes before the TLS handshake;
    the login that follows works."""
    jid, password = proxied.add_user()
    sock = connect(proxied, port=proxied.c2s_tls)
    sock.sendall(v2("198.51.100.20"))
    tls = insecure_context().wrap_socket(sock, server_hostname=proxied.domain)
    tls.sendall(stream_header(proxied))
    features = read_until(tls, b"</stream:features>")
    assert "PLAIN" in features, features
    token = base64.b64encode(f"\0{jid.split('@')[0]}\0{password}".encode()).decode()
    tls.sendall(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
    assert "<success" in read_until(tls, b"success")
    tls.close()
    assert "peer=198.51.100.20:40000" in plain_log(proxied)


def websocket_upgrade(server, forwarded_for=None, source="127.0.0.1"):
    """A raw RFC 6455 handshake for the xmpp subprotocol; the status code."""
    sock = socket.create_connection(("127.0.0.1", server.http), timeout=10, source_address=(source, 0))
    extra = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
    sock.sendall(
        (
            "GET /xmpp-websocket HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.http}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: xmpp\r\n{extra}\r\n"
        ).encode()
    )
    head = read_until(sock, b"\r\n\r\n")
    return sock, int(head.split()[1])


def test_forwarded_for_names_websocket_clients_from_the_balancer_only(proxied):
    held = []
    for _ in range(PER_ADDRESS):
        sock, status = websocket_upgrade(proxied, "1.2.3.4, 198.51.100.30")
        assert status == 101
        held.append(sock)
    # The same client again: over its share, whatever it wrote itself to the left.
    sock, status = websocket_upgrade(proxied, "5.6.7.8, 198.51.100.30")
    assert status == 503
    sock.close()
    # Another client behind the same balancer still gets in.
    sock, status = websocket_upgrade(proxied, "198.51.100.31")
    assert status == 101
    held.append(sock)
    # A stranger's X-Forwarded-For is not believed: it is counted as itself.
    for _ in range(PER_ADDRESS):
        sock, status = websocket_upgrade(proxied, "198.51.100.40", source="127.0.0.2")
        assert status == 101
        held.append(sock)
    sock, status = websocket_upgrade(proxied, "198.51.100.41", source="127.0.0.2")
    assert status == 503
    sock.close()
    for sock in held:
        sock.close()


def test_config_mistakes_name_the_key(tmp_path):
    import subprocess

    from conftest import BIN

    for toml, key in [
        ('[proxy]\ntrusted = ["10.0.0.0/33"]\n', "proxy.trusted"),
        ("[proxy]\nprotocol = true\n", "proxy.protocol"),
        ("[proxy]\nforwarded_for = true\n", "proxy.forwarded_for"),
    ]:
        config = tmp_path / "bad.toml"
        config.write_text(toml)
        result = subprocess.run([BIN, "config", "check", "--config", str(config)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 64, result
        assert key in result.stderr, result.stderr
