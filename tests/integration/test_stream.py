"""RFC 6120 stream behaviour and every hostile-input path, in raw bytes and
with slixmpp: authentication, binding, stamping, limits, shutdown."""

import asyncio
import signal
import socket
import ssl

import pytest

from conftest import Client, RawClient, insecure_context, login, logout


async def test_wrong_password_is_refused(server):
    alice, _ = server.add_user("alice", "right")
    client = Client(alice, "wrong")
    client.connect(host="127.0.0.1", port=server.c2s)
    done, _ = await asyncio.wait([client.started, client.failed], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    assert client.failed in done
    client.disconnect()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
async def test_each_sasl_mechanism_logs_in(server, mechanism):
    alice, password = server.add_user("alice")
    client = Client(alice, password)
    client.plugin["feature_mechanisms"].use_mech = mechanism
    client.connect(host="127.0.0.1", port=server.c2s)
    await asyncio.wait_for(client.started, 15)
    assert client.boundjid.bare == alice
    await logout(client)


def test_raw_wrong_password_gives_not_authorized(server):
    alice, _ = server.add_user("alice", "right")
    raw = RawClient(server)
    raw.starttls()
    import base64

    token = base64.b64encode(b"\0alice\0wrong").decode()
    raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    answer = raw.recv_until("</failure>")
    assert "<not-authorized" in answer
    # An account that does not exist gives the same answer.
    token = base64.b64encode(b"\0nobody\0wrong").decode()
    raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    answer = raw.recv_until("</failure>")
    assert "<not-authorized" in answer
    raw.close()


def test_plain_is_not_offered_before_tls(server):
    raw = RawClient(server)
    features = raw.open_stream()
    assert "<starttls" in features
    assert "PLAIN" not in features
    raw.close()


def test_unknown_host_is_refused(server):
    raw = RawClient(server)
    raw.send(
        "<stream:stream to='not-our-domain.example' version='1.0' xmlns='jabber:client' "
        "xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    answer = raw.read_until_closed()
    assert "<host-unknown" in answer
    raw.close()


def test_forged_from_is_overwritten(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a = RawClient(server)
    a_full = a.login(alice, alice_pw, resource="forger")
    b = RawClient(server)
    b.login(bob, bob_pw, resource="victim")
    b.send("<presence/>")
    a.send(f"<message from='mallory@{server.domain}/x' to='{bob}/victim' type='chat'><body>who am i</body></message>")
    got = b.recv_until("</message>")
    assert "who am i" in got
    assert f"from='{a_full}'" in got or f'from="{a_full}"' in got, got
    assert "mallory" not in got
    a.close()
    b.close()


def test_presence_with_a_bad_show_or_priority_is_refused_not_relayed(server):
    # RFC 6121 section 4.7.2.1 (show: away, chat, dnd or xa) and 4.7.2.3
    # (priority: an integer from -128 to 127): anything else is a bad request,
    # answered to the sender and never forwarded (an empty <show/> used to be relayed).
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a = RawClient(server)
    a.login(alice, alice_pw, resource="sender")
    b = RawClient(server)
    b.login(bob, bob_pw, resource="receiver")
    b.send("<presence/>")
    for index, child in enumerate(["<show/>", "<show>busy</show>", "<priority>-3000000000</priority>", "<priority>128</priority>"]):
        a.send(f"<presence to='{bob}/receiver' id='bad{index}'>{child}</presence>")
        answer = a.recv_until("</presence>")
        assert f"id='bad{index}'" in answer and "type='error'" in answer, answer
        assert "<bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in answer, answer
    a.send(f"<presence to='{bob}/receiver' id='good'><show>away</show><priority>-128</priority></presence>")
    got = b.recv_until("</presence>")
    # The first presence bob gets from alice is the valid one.
    while f"from='{alice}/sender'" not in got:
        got = b.recv_until("</presence>")
    assert "id='good'" in got and "<show>away</show>" in got, got
    a.close()
    b.close()


def test_oversize_stanza_ends_stream_with_policy_violation(server):
    alice, alice_pw = server.add_user("alice")
    raw = RawClient(server)
    raw.login(alice, alice_pw)
    body = "x" * (300 * 1024)
    try:
        raw.send(f"<message to='{alice}'><body>{body}</body></message>")
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass
    answer = raw.read_until_closed()
    assert "<policy-violation" in answer
    assert "</stream:stream>" in answer
    raw.close()


def test_doctype_is_restricted_xml(server):
    raw = RawClient(server)
    raw.send("<?xml version='1.0'?><!DOCTYPE foo [<!ENTITY x 'y'>]><stream:stream to='localhost' version='1.0' "
             "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
    answer = raw.read_until_closed()
    assert "<restricted-xml" in answer or "<not-well-formed" in answer, answer
    raw.close()


def test_invalid_utf8_is_not_well_formed(server):
    raw = RawClient(server)
    raw.open_stream()
    raw.send(b"<message><body>\xff\xfe</body></message>")
    answer = raw.read_until_closed()
    assert "<not-well-formed" in answer
    raw.close()


def test_malformed_xml_is_not_well_formed(server):
    raw = RawClient(server)
    raw.open_stream()
    raw.send("<message><body></message>")
    answer = raw.read_until_closed()
    assert "<not-well-formed" in answer
    raw.close()


def test_unknown_top_level_element_after_bind(server):
    alice, alice_pw = server.add_user("alice")
    raw = RawClient(server)
    raw.login(alice, alice_pw)
    raw.send("<foo xmlns='jabber:client'/>")
    answer = raw.read_until_closed()
    assert "<unsupported-stanza-type" in answer
    raw.close()


def test_pre_auth_deadline_is_absolute(server_factory):
    srv = server_factory("[limits]\npre_auth_timeout_secs = 1\n")
    raw = RawClient(srv)
    raw.open_stream()
    # Keep sending whitespace: an idle timer would never fire, the deadline does.
    closed = None
    for _ in range(40):
        try:
            raw.send(" ")
        except OSError:
            closed = True
            break
        try:
            raw.sock.settimeout(0.1)
            chunk = raw.sock.recv(4096)
            raw.buffer += chunk
            if not chunk or b"connection-timeout" in raw.buffer:
                closed = True
                break
        except socket.timeout:
            pass
    assert closed, raw.buffer
    assert b"<connection-timeout" in raw.buffer
    raw.close()


def test_too_many_auth_attempts_close_the_stream(server):
    import base64

    server.add_user("alice", "right")
    raw = RawClient(server)
    raw.starttls()
    token = base64.b64encode(b"\0alice\0wrong").decode()
    failures = 0
    for _ in range(6):
        try:
            raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
            answer = raw.recv_until("</failure>", timeout=5)
            failures += 1
        except (ConnectionError, TimeoutError, OSError, ssl.SSLError):
            break
    # limits.max_auth_attempts is 5: the sixth attempt gets a stream error.
    assert failures == 5, failures
    rest = raw.read_until_closed()
    assert "<policy-violation" in rest and "</stream:stream>" in rest, rest
    raw.close()


def test_resource_conflict_newest_session_wins(server):
    alice, alice_pw = server.add_user("alice")
    first = RawClient(server)
    first.login(alice, alice_pw, resource="same")
    second = RawClient(server)
    assert second.login(alice, alice_pw, resource="same") == f"{alice}/same"
    answer = first.read_until_closed()
    assert "<conflict" in answer
    first.close()
    second.close()


def test_direct_tls_port(server):
    sock = socket.create_connection(("127.0.0.1", server.c2s_tls), timeout=10)
    context = insecure_context()
    context.set_alpn_protocols(["xmpp-client"])
    tls = context.wrap_socket(sock, server_hostname=server.domain)
    assert tls.version() in ("TLSv1.2", "TLSv1.3")
    tls.sendall(
        b"<stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
        b"xmlns:stream='http://etherx.jabber.org/streams'>"
    )
    data = b""
    while b"</stream:features>" not in data:
        data += tls.recv(4096)
    assert b"SCRAM-SHA-256" in data and b"PLAIN" in data and b"<starttls" not in data
    tls.close()


def test_sigterm_closes_streams_with_system_shutdown(server):
    alice, alice_pw = server.add_user("alice")
    raw = RawClient(server)
    raw.login(alice, alice_pw)
    server.process.send_signal(signal.SIGTERM)
    answer = raw.read_until_closed()
    assert "<system-shutdown" in answer
    assert server.process.wait(timeout=15) == 0
    raw.close()
