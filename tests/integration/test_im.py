"""RFC 6121 behaviour seen through a real client (slixmpp): subscriptions,
presence, messages across resources, offline delivery, rosters, server IQs."""

import asyncio

import pytest
import slixmpp

from conftest import login, logout


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
        for _ in range(200):
            if client.client_roster[contact]["subscription"] == want:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{client.boundjid} sees {contact} as {client.client_roster[contact]['subscription']}")

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
    await asyncio.sleep(0.2)
    a2.send_message(mto=bob, mbody="to you, anywhere", mtype="chat")
    got1 = await b1.next_message()
    got2 = await b2.next_message()
    assert got1["body"] == got2["body"] == "to you, anywhere"
    assert got1["from"] == f"{alice}/mobile"

    # Highest priority wins: b1 raises its priority, only b1 gets the next one.
    b1.send_presence(ppriority=10)
    await asyncio.sleep(0.2)
    a2.send_message(mto=bob, mbody="priority matters", mtype="chat")
    assert (await b1.next_message())["body"] == "priority matters"
    with pytest.raises(asyncio.TimeoutError):
        await b2.next_message(timeout=0.5)

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
    # Bob is offline: the server stores them; give it a moment to process.
    await asyncio.sleep(0.5)
    b = await login(server, bob, bob_pw, "pc")
    bodies = [(await b.next_message())["body"] for _ in range(3)]
    assert bodies == ["offline 0", "offline 1", "offline 2"]
    first = None
    # The stored copies carry a XEP-0203 delay stamp.
    b2 = await login(server, bob, bob_pw, "second")
    with pytest.raises(asyncio.TimeoutError):
        first = await b2.next_message(timeout=0.5)
    assert first is None
    await logout(a, b, b2)


async def test_offline_message_has_delay_stamp(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a = await login(server, alice, alice_pw)
    a.send_message(mto=bob, mbody="stamped", mtype="chat")
    await asyncio.sleep(0.3)
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
        for _ in range(100):
            if contact in client.client_roster and client.client_roster[contact]["name"] == "Carol":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no roster push at {client.boundjid}")
        assert client.client_roster[contact]["groups"] == ["Friends"]
    # A fresh roster get without a version sees the item too.
    iq = a2.make_iq_get(queryxmlns="jabber:iq:roster")
    result = await iq.send(timeout=5)
    assert contact in [str(jid) for jid in result["roster"]["items"]]
    await a1.del_roster_item(contact)
    for client in (a1, a2):
        for _ in range(100):
            if contact not in client.client_roster:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no removal push at {client.boundjid}")
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
    rtt = await a.plugin["xep_0199"].ping(jid=server.domain, timeout=5)
    assert rtt is not None
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
    rtt = await a.plugin["xep_0199"].ping(jid=f"{bob}/y", timeout=5)
    assert rtt is not None
    await logout(a, b)
