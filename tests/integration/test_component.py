"""External components (XEP-0114, jabber:component:accept): slixmpp's
ComponentXMPP as the component, slixmpp clients as users, raw sockets for the
refusals; `starling serve`, then two connection-managers of the cluster."""

import asyncio
import re
import socket
import subprocess
import time
import urllib.request

import pytest
import slixmpp

from conftest import RawClient, Server, free_port, handled, login, logout, wait_until_async

DOMAIN = "irc.localhost"
SECRET = "component-secret"
COMPONENTS_TOML = f"""
[[components]]
domain = "{DOMAIN}"
secret = "{SECRET}"
max_stanza_bytes = 20000

[[components]]
domain = "push.localhost"
secret = "push-secret"
"""


class ComponentServer(Server):
    """`starling serve` with a component listener and two components."""

    def pick_ports(self):
        super().pick_ports()
        self.component = free_port()

    def write_config(self):
        super().write_config()
        text = self.config.read_text()
        text = text.replace("[listen]\n", f'[listen]\ncomponent = "127.0.0.1:{self.component}"\n', 1)
        self.config.write_text(text + COMPONENTS_TOML)


@pytest.fixture
def server(tmp_path):
    srv = ComponentServer(tmp_path).start()
    yield srv
    srv.stop()


class Component(slixmpp.ComponentXMPP):
    """A component that queues what it receives and answers nothing by itself."""

    def __init__(self, domain=DOMAIN, secret=SECRET, port=None):
        super().__init__(domain, secret, "127.0.0.1", port)
        self.messages: asyncio.Queue = asyncio.Queue()
        self.presences: asyncio.Queue = asyncio.Queue()
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.started.done() or self.started.set_result(True))
        self.add_event_handler("message", lambda msg: self.messages.put_nowait(msg))
        self.add_event_handler("presence", lambda pres: self.presences.put_nowait(pres))
        self.register_plugin("xep_0030")
        # Answers software version queries (XEP-0092) as "gateway".
        self.register_plugin("xep_0092", {"software_name": "gateway", "version": "1.0"})

    async def start(self, timeout=15):
        self.connect()
        await asyncio.wait_for(self.started, timeout)
        return self


async def connect_component(port, **kwargs):
    return await Component(port=port, **kwargs).start()


class RawComponent(RawClient):
    """A component speaking bytes, for the refusals."""

    def __init__(self, port, timeout=10.0):
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def open(self, to=DOMAIN, namespace="jabber:component:accept"):
        self.send(
            f"<stream:stream xmlns='{namespace}' xmlns:stream='http://etherx.jabber.org/streams' to='{to}'>"
        )
        header = self.recv_until(">")
        while "<stream:stream" not in header:
            header += self.recv_until(">")
        return header

    def handshake(self, secret=SECRET):
        import hashlib

        header = self.open()
        stream_id = re.search(r"id='([^']+)'", header).group(1)
        digest = hashlib.sha1((stream_id + secret).encode()).hexdigest()
        self.send(f"<handshake>{digest}</handshake>")
        return header


def metric(server, name, **labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http}/metrics", timeout=10).read().decode()
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{selector}}} in /metrics")


async def test_messages_iqs_and_presence_flow_both_ways(server):
    jid, password = server.add_user()
    user = await login(server, jid, password, resource="laptop")
    component = await connect_component(server.component)
    try:
        # User -> component: the domain and any address at it.
        user.send_message(mto=f"#chan%irc.net@{DOMAIN}/nick", mbody="hello gateway", mtype="chat")
        received = await asyncio.wait_for(component.messages.get(), 10)
        assert received["body"] == "hello gateway"
        assert received["from"] == user.boundjid.full
        assert received["to"] == f"#chan%irc.net@{DOMAIN}/nick"

        # Component -> user, from any address at its domain.
        component.send_message(mto=user.boundjid.full, mfrom=f"#chan%irc.net@{DOMAIN}/alice", mbody="hi from irc")
        message = await user.next_message()
        assert message["body"] == "hi from irc"
        assert message["from"] == f"#chan%irc.net@{DOMAIN}/alice"

        # IQ user -> component, answered by the component.
        answer = await user.plugin["xep_0092"].get_version(f"bot@{DOMAIN}/x", timeout=10)
        assert answer["software_version"]["name"] == "gateway"

        # IQ component -> user, answered by the user's client (XEP-0092).
        answer = await component.plugin["xep_0092"].get_version(user.boundjid.full, ifrom=DOMAIN, timeout=10)
        assert answer["type"] == "result"
        # ... and component -> server (disco#items lists the components).
        items = await component.plugin["xep_0030"].get_items(jid="localhost", ifrom=DOMAIN, timeout=10)
        listed = {item[0] for item in items["disco_items"]["items"]}
        assert {DOMAIN, "push.localhost"} <= listed

        # Presence: the user subscribes to the gateway, which approves and
        # sends its presence; the subscription is recorded in the roster.
        user.send_presence(pto=DOMAIN, ptype="subscribe")
        subscribe = await asyncio.wait_for(component.presences.get(), 10)
        assert subscribe["type"] == "subscribe" and subscribe["from"] == user.boundjid.bare
        component.send_presence(pto=user.boundjid.bare, pfrom=DOMAIN, ptype="subscribed")
        component.send_presence(pto=user.boundjid.bare, pfrom=DOMAIN, pstatus="gateway online")
        online = await user.next_presence(lambda p: p["from"] == DOMAIN and p["type"] == "available", timeout=10)
        assert online["status"] == "gateway online"
        await wait_until_async(
            lambda: user.client_roster[DOMAIN]["subscription"] == "to", what="the gateway in the roster"
        )
        # The component asks for the user's presence: the user approves.
        user.auto_authorize = True
        component.send_presence(pto=user.boundjid.bare, pfrom=f"bot@{DOMAIN}", ptype="subscribe")
        subscribed = await asyncio.wait_for(component.presences.get(), 10)
        while subscribed["type"] != "subscribed":
            subscribed = await asyncio.wait_for(component.presences.get(), 10)
        assert subscribed["to"] == f"bot@{DOMAIN}"

        assert metric(server, "starling_component_connected", domain=DOMAIN) == 1
        assert metric(server, "starling_component_stanzas_total", domain=DOMAIN, direction="in") >= 5
        assert metric(server, "starling_component_stanzas_total", domain=DOMAIN, direction="out") >= 4
    finally:
        component.disconnect()
        await logout(user)


async def test_without_a_component_the_sender_gets_service_unavailable(server):
    jid, password = server.add_user()
    user = await login(server, jid, password)
    try:
        user.send_message(mto=f"someone@{DOMAIN}", mbody="anyone?", mtype="chat")
        bounce = await user.next_message(body=False)
        assert bounce["type"] == "error"
        assert bounce["error"]["condition"] == "service-unavailable"
        assert bounce["from"] == f"someone@{DOMAIN}"
        with pytest.raises(slixmpp.exceptions.IqError) as error:
            await user.plugin["xep_0092"].get_version(DOMAIN, timeout=10)
        assert error.value.iq["error"]["condition"] == "service-unavailable"
        # An error to the absent component is not answered (RFC 6120 8.3.1).
        user.send_message(mto=DOMAIN, mtype="error", mbody="x")
        await handled(user)
        assert user.messages.empty()
    finally:
        await logout(user)


async def test_a_component_that_leaves_is_service_unavailable_again(server):
    jid, password = server.add_user()
    user = await login(server, jid, password)
    component = await connect_component(server.component)
    try:
        user.send_message(mto=DOMAIN, mbody="one", mtype="chat")
        assert (await asyncio.wait_for(component.messages.get(), 10))["body"] == "one"
        component.disconnect()
        await asyncio.wait_for(component.disconnected, 10)
        await wait_until_async(lambda: metric(server, "starling_component_connected", domain=DOMAIN) == 0,
                               what="the component's record to go")
        user.send_message(mto=DOMAIN, mbody="two", mtype="chat")
        bounce = await user.next_message(body=False)
        assert bounce["error"]["condition"] == "service-unavailable"
    finally:
        await logout(user)


def test_wrong_secret_is_not_authorized(server):
    raw = RawComponent(server.component)
    header = raw.handshake(secret="wrong")
    assert "xmlns='jabber:component:accept'" in header and f"from='{DOMAIN}'" in header
    closed = raw.read_until_closed()
    assert "<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in closed
    assert closed.endswith("</stream:stream>")
    assert metric(server, "starling_component_refused_total", domain=DOMAIN, reason="not_authorized") == 1


def test_stanza_before_the_handshake_is_not_authorized(server):
    raw = RawComponent(server.component)
    raw.open()
    raw.send(f"<message from='a@{DOMAIN}' to='x@localhost'><body>early</body></message>")
    assert "<not-authorized" in raw.read_until_closed()


def test_unknown_domain_is_host_unknown_and_wrong_namespace_invalid_namespace(server):
    raw = RawComponent(server.component)
    answer = raw.open(to="nobody.localhost")
    answer += raw.read_until_closed()
    assert "<host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in answer
    raw = RawComponent(server.component)
    answer = raw.open(namespace="jabber:client") + raw.read_until_closed()
    assert "<invalid-namespace" in answer


def test_forged_from_is_invalid_from(server):
    raw = RawComponent(server.component)
    raw.handshake()
    assert "<handshake" in raw.recv_until(">")
    raw.send("<message from='admin@localhost' to='someone@localhost'><body>forged</body></message>")
    closed = raw.read_until_closed()
    assert "<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in closed
    assert metric(server, "starling_component_refused_total", domain=DOMAIN, reason="invalid_from") == 1


def test_oversized_stanza_and_foreign_elements_end_the_stream(server):
    raw = RawComponent(server.component)
    raw.handshake()
    raw.recv_until(">")
    raw.send(f"<message from='a@{DOMAIN}' to='b@localhost'><body>{'x' * 21000}</body></message>")
    assert "<policy-violation" in raw.read_until_closed()
    assert metric(server, "starling_component_refused_total", domain=DOMAIN, reason="too_large") == 1
    raw = RawComponent(server.component)
    raw.handshake()
    raw.recv_until(">")
    raw.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
    assert "<unsupported-stanza-type" in raw.read_until_closed()


async def test_a_second_connection_replaces_the_first(server):
    jid, password = server.add_user()
    user = await login(server, jid, password)
    first = RawComponent(server.component)
    first.handshake()
    first.recv_until(">")
    second = await connect_component(server.component)
    try:
        closed = first.read_until_closed()
        assert "<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in closed
        user.send_message(mto=DOMAIN, mbody="to the newest", mtype="chat")
        assert (await asyncio.wait_for(second.messages.get(), 10))["body"] == "to the newest"
    finally:
        second.disconnect()
        await logout(user)


def test_handshake_deadline(tmp_path):
    srv = ComponentServer(tmp_path)
    srv.extra_toml = ""
    original = srv.write_config

    def write_config():
        original()
        srv.config.write_text(srv.config.read_text().replace("[log]\n", "[limits]\npre_auth_timeout_secs = 1\n[log]\n", 1))

    srv.write_config = write_config
    srv.start()
    try:
        raw = RawComponent(srv.component)
        raw.open()
        started = time.monotonic()
        closed = raw.read_until_closed(timeout=10)
        assert "<connection-timeout" in closed
        assert time.monotonic() - started < 5
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "components, key",
    [
        ('[[components]]\ndomain = "localhost"\nsecret = "s"\n', "components.domain"),
        ('[[components]]\ndomain = "a.localhost"\nsecret = ""\n', "components.secret"),
        ('[[components]]\ndomain = "a.localhost"\nsecret = "s"\n[[components]]\ndomain = "A.localhost"\nsecret = "t"\n',
         "components.domain"),
        ('[[components]]\ndomain = "a.localhost"\nsecret = "s"\nmax_stanza_bytes = 99999999\n',
         "components.max_stanza_bytes"),
    ],
)
def test_configuration_errors_name_the_key(tmp_path, components, key):
    srv = Server(tmp_path, extra_toml=components)
    srv.write_config()
    result = srv.cli("config", "check", check=False)
    assert result.returncode == 64, result.stdout + result.stderr
    assert key in result.stderr, result.stderr


async def test_cluster_component_on_cm2_user_on_cm1_and_reconnect_after_kill(tmp_path):
    """The component connects to cm-2, the user to cm-1: stanzas cross the
    bus both ways. cm-2 is killed (-9): the janitor removes its record, the
    user gets service-unavailable, and the component reconnecting to cm-1
    is served at once."""
    from test_cluster import Cluster

    extra = tmp_path / "components.toml"
    extra.write_text(COMPONENTS_TOML)
    cluster = Cluster(tmp_path)
    cluster.env["STARLING_EXTRA_TOML"] = str(extra)
    try:
        cluster.up()
        component_port = {name: cluster.node(name).c2s + 3 for name in ("cm-1", "cm-2")}
        jid, password = cluster.add_user(f"u{int(time.time() * 1000) % 10**8}")
        user = await login(cluster.node("cm-1"), jid, password, resource="phone")
        component = await connect_component(component_port["cm-2"])
        try:
            user.send_message(mto=f"#chan@{DOMAIN}", mbody="across nodes", mtype="chat")
            assert (await asyncio.wait_for(component.messages.get(), 10))["body"] == "across nodes"
            component.send_message(mto=user.boundjid.full, mfrom=f"#chan@{DOMAIN}/bob", mbody="back across")
            assert (await user.next_message())["body"] == "back across"
            answer = await user.plugin["xep_0092"].get_version(DOMAIN, timeout=10)
            assert answer["software_version"]["name"] == "gateway"
            answer = await component.plugin["xep_0092"].get_version(user.boundjid.full, ifrom=DOMAIN, timeout=10)
            assert answer["type"] == "result"
            user.send_presence(pto=DOMAIN, ptype="subscribe")
            subscribe = await asyncio.wait_for(component.presences.get(), 10)
            assert subscribe["type"] == "subscribe" and subscribe["from"] == user.boundjid.bare

            redis = ["redis-cli", "-p", str(cluster.redis_port)]

            def record_gone():
                keys = subprocess.run([*redis, "--scan", "--pattern", f"*sess:*{DOMAIN}*"],
                                      capture_output=True, text=True).stdout
                return keys.strip() == ""

            assert not record_gone(), "the component's record is in Redis"
            cluster.kill("cm-2")
            component.abort()

            await wait_until_async(record_gone, timeout=30, what="the janitor to remove the component's record")
            user.send_message(mto=DOMAIN, mbody="nobody there", mtype="chat")
            bounce = await user.next_message(body=False)
            assert bounce["error"]["condition"] == "service-unavailable"

            component = await connect_component(component_port["cm-1"])
            user.send_message(mto=DOMAIN, mbody="welcome back", mtype="chat")
            assert (await asyncio.wait_for(component.messages.get(), 10))["body"] == "welcome back"
        finally:
            component.disconnect()
            await logout(user)
    finally:
        cluster.down()


IRC_ADDRESS = "127.0.0.66"


class Irc:
    """A raw IRC client (RFC 2812) on the test's ngircd."""

    def __init__(self, nick):
        self.sock = socket.create_connection((IRC_ADDRESS, 6667), timeout=15)
        self.buffer = b""
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :{nick}")
        self.wait_for(" 001 ")

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n")

    def wait_for(self, needle, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            for line in self.buffer.decode(errors="replace").split("\r\n")[:-1]:
                if line.startswith("PING"):
                    self.send("PONG" + line[4:])
            lines = self.buffer.decode(errors="replace").split("\r\n")
            for index, line in enumerate(lines[:-1]):
                if needle in line:
                    self.buffer = "\r\n".join(lines[index + 1:]).encode()
                    return line
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {needle!r} from IRC in {self.buffer[-1500:]!r}")
            self.sock.settimeout(max(deadline - time.monotonic(), 0.05))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise ConnectionError("IRC server closed the connection")
            self.buffer += chunk


async def test_biboumi_gateway_joins_an_irc_channel_and_relays_messages(server, tmp_path):
    """Debian's biboumi (an IRC gateway, XEP-0114 component) connected to
    Starling, Debian's ngircd as the IRC server: an XMPP user joins an IRC
    channel through biboumi and sees the IRC user there, an IRC message
    reaches the XMPP user, and the XMPP user's message is taken by the
    gateway (its MUC reflection comes back) and read by the IRC user."""
    import shutil

    if not shutil.which("biboumi") or not shutil.which("ngircd"):
        pytest.skip("biboumi or ngircd is not installed (scripts/test.sh ensure_biboumi installs them)")
    ngircd_conf = tmp_path / "ngircd.conf"
    ngircd_conf.write_text(
        f"[Global]\nName = irc.test\nInfo = test\nListen = {IRC_ADDRESS}\nPorts = 6667\n"
        f"PidFile = {tmp_path / 'ngircd.pid'}\nServerUID = 65534\nServerGID = 65534\n"
        "[Options]\nPAM = no\nIdent = no\nDNS = no\n"
    )
    biboumi_conf = tmp_path / "biboumi.cfg"
    biboumi_conf.write_text(
        f"hostname={DOMAIN}\npassword={SECRET}\nxmpp_server_ip=127.0.0.1\nport={server.component}\n"
        f"db_name={tmp_path / 'biboumi.sqlite'}\nidentd_port=0\nlog_level=0\nfixed_irc_server={IRC_ADDRESS}\n"
        "realname_customization=true\n"
    )
    logs = open(tmp_path / "gateway.log", "wb")
    ngircd = subprocess.Popen(["ngircd", "-n", "-f", str(ngircd_conf)], stdout=logs, stderr=subprocess.STDOUT)
    biboumi = None
    user = None
    try:
        def irc_listening():
            try:
                socket.create_connection((IRC_ADDRESS, 6667), timeout=0.2).close()
                return True
            except OSError:
                return False

        await wait_until_async(irc_listening, what="ngircd")
        biboumi = subprocess.Popen(["biboumi", str(biboumi_conf)], stdout=logs, stderr=subprocess.STDOUT)
        await wait_until_async(lambda: metric(server, "starling_component_connected", domain=DOMAIN) == 1,
                               what="biboumi's handshake")
        irc = Irc("bob")
        irc.send("JOIN #test")
        irc.wait_for(" 366 ")

        jid, password = server.add_user()
        user = await login(server, jid, password)
        room = f"#test@{DOMAIN}"
        join = user.make_presence(pto=f"{room}/alice")
        join.append(slixmpp.xmlstream.ET.Element("{http://jabber.org/protocol/muc}x"))
        join.send()
        await user.next_presence(lambda p: p["from"] == f"{room}/bob", timeout=30)
        await user.next_presence(lambda p: p["from"] == f"{room}/alice" and p["type"] != "error", timeout=30)
        irc.wait_for("JOIN")

        irc.send("PRIVMSG #test :hello from irc")
        message = await user.next_message(timeout=20)
        while message["body"] != "hello from irc":
            message = await user.next_message(timeout=20)
        assert message["type"] == "groupchat" and message["from"] == f"{room}/bob"

        user.send_message(mto=room, mbody="hello from xmpp", mtype="groupchat")
        reflected = await user.next_message(timeout=20)
        while reflected["body"] != "hello from xmpp":
            reflected = await user.next_message(timeout=20)
        assert reflected["from"] == f"{room}/alice" and reflected["type"] == "groupchat"
        # And the IRC user reads it, sent by the gateway under the XMPP user's nick.
        line = irc.wait_for("hello from xmpp", timeout=30)
        assert line.startswith(":alice!") and " PRIVMSG #test :hello from xmpp" in line, line
    finally:
        if user:
            await logout(user)
        for process in (biboumi, ngircd):
            if process:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        logs.close()
