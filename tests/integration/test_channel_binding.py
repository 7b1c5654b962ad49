"""SCRAM -PLUS channel binding (RFC 5802 section 6) with tls-exporter (RFC
9266) and tls-server-end-point (RFC 5929), XEP-0440 channel-binding types,
XEP-0474 downgrade protection (the `h` attribute, version 0.5.0) and FAST
with channel-bound tokens (XEP-0484, HT-SHA-256-EXPR/-ENDP), with a raw
client that computes everything itself: tls-server-end-point from the
certificate Python's ssl saw, tls-exporter from a node TLS connection
(tls_pipe.js: Python's ssl cannot export keying material)."""

import base64
import hashlib
import hmac
import json
import pathlib
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import urllib.request

import pytest

from conftest import insecure_context
from test_cluster import cluster  # noqa: F401 (the fixture)
from test_sasl2 import USER_AGENT, Sasl2Client, Scram, authenticate_fast, bind2, identifier, issued_token
from test_websocket import _ws_frame, _ws_read_text, ws_upgrade

SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
SASL2 = "urn:xmpp:sasl:2"
SASL_CB = "urn:xmpp:sasl-cb:0"
FAST = "urn:xmpp:fast:0"
SASL2_TOML = "[sasl2]\nenabled = true\n"
PIPE = pathlib.Path(__file__).with_name("tls_pipe.js")
NODE = shutil.which("node")

needs_node = pytest.mark.skipif(NODE is None, reason="node (for tls-exporter) is not installed")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------ the client side


def advertised(features: str, profile: str):
    """The mechanisms of one SASL profile and the XEP-0440 types, as the client saw them."""
    if profile == "sasl2":
        block = re.search(rf"<authentication xmlns='{SASL2}'>(.*?)<inline>", features)
    else:
        block = re.search(rf"<mechanisms xmlns='{SASL}'>(.*?)</mechanisms>", features)
    assert block, features
    mechanisms = re.findall(r"<mechanism>([^<]+)</mechanism>", block.group(1))
    cb = re.search(rf"<sasl-channel-binding xmlns='{SASL_CB}'>(.*?)</sasl-channel-binding>", features)
    types = re.findall(r"<channel-binding type='([^']+)'/>", cb.group(1)) if cb else None
    return mechanisms, types


def ssdp_hash(hash_name, mechanisms, types):
    """XEP-0474 (0.5.0) section "Server Sends Downgrade Protection Hash", computed by the client."""
    text = "\x1e".join(sorted(mechanisms, key=str.encode))
    if types is not None:
        text += "\x1f" + "\x1e".join(sorted(types, key=str.encode))
    return b64(hashlib.new(hash_name, text.encode()).digest())


class ScramPlus(Scram):
    """test_sasl2's SCRAM client that also checks the server's XEP-0474 hash
    against the features it saw (section "Client Verifies The Downgrade
    Protection Hash")."""

    def __init__(self, username, password, hash_name="sha256", gs2_header="n,,", cb_data=b"", expected_ssdp=None):
        super().__init__(username, password, hash_name, gs2_header, cb_data)
        self.expected_ssdp = expected_ssdp

    def check_server_first(self, attrs):
        self.server_ssdp = attrs.get("h")
        if self.expected_ssdp is not None:
            assert self.server_ssdp == self.expected_ssdp, (attrs, self.expected_ssdp)


def end_point_hash(certificate_der: bytes) -> bytes:
    """RFC 5929 section 4.1 for the server's certificate (rcgen: ECDSA with SHA-256)."""
    return hashlib.sha256(certificate_der).digest()


class CbClient(Sasl2Client):
    """A raw client that knows its TLS session's channel binding data."""

    tls_version = None
    exporter = None
    certificate = None
    pipe = None

    @classmethod
    def starttls_client(cls, server, port=None, max_version=None):
        client = cls(server, port=port)
        client.open_stream()
        client.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        client.recv_until("<proceed")
        client.recv_until(">")
        context = insecure_context()
        if max_version is not None:
            context.maximum_version = max_version
        client.sock = context.wrap_socket(client.sock, server_hostname=server.domain)
        client.buffer = b""
        client.tls_version = client.sock.version()
        client.certificate = client.sock.getpeercert(binary_form=True)
        client.features = client.open_stream()
        return client

    @classmethod
    def direct_tls_client(cls, server, port=None, version="TLSv1.3"):
        """Direct TLS through node (tls_pipe.js), which exports the keying material."""
        pipe = subprocess.Popen(
            [NODE, str(PIPE), "127.0.0.1", str(port or server.c2s_tls), version],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        local_port = json.loads(pipe.stdout.readline())["port"]
        client = cls.__new__(cls)
        client.server = server
        client.timeout = 10.0
        client.sock = socket.create_connection(("127.0.0.1", local_port), timeout=10.0)
        client.buffer = b""
        client.pipe = pipe
        line = pipe.stdout.readline()
        assert line, pipe.stderr.read()
        info = json.loads(line)
        client.tls_version = info["protocol"]
        client.exporter = base64.b64decode(info["exporter"])
        client.certificate = base64.b64decode(info["certificate"])
        client.features = client.open_stream()
        return client

    def close(self):
        super().close()
        if self.pipe is not None:
            self.pipe.kill()
            self.pipe.wait()

    def cb_data(self, cb_type):
        if cb_type == "tls-exporter":
            assert self.exporter is not None
            return self.exporter
        return end_point_hash(self.certificate)

    def scram(self, jid, password, hash_name="sha256", gs2_header="n,,", cb_data=b"", profile="sasl1"):
        mechanisms, types = advertised(self.features, profile)
        return ScramPlus(
            jid.split("@")[0], password, hash_name, gs2_header, cb_data, expected_ssdp=ssdp_hash(hash_name, mechanisms, types)
        )

    def sasl1(self, mechanism, scram):
        """An RFC 6120 SCRAM exchange; (outcome element name, its text)."""
        return self.exchange(SASL, f"<auth xmlns='{SASL}' mechanism='{mechanism}'>{scram.client_first()}</auth>", scram)

    def sasl2(self, mechanism, scram, inline=""):
        """A SASL2 SCRAM exchange; (outcome element name, its text)."""
        authenticate = (
            f"<authenticate xmlns='{SASL2}' mechanism='{mechanism}'>"
            f"<initial-response>{scram.client_first()}</initial-response>{USER_AGENT}{inline}</authenticate>"
        )
        return self.exchange(SASL2, authenticate, scram)

    def exchange(self, namespace, first, scram):
        """Send `first`, answer the challenge, check the server signature of a success."""
        self.send(first)
        name, answer = self.recv_element(["challenge", "failure"])
        if name == "failure":
            return name, answer
        server_first = re.search(r">([^<]+)</challenge>", answer).group(1)
        self.send(f"<response xmlns='{namespace}'>{scram.client_final(server_first)}</response>")
        name, outcome = self.recv_element(["success", "failure"])
        if name == "success":
            # The server-final-message: <success/>'s text in SASL1, <additional-data/> in SASL2.
            data = re.search(r">([^<>]+)</(?:success|additional-data)>", outcome).group(1)
            assert base64.b64decode(data).decode() == f"v={scram.server_signature}", outcome
        return name, outcome


def channel_binding_failures(server, reason):
    """`starling_sasl_channel_binding_failures_total{reason}` of a `starling serve`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf'^starling_sasl_channel_binding_failures_total{{reason="{reason}"}} (\d+)', text, re.M)
    assert match, text[-2000:]
    return int(match.group(1))


def condition(failure):
    match = re.search(r"<([a-z-]+)(?: xmlns='urn:ietf:params:xml:ns:xmpp-sasl')?/></failure>", failure)
    assert match, failure
    return match.group(1)


@pytest.fixture
def sasl2_server(server_factory):
    return server_factory(SASL2_TOML)


# ------------------------------------------------------------------ the tests


PLAINTEXT_TOML = "[tls]\nrequired = false\n"


def test_plain_stream_offers_no_plus_and_no_channel_binding_types(server_factory):
    server = server_factory(PLAINTEXT_TOML)
    alice, alice_pw = server.add_user("alice")
    client = CbClient(server)
    try:
        client.features = client.open_stream()
        assert "PLUS" not in client.features, client.features
        assert "sasl-channel-binding" not in client.features, client.features
        # Asked for anyway: STARTTLS first.
        scram = client.scram(alice, alice_pw, gs2_header="p=tls-exporter,,")
        name, failure = client.sasl1("SCRAM-SHA-256-PLUS", scram)
        assert name == "failure" and condition(failure) == "encryption-required", failure
        # 'y' on a stream that offered no -PLUS is fine (RFC 5802 section 6);
        # the XEP-0474 hash has no channel-binding part without XEP-0440.
        scram = client.scram(alice, alice_pw, gs2_header="y,,")
        assert scram.expected_ssdp == ssdp_hash("sha256", ["SCRAM-SHA-256", "SCRAM-SHA-1"], None)
        name, success = client.sasl1("SCRAM-SHA-256", scram)
        assert name == "success", success
    finally:
        client.close()


def test_starttls_tls13_advertises_plus_and_both_types(server):
    client = CbClient.starttls_client(server)
    try:
        assert client.tls_version == "TLSv1.3"
        mechanisms, types = advertised(client.features, "sasl1")
        assert mechanisms == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"], client.features
        # XEP-0440: a top-level feature, strongest type first.
        assert types == ["tls-exporter", "tls-server-end-point"], client.features
        assert (
            f"<sasl-channel-binding xmlns='{SASL_CB}'><channel-binding type='tls-exporter'/>"
            "<channel-binding type='tls-server-end-point'/></sasl-channel-binding>"
        ) in client.features
    finally:
        client.close()


@pytest.mark.parametrize("mechanism,hash_name", [("SCRAM-SHA-256-PLUS", "sha256"), ("SCRAM-SHA-1-PLUS", "sha1")])
def test_plus_login_with_tls_server_end_point_over_starttls(server, mechanism, hash_name):
    alice, alice_pw = server.add_user("alice")
    client = CbClient.starttls_client(server)
    try:
        scram = client.scram(
            alice, alice_pw, hash_name, "p=tls-server-end-point,,", client.cb_data("tls-server-end-point")
        )
        name, success = client.sasl1(mechanism, scram)
        assert name == "success", success
        assert scram.server_ssdp is not None
    finally:
        client.close()


def test_tls12_offers_only_tls_server_end_point(server):
    alice, alice_pw = server.add_user("alice")
    client = CbClient.starttls_client(server, max_version=ssl.TLSVersion.TLSv1_2)
    try:
        assert client.tls_version == "TLSv1.2"
        mechanisms, types = advertised(client.features, "sasl1")
        assert "SCRAM-SHA-256-PLUS" in mechanisms
        # RFC 9266: tls-exporter only for TLS 1.3 here.
        assert types == ["tls-server-end-point"], client.features
        scram = client.scram(alice, alice_pw, gs2_header="p=tls-exporter,,", cb_data=b"\0" * 32)
        name, failure = client.sasl1("SCRAM-SHA-256-PLUS", scram)
        assert name == "failure" and condition(failure) == "malformed-request", failure
        scram = client.scram(alice, alice_pw, gs2_header="p=tls-server-end-point,,", cb_data=client.cb_data("tls-server-end-point"))
        name, success = client.sasl1("SCRAM-SHA-256-PLUS", scram)
        assert name == "success", success
    finally:
        client.close()


@needs_node
@pytest.mark.parametrize("mechanism,hash_name", [("SCRAM-SHA-256-PLUS", "sha256"), ("SCRAM-SHA-1-PLUS", "sha1")])
def test_plus_login_with_tls_exporter_over_direct_tls(server, mechanism, hash_name):
    alice, alice_pw = server.add_user("alice")
    client = CbClient.direct_tls_client(server)
    try:
        assert client.tls_version == "TLSv1.3"
        assert advertised(client.features, "sasl1")[1] == ["tls-exporter", "tls-server-end-point"]
        scram = client.scram(alice, alice_pw, hash_name, "p=tls-exporter,,", client.cb_data("tls-exporter"))
        name, success = client.sasl1(mechanism, scram)
        assert name == "success", success
        # The restarted stream is bound.
        features = client.open_stream()
        assert "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>" in features
    finally:
        client.close()


@needs_node
def test_channel_binding_data_of_another_tls_session_is_not_authorized(server):
    """A man in the middle terminates the client's TLS and opens its own to
    the server: the client binds to its session, not the server's. Here the
    data of another real session to this server stands for it."""
    alice, alice_pw = server.add_user("alice")
    other = CbClient.direct_tls_client(server)
    client = CbClient.direct_tls_client(server)
    try:
        assert other.exporter != client.exporter
        scram = client.scram(alice, alice_pw, gs2_header="p=tls-exporter,,", cb_data=other.exporter)
        name, failure = client.sasl1("SCRAM-SHA-256-PLUS", scram)
        assert name == "failure" and condition(failure) == "not-authorized", failure
        # The operator sees it (the client only sees not-authorized).
        assert channel_binding_failures(server, "mismatch") == 1
        # A made-up certificate hash is no better.
        scram = client.scram(alice, alice_pw, gs2_header="p=tls-server-end-point,,", cb_data=hashlib.sha256(b"another certificate").digest())
        name, failure = client.sasl1("SCRAM-SHA-256-PLUS", scram)
        assert name == "failure" and condition(failure) == "not-authorized", failure
        # The right data on the same stream still works.
        scram = client.scram(alice, alice_pw, gs2_header="p=tls-exporter,,", cb_data=client.exporter)
        name, success = client.sasl1("SCRAM-SHA-256-PLUS", scram)
        assert name == "success", success
    finally:
        other.close()
        client.close()


def test_gs2_flag_rules_on_a_tls_stream(server):
    alice, alice_pw = server.add_user("alice")
    cases = [
        # 'y': the client thinks we cannot bind, but we offered -PLUS: a downgrade (RFC 5802 section 6).
        ("SCRAM-SHA-256", "y,,", None, "not-authorized"),
        ("SCRAM-SHA-1", "y,,", None, "not-authorized"),
        # 'p' with a mechanism without -PLUS.
        ("SCRAM-SHA-256", "p=tls-server-end-point,,", "tls-server-end-point", "malformed-request"),
        # A type we do not offer; tls-unique never (undefined in TLS 1.3).
        ("SCRAM-SHA-256-PLUS", "p=tls-unique,,", None, "malformed-request"),
        ("SCRAM-SHA-256-PLUS", "p=no-such-type,,", None, "malformed-request"),
        # -PLUS without binding.
        ("SCRAM-SHA-256-PLUS", "n,,", None, "malformed-request"),
        ("SCRAM-SHA-1-PLUS", "y,,", None, "malformed-request"),
    ]
    for mechanism, header, cb_type, expected in cases:
        # A stream each: at most limits.max_auth_attempts attempts per stream.
        client = CbClient.starttls_client(server)
        try:
            data = client.cb_data(cb_type) if cb_type else b""
            hash_name = "sha1" if mechanism.startswith("SCRAM-SHA-1") else "sha256"
            scram = client.scram(alice, alice_pw, hash_name, header, data)
            name, failure = client.sasl1(mechanism, scram)
            assert name == "failure" and condition(failure) == expected, (mechanism, header, failure)
        finally:
            client.close()
    # The two 'y' cases are counted as downgrades.
    assert channel_binding_failures(server, "downgrade") == 2
    assert channel_binding_failures(server, "mismatch") == 0
    # 'n' (the client cannot bind) is still accepted.
    client = CbClient.starttls_client(server)
    try:
        name, success = client.sasl1("SCRAM-SHA-256", client.scram(alice, alice_pw))
        assert name == "success", success
    finally:
        client.close()


@needs_node
def test_sasl2_plus_login_with_xep0474_hash_of_the_sasl2_list(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    client = CbClient.direct_tls_client(sasl2_server)
    try:
        mechanisms, types = advertised(client.features, "sasl2")
        assert mechanisms[:2] == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"], client.features
        assert types == ["tls-exporter", "tls-server-end-point"]
        scram = client.scram(alice, alice_pw, "sha256", "p=tls-exporter,,", client.exporter, profile="sasl2")
        name, success = client.sasl2("SCRAM-SHA-256-PLUS", scram, bind2())
        assert name == "success", success
        assert identifier(success).startswith(alice + "/")
    finally:
        client.close()


def test_sasl2_y_flag_with_plus_offered_fails(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    client = CbClient.starttls_client(sasl2_server)
    try:
        scram = client.scram(alice, alice_pw, gs2_header="y,,", profile="sasl2")
        name, failure = client.sasl2("SCRAM-SHA-256", scram)
        assert name == "failure" and condition(failure) == "not-authorized", failure
        assert f"<failure xmlns='{SASL2}'>" in failure
    finally:
        client.close()


class WssClient(CbClient):
    """XMPP over a wss:// WebSocket (RFC 7395) on listen.https, whose TLS the server terminates."""

    @classmethod
    def connect(cls, server):
        context = insecure_context()
        context.set_alpn_protocols(["http/1.1"])
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", server.https), timeout=10), server_hostname="localhost")
        head = ws_upgrade(sock, f"localhost:{server.https}")
        assert head.startswith("http/1.1 101"), head
        client = cls.__new__(cls)
        client.server = server
        client.timeout = 10.0
        client.sock = sock
        client.buffer = b""
        client.pipe = None
        client.tls_version = sock.version()
        client.certificate = sock.getpeercert(binary_form=True)
        client.send(f"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{server.domain}' version='1.0'/>")
        client.features = client.recv_until("</stream:features>")
        return client

    def send(self, data):
        if isinstance(data, bytes):
            data = data.decode()
        self.sock.sendall(_ws_frame(data))

    def recv_until(self, marker, timeout=None):
        if isinstance(marker, str):
            marker = marker.encode()
        while marker not in self.buffer:
            self.buffer += _ws_read_text(self.sock).encode()
        index = self.buffer.index(marker) + len(marker)
        out, self.buffer = self.buffer[:index], self.buffer[index:]
        return out.decode(errors="replace")


def test_wss_offers_plus_bound_to_its_tls_session_and_ws_does_not(server):
    alice, alice_pw = server.add_user("alice")
    client = WssClient.connect(server)
    try:
        mechanisms, types = advertised(client.features, "sasl1")
        # The WebSocket policy stays: no PLAIN; channel binding to our TLS session.
        assert mechanisms == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1"], client.features
        expected_types = ["tls-exporter", "tls-server-end-point"] if client.tls_version == "TLSv1.3" else ["tls-server-end-point"]
        assert types == expected_types, client.features
        scram = client.scram(alice, alice_pw, "sha256", "p=tls-server-end-point,,", client.cb_data("tls-server-end-point"))
        name, success = client.sasl1("SCRAM-SHA-256-PLUS", scram)
        assert name == "success", success
    finally:
        client.close()


# ------------------------------------------------------------------ FAST with channel binding


def fast_login(client, jid, mechanism, token, cb_data):
    return authenticate_fast(client, jid, token, mechanism=mechanism, cb_data=cb_data)


def fast_mechanisms(features):
    block = re.search(rf"<fast xmlns='{FAST}'>(.*?)</fast>", features)
    assert block, features
    return re.findall(r"<mechanism>([^<]+)</mechanism>", block.group(1))


@needs_node
def test_fast_expr_token_is_bound_to_the_tls_session(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    first = CbClient.direct_tls_client(sasl2_server)
    try:
        # HT-SHA-256-UNIQ is never offered (tls-unique: undefined in TLS 1.3).
        assert fast_mechanisms(first.features) == ["HT-SHA-256-EXPR", "HT-SHA-256-ENDP", "HT-SHA-256-NONE"]
        scram = first.scram(alice, alice_pw, "sha256", "p=tls-exporter,,", first.exporter, profile="sasl2")
        name, success = first.sasl2(
            "SCRAM-SHA-256-PLUS", scram, f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-EXPR'/>"
        )
        assert name == "success", success
        token, _ = issued_token(success)
    finally:
        first.close()

    # Another connection: the token with that session's exporter works, and is rotated.
    second = CbClient.direct_tls_client(sasl2_server)
    relayed = CbClient.direct_tls_client(sasl2_server)
    try:
        # A proof computed over another session's data (a relay) fails.
        name, failure = fast_login(relayed, alice, "HT-SHA-256-EXPR", token, second.exporter)
        assert name == "failure" and condition(failure) == "not-authorized", failure
        # The unbound proof of the same token fails too: the token is EXPR's.
        name, failure = fast_login(relayed, alice, "HT-SHA-256-NONE", token, b"")
        assert name == "failure" and condition(failure) == "not-authorized", failure
        name, success = fast_login(second, alice, "HT-SHA-256-EXPR", token, second.exporter)
        assert name == "success", success
        rotated, _ = issued_token(success)
        assert rotated != token
    finally:
        second.close()
        relayed.close()


def test_fast_endp_over_starttls_and_expr_absent_on_tls12(sasl2_server):
    alice, alice_pw = sasl2_server.add_user("alice")
    client = CbClient.starttls_client(sasl2_server, max_version=ssl.TLSVersion.TLSv1_2)
    try:
        assert fast_mechanisms(client.features) == ["HT-SHA-256-ENDP", "HT-SHA-256-NONE"]
        end_point = client.cb_data("tls-server-end-point")
        scram = client.scram(alice, alice_pw, "sha256", "p=tls-server-end-point,,", end_point, profile="sasl2")
        # EXPR is not offered on TLS 1.2: no token for it.
        name, success = client.sasl2(
            "SCRAM-SHA-256-PLUS", scram, f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-EXPR'/>"
        )
        assert name == "success", success
        assert "<token" not in success
    finally:
        client.close()
    client = CbClient.starttls_client(sasl2_server)
    try:
        scram = client.scram(alice, alice_pw, "sha256", "p=tls-server-end-point,,", client.cb_data("tls-server-end-point"), profile="sasl2")
        name, success = client.sasl2(
            "SCRAM-SHA-256-PLUS", scram, f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-ENDP'/>"
        )
        assert name == "success", success
        token, _ = issued_token(success)
    finally:
        client.close()
    client = CbClient.starttls_client(sasl2_server)
    try:
        # EXPR on a stream that has no exporter data at hand for it would be
        # the wrong token anyway; the ENDP token with the certificate's hash works.
        name, failure = fast_login(client, alice, "HT-SHA-256-ENDP", token, b"\0" * 32)
        assert name == "failure" and condition(failure) == "not-authorized", failure
        name, success = fast_login(client, alice, "HT-SHA-256-ENDP", token, client.cb_data("tls-server-end-point"))
        assert name == "success", success
    finally:
        client.close()


def test_fast_channel_bound_mechanism_on_a_plain_stream_is_refused(server_factory):
    sasl2_server = server_factory(SASL2_TOML + PLAINTEXT_TOML)
    alice, _ = sasl2_server.add_user("alice")
    client = CbClient(sasl2_server)
    try:
        client.features = client.open_stream()
        assert fast_mechanisms(client.features) == ["HT-SHA-256-NONE"]
        name, failure = fast_login(client, alice, "HT-SHA-256-EXPR", "no-token", b"")
        assert name == "failure" and condition(failure) == "encryption-required", failure
    finally:
        client.close()


# ------------------------------------------------------------------ the cluster


@pytest.fixture
def sasl2_everywhere(monkeypatch):
    monkeypatch.setenv("STARLING_SASL2_ENABLED", "true")


def test_plus_login_on_both_connection_managers_and_a_bound_token_across_them(sasl2_everywhere, cluster):
    """The TLS sessions end at each connection-manager; a channel-bound FAST
    token issued by cm-1 works on cm-2 with cm-2's session data."""
    alice, alice_pw = cluster.add_user("alice")
    token = None
    for node in ("cm-1", "cm-2"):
        client = CbClient.starttls_client(cluster.node(node))
        try:
            assert advertised(client.features, "sasl1")[1] == ["tls-exporter", "tls-server-end-point"]
            end_point = client.cb_data("tls-server-end-point")
            if token is None:
                scram = client.scram(alice, alice_pw, "sha256", "p=tls-server-end-point,,", end_point, profile="sasl2")
                request = f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-ENDP'/>"
                name, success = client.sasl2("SCRAM-SHA-256-PLUS", scram, request + bind2())
                assert name == "success", (node, success, cluster.logs())
                token, _ = issued_token(success)
            else:
                name, success = fast_login(client, alice, "HT-SHA-256-ENDP", token, end_point)
                assert name == "success", (node, success, cluster.logs())
        finally:
            client.close()
