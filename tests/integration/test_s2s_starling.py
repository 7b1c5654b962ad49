"""Federation between two `starling serve` processes (domains `a.test` and
`b.test`, each on an address of its own in 127.0.0.0/8): direct TLS
(XEP-0368) both ways with SASL EXTERNAL (XEP-0178) when each trusts the
other's certificate, the fall back to dialback (XEP-0220) when a peer's
certificate is self-signed, the per-domain rate limit, the idle timeout of
inbound streams, and the admin API's view of the streams by domain.

Each server reaches the other through `s2s.hosts`; nothing leaves loopback."""

import base64
import socket
import ssl

import pytest

from conftest import Server, free_ports, handled, login, logout, wait_until_async
from test_admin import ADMIN_SECTION, TOKEN, ok
from test_s2s import RawPeer, loopback_addresses, metric, write_test_pki

A_DOMAIN = "a.test"
B_DOMAIN = "b.test"


class Peer(Server):
    """`starling serve` for one domain with federation on, its STARTTLS s2s
    listener and its direct TLS one on free ports of its own address."""

    def __init__(self, directory, domain, address, pki=None, admin_port=None, s2s_toml=""):
        self.address = address
        self.s2s_port, self.s2s_tls_port = free_ports(2)
        self.pki = pki
        self.admin_port = admin_port
        self.s2s_toml = s2s_toml
        super().__init__(directory, domain=domain)

    def hosts_entry(self, direct_tls):
        if direct_tls:
            return f"{self.domain}=tls://{self.address}:{self.s2s_tls_port}"
        return f"{self.domain}={self.address}:{self.s2s_port}"

    def write_config(self):
        super().write_config()
        text = self.config.read_text()
        text = text.replace(
            "[listen]\n",
            f'[listen]\ns2s = "{self.address}:{self.s2s_port}"\ns2s_tls = "{self.address}:{self.s2s_tls_port}"\n',
            1,
        )
        if self.pki:
            # A certificate of the test CA, which the other server trusts;
            # without one, the self-signed certificate of data_dir/tls.
            text += f"""
[tls]
cert = "{self.pki / (self.domain + '.crt')}"
key = "{self.pki / (self.domain + '.key')}"
ca_file = "{self.pki / 'ca.pem'}"
"""
        if self.admin_port:
            text += ADMIN_SECTION.format(port=self.admin_port, token=TOKEN)
        text += f"""
[s2s]
enabled = true
dialback_secret = "dialback-secret-of-{self.domain}"
connect_timeout_secs = 5
{self.s2s_toml}
"""
        self.config.write_text(text)


@pytest.fixture
def pair(tmp_path):
    """`make(...)`: two federated servers; each `s2s.hosts` names the
    other's direct TLS (`tls://`) or STARTTLS listener."""
    started = []

    def make(direct_tls=True, b_trusted=True, a_toml="", b_toml="", a_extra_toml=""):
        a_address, b_address = loopback_addresses(2)
        pki = tmp_path / "pki"
        pki.mkdir()
        write_test_pki(pki, [A_DOMAIN, B_DOMAIN])
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a = Peer(tmp_path / "a", A_DOMAIN, a_address, pki=pki, admin_port=free_ports(1)[0], s2s_toml=a_toml)
        a.extra_toml = a_extra_toml
        # b without the test CA's certificate: its own self-signed one, and
        # a's CA still trusted (so that b validates a).
        b = Peer(tmp_path / "b", B_DOMAIN, b_address, pki=pki if b_trusted else None, s2s_toml=b_toml)
        a.s2s_toml += f'\nhosts = ["{b.hosts_entry(direct_tls)}"]\n'
        b.s2s_toml += f'\nhosts = ["{a.hosts_entry(direct_tls)}"]\n'
        started.append(a.start())
        started.append(b.start())
        return a, b

    yield make
    for server in reversed(started):
        server.stop()


async def exchange(a, b):
    alice_jid, alice_password = a.add_user("alice")
    bob_jid, bob_password = b.add_user("bob")
    alice = await login(a, alice_jid, alice_password)
    bob = await login(b, bob_jid, bob_password)
    alice.send_message(mto=bob_jid, mbody="a to b", mtype="chat")
    received = await bob.next_message(timeout=20)
    assert received["body"] == "a to b" and received["from"].bare == alice_jid
    bob.send_message(mto=alice_jid, mbody="b to a", mtype="chat")
    received = await alice.next_message(timeout=20)
    assert received["body"] == "b to a" and received["from"].bare == bob_jid
    return alice, bob


def admin_streams(server, *args):
    return ok(f"http://127.0.0.1:{server.admin_port}", "s2s", *args)


@pytest.mark.asyncio
async def test_direct_tls_both_ways_with_sasl_external(pair):
    """Each server trusts the other's CA: each outbound stream is direct
    TLS (ALPN xmpp-server) and SASL EXTERNAL authenticates it at the other
    end; the admin API and the per-domain metrics show the streams."""
    a, b = pair(direct_tls=True)
    alice, bob = await exchange(a, b)
    try:
        for server, peer in [(a, B_DOMAIN), (b, A_DOMAIN)]:
            assert metric(server, "starling_s2s_streams_total", direction="out", outcome="external") >= 1
            assert metric(server, "starling_s2s_streams_total", direction="in", outcome="external") >= 1
            assert metric(server, "starling_s2s_streams_total", direction="in", outcome="dialback") == 0
            assert metric(server, "starling_s2s_domain_streams", domain=peer, direction="in") == 1
            assert metric(server, "starling_s2s_domain_stanzas_total", domain=peer, direction="in") >= 1
            assert metric(server, "starling_s2s_domain_stanzas_total", domain=peer, direction="out") >= 1
        rows = admin_streams(a)
        by_direction = {row["direction"]: row for row in rows if row["domain"] == B_DOMAIN}
        assert set(by_direction) == {"in", "out"}, rows
        for row in by_direction.values():
            assert row["tls"] is True and row["authentication"] == "external", row
        assert by_direction["out"]["stanzas_out"] >= 1
        assert by_direction["in"]["stanzas_in"] >= 1
        assert admin_streams(a, "--domain", "elsewhere.test") == []
    finally:
        await logout(alice, bob)


@pytest.mark.asyncio
async def test_a_self_signed_peer_falls_back_to_dialback(pair):
    """b presents a self-signed certificate: a offers it no EXTERNAL and
    b's stream to us authenticates by dialback; a's stream to b uses
    dialback too (b's certificate is not valid for a); messages flow."""
    a, b = pair(direct_tls=False, b_trusted=False)
    alice, bob = await exchange(a, b)
    try:
        assert metric(a, "starling_s2s_streams_total", direction="in", outcome="dialback") >= 1
        assert metric(a, "starling_s2s_streams_total", direction="in", outcome="external") == 0
        assert metric(a, "starling_s2s_streams_total", direction="out", outcome="dialback") >= 1
        rows = [row for row in admin_streams(a, "--domain", B_DOMAIN) if row["direction"] == "in"]
        assert rows and all(row["authentication"] == "dialback" and row["tls"] for row in rows), rows
    finally:
        await logout(alice, bob)


@pytest.mark.asyncio
async def test_a_peer_over_its_domain_rate_gets_resource_constraint(pair):
    """a takes at most 2 stanzas a second from b.test: of a burst of 20
    messages from bob, some reach alice and the others come back to bob
    with resource-constraint of type wait (RFC 6120 section 8.3.3.18), none
    lost without an answer; the stream stays up."""
    a, b = pair(direct_tls=True, a_toml="max_stanzas_per_sec = 2")
    alice, bob = await exchange(a, b)
    try:
        alice_jid = alice.boundjid.bare
        for number in range(20):
            message = bob.make_message(mto=alice_jid, mbody=f"burst {number}", mtype="chat")
            message["id"] = f"burst-{number}"
            message.send()
        delivered, refused = set(), set()

        def all_answered():
            while not alice.messages.empty():
                delivered.add(alice.messages.get_nowait()["body"])
            while not bob.messages.empty():
                stanza = bob.messages.get_nowait()
                assert stanza["type"] == "error", stanza
                assert stanza["error"]["condition"] == "resource-constraint", stanza
                assert stanza["error"]["type"] == "wait", stanza
                refused.add(stanza["id"])
            return len(delivered) + len(refused) >= 20

        await wait_until_async(all_answered, timeout=30, what="every message of the burst delivered or refused")
        assert len(delivered) + len(refused) == 20
        assert delivered and refused, (delivered, refused)
        assert metric(a, "starling_s2s_stanzas_total", outcome="rate_limited") == len(refused)
        # The stream is still up: one more message, later, arrives.
        bob.send_message(mto=alice_jid, mbody="still here", mtype="chat")

        def arrived():
            while not alice.messages.empty():
                if alice.messages.get_nowait()["body"] == "still here":
                    return True
            while not bob.messages.empty():
                # Refused again while the bucket refills: send it again.
                bob.messages.get_nowait()
                bob.send_message(mto=alice_jid, mbody="still here", mtype="chat")
            return False

        await wait_until_async(arrived, timeout=30, interval=0.5, what="a message after the burst")
        assert metric(a, "starling_s2s_streams_total", direction="in", outcome="external") == 1
    finally:
        await logout(alice, bob)


@pytest.mark.asyncio
async def test_an_idle_inbound_stream_is_closed(pair):
    """With s2s.idle_timeout_secs = 2 on a, b's silent stream to a is
    closed by a; the next message opens a new stream and arrives."""
    a, b = pair(direct_tls=True, a_toml="idle_timeout_secs = 2")
    alice, bob = await exchange(a, b)
    try:
        await wait_until_async(
            lambda: metric(a, "starling_s2s_streams_total", direction="in", outcome="idle") >= 1,
            timeout=30,
            interval=0.2,
            what="a to close b's idle stream",
        )
        await wait_until_async(
            lambda: metric(a, "starling_s2s_domain_streams", domain=B_DOMAIN, direction="in") == 0
            and metric(b, "starling_s2s_domain_streams", domain=A_DOMAIN, direction="out") == 0,
            interval=0.2,
            what="b's stream to a to be gone on both sides",
        )
        bob.send_message(mto=alice.boundjid.bare, mbody="after idle", mtype="chat")
        assert (await alice.next_message(timeout=20))["body"] == "after idle"
        assert metric(a, "starling_s2s_streams_total", direction="in", outcome="external") >= 2
    finally:
        await logout(alice, bob)


class TlsPeer(RawPeer):
    """A remote server speaking bytes to a's direct TLS s2s listener, with
    the test CA's certificate of `certificate` (a domain) or none."""

    def __init__(self, server, pki, certificate=None):
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        context.set_alpn_protocols(["xmpp-server"])
        if certificate:
            context.load_cert_chain(str(pki / f"{certificate}.crt"), str(pki / f"{certificate}.key"))
        raw = socket.create_connection((server.address, server.s2s_tls_port), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=server.domain)
        self.buffer = b""

    def open(self, sender=B_DOMAIN, to=A_DOMAIN):
        """Our header; the features of a's answer."""
        super().open(to=to, sender=sender)
        return self.read_until("</stream:features>")


@pytest.mark.asyncio
async def test_the_direct_tls_listener_offers_external_to_a_valid_certificate_only(pair, tmp_path):
    """On a's direct TLS listener (ALPN xmpp-server): a peer without a
    certificate gets dialback only; one with b.test's certificate gets
    EXTERNAL, is refused with invalid-authzid for another identity, and
    authenticated for its own; then its stanzas route, and one from a
    domain it did not authenticate ends the stream with invalid-from."""
    a, _b = pair(direct_tls=True, a_extra_toml="[limits]\nmax_stanza_bytes = 10000\n")
    pki = tmp_path / "pki"
    alice_jid, alice_password = a.add_user("alice")
    alice = await login(a, alice_jid, alice_password)
    try:
        peer = TlsPeer(a, pki)
        assert peer.sock.selected_alpn_protocol() == "xmpp-server"
        features = peer.open()
        assert "EXTERNAL" not in features and "urn:xmpp:features:dialback" in features
        assert "starttls" not in features
        peer.close()
        # A certificate for b.test, but a stream that says it is c.test.
        peer = TlsPeer(a, pki, certificate=B_DOMAIN)
        assert "EXTERNAL" not in peer.open(sender="c.test")
        peer.close()
        # EXTERNAL for another identity: refused, the stream ends.
        peer = TlsPeer(a, pki, certificate=B_DOMAIN)
        assert "<mechanism>EXTERNAL</mechanism>" in peer.open()
        other = base64.b64encode(b"c.test").decode()
        peer.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{other}</auth>")
        assert "<invalid-authzid/>" in peer.read_until("</stream:stream>")
        peer.close()
        # EXTERNAL for its own domain: success, a new stream, stanzas.
        peer = TlsPeer(a, pki, certificate=B_DOMAIN)
        peer.open()
        own = base64.b64encode(B_DOMAIN.encode()).decode()
        peer.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{own}</auth>")
        assert "<success" in peer.read_until("/>")
        features = peer.open()
        assert "EXTERNAL" not in features
        peer.send(f"<message from='bob@{B_DOMAIN}/raw' to='{alice_jid}' type='chat' id='raw-1'><body>over direct tls</body></message>")
        received = await alice.next_message(timeout=20)
        assert received["body"] == "over direct tls" and received["from"] == f"bob@{B_DOMAIN}/raw"
        peer.send(f"<message from='mallory@c.test' to='{alice_jid}'><body>forged</body></message>")
        assert "<invalid-from" in peer.read_until("</stream:stream>")
        peer.close()
        # The node's stanza size limit holds on an authenticated stream:
        # past limits.max_stanza_bytes (set to 10000 here), <policy-violation/>.
        peer = TlsPeer(a, pki, certificate=B_DOMAIN)
        peer.open()
        peer.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
        assert "<success" in peer.read_until("/>")
        peer.open()
        peer.send(f"<message from='bob@{B_DOMAIN}/raw' to='{alice_jid}'><body>{'x' * 20000}</body></message>")
        assert "<policy-violation" in peer.read_until("</stream:stream>")
        peer.close()
        await handled(alice)
        assert alice.messages.empty()
    finally:
        await logout(alice)
