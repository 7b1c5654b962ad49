"""Push notifications (XEP-0357): a slixmpp ComponentXMPP is the app server
(`push.localhost`, XEP-0114); users enable and disable push, go offline or
lose their stream-management connection, and the component receives the
XEP-0357 publish with the summary form."""

import asyncio
import xml.etree.ElementTree as ET

import pytest
import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import handled, login, logout
from sm_raw import SmClient
from test_component import ComponentServer, metric

PUSH = "push.localhost"
SECRET = "push-secret"  # as test_component.COMPONENTS_TOML configures it
NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(push_toml="min_interval_secs = 0\n"):
        directory = tmp_path / f"s{len(servers)}"
        directory.mkdir()
        srv = ComponentServer(directory, extra_toml=f"[push]\n{push_toml}")
        srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


class AppServer(slixmpp.ComponentXMPP):
    """The XMPP Push Service: queues every publish it receives, answers a
    result (or, with `refuse`, a `not-authorized` error of type auth)."""

    def __init__(self, port):
        super().__init__(PUSH, SECRET, "127.0.0.1", port)
        self.notifications: asyncio.Queue = asyncio.Queue()
        self.refuse = False
        self.started = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _: self.started.done() or self.started.set_result(True))
        self.register_handler(
            Callback(
                "push publish",
                MatchXPath(f"{{jabber:component:accept}}iq/{{{NS_PUBSUB}}}pubsub"),
                self._on_publish,
            )
        )

    def _on_publish(self, iq):
        self.notifications.put_nowait(iq)
        if self.refuse:
            reply = iq.reply()
            reply["type"] = "error"
            reply["error"]["type"] = "auth"
            reply["error"]["condition"] = "not-authorized"
            reply.send()
        else:
            iq.reply().send()

    async def start(self, timeout=15):
        self.connect()
        await asyncio.wait_for(self.started, timeout)
        return self

    async def next_notification(self, timeout=10):
        return parse(await asyncio.wait_for(self.notifications.get(), timeout))

    async def nothing_more(self, seconds=1.5):
        await asyncio.sleep(seconds)
        assert self.notifications.empty(), "unexpected notification"


def parse(iq):
    """The publish's node, summary fields, publish options and sender."""
    xml = iq.xml
    publish = xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish")
    form = publish.find(f"{{{NS_PUBSUB}}}item/{{{NS_PUSH}}}notification/{{{NS_DATA}}}x")
    fields = {
        field.get("var"): field.findtext(f"{{{NS_DATA}}}value") for field in form.findall(f"{{{NS_DATA}}}field")
    }
    options = xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish-options/{{{NS_DATA}}}x")
    option_fields = (
        {}
        if options is None
        else {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in options.findall(f"{{{NS_DATA}}}field")}
    )
    return {
        "from": iq["from"].full,
        "node": publish.get("node"),
        "fields": fields,
        "options": option_fields,
    }


async def push_iq(client, payload):
    iq = client.Iq()
    iq["type"] = "set"
    iq.append(ET.fromstring(payload))
    return await iq.send(timeout=10)


def enable_xml(node, secret=None):
    form = ""
    if secret:
        form = (
            f"<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'>"
            "<value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
            f"<field var='secret'><value>{secret}</value></field></x>"
        )
    return f"<enable xmlns='{NS_PUSH}' jid='{PUSH}' node='{node}'>{form}</enable>"


async def enable_then_leave(server, node, secret=None):
    jid, password = server.add_user()
    phone = await login(server, jid, password, resource="phone")
    info = await phone.plugin["xep_0030"].get_info(jid=phone.boundjid.bare, timeout=10)
    assert NS_PUSH in info["disco_info"]["features"]
    await push_iq(phone, enable_xml(node, secret))
    await logout(phone)
    return jid, password


async def test_offline_message_notifies_without_body_and_disable_stops(make_server):
    server = make_server()
    app = await AppServer(server.component).start()
    try:
        alice, alice_pw = await enable_then_leave(server, "node-1", secret="s3cr3t")
        bob_jid, bob_pw = server.add_user()
        bob = await login(server, bob_jid, bob_pw, resource="desk")
        bob.send_message(mto=alice, mbody="are you there?", mtype="chat")
        note = await app.next_notification()
        assert note["from"] == alice
        assert note["node"] == "node-1"
        assert note["fields"]["FORM_TYPE"] == "urn:xmpp:push:summary"
        assert note["fields"]["message-count"] == "1"
        assert note["fields"]["last-message-sender"] == bob.boundjid.full
        assert "last-message-body" not in note["fields"]
        assert note["options"] == {
            "FORM_TYPE": "http://jabber.org/protocol/pubsub#publish-options",
            "secret": "s3cr3t",
        }
        # A receipt alone wakes nobody (no body).
        bob.send_message(mto=alice, mtype="chat", mbody="")
        await handled(bob)
        await app.nothing_more(1)

        # The user disables push from a new session: no more notifications.
        phone = await login(server, alice, alice_pw, resource="phone2", presence=False)
        await push_iq(phone, f"<disable xmlns='{NS_PUSH}' jid='{PUSH}' node='node-1'/>")
        await logout(phone)
        bob.send_message(mto=alice, mbody="still there?", mtype="chat")
        await handled(bob)
        await app.nothing_more()
        assert metric(server, "starling_push_notifications_total", outcome="sent") == 1
        assert metric(server, "starling_push_registrations_total", event="enabled") == 1
        assert metric(server, "starling_push_registrations_total", event="disabled") == 1
        await logout(bob)
    finally:
        app.disconnect()


async def test_bad_enables_are_refused(make_server):
    server = make_server()
    jid, password = server.add_user()
    client = await login(server, jid, password)
    try:
        for payload, condition in [
            (f"<enable xmlns='{NS_PUSH}' node='n'/>", "bad-request"),
            (f"<enable xmlns='{NS_PUSH}' jid='{PUSH}'/>", "bad-request"),
            (f"<enable xmlns='{NS_PUSH}' jid='a@b@c' node='n'/>", "jid-malformed"),
            (
                f"<enable xmlns='{NS_PUSH}' jid='{PUSH}' node='n'><x xmlns='{NS_DATA}' type='submit'>"
                "<field var='FORM_TYPE'><value>urn:other</value></field></x></enable>",
                "bad-request",
            ),
        ]:
            with pytest.raises(slixmpp.exceptions.IqError) as error:
                await push_iq(client, payload)
            assert error.value.iq["error"]["condition"] == condition, payload
        assert metric(server, "starling_push_registrations_total", event="refused") == 4
    finally:
        await logout(client)


async def test_include_body_sends_the_body(make_server):
    server = make_server("include_body = true\nmin_interval_secs = 0\n")
    app = await AppServer(server.component).start()
    try:
        alice, _ = await enable_then_leave(server, "node-b")
        bob_jid, bob_pw = server.add_user()
        bob = await login(server, bob_jid, bob_pw)
        bob.send_message(mto=alice, mbody="the body", mtype="chat")
        note = await app.next_notification()
        assert note["fields"]["last-message-body"] == "the body"
        assert note["options"] == {}
        await logout(bob)
    finally:
        app.disconnect()


async def test_rate_limit_folds_messages_into_the_next_count(make_server):
    server = make_server("min_interval_secs = 2\n")
    app = await AppServer(server.component).start()
    try:
        alice, _ = await enable_then_leave(server, "node-r")
        bob_jid, bob_pw = server.add_user()
        bob = await login(server, bob_jid, bob_pw)
        bob.send_message(mto=alice, mbody="one", mtype="chat")
        assert (await app.next_notification())["fields"]["message-count"] == "1"
        bob.send_message(mto=alice, mbody="two", mtype="chat")
        await handled(bob)
        await app.nothing_more(0.5)
        await asyncio.sleep(2)
        bob.send_message(mto=alice, mbody="three", mtype="chat")
        assert (await app.next_notification())["fields"]["message-count"] == "2"
        assert metric(server, "starling_push_notifications_total", outcome="throttled") == 1
        await logout(bob)
    finally:
        app.disconnect()


async def test_an_app_server_error_disables_the_registration(make_server):
    server = make_server()
    app = await AppServer(server.component).start()
    app.refuse = True
    try:
        alice, _ = await enable_then_leave(server, "node-e")
        bob_jid, bob_pw = server.add_user()
        bob = await login(server, bob_jid, bob_pw)
        bob.send_message(mto=alice, mbody="one", mtype="chat")
        await app.next_notification()
        for _ in range(50):
            if metric(server, "starling_push_notifications_total", outcome="rejected") == 1:
                break
            await asyncio.sleep(0.1)
        assert metric(server, "starling_push_notifications_total", outcome="rejected") == 1
        bob.send_message(mto=alice, mbody="two", mtype="chat")
        await handled(bob)
        await app.nothing_more()
        await logout(bob)
    finally:
        app.disconnect()


async def test_a_detached_stream_management_session_triggers_a_notification(make_server):
    server = make_server()
    app = await AppServer(server.component).start()
    try:
        alice, alice_pw = server.add_user()
        raw = SmClient(server)
        raw.authenticate(alice, alice_pw)
        raw.bind("phone")
        raw.enable()
        raw.presence()
        raw.send(f"<iq type='set' id='push1'>{enable_xml('node-sm')}</iq>")
        answer = raw.recv_until("push1")
        answer += raw.recv_until(">")
        assert "type='result'" in answer[answer.rindex("<iq") :], answer
        raw.drop()
        bob_jid, bob_pw = server.add_user()
        bob = await login(server, bob_jid, bob_pw)
        # The drop may not be noticed yet: the message then follows the
        # session to its detached stream; either way a notification comes.
        bob.send_message(mto=f"{alice}/phone", mbody="wake up", mtype="chat")
        note = await app.next_notification()
        assert note["node"] == "node-sm"
        assert note["fields"]["last-message-sender"] == bob.boundjid.full
        await logout(bob)
    finally:
        app.disconnect()


async def test_cluster_app_server_on_cm2_user_on_cm1(tmp_path):
    """In the cluster (Redis, PostgreSQL, two connection-managers): the
    registration goes through the storage service, the notification from
    the router crosses the bus to the component on cm-2."""
    import time

    from test_cluster import Cluster
    from test_component import COMPONENTS_TOML

    extra = tmp_path / "push.toml"
    extra.write_text("[push]\nmin_interval_secs = 0\n" + COMPONENTS_TOML)
    cluster = Cluster(tmp_path)
    cluster.env["STARLING_EXTRA_TOML"] = str(extra)
    try:
        cluster.up()
        app = await AppServer(cluster.node("cm-2").c2s + 3).start()
        try:
            stamp = int(time.time() * 1000) % 10**8
            alice, alice_pw = cluster.add_user(f"a{stamp}")
            bob_jid, bob_pw = cluster.add_user(f"b{stamp}")
            phone = await login(cluster.node("cm-1"), alice, alice_pw, resource="phone")
            await push_iq(phone, enable_xml("node-c", secret="k"))
            await logout(phone)
            bob = await login(cluster.node("cm-2"), bob_jid, bob_pw)
            bob.send_message(mto=alice, mbody="across the cluster", mtype="chat")
            note = await app.next_notification()
            assert note["from"] == alice and note["node"] == "node-c"
            assert note["fields"]["message-count"] == "1"
            assert note["options"]["secret"] == "k"
            await logout(bob)
        finally:
            app.disconnect()
    finally:
        cluster.down()


async def test_push_off_is_neither_advertised_nor_answered(make_server):
    server = make_server("enabled = false\n")
    jid, password = server.add_user()
    client = await login(server, jid, password)
    try:
        info = await client.plugin["xep_0030"].get_info(jid=client.boundjid.bare, timeout=10)
        assert NS_PUSH not in info["disco_info"]["features"]
        with pytest.raises(slixmpp.exceptions.IqError) as error:
            await push_iq(client, enable_xml("n"))
        assert error.value.iq["error"]["condition"] == "service-unavailable"
    finally:
        await logout(client)
