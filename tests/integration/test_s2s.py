"""Federation (RFC 6120 server-to-server streams) with a real Prosody from
Debian: a slixmpp user on Starling and one on Prosody exchange messages and a
presence subscription in both directions.

Each test runs its own Prosody (a subprocess with a generated configuration,
on loopback only) and its own `starling serve`, each domain on an address of
its own in 127.0.0.0/8, with certificates from a test CA made here.
Starling reaches Prosody through `s2s.hosts` (a fixed address per domain);
Prosody reaches Starling on the default port 5269 of the address that its
resolver (libunbound, through Debian's lua-unbound) reads from a hosts file
of the test's own (`unbound.hoststxt`), with an unreachable name server so
that nothing leaves the machine: no system file is touched."""

import asyncio
import datetime
import os
import pathlib
import random
import shutil
import socket
import ssl
import subprocess
import urllib.request

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import Client, Server, free_ports, handled, login, logout, wait_until, wait_until_async

STARLING_DOMAIN = "starling.test"
PROSODY_DOMAIN = "prosody.test"
SECRET = "dialback-secret-of-the-test-cluster"


def write_test_pki(directory: pathlib.Path, domains):
    """A test CA (`ca.pem`) and, for each domain, a certificate naming it in
    its subjectAltName, for server and client use (XEP-0178), with its key."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Starling federation test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for domain in domains:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        (directory / f"{domain}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (directory / f"{domain}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def loopback_addresses(count):
    """`count` distinct addresses in 127.0.0.0/8 that no other test uses
    (port 5269 of each is free)."""
    chosen = []
    for _attempt in range(500):
        if len(chosen) == count:
            break
        address = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        if address in chosen:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((address, 5269))
            except OSError:
                continue
        chosen.append(address)
    # A server bound to 0.0.0.0:5269 (Debian's own Prosody service, started)
    # leaves no such address.
    assert len(chosen) == count, "no loopback address with port 5269 free"
    return chosen


class Prosody:
    """A Prosody process serving `prosody.test` on loopback."""

    def __init__(self, directory: pathlib.Path, address, starling_address, trust_test_ca=True):
        self.dir = directory
        self.address = address
        # s2s_tls: Prosody 0.12's direct TLS listener (XEP-0368).
        self.c2s, self.s2s, self.s2s_tls = free_ports(3)
        self.config = directory / "prosody.cfg.lua"
        self.log_path = directory / "prosody.log"
        (directory / "data").mkdir()
        (directory / "certs").mkdir()
        (directory / "hosts").write_text(f"127.0.0.1 localhost\n{starling_address} {STARLING_DOMAIN}\n")
        # A name server that is not there: a query for what the hosts file
        # does not hold (the SRV records) fails at once, on loopback.
        (directory / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        cafile = f'cafile = "{directory / "ca.pem"}";' if trust_test_ca else ""
        self.config.write_text(
            f"""
run_as_root = true
pidfile = "{directory / 'prosody.pid'}"
data_path = "{directory / 'data'}"
certificates = "{directory / 'certs'}"
log = {{ debug = "{self.log_path}" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2s} }}
s2s_interfaces = {{ "{address}" }}
s2s_ports = {{ {self.s2s} }}
s2s_direct_tls_interfaces = {{ "{address}" }}
s2s_direct_tls_ports = {{ {self.s2s_tls} }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = false
s2s_require_encryption = true
s2s_secure_auth = false
authentication = "internal_plain"
unbound = {{ hoststxt = "{directory / 'hosts'}"; resolvconf = "{directory / 'resolv.conf'}" }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "presence"; "posix" }}
ssl = {{ certificate = "{directory / (PROSODY_DOMAIN + '.crt')}"; key = "{directory / (PROSODY_DOMAIN + '.key')}"; {cafile} }}
VirtualHost "{PROSODY_DOMAIN}"
"""
        )
        self.process = None

    def ctl(self, *args):
        return subprocess.run(
            ["prosodyctl", "--config", str(self.config), *args], capture_output=True, text=True, timeout=60
        )

    def add_user(self, localpart, password):
        result = self.ctl("register", localpart, PROSODY_DOMAIN, password)
        assert result.returncode == 0, result.stdout + result.stderr
        return f"{localpart}@{PROSODY_DOMAIN}", password

    def start(self):
        self.log = open(self.dir / "prosody.out", "ab")
        self.process = subprocess.Popen(
            ["prosody", "--config", str(self.config), "-F"], stdout=self.log, stderr=subprocess.STDOUT
        )

        def listening():
            if self.process.poll() is not None:
                raise RuntimeError(f"prosody exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                with socket.create_connection((self.address, self.s2s), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(listening, what="prosody's s2s listener")
        return self

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()


class FederatedStarling(Server):
    """`starling serve` for `starling.test` with federation on."""

    def __init__(self, directory, address, s2s_toml, trust_test_ca=True):
        self.address = address
        self.s2s_toml = s2s_toml
        self.trust_test_ca = trust_test_ca
        super().__init__(directory, domain=STARLING_DOMAIN)

    def write_config(self):
        super().write_config()
        text = self.config.read_text()
        text = text.replace("[listen]\n", f'[listen]\ns2s = "{self.address}:5269"\n', 1)
        ca_file = f'ca_file = "{self.dir / "ca.pem"}"' if self.trust_test_ca else ""
        text += f"""
[tls]
cert = "{self.dir / (STARLING_DOMAIN + '.crt')}"
key = "{self.dir / (STARLING_DOMAIN + '.key')}"
{ca_file}
[s2s]
enabled = true
dialback_secret = "{SECRET}"
connect_timeout_secs = 5
{self.s2s_toml}
"""
        self.config.write_text(text)


def metric(server, name, **labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(f"{name}{{") or line.startswith(f"{name} ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def federation(tmp_path):
    """Start Prosody and Starling for one test; `make(...)` takes the
    Starling `[s2s]` lines, whether Prosody trusts the test CA and whether
    Starling does."""
    started = []

    def make(
        s2s_toml="", trust_test_ca=True, prosody_running=True, starling_trusts_test_ca=True, direct_tls=False
    ):
        starling_address, prosody_address = loopback_addresses(2)
        prosody_dir = tmp_path / "prosody"
        starling_dir = tmp_path / "starling"
        prosody_dir.mkdir()
        starling_dir.mkdir()
        sign_with_shared_ca(prosody_dir, starling_dir)
        prosody = Prosody(prosody_dir, prosody_address, starling_address, trust_test_ca=trust_test_ca)
        if direct_tls:
            hosts = f'hosts = ["{PROSODY_DOMAIN}=tls://{prosody_address}:{prosody.s2s_tls}"]'
        else:
            hosts = f'hosts = ["{PROSODY_DOMAIN}={prosody_address}:{prosody.s2s}"]'
        starling = FederatedStarling(
            starling_dir, starling_address, hosts + "\n" + s2s_toml, trust_test_ca=starling_trusts_test_ca
        )
        if prosody_running:
            started.append(prosody.start())
        started.append(starling.start())
        return starling, prosody

    yield make
    for process in reversed(started):
        process.stop()
    if os.environ.get("STARLING_TEST_SHOW_LOGS"):
        for process in started:
            print(process.log_text())


def sign_with_shared_ca(prosody_dir: pathlib.Path, starling_dir: pathlib.Path):
    """Both servers' certificates from one CA: made once in `prosody_dir`,
    Starling's files copied next to its configuration."""
    write_test_pki(prosody_dir, [PROSODY_DOMAIN, STARLING_DOMAIN])
    for name in ["ca.pem", f"{STARLING_DOMAIN}.crt", f"{STARLING_DOMAIN}.key"]:
        shutil.copy(prosody_dir / name, starling_dir / name)


async def prosody_login(prosody, jid, password, timeout=15.0) -> Client:
    client = Client(jid, password)
    client.connect(host="127.0.0.1", port=prosody.c2s)
    done, _ = await asyncio.wait(
        [client.started, client.failed], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if client.failed in done or not done:
        client.disconnect()
        raise AssertionError(f"login of {jid} on prosody failed")
    await client.get_roster()
    client.send_presence()
    return client


async def exchange_messages_and_subscription(starling, prosody):
    romeo_jid, romeo_password = starling.add_user("romeo")
    juliet_jid, juliet_password = prosody.add_user("juliet", "juliet-pass")
    romeo = await login(starling, romeo_jid, romeo_password)
    juliet = await prosody_login(prosody, juliet_jid, juliet_password)
    try:
        # Starling -> Prosody.
        romeo.send_message(mto=juliet_jid, mbody="hello from starling", mtype="chat")
        received = await juliet.next_message(timeout=20)
        assert received["body"] == "hello from starling"
        assert received["from"].bare == romeo_jid
        # Prosody -> Starling.
        juliet.send_message(mto=romeo_jid, mbody="hello from prosody", mtype="chat")
        received = await romeo.next_message(timeout=20)
        assert received["body"] == "hello from prosody"
        assert received["from"].bare == juliet_jid
        # A presence subscription: romeo asks, juliet approves (RFC 6121 section 3).
        romeo.send_presence(pto=juliet_jid, ptype="subscribe")
        asked = await juliet.next_presence(lambda p: p["type"] == "subscribe", timeout=20)
        assert asked["from"].bare == romeo_jid
        juliet.send_presence(pto=romeo_jid, ptype="subscribed")
        await romeo.next_presence(lambda p: p["type"] == "subscribed" and p["from"].bare == juliet_jid, timeout=20)

        def subscribed():
            # The roster as the server's pushes left it (RFC 6121 section 3.1.6).
            return romeo.client_roster.has_jid(juliet_jid) and romeo.client_roster[juliet_jid]["subscription"] in (
                "to",
                "both",
            )

        await wait_until_async(subscribed, what="romeo's roster to show the subscription to juliet")
        # And juliet's available presence reaches romeo (a probe answered or her broadcast).
        juliet.send_presence()
        await romeo.next_presence(lambda p: p["from"].bare == juliet_jid and p["type"] == "available", timeout=20)
    finally:
        await logout(romeo, juliet)


@pytest.mark.asyncio
async def test_messages_and_subscription_both_ways_with_sasl_external(federation):
    """Both trust the test CA: our outbound stream authenticates with SASL
    EXTERNAL (XEP-0178), and so does Prosody's stream to us (Prosody
    presents its certificate, valid for prosody.test: we offer EXTERNAL)."""
    starling, prosody = federation()
    await exchange_messages_and_subscription(starling, prosody)
    assert metric(starling, "starling_s2s_streams_total", direction="out", outcome="external") >= 1
    assert metric(starling, "starling_s2s_streams_total", direction="in", outcome="external") >= 1
    assert metric(starling, "starling_s2s_streams_total", direction="in", outcome="dialback") == 0
    assert metric(starling, "starling_s2s_stanzas_total", outcome="sent") >= 2
    assert metric(starling, "starling_s2s_stanzas_total", outcome="received") >= 2


@pytest.mark.asyncio
async def test_messages_and_subscription_both_ways_with_dialback(federation):
    """Neither trusts the other's CA: our outbound stream falls back to
    dialback, which Prosody verifies by asking us (db:verify); Prosody's
    stream to us is offered no EXTERNAL and authenticates by dialback, which
    we verify by asking Prosody over a stream of our own."""
    starling, prosody = federation(trust_test_ca=False, starling_trusts_test_ca=False)
    await exchange_messages_and_subscription(starling, prosody)
    assert metric(starling, "starling_s2s_streams_total", direction="out", outcome="dialback") >= 1
    assert metric(starling, "starling_s2s_streams_total", direction="out", outcome="external") == 0
    assert metric(starling, "starling_s2s_streams_total", direction="in", outcome="dialback") >= 1
    assert metric(starling, "starling_s2s_streams_total", direction="in", outcome="external") == 0


@pytest.mark.asyncio
async def test_direct_tls_to_prosody(federation):
    """Our stream to Prosody uses direct TLS (XEP-0368: an `s2s.hosts`
    entry `tls://`, Prosody 0.12's `s2s_direct_tls_ports`) and SASL
    EXTERNAL; Prosody's to us (it finds no `_xmpps-server._tcp` record: its
    resolver reads a hosts file only) STARTTLS and EXTERNAL. The only
    address Starling has for prosody.test is the direct TLS port, where a
    stream header in clear text would not be understood."""
    starling, prosody = federation(direct_tls=True)
    await exchange_messages_and_subscription(starling, prosody)
    assert metric(starling, "starling_s2s_streams_total", direction="out", outcome="external") >= 1
    assert metric(starling, "starling_s2s_streams_total", direction="in", outcome="external") >= 1


def send_with_id(client, to, body, message_id):
    message = client.make_message(mto=to, mbody=body, mtype="chat")
    message["id"] = message_id
    message.send()


@pytest.mark.asyncio
async def test_a_peer_that_is_down_bounces_messages_and_presence(federation):
    """Nothing listens at the peer's address: each stanza comes back with
    remote-server-not-found (RFC 6120 section 10.4.3), presence included."""
    starling, _prosody = federation(prosody_running=False)
    romeo_jid, romeo_password = starling.add_user("romeo")
    romeo = await login(starling, romeo_jid, romeo_password)
    try:
        send_with_id(romeo, f"juliet@{PROSODY_DOMAIN}", "anyone?", "down-1")
        bounced = await romeo.next_message(timeout=20, body=False)
        assert bounced["type"] == "error"
        assert bounced["id"] == "down-1"
        assert bounced["error"]["condition"] == "remote-server-not-found"
        romeo.send_presence(pto=f"juliet@{PROSODY_DOMAIN}", ptype="subscribe")
        error = await romeo.next_presence(lambda p: p["type"] == "error", timeout=20)
        assert error["error"]["condition"] == "remote-server-not-found"
        assert metric(starling, "starling_s2s_stanzas_total", outcome="remote_server_not_found") >= 2
        assert metric(starling, "starling_s2s_streams_total", direction="out", outcome="failed") >= 1
    finally:
        await logout(romeo)


@pytest.mark.asyncio
async def test_a_denied_domain_is_refused_both_ways(federation):
    starling, prosody = federation(s2s_toml=f'deny = ["{PROSODY_DOMAIN}"]')
    romeo_jid, romeo_password = starling.add_user("romeo")
    juliet_jid, juliet_password = prosody.add_user("juliet", "juliet-pass")
    romeo = await login(starling, romeo_jid, romeo_password)
    juliet = await prosody_login(prosody, juliet_jid, juliet_password)
    try:
        send_with_id(romeo, juliet_jid, "denied", "deny-1")
        bounced = await romeo.next_message(timeout=10, body=False)
        assert bounced["type"] == "error" and bounced["id"] == "deny-1"
        assert bounced["error"]["condition"] == "remote-server-not-found"
        assert metric(starling, "starling_s2s_policy_refused_total") >= 1
        # Prosody's stream to us is refused: juliet gets an error back (Prosody's
        # bounce carries no body, so it is caught as a raw stanza), romeo nothing.
        errors = asyncio.Queue()
        juliet.register_handler(
            Callback("errors", MatchXPath("{jabber:client}message"), lambda msg: msg["type"] == "error" and errors.put_nowait(msg))
        )
        send_with_id(juliet, romeo_jid, "let me in", "deny-2")
        error = await asyncio.wait_for(errors.get(), 30)
        assert error["id"] == "deny-2"
        await handled(romeo)
        assert romeo.messages.empty()
        assert metric(starling, "starling_s2s_streams_total", direction="in", outcome="denied") >= 1
    finally:
        await logout(romeo, juliet)


class RawPeer:
    """A remote server speaking bytes to Starling's s2s listener, for the refusals."""

    def __init__(self, starling, timeout=10.0):
        self.sock = socket.create_connection((starling.address, 5269), timeout=timeout)
        self.buffer = b""

    def send(self, text):
        self.sock.sendall(text.encode())

    def open(self, to=STARLING_DOMAIN, sender="peer.test"):
        self.send(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
            f"xmlns:db='jabber:server:dialback' from='{sender}' to='{to}' version='1.0'>"
        )

    def read_until(self, marker):
        while marker.encode() not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed before {marker!r}: {self.buffer!r}")
            self.buffer += chunk
        text = self.buffer.decode(errors="replace")
        self.buffer = b""
        return text

    def start_tls(self):
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.read_until("<proceed")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock, server_hostname=STARLING_DOMAIN)

    def close(self):
        self.sock.close()


def dialback_key(secret, receiving, originating, stream_id):
    """XEP-0185 section 3, computed independently of the server."""
    import hashlib
    import hmac

    key = hashlib.sha256(secret.encode()).hexdigest().encode()
    return hmac.new(key, f"{receiving} {originating} {stream_id}".encode(), hashlib.sha256).hexdigest()


@pytest.mark.asyncio
async def test_inbound_refusals_and_db_verify(federation):
    """Bad input on the s2s listener, each refused as RFC 6120 and XEP-0220
    say: a stanza before STARTTLS, an unknown `to`, a forged dialback key, a
    stanza from a domain that did not authenticate; a key we did send is
    confirmed (any node can: the secret is shared)."""
    starling, _prosody = federation(prosody_running=False)
    romeo_jid, romeo_password = starling.add_user("romeo")
    romeo = await login(starling, romeo_jid, romeo_password)
    try:
        # STARTTLS is required: a stanza before it ends the stream.
        peer = RawPeer(starling)
        peer.open()
        features = peer.read_until("</stream:features>")
        assert "<required/>" in features and "urn:xmpp:features:dialback" not in features
        peer.send(f"<message from='mallory@peer.test' to='{romeo_jid}'><body>plain</body></message>")
        assert "<not-authorized" in peer.read_until("</stream:stream>")
        peer.close()
        # A domain that is not ours.
        peer = RawPeer(starling)
        peer.open(to="elsewhere.test")
        assert "<host-unknown" in peer.read_until("</stream:stream>")
        peer.close()
        # After TLS: db:verify answered from the shared secret.
        peer = RawPeer(starling)
        peer.open()
        peer.read_until("</stream:features>")
        peer.start_tls()
        peer.open()
        features = peer.read_until("</stream:features>")
        assert "urn:xmpp:features:dialback" in features
        forged = "0" * 64
        peer.send(f"<db:verify from='{PROSODY_DOMAIN}' to='{STARLING_DOMAIN}' id='abc'>{forged}</db:verify>")
        answer = peer.read_until("/>")
        assert "type='invalid'" in answer or 'type="invalid"' in answer, answer
        genuine = dialback_key(SECRET, PROSODY_DOMAIN, STARLING_DOMAIN, "abc")
        peer.send(f"<db:verify from='{PROSODY_DOMAIN}' to='{STARLING_DOMAIN}' id='abc'>{genuine}</db:verify>")
        answer = peer.read_until("/>")
        assert "type='valid'" in answer or 'type="valid"' in answer, answer
        # Nothing authenticated on this stream: a stanza ends it.
        peer.send(f"<message from='mallory@peer.test' to='{romeo_jid}'><body>forged</body></message>")
        assert "<not-authorized" in peer.read_until("</stream:stream>")
        peer.close()
        await handled(romeo)
        assert romeo.messages.empty()
    finally:
        await logout(romeo)


class PeerStarling(Server):
    """A second `starling serve`, for the domain `peer.test`, as the remote
    server of the cluster test (no Prosody there: the cluster's domain is
    `localhost`, which a peer reaches through its `s2s.hosts`)."""

    def __init__(self, directory, address, cluster_s2s):
        self.address = address
        self.cluster_s2s = cluster_s2s
        super().__init__(directory, domain="peer.test")

    def write_config(self):
        super().write_config()
        text = self.config.read_text()
        text = text.replace("[listen]\n", f'[listen]\ns2s = "{self.address}:5269"\n', 1)
        text += f"""
[s2s]
enabled = true
dialback_secret = "peer-secret-of-another-server"
connect_timeout_secs = 5
hosts = ["localhost={self.cluster_s2s}"]
"""
        self.config.write_text(text)


@pytest.mark.asyncio
async def test_cluster_one_owner_per_domain_and_takeover_after_kill(tmp_path):
    """Two connection-managers with Redis and PostgreSQL federate with a peer
    server: the first sender's node (cm-1) claims peer.test and owns its
    outbound stream; a user on cm-2 reaches the peer through cm-1 over the
    bus; the peer's stream comes in on cm-2 and reaches users on both nodes.
    After `kill -9` of cm-1, cm-2 takes the domain over at the next stanza."""
    from test_cluster import Cluster

    import subprocess as sp

    (peer_address,) = loopback_addresses(1)
    extra = tmp_path / "s2s.toml"
    cluster = Cluster(tmp_path)
    extra.write_text(
        f"""
[s2s]
enabled = true
dialback_secret = "{SECRET}"
connect_timeout_secs = 5
hosts = ["peer.test={peer_address}:5269"]
"""
    )
    cluster.env["STARLING_EXTRA_TOML"] = str(extra)
    peer_dir = tmp_path / "peer"
    peer_dir.mkdir()
    peer = None
    try:
        cluster.up()
        cm2_s2s = f"127.0.0.1:{cluster.node('cm-2').c2s + 4}"
        peer = PeerStarling(peer_dir, peer_address, cm2_s2s).start()
        alice_jid, alice_password = cluster.add_user("alice")
        carol_jid, carol_password = cluster.add_user("carol")
        bob_jid, bob_password = peer.add_user("bob")
        alice = await login(cluster.node("cm-1"), alice_jid, alice_password)
        carol = await login(cluster.node("cm-2"), carol_jid, carol_password)
        bob = await login(peer, bob_jid, bob_password)
        try:
            alice.send_message(mto=bob_jid, mbody="from cm-1", mtype="chat")
            assert (await bob.next_message(timeout=20))["body"] == "from cm-1"
            redis = ["redis-cli", "-p", str(cluster.redis_port)]

            def owners():
                keys = sp.run([*redis, "--scan", "--pattern", "*sess:*peer.test*"], capture_output=True, text=True).stdout.split()
                fields = []
                for key in keys:
                    fields += sp.run([*redis, "hkeys", key], capture_output=True, text=True).stdout.split()
                return fields

            assert owners() == ["s2s:cm-1"], owners()
            carol.send_message(mto=bob_jid, mbody="from cm-2 through cm-1", mtype="chat")
            assert (await bob.next_message(timeout=20))["body"] == "from cm-2 through cm-1"
            assert owners() == ["s2s:cm-1"], owners()
            # The peer's own stream comes in on cm-2 (its s2s.hosts).
            bob.send_message(mto=alice_jid, mbody="to cm-1", mtype="chat")
            bob.send_message(mto=carol_jid, mbody="to cm-2", mtype="chat")
            assert (await alice.next_message(timeout=20))["body"] == "to cm-1"
            assert (await carol.next_message(timeout=20))["body"] == "to cm-2"
            # The admin API (on a session-router) lists both streams of
            # peer.test, each on its node, as the nodes publish them.
            from test_admin import ok

            admin_info = cluster.info["admin"]
            token = open(admin_info["token_file"]).read().strip()
            router_endpoint = admin_info["endpoints"][0]

            def peer_streams():
                rows = ok(router_endpoint, "s2s", "--domain", "peer.test", token=token)
                return {(row["direction"], row["node"]): row for row in rows}

            def listed():
                # A node rewrites its rows every 2 s: wait for the counts too.
                rows = peer_streams()
                return (
                    set(rows) == {("out", "cm-1"), ("in", "cm-2")}
                    and rows[("out", "cm-1")]["stanzas_out"] >= 2
                    and rows[("in", "cm-2")]["stanzas_in"] >= 2
                    and rows
                )

            await wait_until_async(
                listed, interval=0.5,
                what="the admin api to list peer.test's streams on cm-1 (out) and cm-2 (in)",
            )
            rows = listed()
            assert all(row["tls"] and row["authentication"] == "dialback" for row in rows.values()), rows
            # cm-1 dies; the next stanza to peer.test is taken over by cm-2.
            cluster.kill("cm-1")
            alice.abort()

            def cm1_channel_gone():
                # Until Redis sees the dead node's subscription go, a publish
                # to it still counts as received (pub/sub is at most once).
                channels = sp.run([*redis, "pubsub", "channels", "*cm-1*"], capture_output=True, text=True).stdout
                return channels.strip() == ""

            await wait_until_async(cm1_channel_gone, what="redis to drop cm-1's delivery channel")
            carol.send_message(mto=bob_jid, mbody="after the takeover", mtype="chat")
            assert (await bob.next_message(timeout=30))["body"] == "after the takeover"
            assert owners() == ["s2s:cm-2"], owners()
        finally:
            await logout(carol, bob)
    finally:
        if peer:
            peer.stop()
        if os.environ.get("STARLING_TEST_SHOW_LOGS"):
            print(cluster.logs())
        cluster.down()
