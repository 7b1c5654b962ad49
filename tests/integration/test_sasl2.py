"""SASL2 (XEP-0388) with Bind 2 (XEP-0386) and XEP-0198 inline, in
`starling serve` and across two connection-managers: raw-socket clients that
check every element, and @xmpp/client 0.14 (its @xmpp/sasl2 and bind2) as a
real client."""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import subprocess
import socket
import time

import pytest

from conftest import BIN, RawClient, login, logout, handled, wait_until_async
from test_cluster import cluster  # noqa: F401 (the fixture)

SASL2 = "urn:xmpp:sasl:2"
BIND2 = "urn:xmpp:bind:0"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
SM = "urn:xmpp:sm:3"
CARBONS = "urn:xmpp:carbons:2"
CSI = "urn:xmpp:csi:0"
USER_AGENT = (
    "<user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'>"
    "<software>AwesomeXMPP</software><device>Kiva's Phone</device></user-agent>"
)
SASL2_TOML = "[sasl2]\nenabled = true\n"


@pytest.fixture
def sasl2_server(server_factory):
    return server_factory(SASL2_TOML)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Scram:
    """The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677), to check the
    server's signature in the SASL2 additional data; any gs2 header and
    channel binding data (the -PLUS variants, test_channel_binding.py)."""

    def __init__(self, username, password, hash_name="sha256", gs2_header="n,,", cb_data=b""):
        self.username = username
        self.password = password
        self.hash_name = hash_name
        self.gs2_header = gs2_header
        self.cb_data = cb_data
        self.nonce = secrets.token_urlsafe(18)
        self.bare = f"n={username},r={self.nonce}"

    def client_first(self) -> str:
        return b64(f"{self.gs2_header}{self.bare}".encode())

    def check_server_first(self, attrs):
        """A hook for what a subclass checks in the server-first-message."""

    def client_final(self, server_first_b64: str, password=None) -> str:
        server_first = base64.b64decode(server_first_b64).decode()
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        assert attrs["r"].startswith(self.nonce)
        self.check_server_first(attrs)
        salted = hashlib.pbkdf2_hmac(
            self.hash_name, (password or self.password).encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.new(salted, b"Client Key", self.hash_name).digest()
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        # c= is cbind-input: the gs2 header, then the channel binding data (RFC 5802 section 7).
        without_proof = f"c={b64(self.gs2_header.encode() + self.cb_data)},r={attrs['r']}"
        auth_message = f"{self.bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, self.hash_name).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", self.hash_name).digest()
        self.server_signature = b64(hmac.new(server_key, auth_message, self.hash_name).digest())
        return b64(f"{without_proof},p={b64(proof)}".encode())


class Sasl2Client(RawClient):
    """A raw client speaking SASL2 inside STARTTLS."""

    def __init__(self, server, port=None, timeout=10.0):
        self.server = server
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port or server.c2s), timeout=timeout)
        self.buffer = b""

    def recv_element(self, names, timeout=None):
        """Read up to the end of the next top-level element among `names`
        (`<name .../>` or `</name>`), a tag at a time; return (name, text)."""
        text = ""
        while True:
            for name in names:
                if _element_end(text, name) is not None:
                    return name, text
            text += self.recv_until(">", timeout)

    def authenticate_plain(self, jid, password, inline=""):
        localpart = jid.split("@")[0]
        token = b64(f"\0{localpart}\0{password}".encode())
        self.send(
            f"<authenticate xmlns='{SASL2}' mechanism='PLAIN'>"
            f"<initial-response>{token}</initial-response>{USER_AGENT}{inline}</authenticate>"
        )
        return self.recv_element(["success", "failure"])

    def authenticate_scram(self, jid, password, inline="", wrong_password=None):
        scram = Scram(jid.split("@")[0], password)
        self.send(
            f"<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-256'>"
            f"<initial-response>{scram.client_first()}</initial-response>{USER_AGENT}{inline}</authenticate>"
        )
        name, challenge = self.recv_element(["challenge", "failure"])
        assert name == "challenge", challenge
        assert f"<challenge xmlns='{SASL2}'>" in challenge, challenge
        server_first = re.search(r">([^<]+)</challenge>", challenge).group(1)
        self.send(f"<response xmlns='{SASL2}'>{scram.client_final(server_first, wrong_password)}</response>")
        name, outcome = self.recv_element(["success", "failure"])
        return name, outcome, scram


def _element_end(text, name):
    """The end of the first complete `<name>` element in `text` (nested
    elements of the same name, like a carbon's forwarded message, included)."""
    depth = 0
    for token in re.finditer(rf"<(/?){name}(?=[\s>/])[^>]*?(/?)>", text):
        closing, selfclosing = token.group(1), token.group(2)
        if closing:
            depth -= 1
        elif not selfclosing:
            depth += 1
        if depth == 0:
            return token.end()
    return None


def bind2(tag="AwesomeXMPP", features=""):
    return f"<bind xmlns='{BIND2}'><tag>{tag}</tag>{features}</bind>"


def identifier(success):
    return re.search(r"<authorization-identifier>([^<]+)</authorization-identifier>", success).group(1)


def sm_enabled_id(success):
    match = re.search(r"<enabled xmlns='urn:xmpp:sm:3' id='([^']+)'", success)
    assert match, success
    return match.group(1)


async def test_features_offer_sasl2_with_bind2_inline_and_plain_login_then_legacy_bind(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    raw = Sasl2Client(sasl2_server)
    features = raw.starttls()
    # Inside TLS the -PLUS mechanisms come first (test_channel_binding.py).
    assert (
        f"<authentication xmlns='{SASL2}'><mechanism>SCRAM-SHA-256-PLUS</mechanism>"
        "<mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>"
    ) in features, features
    assert (
        f"<inline><bind xmlns='{BIND2}'><inline><feature var='{CARBONS}'/><feature var='{CSI}'/>"
        f"<feature var='{SM}'/></inline></bind><sm xmlns='{SM}'/>"
        "<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-EXPR</mechanism><mechanism>HT-SHA-256-ENDP</mechanism>"
        "<mechanism>HT-SHA-256-NONE</mechanism></fast></inline></authentication>"
    ) in features, features
    # The RFC 6120 mechanisms stay.
    assert f"<mechanisms xmlns='{SASL}'>" in features
    name, success = raw.authenticate_plain(alice, alice_pw)
    assert name == "success", success
    assert identifier(success) == alice
    # No restart: the features of the authenticated stream follow at once.
    features = raw.recv_until("</stream:features>")
    assert "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>" in features, features
    assert "authentication" not in features
    raw.send(
        "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        "<resource>legacy</resource></bind></iq>"
    )
    assert f"<jid>{alice}/legacy</jid>" in raw.recv_until("</iq>")
    raw.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    name, result = raw.recv_element(["iq"])
    assert "type='result'" in result and "id='p1'" in result, result
    raw.close()


async def test_scram_bind2_with_inline_sm_carbons_and_csi(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    bob, bob_pw = sasl2_server.add_user("bob")
    raw = Sasl2Client(sasl2_server)
    raw.starttls()
    name, success, scram = raw.authenticate_scram(
        alice,
        alice_pw,
        bind2(features=f"<enable xmlns='{SM}' resume='true'/><enable xmlns='{CARBONS}'/><inactive xmlns='{CSI}'/>"),
    )
    assert name == "success", success
    # The SCRAM server-final-message, checked like RFC 5802 says.
    data = re.search(r"<additional-data>([^<]+)</additional-data>", success).group(1)
    assert base64.b64decode(data).decode() == f"v={scram.server_signature}"
    full = identifier(success)
    assert re.fullmatch(rf"{re.escape(alice)}/AwesomeXMPP/[0-9a-f]{{12}}", full), full
    assert f"<bound xmlns='{BIND2}'><enabled xmlns='{SM}' id=" in success, success
    assert "resume='true'" in success
    sm_enabled_id(success)
    features = raw.recv_until("</features>")
    assert "<bind" not in features and f"<sm xmlns='{SM}'/>" not in features, features
    # Stream management counts from the success on.
    raw.send(f"<r xmlns='{SM}'/>")
    name, answer = raw.recv_element(["a"])
    assert "h='0'" in answer, answer
    # Carbons are on: a message another resource of alice sends comes as <sent/>.
    other = await login(sasl2_server, alice, alice_pw, "desk")
    b = await login(sasl2_server, bob, bob_pw, "desk")
    other.send_message(mto=f"{bob}/desk", mbody="carbon me", mtype="chat")
    await handled(other)
    name, carbon = raw.recv_element(["message"], timeout=15)
    assert f"<sent xmlns='{CARBONS}'>" in carbon and "carbon me" in carbon, carbon
    # The session began inactive (XEP-0352): a chat state alone waits.
    b.send_raw(f"<message to='{full}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    await handled(b)
    raw.send(f"<r xmlns='{SM}'/>")
    name, answer = raw.recv_element(["a", "message"])
    assert name == "a", answer
    # Active again: what waited comes now.
    raw.send(f"<active xmlns='{CSI}'/>")
    name, held = raw.recv_element(["message"])
    assert "<composing" in held, held
    raw.close()
    await logout(other, b)


async def test_resume_inline_after_a_dropped_connection(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    bob, bob_pw = sasl2_server.add_user("bob")
    raw = Sasl2Client(sasl2_server)
    raw.starttls()
    name, success = raw.authenticate_plain(alice, alice_pw, bind2(features=f"<enable xmlns='{SM}' resume='true'/>"))
    assert name == "success", success
    full = identifier(success)
    previd = sm_enabled_id(success)
    raw.recv_until("</features>")
    b = await login(sasl2_server, bob, bob_pw, "desk")
    b.send_message(mto=full, mbody="while you were away", mtype="chat")
    await handled(b)
    raw.recv_element(["message"])
    # Lost without closing the stream, nothing acknowledged.
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()

    again = Sasl2Client(sasl2_server)
    again.starttls()
    name, success = again.authenticate_plain(
        alice, alice_pw, f"<resume xmlns='{SM}' previd='{previd}' h='0'/>" + bind2()
    )
    assert name == "success", success
    # Resumed: the full JID of the old session, and no bind.
    assert identifier(success) == full
    assert f"<resumed xmlns='{SM}' previd='{previd}' h='0'/>" in success, success
    assert "<bound" not in success
    name, replayed = again.recv_element(["message"])
    assert "while you were away" in replayed
    again.close()
    await logout(b)


async def test_failed_inline_resumption_binds_instead(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    raw = Sasl2Client(sasl2_server)
    raw.starttls()
    name, success = raw.authenticate_plain(
        alice, alice_pw, f"<resume xmlns='{SM}' previd='nosuchstream' h='0'/>" + bind2()
    )
    assert name == "success", success
    # XEP-0386: the XEP-0198 failure in the success, then a new session.
    assert (
        f"<failed xmlns='{SM}'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    ) in success, success
    assert f"<bound xmlns='{BIND2}'/>" in success
    assert identifier(success).startswith(f"{alice}/AwesomeXMPP/")
    raw.close()


async def test_unknown_inline_feature_is_ignored(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    raw = Sasl2Client(sasl2_server)
    raw.starttls()
    name, success = raw.authenticate_plain(alice, alice_pw, bind2(features="<enable xmlns='urn:example:megafeature'/>"))
    assert name == "success", success
    assert f"<bound xmlns='{BIND2}'/>" in success, success
    assert "megafeature" not in success
    raw.close()
    metrics = await asyncio.to_thread(_metrics, sasl2_server)
    assert 'starling_sasl2_events_total{event="inline_ignored"} 1' in metrics
    assert 'starling_sasl2_events_total{event="bound"} 1' in metrics


def _metrics(server):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/metrics", timeout=10) as response:
        return response.read().decode()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
async def test_wrong_password_is_not_authorized_and_the_stream_stays_open(sasl2_server, mechanism):
    alice, alice_pw = sasl2_server.add_user("alice")
    raw = Sasl2Client(sasl2_server)
    raw.starttls()
    if mechanism == "PLAIN":
        name, failure = raw.authenticate_plain(alice, "wrong", bind2())
    else:
        name, failure, _ = raw.authenticate_scram(alice, alice_pw, bind2(), wrong_password="wrong")
    assert name == "failure"
    assert f"<failure xmlns='{SASL2}'><not-authorized xmlns='{SASL}'/></failure>" in failure, failure
    # The stream is unchanged (XEP-0388 section "Failure"): try again.
    name, success = raw.authenticate_plain(alice, alice_pw, bind2())
    assert name == "success", success
    raw.close()


async def test_unknown_mechanism_abort_and_encoding_errors(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    raw = Sasl2Client(sasl2_server)
    raw.starttls()
    raw.send(f"<authenticate xmlns='{SASL2}' mechanism='DIGEST-MD5'/>")
    name, failure = raw.recv_element(["failure"])
    assert f"<invalid-mechanism xmlns='{SASL}'/>" in failure, failure
    raw.send(f"<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>bi*s</initial-response></authenticate>")
    name, failure = raw.recv_element(["failure"])
    assert f"<incorrect-encoding xmlns='{SASL}'/>" in failure, failure
    raw.send(f"<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-256'/>")
    name, challenge = raw.recv_element(["challenge"])
    assert challenge == f"<challenge xmlns='{SASL2}'/>", challenge
    raw.send(f"<abort xmlns='{SASL2}'/>")
    name, failure = raw.recv_element(["failure"])
    assert f"<failure xmlns='{SASL2}'><aborted xmlns='{SASL}'/></failure>" == failure, failure
    raw.close()


async def test_sasl2_after_success_and_after_bind_is_a_stream_error(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    # After a success without bind.
    raw = Sasl2Client(sasl2_server)
    raw.starttls()
    name, success = raw.authenticate_plain(alice, alice_pw)
    assert name == "success"
    raw.recv_until("</stream:features>")
    token = b64(f"\0alice\0{alice_pw}".encode())
    raw.send(f"<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{token}</initial-response></authenticate>")
    closed = raw.read_until_closed()
    assert "<unsupported-stanza-type xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in closed, closed
    # After Bind 2.
    raw = Sasl2Client(sasl2_server)
    raw.starttls()
    name, success = raw.authenticate_plain(alice, alice_pw, bind2())
    assert name == "success"
    raw.send(f"<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{token}</initial-response></authenticate>")
    closed = raw.read_until_closed()
    assert "<unsupported-stanza-type xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in closed, closed


async def test_not_offered_when_off(server):
    raw = Sasl2Client(server)
    features = raw.starttls()
    assert "urn:xmpp:sasl:2" not in features
    alice, alice_pw = server.add_user("alice")
    token = b64(f"\0alice\0{alice_pw}".encode())
    raw.send(f"<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>{token}</initial-response></authenticate>")
    closed = raw.read_until_closed()
    assert "<unsupported-stanza-type" in closed, closed


# ------------------------------------------------------------------ FAST (XEP-0484)

FAST = "urn:xmpp:fast:0"
HT = "HT-SHA-256-NONE"
OTHER_AGENT = (
    "<user-agent id='0f8e2a54-5d1c-4bb1-9b57-2f2b51b5a1c3'><software>OtherXMPP</software></user-agent>"
)


def issued_token(success):
    match = re.search(rf"<token xmlns='{FAST}' expiry='([^']+)' token='([^']+)'/>", success)
    assert match, success
    return match.group(2), match.group(1)


def ht_response(localpart, token, cb_data=b""):
    """draft-schmaus-kitten-sasl-ht section 3.1; `cb_data` for -EXPR/-ENDP."""
    initiator = hmac.new(token.encode(), b"Initiator" + cb_data, "sha256").digest()
    return b64(localpart.encode() + b"\0" + initiator)


def authenticate_fast(
    client, jid, token, inline="", user_agent=USER_AGENT, fast="<fast xmlns='urn:xmpp:fast:0'/>", mechanism=HT, cb_data=b""
):
    """Log in with a FAST token; on success the server's HMAC (over the
    same channel binding data: mutual authentication) is checked."""
    client.send(
        f"<authenticate xmlns='{SASL2}' mechanism='{mechanism}'>"
        f"<initial-response>{ht_response(jid.split('@')[0], token, cb_data)}</initial-response>"
        f"{user_agent}{fast}{inline}</authenticate>"
    )
    name, outcome = client.recv_element(["success", "failure"])
    if name == "success":
        data = re.search(r"<additional-data>([^<]+)</additional-data>", outcome).group(1)
        assert base64.b64decode(data) == hmac.new(token.encode(), b"Responder" + cb_data, "sha256").digest()
    return name, outcome


def first_token(node, jid, password):
    """A password login that asks for a token (and binds)."""
    raw = Sasl2Client(node)
    features = raw.starttls()
    assert f"<mechanism>{HT}</mechanism></fast>" in features, features
    name, success, _ = raw.authenticate_scram(jid, password, f"<request-token xmlns='{FAST}' mechanism='{HT}'/>" + bind2())
    assert name == "success", success
    raw.close()
    return issued_token(success)


def fast_login(node, jid, token, **options):
    raw = Sasl2Client(node)
    raw.starttls()
    try:
        return authenticate_fast(raw, jid, token, **options)
    finally:
        raw.close()


def not_authorized(outcome, condition="not-authorized"):
    return f"<failure xmlns='{SASL2}'><{condition} xmlns='{SASL}'/></failure>" in outcome


async def test_fast_token_issued_used_and_rotated(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    token1, expiry = first_token(sasl2_server, alice, alice_pw)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", expiry), expiry
    # A reconnect with the token: bound in the same round trip, and a new token (rotation).
    name, success = fast_login(sasl2_server, alice, token1, inline=bind2(features=f"<enable xmlns='{SM}'/>"))
    assert name == "success", success
    assert identifier(success).startswith(f"{alice}/AwesomeXMPP/")
    assert f"<bound xmlns='{BIND2}'><enabled xmlns='{SM}'" in success
    token2, _ = issued_token(success)
    assert token2 != token1
    # The token in use stays valid until the new one is used...
    name, success = fast_login(sasl2_server, alice, token1)
    assert name == "success", success
    token3, _ = issued_token(success)
    name, success = fast_login(sasl2_server, alice, token3)
    assert name == "success", success
    # ...which removes the older ones.
    name, failure = fast_login(sasl2_server, alice, token1)
    assert not_authorized(failure), failure
    # Tokens are stored hashed: neither appears in the database.
    database = (sasl2_server.dir / "data" / "starling.db").read_bytes()
    for token in (token1, token2, token3):
        assert token.encode() not in database


async def test_fast_wrong_token_other_device_expired_and_revoked(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    bob, bob_pw = sasl2_server.add_user("bob")
    token, _ = first_token(sasl2_server, alice, alice_pw)
    # A wrong token, another account, another device (user agent), no user agent.
    name, failure = fast_login(sasl2_server, alice, token[:-4] + "AAA=")
    assert not_authorized(failure), failure
    name, failure = fast_login(sasl2_server, bob, token)
    assert not_authorized(failure), failure
    name, failure = fast_login(sasl2_server, alice, token, user_agent=OTHER_AGENT)
    assert not_authorized(failure), failure
    name, failure = fast_login(sasl2_server, alice, token, user_agent="")
    assert not_authorized(failure), failure
    # Expired (its expiry moved into the past in the database).
    import sqlite3

    connection = sqlite3.connect(sasl2_server.dir / "data" / "starling.db")
    with connection:
        assert connection.execute("UPDATE fast_tokens SET expires_at = 0").rowcount == 1
    connection.close()
    name, failure = fast_login(sasl2_server, alice, token)
    assert not_authorized(failure, "credentials-expired"), failure
    # Revoked by the operator: every token of the account.
    token, _ = first_token(sasl2_server, alice, alice_pw)
    assert fast_login(sasl2_server, alice, token)[0] == "success"
    revoked = sasl2_server.cli("user", "fast-revoke", alice)
    assert "revoked 2 fast tokens of alice@localhost" in revoked.stdout, revoked
    name, failure = fast_login(sasl2_server, alice, token)
    assert not_authorized(failure), failure


async def test_fast_invalidate_logs_the_device_out_of_its_tokens(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    token, _ = first_token(sasl2_server, alice, alice_pw)
    name, success = fast_login(sasl2_server, alice, token, fast=f"<fast xmlns='{FAST}' invalidate='true'/>")
    assert name == "success", success
    assert "<token" not in success
    name, failure = fast_login(sasl2_server, alice, token)
    assert not_authorized(failure), failure


@pytest.fixture
def sasl2_everywhere(monkeypatch):
    """SASL2 on in every process started from here on (the cluster's too)."""
    monkeypatch.setenv("STARLING_SASL2_ENABLED", "true")


async def test_fast_token_of_cm1_works_on_cm2_and_revocation_everywhere(sasl2_everywhere, cluster):
    alice, alice_pw = cluster.add_user("alice")
    token, _ = first_token(cluster.node("cm-1"), alice, alice_pw)
    name, success = fast_login(cluster.node("cm-2"), alice, token, inline=bind2())
    assert name == "success", (success, cluster.logs())
    rotated, _ = issued_token(success)
    name, success = fast_login(cluster.node("cm-1"), alice, rotated)
    assert name == "success", success
    # Revoked through the admin API (`starling admin`), for this device.
    agent = "d4565fa7-4d72-4749-b3d3-740edbf87770"
    config = str(cluster.dir / "admin.toml")
    revoked = subprocess.run([BIN, "admin", "--config", config, "users", "fast-revoke", alice, "--agent", agent],
                             capture_output=True, text=True, timeout=60)
    assert revoked.returncode == 0 and "revoked 2 fast tokens" in revoked.stdout, revoked
    for node in ("cm-1", "cm-2"):
        name, failure = fast_login(cluster.node(node), alice, rotated)
        assert not_authorized(failure), failure


from test_websocket import NODE, WEB_DIR, node_arguments  # noqa: E402 (the node helpers)


@pytest.mark.skipif(
    NODE is None or not (WEB_DIR / "node_modules" / "@xmpp" / "sasl2").is_dir(),
    reason="needs node and `npm ci --prefix tests/web` (scripts/test.sh installs them)",
)
async def test_xmpp_client_logs_in_with_sasl2_and_bind2(sasl2_server):
    """@xmpp/client 0.14 over WebSocket picks SASL2 when offered, binds with
    Bind 2 and enables resumable stream management inline."""
    juliet, juliet_pw = sasl2_server.add_user("juliet")
    url = f"ws://127.0.0.1:{sasl2_server.http}/xmpp-websocket"
    settings = {"WS_URL": url, "DOMAIN": sasl2_server.domain, "USERNAME": "juliet", "PASSWORD": juliet_pw}
    script = str(WEB_DIR / "xmpp_client_sasl2.mjs")
    pipe = asyncio.subprocess.PIPE
    web = await asyncio.create_subprocess_exec(
        NODE, *node_arguments(), script, cwd=str(WEB_DIR), env={**os.environ, **settings, "RESOURCE": "web"},
        stdout=pipe, stderr=pipe,
    )
    stdout, stderr = await asyncio.wait_for(web.communicate(), 40)
    events = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    assert web.returncode == 0, (events, stderr.decode(errors="replace"), sasl2_server.log_text()[-4000:])
    by_name = {event["event"]: event for event in events}
    assert "legacy-auth" not in by_name
    authenticate = by_name["authenticate"]
    # Over plain WebSocket (no TLS) SCRAM; the user agent, Bind 2 with its tag and SM inline.
    assert authenticate["mechanism"] == "SCRAM-SHA-1", authenticate
    assert f"bind {BIND2}" in authenticate["children"], authenticate
    assert "<tag>web</tag>" in authenticate["xml"] and f"<enable xmlns=\"{SM}\"" in authenticate["xml"], authenticate
    assert f"<bound xmlns=\"{BIND2}\"><enabled xmlns=\"{SM}\"" in by_name["success"]["xml"], by_name["success"]
    online = by_name["online"]
    assert online["jid"].startswith(f"{juliet}/web/"), online
    pong = by_name["pong"]
    assert pong["type"] == "result" and pong["sm_enabled"] is True and pong["sm_id"], pong
    assert "stopped" in by_name


@pytest.mark.skipif(
    NODE is None or not (WEB_DIR / "node_modules" / "@xmpp" / "sasl2").is_dir(),
    reason="needs node and `npm ci --prefix tests/web` (scripts/test.sh installs them)",
)
async def test_xmpp_client_reconnects_on_cm2_with_its_fast_token_and_resumes(sasl2_everywhere, cluster):
    """@xmpp/client 0.14 logs in on cm-1 with a password (and gets a FAST
    token), loses its connection, and comes back on cm-2 with the token and
    an inline resumption of its stream: one round trip."""
    from test_sm_clients import DroppingProxy, WebClient, sm_events

    cluster.add_user("juliet")
    first_http = cluster.processes["cm-1"]["http"]
    proxy = await DroppingProxy(int(first_http.rsplit(":", 1)[1])).start()
    settings = {"WS_URL": f"ws://127.0.0.1:{proxy.port}/xmpp-websocket", "DOMAIN": "localhost",
                "RECONNECT_URL": f"ws://{cluster.processes['cm-2']['http']}/xmpp-websocket",
                "USERNAME": "juliet", "PASSWORD": "cluster-pass", "RESOURCE": "web"}
    pipe = asyncio.subprocess.PIPE
    web = WebClient(await asyncio.create_subprocess_exec(
        NODE, *node_arguments(), str(WEB_DIR / "xmpp_client_sasl2.mjs"), cwd=str(WEB_DIR),
        env={**os.environ, **settings}, stdin=pipe, stdout=pipe, stderr=pipe,
    ))
    first_pong = await web.expect(lambda event: event["event"] == "pong", "the first login")
    detached_before = sm_events(first_http, "detached")
    proxy.drop()
    await web.expect(lambda event: event["event"] == "disconnect", "the client to notice the loss")
    await wait_until_async(lambda: sm_events(first_http, "detached") > detached_before, what="cm-1 to detach")
    web.process.stdin.write(b"reconnect\n")
    await web.expect(lambda event: event["event"] == "stopped", "the second login", timeout=30)
    await web.readers
    events = web.events
    logins = [event for event in events if event["event"] == "authenticate"]
    assert [login["mechanism"] for login in logins] == ["SCRAM-SHA-1", "HT-SHA-256-NONE"], events
    assert f"<request-token xmlns=\"{FAST}\" mechanism=\"{HT}\"/>" in logins[0]["xml"]
    assert f"<resume xmlns=\"{SM}\"" in logins[1]["xml"], logins[1]
    successes = [event["xml"] for event in events if event["event"] == "success"]
    assert len(successes) == 2 and f"<resumed xmlns=\"{SM}\"" in successes[1], successes
    assert "<bound" not in successes[1]
    tokens = [event for event in events if event["event"] == "token"]
    assert len(tokens) == 2 and all(token["mechanism"] == HT for token in tokens), tokens
    resumed = next(event for event in events if event["event"] == "resumed")
    assert resumed["sm_id"] == first_pong["sm_id"]
    assert [event["type"] for event in events if event["event"] == "pong"] == ["result", "result"]
