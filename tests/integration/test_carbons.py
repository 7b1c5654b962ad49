"""Message Carbons (XEP-0280) with real slixmpp clients (its `xep_0280`
plugin, which takes a copy only from the account's own bare JID, section 11):
two resources of one account and a contact, in `starling serve` and across
two connection-managers of the local cluster (Redis registry and bus)."""

import asyncio
import time
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError

from conftest import handled, login, logout, presence_applied
from test_cluster import cluster  # noqa: F401 (the cluster fixture)

CARBONS = "urn:xmpp:carbons:2"


def collect_carbons(client):
    """Queue every copy the client's plugin accepts, as (direction, wrapper)."""
    client.carbons = asyncio.Queue()
    client.register_plugin("xep_0280")
    client.add_event_handler("carbon_sent", lambda msg: client.carbons.put_nowait(("sent", msg)))
    client.add_event_handler("carbon_received", lambda msg: client.carbons.put_nowait(("received", msg)))


async def next_carbon(client, timeout=20.0):
    return await asyncio.wait_for(client.carbons.get(), timeout)


def with_child(client, to, body, xml):
    """A chat message with an extra payload (a hint or `<private/>`)."""
    message = client.make_message(mto=to, mbody=body, mtype="chat")
    message.xml.append(ET.fromstring(xml))
    return message


async def carbons_scenario(node_a, node_b, node_contact, alice, alice_pw, bob, bob_pw):
    a = await login(node_a, alice, alice_pw, "a", presence=False)
    b = await login(node_b, alice, alice_pw, "b", presence=False)
    c = await login(node_contact, bob, bob_pw, "c", presence=False)
    for client in (a, b, c):
        collect_carbons(client)

    # Section 3: the server advertises the feature.
    info = await a.plugin["xep_0030"].get_info(jid="localhost", timeout=20)
    assert CARBONS in info["disco_info"]["features"]

    # Section 4: both of alice's resources enable carbons (an error raises).
    await a.plugin["xep_0280"].enable(timeout=20)
    await b.plugin["xep_0280"].enable(timeout=20)
    for client in (a, b, c):
        client.send_presence()
        await presence_applied(client, timeout=20)

    # Section 7: what A sends, B sees as a sent copy; A itself gets none.
    a.send_message(mto=bob, mbody="from a", mtype="chat")
    assert (await c.next_message(timeout=20))["body"] == "from a"
    direction, copy = await next_carbon(b)
    assert direction == "sent"
    assert copy["from"] == alice and copy["to"] == b.boundjid
    assert copy["carbon_sent"]["body"] == "from a"
    assert copy["carbon_sent"]["from"] == a.boundjid and copy["carbon_sent"]["to"].bare == bob

    # Section 6: what the contact sends to A's full JID, B sees as a received copy.
    c.send_message(mto=a.boundjid.full, mbody="to a", mtype="chat")
    assert (await a.next_message(timeout=20))["body"] == "to a"
    direction, copy = await next_carbon(b)
    assert direction == "received"
    assert copy["from"] == alice and copy["to"] == b.boundjid
    assert copy["carbon_received"]["body"] == "to a"
    assert copy["carbon_received"]["to"] == a.boundjid

    # XEP-0334 <no-copy/> and section 8 <private/>: no copy. Each is followed
    # by a plain message from the same sender: the copy of that one is the next
    # thing B sees (one sender's stanzas are routed in order, and copies for
    # B's node travel on one channel).
    with_child(c, a.boundjid.full, "hinted", "<no-copy xmlns='urn:xmpp:hints'/>").send()
    assert (await a.next_message(timeout=20))["body"] == "hinted"
    c.send_message(mto=a.boundjid.full, mbody="plain again", mtype="chat")
    assert (await a.next_message(timeout=20))["body"] == "plain again"
    direction, copy = await next_carbon(b)
    assert (direction, copy["carbon_received"]["body"]) == ("received", "plain again")

    with_child(a, bob, "private", f"<private xmlns='{CARBONS}'/>").send()
    assert (await c.next_message(timeout=20))["body"] == "private"
    a.send_message(mto=bob, mbody="public again", mtype="chat")
    assert (await c.next_message(timeout=20))["body"] == "public again"
    direction, copy = await next_carbon(b)
    assert (direction, copy["carbon_sent"]["body"]) == ("sent", "public again")

    # Section 5: B disables; A's next message is not copied to it. The contact
    # never enabled carbons and never saw a copy; A never saw one of its own.
    await b.plugin["xep_0280"].disable(timeout=20)
    a.send_message(mto=bob, mbody="after disable", mtype="chat")
    assert (await c.next_message(timeout=20))["body"] == "after disable"
    await handled(a)
    await handled(c)
    await handled(b)
    assert b.carbons.empty()
    assert a.carbons.empty()
    assert c.carbons.empty()
    await logout(a, b, c)


async def test_carbons_in_one_process(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    await carbons_scenario(server, server, server, alice, alice_pw, bob, bob_pw)


async def test_carbons_across_two_connection_managers(cluster):  # noqa: F811 (the fixture)
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    # Alice's two resources on different nodes, the contact on the first.
    await carbons_scenario(
        cluster.node("cm-1"), cluster.node("cm-2"), cluster.node("cm-1"), alice, alice_pw, bob, bob_pw
    )


async def test_carbons_survive_the_loss_of_the_routing_state(cluster):  # noqa: F811 (the fixture)
    """The switch lives in the session record: when Redis loses every record,
    the connection-managers re-register their sessions from their own copy,
    carbons included (a resource that enabled them keeps getting copies)."""
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    a = await login(cluster.node("cm-1"), alice, alice_pw, "a")
    b = await login(cluster.node("cm-2"), alice, alice_pw, "b")
    c = await login(cluster.node("cm-1"), bob, bob_pw, "c")
    for client in (a, b):
        collect_carbons(client)
        await client.plugin["xep_0280"].enable(timeout=20)
    c.send_message(mto=a.boundjid.full, mbody="before", mtype="chat")
    direction, copy = await next_carbon(b)
    assert (direction, copy["carbon_received"]["body"]) == ("received", "before")

    cluster.redis.kill()
    cluster.redis.wait()
    cluster.start_redis()  # empty: every session record is gone

    deadline = time.monotonic() + 40
    attempt = 0
    while True:
        attempt += 1
        c.send_message(mto=a.boundjid.full, mbody=f"after {attempt}", mtype="chat")
        try:
            direction, copy = await next_carbon(b, timeout=2)
            if direction == "received" and copy["carbon_received"]["body"].startswith("after"):
                break
        except asyncio.TimeoutError:
            pass
        assert time.monotonic() < deadline, "no carbon after the redis restart\n" + cluster.logs()
    await logout(a, b, c)


async def test_switched_off_carbons_are_not_advertised_and_enable_is_refused(server_factory):
    server = server_factory(extra_toml="[carbons]\nenabled = false\n")
    alice, alice_pw = server.add_user("alice")
    a = await login(server, alice, alice_pw, "a")
    collect_carbons(a)
    info = await a.plugin["xep_0030"].get_info(jid="localhost", timeout=20)
    assert CARBONS not in info["disco_info"]["features"]
    with pytest.raises(IqError) as refused:
        await a.plugin["xep_0280"].enable(timeout=20)
    assert refused.value.condition == "service-unavailable"
    await logout(a)


async def test_a_resumed_stream_keeps_its_carbons_through_the_loss_of_the_routing_state(cluster):  # noqa: F811
    """XEP-0198 meets XEP-0280: a stream that enabled carbons on cm-1 is
    resumed on cm-2; the record moved with its switch, and cm-2's own copy of
    it (what it re-registers after Redis lost everything) carries it too."""
    from sm_raw import SM, SmClient, sm_id

    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    desk = await login(cluster.node("cm-2"), alice, alice_pw, "desk")
    contact = await login(cluster.node("cm-1"), bob, bob_pw, "c")
    phone = SmClient(cluster.node("cm-1"), timeout=20)
    phone.authenticate(alice, alice_pw)
    phone.bind("phone")
    phone.send(f"<iq type='set' id='carbons1'><enable xmlns='{CARBONS}'/></iq>")
    assert "type='result'" in phone.recv_until("id='carbons1'") + phone.recv_until(">")
    previd = sm_id(phone.enable())

    desk.send_message(mto=bob, mbody="one", mtype="chat")
    await handled(desk)
    assert phone.read_bodies(1) == ["one"]  # the body inside the sent copy

    phone.drop()
    await asyncio.sleep(0.5)
    resumed = SmClient(cluster.node("cm-2"), timeout=20)
    resumed.authenticate(alice, alice_pw)
    resumed.send(f"<resume xmlns='{SM}' previd='{previd}' h='1'/>")
    assert "<resumed" in resumed.recv_until("<resumed") + resumed.recv_until(">")

    cluster.redis.kill()
    cluster.redis.wait()
    cluster.start_redis()  # empty: the moved record is gone, cm-2 re-registers it

    deadline = time.monotonic() + 40
    attempt = 0
    while True:
        attempt += 1
        desk.send_message(mto=bob, mbody=f"after {attempt}", mtype="chat")
        # Let the client write it (the raw read below blocks the loop); no
        # ping: an answer in flight while Redis restarts may be lost.
        await asyncio.sleep(0.2)
        try:
            if any(body.startswith("after") for body in resumed.read_bodies(1, timeout=2)):
                break
        except TimeoutError:
            pass
        assert time.monotonic() < deadline, "no carbon on the resumed stream after the redis restart\n" + cluster.logs()
    resumed.close()
    await logout(desk, contact)
