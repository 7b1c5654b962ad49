"""RFC 6121 behaviour seen through a real client (slixmpp): subscriptions,
presence, messages across resources, offline delivery, rosters, server IQs."""

import pytest
import slixmpp

from conftest import handled, login, logout, presence_applied, wait_until_async


async def test_mutual_subscription_and_presence(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a = await login(server, alice, alice_pw, "laptop")
    b = await login(server, bob, bob_pw, "phone")
    b.auto_authorize = True
    b.auto_subscribe = True
    a.auto_authorize = True

    a.send_presence(pto=bob, ptype="subscribe")
    # Bob's client approves automatically and subscribes back; Alice approves too.
    await a.next_presence(lambda p: p["type"] == "subscribed" and p["from"].bare == bob)
    await b.next_presence(lambda p: p["type"] == "subscribed" and p["from"].bare == alice)

    async def sub_state(client, contact, want):
        await wait_until_async(
            lambda: client.client_roster[contact]["subscription"] == want,
            timeout=10,
            what=f"{client.boundjid} to see {contact} as {want}",
        )

    await sub_state(a, bob, "both")
    await sub_state(b, alice, "both")

    # Presence updates now flow both ways.
    a.send_presence(pstatus="writing tests", pshow="dnd")
    pres = await b.next_presence(lambda p: p["from"] == f"{alice}/laptop" and p["status"] == "writing tests")
    assert pres["show"] == "dnd"
    b.send_presence(pstatus="on the bus", pshow="away")
    pres = await a.next_presence(lambda p: p["from"] == f"{bob}/phone" and p["status"] == "on the bus")

    # A resource going away is seen as unavailable.
    await logout(b)
    await a.next_presence(lambda p: p["from"] == f"{bob}/phone" and p["type"] == "unavailable")
    await logout(a)


async def test_messages_between_two_resources_each(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a1 = await login(server, alice, alice_pw, "desktop")
    a2 = await login(server, alice, alice_pw, "mobile")
    b1 = await login(server, bob, bob_pw, "desktop")
    b2 = await login(server, bob, bob_pw, "mobile")

    # To a full JID: only that resource.
    a1.send_message(mto=f"{bob}/mobile", mbody="to your mobile", mtype="chat")
    msg = await b2.next_message()
    assert msg["body"] == "to your mobile"
    assert msg["from"] == f"{alice}/desktop"

    # To the bare JID: every resource with the highest non-negative priority.
    b1.send_presence(ppriority=5)
    b2.send_presence(ppriority=5)
    await presence_applied(b1, priority=5)
    await presence_applied(b2, priority=5)
    a2.send_message(mto=bob, mbody="to you, anywhere", mtype="chat")
    got1 = await b1.next_message()
    got2 = await b2.next_message()
    assert got1["body"] == got2["body"] == "to you, anywhere"
    assert got1["from"] == f"{alice}/mobile"

    # Highest priority wins: b1 raises its priority, only b1 gets the next one.
    b1.send_presence(ppriority=10)
    await presence_applied(b1, priority=10)
    a2.send_message(mto=bob, mbody="priority matters", mtype="chat")
    assert (await b1.next_message())["body"] == "priority matters"
    # A later message to b2 itself, from the same sender: had b2 been sent the
    # bare-JID one, it would have come first (RFC 6120 section 10.1: in order).
    a2.send_message(mto=f"{bob}/mobile", mbody="only for the mobile", mtype="chat")
    assert (await b2.next_message())["body"] == "only for the mobile"

    # And back.
    b2.send_message(mto=f"{alice}/desktop", mbody="reply", mtype="chat")
    assert (await a1.next_message())["body"] == "reply"
    await logout(a1, a2, b1, b2)


async def test_offline_messages_are_delivered_on_login(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a = await login(server, alice, alice_pw, "pc")
    for number in range(3):
        a.send_message(mto=bob, mbody=f"offline {number}", mtype="chat")
    # Bob is offline: the server stores them.
    await handled(a)
    b = await login(server, bob, bob_pw, "pc")
    bodies = [(await b.next_message())["body"] for _ in range(3)]
    assert bodies == ["offline 0", "offline 1", "offline 2"]
    # Delivered once: a second resource that comes online gets none of them.
    # Once its initial presence is handled (offline delivery is part of it), a
    # message sent to it is the first it receives.
    b2 = await login(server, bob, bob_pw, "second")
    await handled(b2)
    a.send_message(mto=f"{bob}/second", mbody="after the offline ones", mtype="chat")
    assert (await b2.next_message())["body"] == "after the offline ones"
    await logout(a, b, b2)


async def test_a_long_offline_queue_arrives_whole_and_in_order_page_by_page(server):
    """Issue 18: the flush at login takes the queue from storage in pages
    (100 messages or 256 KiB at most), each delivered before the next is
    taken; 250 messages span three pages and arrive once, in order, and a
    live message sent during the flush arrives too."""
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a = await login(server, alice, alice_pw, "pc")
    for number in range(250):
        a.send_message(mto=bob, mbody=f"offline {number}", mtype="chat")
    await handled(a)
    b = await login(server, bob, bob_pw, "pc")
    a.send_message(mto=f"{bob}/pc", mbody="live", mtype="chat")
    bodies = [(await b.next_message())["body"] for _ in range(251)]
    assert [body for body in bodies if body != "live"] == [f"offline {n}" for n in range(250)]
    assert "live" in bodies
    await logout(a, b)


async def test_offline_message_has_delay_stamp(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a = await login(server, alice, alice_pw)
    a.send_message(mto=bob, mbody="stamped", mtype="chat")
    await handled(a)
    b = await login(server, bob, bob_pw)
    b.register_plugin("xep_0203")
    msg = await b.next_message()
    assert msg["body"] == "stamped"
    assert "urn:xmpp:delay" in str(msg), str(msg)
    await logout(a, b)


async def test_message_to_unknown_user_bounces_service_unavailable(server):
    alice, alice_pw = server.add_user("alice")
    a = await login(server, alice, alice_pw)
    a.send_message(mto=f"nobody@{server.domain}", mbody="hello?", mtype="chat")
    msg = await a.next_message(body=False)
    while msg["type"] != "error":
        msg = await a.next_message(body=False)
    assert msg["error"]["condition"] == "service-unavailable"
    await logout(a)


async def test_roster_set_remove_pushes_to_every_resource(server):
    alice, alice_pw = server.add_user("alice")
    a1 = await login(server, alice, alice_pw, "one")
    a2 = await login(server, alice, alice_pw, "two")
    contact = f"carol@{server.domain}"
    await a1.update_roster(contact, name="Carol", groups=["Friends"])
    for client in (a1, a2):
        await wait_until_async(
            lambda: contact in client.client_roster and client.client_roster[contact]["name"] == "Carol",
            timeout=5,
            what=f"the roster push at {client.boundjid}",
        )
        assert client.client_roster[contact]["groups"] == ["Friends"]
    # A fresh roster get without a version sees the item too.
    iq = a2.make_iq_get(queryxmlns="jabber:iq:roster")
    result = await iq.send(timeout=5)
    assert contact in [str(jid) for jid in result["roster"]["items"]]
    await a1.del_roster_item(contact)
    for client in (a1, a2):
        await wait_until_async(
            lambda: contact not in client.client_roster,
            timeout=5,
            what=f"the removal push at {client.boundjid}",
        )
    iq = a1.make_iq_get(queryxmlns="jabber:iq:roster")
    result = await iq.send(timeout=5)
    assert contact not in [str(jid) for jid in result["roster"]["items"]]
    await logout(a1, a2)


async def test_server_iqs_disco_ping_version(server):
    alice, alice_pw = server.add_user("alice")
    a = await login(server, alice, alice_pw)
    info = await a.plugin["xep_0030"].get_info(jid=server.domain)
    features = info["disco_info"]["features"]
    for feature in ("http://jabber.org/protocol/disco#info", "urn:xmpp:ping", "jabber:iq:version"):
        assert feature in features
    # Registration is off by default, so it is not advertised.
    assert "jabber:iq:register" not in features
    identities = info["disco_info"]["identities"]
    assert any(category == "server" and kind == "im" for category, kind, *_ in identities)
    await a.plugin["xep_0030"].get_items(jid=server.domain)
    # XEP-0199: answered with a result. (ping() would take an error from the
    # server as an answer too; send_ping raises IqError on one.)
    pong = await a.plugin["xep_0199"].send_ping(server.domain, timeout=5)
    assert pong["from"] == server.domain, pong
    version = await a.plugin["xep_0092"].get_version(server.domain)
    assert version["software_version"]["name"] == "Starling"

    # An IQ nobody handles gets service-unavailable.
    iq = a.make_iq_get(queryxmlns="urn:example:unknown", ito=server.domain)
    with pytest.raises(slixmpp.exceptions.IqError) as error:
        await iq.send(timeout=5)
    assert error.value.iq["error"]["condition"] == "service-unavailable"
    await logout(a)


async def test_client_to_client_ping(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a = await login(server, alice, alice_pw, "x")
    b = await login(server, bob, bob_pw, "y")
    # Bob's client answers (ping() raises IqError or IqTimeout otherwise).
    await a.plugin["xep_0199"].ping(jid=f"{bob}/y", timeout=5)
    await logout(a, b)
