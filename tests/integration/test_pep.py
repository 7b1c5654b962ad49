"""Personal Eventing Protocol (XEP-0163 over XEP-0060) with real slixmpp
clients (xep_0060, xep_0115, xep_0163): publish and the notifications that
follow only a presence subscription plus a `+notify` interest announced in
entity capabilities (which the server learns by a disco#info query it
verifies), retract, items with max_items, publish-options preconditions,
the access model errors, the item size limit, the last item on presence
and to a new subscriber,
disco on the account, and the cluster case: the publisher on cm-1, the
contact announcing its capabilities on cm-2."""

import asyncio
import xml.etree.ElementTree as ET

import pytest
import slixmpp
from slixmpp.exceptions import IqError

from conftest import Client, handled, logout, presence_applied
from test_cluster import befriend, cluster  # noqa: F401 (the cluster fixture)

MOOD = "http://jabber.org/protocol/mood"
TUNE = "http://jabber.org/protocol/tune"
PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
EVENT = "http://jabber.org/protocol/pubsub#event"


PROBE = "urn:starling:test:probe"


async def pep_login(server, jid, password, resource, notify=(), presence=True, plugins=()) -> Client:
    """Log in with the PEP plugins, `+notify` for each node of `notify`
    announced in the capabilities of the initial presence. With `notify`,
    return once the server knows those capabilities: the client first
    publishes to a probe node of its own, which it is interested in too, and
    the server sends its last item to the new session as soon as it has
    verified the caps (XEP-0163 section 4.3.4, also for the owner's own
    resources). `plugins` are registered too (before the caps are made)."""
    client = Client(f"{jid}/{resource}", password)
    for plugin in ("xep_0004", "xep_0060", "xep_0115", "xep_0163", *plugins):
        client.register_plugin(plugin)
    client.events = asyncio.Queue()
    client.add_event_handler("pubsub_publish", lambda msg: client.events.put_nowait(("publish", msg)))
    client.add_event_handler("pubsub_retract", lambda msg: client.events.put_nowait(("retract", msg)))
    client.add_event_handler("pubsub_delete", lambda msg: client.events.put_nowait(("delete", msg)))
    for node in notify:
        client.plugin["xep_0030"].add_feature(f"{node}+notify")
    if notify:
        client.plugin["xep_0030"].add_feature(f"{PROBE}+notify")
    client.connect(host="127.0.0.1", port=server.c2s)
    done, _ = await asyncio.wait([client.started, client.failed], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if client.failed in done or not done:
        client.disconnect()
        raise AssertionError(f"login of {jid} failed")
    await client.get_roster()
    await client.plugin["xep_0115"].update_caps(broadcast=False)
    if notify:
        probe = f"{resource}-{id(client)}"
        await client.plugin["xep_0060"].publish(
            client.boundjid.bare, PROBE, id=probe, payload=ET.fromstring(f"<probe xmlns='{PROBE}'/>"), timeout=20
        )
    if presence:
        client.send_presence()
        await presence_applied(client, timeout=20)
        if notify:
            others = []
            while True:
                kind, msg = await asyncio.wait_for(client.events.get(), 20)
                item = msg.xml.find(f"{{{EVENT}}}event/{{{EVENT}}}items/{{{EVENT}}}item")
                if msg["from"] == client.boundjid.bare and item is not None and item.get("id") == probe:
                    break
                others.append((kind, msg))
            for event in others:
                client.events.put_nowait(event)
    return client


def mood(text):
    return ET.fromstring(f"<mood xmlns='{MOOD}'><happy/><text>{text}</text></mood>")


def publish_options(client, **fields):
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
    for var, value in fields.items():
        form.add_field(var=f"pubsub#{var}", value=value)
    return form


async def publish(client, node, item_id, payload, options=None):
    return await client.plugin["xep_0060"].publish(
        client.boundjid.bare, node, id=item_id, payload=payload, options=options, timeout=20
    )


def is_probe(msg):
    items = msg.xml.find(f"{{{EVENT}}}event/{{{EVENT}}}items")
    return items is not None and items.get("node") == PROBE


async def next_event(client, timeout=20.0):
    """The next pubsub event that is not about a probe node."""
    while True:
        kind, msg = await asyncio.wait_for(client.events.get(), timeout)
        if not is_probe(msg):
            return kind, msg


def event_items(msg):
    """(node, [(kind, id, text)]) of a pubsub event message."""
    items = msg.xml.find(f"{{{EVENT}}}event/{{{EVENT}}}items")
    found = []
    for child in items:
        kind = child.tag.split("}")[1]
        text = child.find(f"{{{MOOD}}}mood/{{{MOOD}}}text")
        found.append((kind, child.get("id"), text.text if text is not None else None))
    return items.get("node"), found


def no_event(client):
    """Whether `client` has no pubsub event queued (call after `handled`:
    notifications travel before the pong on the session's one channel)."""
    events = [msg for _, msg in list(client.events._queue) if not is_probe(msg)]
    return not events


async def iq_error(awaitable):
    with pytest.raises(IqError) as raised:
        await awaitable
    error = raised.value.iq.xml.find("{jabber:client}error")
    assert error is not None
    condition = [child.tag.split("}")[1] for child in error if child.tag.startswith("{" + STANZAS)][0]
    application = [child.tag.split("}")[1] for child in error if child.tag.startswith("{" + PUBSUB_ERRORS)]
    return condition, application[0] if application else None


async def test_publish_notifies_subscribed_contacts_with_notify_only(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    carol, carol_pw = server.add_user("carol")
    dave, dave_pw = server.add_user("dave")
    a = await pep_login(server, alice, alice_pw, "phone", notify=[MOOD])
    b = await pep_login(server, bob, bob_pw, "laptop", notify=[MOOD])
    c = await pep_login(server, carol, carol_pw, "tablet")  # subscribed, no +notify
    d = await pep_login(server, dave, dave_pw, "desk", notify=[MOOD])  # +notify, no subscription
    await befriend(a, b, bob)
    await befriend(a, c, carol)

    result = await publish(a, MOOD, "current", mood("sunny"))
    assert result["pubsub"]["publish"]["item"]["id"] == "current"
    kind, msg = await next_event(b)
    assert kind == "publish"
    assert msg["from"] == alice and msg["to"] == f"{bob}/laptop" and msg["type"] == "headline"
    assert event_items(msg) == (MOOD, [("item", "current", "sunny")])
    # The owner's own resource with +notify is told too.
    kind, msg = await next_event(a)
    assert event_items(msg) == (MOOD, [("item", "current", "sunny")])
    for client in (c, d):
        await handled(client)
        assert no_event(client), f"{client.boundjid} got a notification"

    # Retract with notify: bob hears it; the item is gone.
    await a.plugin["xep_0060"].retract(alice, MOOD, "current", notify=True, timeout=20)
    kind, msg = await next_event(b)
    assert kind == "retract"
    assert event_items(msg) == (MOOD, [("retract", "current", None)])
    items = await b.plugin["xep_0060"].get_items(alice, MOOD, timeout=20)
    assert [item["id"] for item in items["pubsub"]["items"]] == []
    # Retracting it again: item-not-found.
    assert await iq_error(a.plugin["xep_0060"].retract(alice, MOOD, "current", timeout=20)) == ("item-not-found", None)
    await logout(a, b, c, d)


async def test_items_access_models_and_errors(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    dave, dave_pw = server.add_user("dave")
    a = await pep_login(server, alice, alice_pw, "phone")
    b = await pep_login(server, bob, bob_pw, "laptop")
    d = await pep_login(server, dave, dave_pw, "desk")
    await befriend(a, b, bob)

    options = publish_options(a, max_items="max", persist_items="true")
    for number in range(1, 4):
        await publish(a, TUNE, f"t{number}", mood(f"song {number}"), options)
    items = await b.plugin["xep_0060"].get_items(alice, TUNE, max_items=2, timeout=20)
    assert [item["id"] for item in items["pubsub"]["items"]] == ["t2", "t3"]
    items = await a.plugin["xep_0060"].get_items(alice, TUNE, timeout=20)
    assert [item["id"] for item in items["pubsub"]["items"]] == ["t1", "t2", "t3"]
    one = await b.plugin["xep_0060"].get_item(alice, TUNE, "t1", timeout=20)
    assert [item["id"] for item in one["pubsub"]["items"]] == ["t1"]

    # presence access (the default) without a subscription.
    assert await iq_error(d.plugin["xep_0060"].get_items(alice, TUNE, timeout=20)) == (
        "not-authorized",
        "presence-subscription-required",
    )
    # No such node.
    assert await iq_error(b.plugin["xep_0060"].get_items(alice, "urn:none", timeout=20)) == ("item-not-found", None)
    # Publishing to someone else's node.
    assert await iq_error(
        b.plugin["xep_0060"].publish(alice, TUNE, id="x", payload=mood("mine"), timeout=20)
    ) == ("forbidden", None)
    # The precondition of publish-options does not match the node: nothing stored.
    whitelist = publish_options(a, access_model="whitelist")
    assert await iq_error(publish(a, TUNE, "t4", mood("song 4"), whitelist)) == ("conflict", "precondition-not-met")
    items = await a.plugin["xep_0060"].get_items(alice, TUNE, timeout=20)
    assert [item["id"] for item in items["pubsub"]["items"]] == ["t1", "t2", "t3"]

    # A whitelist node: the owner only, until a member is affiliated.
    await publish(a, "urn:xmpp:bookmarks:1", "room@conference.localhost",
                  ET.fromstring("<conference xmlns='urn:xmpp:bookmarks:1' autojoin='true'/>"),
                  publish_options(a, access_model="whitelist", max_items="max"))
    assert await iq_error(b.plugin["xep_0060"].get_items(alice, "urn:xmpp:bookmarks:1", timeout=20)) == (
        "not-allowed",
        "closed-node",
    )
    affiliations = ET.fromstring(
        "<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><affiliations node='urn:xmpp:bookmarks:1'>"
        f"<affiliation jid='{bob}' affiliation='member'/></affiliations></pubsub>"
    )
    iq = a.make_iq_set(ito=alice)
    iq.append(affiliations)
    await iq.send(timeout=20)
    items = await b.plugin["xep_0060"].get_items(alice, "urn:xmpp:bookmarks:1", timeout=20)
    assert [item["id"] for item in items["pubsub"]["items"]] == ["room@conference.localhost"]

    # disco on the account: the PEP identity and features; the nodes dave may see (none).
    info = await b.plugin["xep_0030"].get_info(jid=alice, timeout=20)
    assert ("pubsub", "pep", None, None) in info["disco_info"]["identities"]
    features = info["disco_info"]["features"]
    for feature in ("publish", "publish-options", "auto-create", "retrieve-items", "access-whitelist"):
        assert f"http://jabber.org/protocol/pubsub#{feature}" in features
    nodes = await b.plugin["xep_0030"].get_items(jid=alice, timeout=20)
    assert sorted(item[1] for item in nodes["disco_items"]["items"]) == sorted([TUNE, "urn:xmpp:bookmarks:1"])
    nodes = await d.plugin["xep_0030"].get_items(jid=alice, timeout=20)
    assert not nodes["disco_items"]["items"]
    await logout(a, b, d)


async def test_oversized_item_is_refused(server_factory):
    srv = server_factory(extra_toml="[pep]\nmax_item_bytes = 200\n")
    alice, alice_pw = srv.add_user("alice")
    a = await pep_login(srv, alice, alice_pw, "phone")
    assert await iq_error(publish(a, MOOD, "big", mood("x" * 300))) == ("not-acceptable", "payload-too-big")
    await publish(a, MOOD, "small", mood("fits"))
    items = await a.plugin["xep_0060"].get_items(alice, MOOD, timeout=20)
    assert [item["id"] for item in items["pubsub"]["items"]] == ["small"]
    await logout(a)


async def test_last_item_is_sent_on_available_presence(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a = await pep_login(server, alice, alice_pw, "phone")
    b = await pep_login(server, bob, bob_pw, "laptop")
    await befriend(a, b, bob)
    await publish(a, MOOD, "m1", mood("first"))
    await publish(a, MOOD, "m2", mood("latest"))
    await logout(b)

    # A new session whose caps the server does not know yet: it is asked
    # (disco#info to the full JID), verifies them, and sends the last item.
    b = await pep_login(server, bob, bob_pw, "laptop", notify=[MOOD])
    kind, msg = await next_event(b)
    assert event_items(msg) == (MOOD, [("item", "m2", "latest")])
    # Another resource with the same caps, known now: the last item on its presence.
    b2 = await pep_login(server, bob, bob_pw, "desktop", notify=[MOOD])
    kind, msg = await next_event(b2)
    assert msg["to"] == f"{bob}/desktop"
    assert event_items(msg) == (MOOD, [("item", "m2", "latest")])
    # A presence update with the same caps sends nothing again.
    b2.send_presence(pstatus="still here")
    await presence_applied(b2, timeout=20)
    await handled(b2)
    assert no_event(b2)
    await logout(a, b, b2)


async def test_notification_across_connection_managers(cluster):  # noqa: F811
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    a = await pep_login(cluster.node("cm-1"), alice, alice_pw, "phone")
    # Bob's caps are learnt through cm-2 (pep_login returns once the
    # server verified them), then alice publishes through cm-1.
    b = await pep_login(cluster.node("cm-2"), bob, bob_pw, "laptop", notify=[MOOD])
    await befriend(a, b, bob)
    await publish(a, MOOD, "across", mood("from cm-1"))
    kind, msg = await next_event(b, timeout=30)
    assert event_items(msg) == (MOOD, [("item", "across", "from cm-1")])
    await logout(a, b)


async def subscribe_and_get_last_item(owner_client, owner, contact_client):
    """`contact_client` (with `+notify` for MOOD and TUNE, no subscription
    yet) asks `owner` for a presence subscription, which `owner_client`
    approves: the new subscriber gets the last MOOD item without a new
    publish (XEP-0163 section 4.3.4), once, and nothing of the TUNE node
    (send_last_published_item never)."""
    owner_client.auto_authorize = True
    owner_client.auto_subscribe = False
    assert no_event(contact_client)
    contact_client.send_presence(pto=owner, ptype="subscribe")
    kind, msg = await next_event(contact_client, timeout=30)
    assert kind == "publish"
    assert msg["from"] == owner and msg["to"] == contact_client.boundjid.full
    assert event_items(msg) == (MOOD, [("item", "m2", "latest")])
    await handled(contact_client)
    assert no_event(contact_client)


async def publish_mood_and_hidden_tune(client):
    await publish(client, MOOD, "m1", mood("first"))
    await publish(client, MOOD, "m2", mood("latest"))
    await publish(client, TUNE, "t1", mood("not on sub"), publish_options(client, send_last_published_item="never"))


async def test_last_item_is_sent_to_a_new_subscriber(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    carol, carol_pw = server.add_user("carol")
    a = await pep_login(server, alice, alice_pw, "phone")
    await publish_mood_and_hidden_tune(a)
    # Available with +notify before any subscription: nothing of alice's yet.
    b = await pep_login(server, bob, bob_pw, "laptop", notify=[MOOD, TUNE])
    b2 = await pep_login(server, bob, bob_pw, "desktop", notify=[TUNE])
    c = await pep_login(server, carol, carol_pw, "tablet")  # no +notify
    await handled(b)
    await subscribe_and_get_last_item(a, alice, b)
    # bob's other resource is not interested in MOOD: nothing.
    await handled(b2)
    assert no_event(b2)
    # A subscriber without +notify gets the presence, not the item.
    c.send_presence(pto=alice, ptype="subscribe")
    await c.next_presence(lambda p: p["type"] == "subscribed" and p["from"].bare == alice, timeout=20)
    await handled(c)
    assert no_event(c)
    await logout(a, b, b2, c)


async def test_last_item_to_a_new_subscriber_across_connection_managers(cluster):  # noqa: F811
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    a = await pep_login(cluster.node("cm-1"), alice, alice_pw, "phone")
    await publish_mood_and_hidden_tune(a)
    b = await pep_login(cluster.node("cm-2"), bob, bob_pw, "laptop", notify=[MOOD, TUNE])
    await handled(b)
    await subscribe_and_get_last_item(a, alice, b)
    await logout(a, b)


BOOKMARKS = "urn:xmpp:bookmarks:1"


async def test_bookmarks_2_on_a_whitelist_node(server):
    """XEP-0402: bookmarks as items of `urn:xmpp:bookmarks:1`, published with
    the publish-options of section 3.2 (whitelist, max, never); the owner's
    other resources are notified, a subscribed contact neither is nor may read
    them, and a new session gets no last item (send_last_published_item never)."""
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a1 = await pep_login(server, alice, alice_pw, "phone", notify=[BOOKMARKS])
    a2 = await pep_login(server, alice, alice_pw, "laptop", notify=[BOOKMARKS])
    b = await pep_login(server, bob, bob_pw, "desk", notify=[BOOKMARKS])
    await befriend(a1, b, bob)
    options = publish_options(
        a1, persist_items="true", max_items="max", send_last_published_item="never", access_model="whitelist"
    )
    conference = ET.fromstring(f"<conference xmlns='{BOOKMARKS}' name='The Orchard' autojoin='true'><nick>alice</nick></conference>")
    await publish(a1, BOOKMARKS, "orchard@conference.localhost", conference, options)
    kind, msg = await next_event(a2)
    items = msg.xml.find(f"{{{EVENT}}}event/{{{EVENT}}}items")
    assert items.get("node") == BOOKMARKS
    assert items.find(f"{{{EVENT}}}item").get("id") == "orchard@conference.localhost"
    assert items.find(f"{{{EVENT}}}item/{{{BOOKMARKS}}}conference").get("name") == "The Orchard"
    await handled(b)
    assert no_event(b)
    assert await iq_error(b.plugin["xep_0060"].get_items(alice, BOOKMARKS, timeout=20)) == ("not-allowed", "closed-node")
    # Section 3.4: a retraction with notify='true' reaches the other resource.
    await a1.plugin["xep_0060"].retract(alice, BOOKMARKS, "orchard@conference.localhost", notify=True, timeout=20)
    kind, msg = await next_event(a2)
    assert kind == "retract"
    await publish(a1, BOOKMARKS, "garden@conference.localhost", conference, options)
    await next_event(a2)
    # A new session: no last item (never), but the items on request.
    a3 = await pep_login(server, alice, alice_pw, "tablet", notify=[BOOKMARKS])
    await handled(a3)
    assert no_event(a3)
    items = await a3.plugin["xep_0060"].get_items(alice, BOOKMARKS, timeout=20)
    assert [item["id"] for item in items["pubsub"]["items"]] == ["garden@conference.localhost"]
    await logout(a1, a2, a3, b)


PUBSUB = "http://jabber.org/protocol/pubsub"
DATA = "jabber:x:data"
SUBSCRIBE_AUTHORIZATION = "http://jabber.org/protocol/pubsub#subscribe_authorization"


async def test_roster_access_model_admits_the_allowed_groups(server):
    """XEP-0060 section 4.5 `roster`: a contact with a presence subscription
    in one of `pubsub#roster_groups_allowed` is notified and may read; a
    subscribed contact in another group is neither (`not-authorized` +
    `not-in-roster-group`); the groups are a publish-options precondition."""
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    carol, carol_pw = server.add_user("carol")
    a = await pep_login(server, alice, alice_pw, "phone")
    b = await pep_login(server, bob, bob_pw, "laptop", notify=[MOOD])
    c = await pep_login(server, carol, carol_pw, "tablet", notify=[MOOD])
    await befriend(a, b, bob)
    await befriend(a, c, carol)
    await a.update_roster(bob, groups=["Friends"], subscription="both")
    await a.update_roster(carol, groups=["Work"], subscription="both")
    options = publish_options(a, access_model="roster", roster_groups_allowed="Friends")
    await publish(a, MOOD, "m1", mood("for friends"), options)
    kind, msg = await next_event(b)
    assert event_items(msg) == (MOOD, [("item", "m1", "for friends")])
    await handled(c)
    assert no_event(c)
    items = await b.plugin["xep_0060"].get_items(alice, MOOD, timeout=20)
    assert [item["id"] for item in items["pubsub"]["items"]] == ["m1"]
    assert await iq_error(c.plugin["xep_0060"].get_items(alice, MOOD, timeout=20)) == (
        "not-authorized",
        "not-in-roster-group",
    )
    # The node's configuration form shows the model and the groups.
    config = await a.plugin["xep_0060"].get_node_config(alice, MOOD, timeout=20)
    form = config["pubsub_owner"]["configure"]["form"]
    assert form.get_values()["pubsub#access_model"] == "roster"
    assert form.get_values()["pubsub#roster_groups_allowed"] == ["Friends"]
    # Other groups as a precondition: conflict, nothing stored.
    assert await iq_error(
        publish(a, MOOD, "m2", mood("for work"), publish_options(a, access_model="roster", roster_groups_allowed="Work"))
    ) == ("conflict", "precondition-not-met")
    # Carol moved into Friends: she is told from now on.
    await a.update_roster(carol, groups=["Friends", "Work"], subscription="both")
    await publish(a, MOOD, "m3", mood("carol too"), options)
    kind, msg = await next_event(c)
    assert event_items(msg) == (MOOD, [("item", "m3", "carol too")])
    await logout(a, b, c)


def watch_pubsub_messages(client):
    """Queue the messages that carry a <pubsub/> (subscription notices) or a
    subscribe_authorization form (approval requests)."""
    from slixmpp.xmlstream.handler import Callback
    from slixmpp.xmlstream.matcher import MatchXPath

    client.pubsub_messages = asyncio.Queue()
    for name, path in (
        ("notice", f"{{jabber:client}}message/{{{PUBSUB}}}pubsub"),
        ("approval", f"{{jabber:client}}message/{{{DATA}}}x"),
    ):
        client.register_handler(
            Callback(f"pep {name}", MatchXPath(path), lambda msg, name=name: client.pubsub_messages.put_nowait((name, msg)))
        )


def approval_answer(owner_client, owner, request, allow):
    """The owner's submitted form for an approval request (XEP-0060 section 8.6)."""
    form = request.xml.find(f"{{{DATA}}}x")
    fields = {field.get("var"): field.find(f"{{{DATA}}}value").text for field in form.findall(f"{{{DATA}}}field")}
    assert fields["FORM_TYPE"] == SUBSCRIBE_AUTHORIZATION
    answer = owner_client.make_message(mto=owner)
    answer["id"] = request["id"]
    answer.append(ET.fromstring(
        f"<x xmlns='{DATA}' type='submit'>"
        f"<field var='FORM_TYPE'><value>{SUBSCRIBE_AUTHORIZATION}</value></field>"
        f"<field var='pubsub#node'><value>{fields['pubsub#node']}</value></field>"
        f"<field var='pubsub#subscriber_jid'><value>{fields['pubsub#subscriber_jid']}</value></field>"
        f"<field var='pubsub#allow'><value>{'true' if allow else 'false'}</value></field></x>"
    ))
    return answer


async def authorize_flow(owner_server, subscriber_server, add_user):
    """XEP-0060 `authorize`: a subscribe is pending and the owner gets the
    approval form; neither a pending subscriber nor a presence contact with
    `+notify` reads or hears anything; once the owner submits the form the
    subscriber is told, gets the last item and every later publish, and
    after the owner removes the subscription nothing more."""
    alice, alice_pw = add_user("alice")
    bob, bob_pw = add_user("bob")
    dave, dave_pw = add_user("dave")
    a = await pep_login(owner_server, alice, alice_pw, "phone")
    watch_pubsub_messages(a)
    b = await pep_login(subscriber_server, bob, bob_pw, "laptop", notify=[MOOD])
    d = await pep_login(subscriber_server, dave, dave_pw, "desk")
    watch_pubsub_messages(d)
    await befriend(a, b, bob)
    await publish(a, MOOD, "m1", mood("private"), publish_options(a, access_model="authorize"))
    await handled(b)
    assert no_event(b)
    assert await iq_error(d.plugin["xep_0060"].get_items(alice, MOOD, timeout=20)) == ("not-authorized", "not-subscribed")

    result = await d.plugin["xep_0060"].subscribe(alice, MOOD, timeout=20)
    assert result["pubsub"]["subscription"]["subscription"] == "pending"
    assert result["pubsub"]["subscription"]["jid"] == dave
    kind, request = await asyncio.wait_for(a.pubsub_messages.get(), 30)
    assert kind == "approval" and request["from"] == alice
    assert dave in request["body"]
    assert await iq_error(d.plugin["xep_0060"].subscribe(alice, MOOD, timeout=20)) == ("not-authorized", "pending-subscription")
    assert await iq_error(d.plugin["xep_0060"].get_items(alice, MOOD, timeout=20)) == ("not-authorized", "not-subscribed")

    approval_answer(a, alice, request, allow=True).send()
    kind, notice = await asyncio.wait_for(d.pubsub_messages.get(), 30)
    assert kind == "notice" and notice["from"] == alice
    subscription = notice.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}subscription")
    assert (subscription.get("node"), subscription.get("jid"), subscription.get("subscription")) == (MOOD, dave, "subscribed")
    # The last item (send_last_published_item on_sub_and_presence), though
    # dave announced no +notify: an explicit subscription.
    kind, msg = await next_event(d, timeout=30)
    assert event_items(msg) == (MOOD, [("item", "m1", "private")])
    items = await d.plugin["xep_0060"].get_items(alice, MOOD, timeout=20)
    assert [item["id"] for item in items["pubsub"]["items"]] == ["m1"]
    await publish(a, MOOD, "m2", mood("still private"))
    kind, msg = await next_event(d, timeout=30)
    assert event_items(msg) == (MOOD, [("item", "m2", "still private")])
    await handled(b)
    assert no_event(b)

    listed = await a.plugin["xep_0060"].get_node_subscriptions(alice, MOOD, timeout=20)
    assert [(sub["jid"], sub["subscription"]) for sub in listed["pubsub_owner"]["subscriptions"]] == [(dave, "subscribed")]
    await a.plugin["xep_0060"].modify_subscriptions(alice, MOOD, subscriptions=[(dave, "none")], timeout=20)
    kind, notice = await asyncio.wait_for(d.pubsub_messages.get(), 30)
    assert notice.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}subscription").get("subscription") == "none"
    await publish(a, MOOD, "m3", mood("not for dave"))
    await handled(d)
    assert no_event(d)
    assert await iq_error(d.plugin["xep_0060"].get_items(alice, MOOD, timeout=20)) == ("not-authorized", "not-subscribed")
    # Asked again and denied: told `none`, still nothing to read.
    result = await d.plugin["xep_0060"].subscribe(alice, MOOD, timeout=20)
    assert result["pubsub"]["subscription"]["subscription"] == "pending"
    kind, request = await asyncio.wait_for(a.pubsub_messages.get(), 30)
    approval_answer(a, alice, request, allow=False).send()
    kind, notice = await asyncio.wait_for(d.pubsub_messages.get(), 30)
    assert notice.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}subscription").get("subscription") == "none"
    assert await iq_error(d.plugin["xep_0060"].get_items(alice, MOOD, timeout=20)) == ("not-authorized", "not-subscribed")
    await logout(a, b, d)


async def test_authorize_access_model_needs_the_owners_approval(server):
    await authorize_flow(server, server, server.add_user)


async def test_authorize_approval_across_connection_managers(cluster):  # noqa: F811
    await authorize_flow(cluster.node("cm-1"), cluster.node("cm-2"), cluster.add_user)
