"""Blocking Command (XEP-0191) and its reports (XEP-0377) with real slixmpp
clients (the `xep_0191` plugin: get, block, unblock, pushes) and raw
stanzas for the errors: both directions, every stanza kind, in `starling
serve` and across two connection-managers of the local cluster, where a
block made through one node stops the blocked user's stanzas arriving
through the other at once; and the block list's size limit."""

import asyncio
import sqlite3
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError

from conftest import RawClient, handled, login, logout, presence_applied
from test_cluster import befriend, cluster  # noqa: F401 (the cluster fixture)

BLOCKING = "urn:xmpp:blocking"
BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
REPORTING = "urn:xmpp:reporting:1"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def with_blocking(client):
    """Register the plugin and queue the pushes it sees, as (kind, jids)."""
    client.register_plugin("xep_0191")
    client.pushes = asyncio.Queue()

    def queue(kind):
        return lambda iq: client.pushes.put_nowait((kind, sorted(str(item["jid"]) for item in iq[kind])))

    client.add_event_handler("blocked", queue("block"))
    client.add_event_handler("unblocked", queue("unblock"))


async def next_push(client, timeout=20.0):
    return await asyncio.wait_for(client.pushes.get(), timeout)


def error_of(stanza_xml: ET.Element):
    """(condition, has the <blocked/> child) of an error stanza."""
    error = stanza_xml.find("{jabber:client}error")
    assert error is not None, ET.tostring(stanza_xml)
    conditions = [child.tag.split("}")[1] for child in error if child.tag.startswith("{" + STANZAS)]
    return conditions[0], error.find(f"{{{BLOCKING_ERRORS}}}blocked") is not None


async def next_message_error(client, timeout=20.0):
    while True:
        msg = await asyncio.wait_for(client.messages.get(), timeout)
        if msg["type"] == "error":
            return msg


async def iq_error(awaitable):
    with pytest.raises(IqError) as raised:
        await awaitable
    return raised.value.iq


async def block_with_report(client, jid, reason, text):
    iq = client.make_iq_set()
    block = ET.SubElement(iq.xml, f"{{{BLOCKING}}}block")
    item = ET.SubElement(block, f"{{{BLOCKING}}}item", {"jid": jid})
    report = ET.SubElement(item, f"{{{REPORTING}}}report", {"reason": reason})
    ET.SubElement(report, f"{{{REPORTING}}}text").text = text
    return await iq.send(timeout=20)


async def unblock_all(client):
    """Section 3.5: an empty <unblock/> (the plugin sends none without items)."""
    iq = client.make_iq_set()
    iq.enable("unblock")
    return await iq.send(timeout=20)


async def blocking_scenario(node_a1, node_a2, node_bob, alice, alice_pw, bob, bob_pw):
    """Alice (two resources, maybe on two nodes) blocks Bob (maybe on another)."""
    a1 = await login(node_a1, alice, alice_pw, "one", presence=False)
    a2 = await login(node_a2, alice, alice_pw, "two", presence=False)
    b = await login(node_bob, bob, bob_pw, "b", presence=False)
    for client in (a1, a2, b):
        with_blocking(client)
        client.send_presence()
        await presence_applied(client, timeout=20)
    await befriend(a1, b, bob)

    # Section 3.1 and XEP-0377: both features are advertised.
    info = await a1.plugin["xep_0030"].get_info(jid="localhost", timeout=20)
    assert BLOCKING in info["disco_info"]["features"]
    assert REPORTING in info["disco_info"]["features"]

    # Section 3.2: an empty list; both of alice's resources ask for it (so
    # both are "interested" and get pushes).
    assert await a1.plugin["xep_0191"].get_blocked_jids(timeout=20) == set()
    assert await a2.plugin["xep_0191"].get_blocked_jids(timeout=20) == set()

    # Section 3.3: a1 blocks bob with a XEP-0377 report; both resources get
    # the push, and bob sees alice's resources go unavailable.
    await block_with_report(a1, bob, "urn:xmpp:reporting:spam", "unwanted")
    for client in (a1, a2):
        assert await next_push(client) == ("block", [bob])
    gone = set()
    while gone != {a1.boundjid.full, a2.boundjid.full}:
        presence = await b.next_presence(lambda p: p["type"] == "unavailable", timeout=20)
        gone.add(presence["from"].full)
    assert await a2.plugin["xep_0191"].get_blocked_jids(timeout=20) == {bob}
    for client in (a1, a2):
        while not client.presences.empty():
            client.presences.get_nowait()

    # Inbound, from the blocked contact: a message and an IQ get
    # service-unavailable; presence is dropped without a word.
    b.send_message(mto=alice, mbody="hello?", mtype="chat")
    error = await next_message_error(b)
    assert error_of(error.xml) == ("service-unavailable", False)
    iq = await iq_error(b.plugin["xep_0199"].ping(jid=a1.boundjid.full, timeout=20))
    assert error_of(iq.xml) == ("service-unavailable", False)
    b.send_presence(pto=a1.boundjid.full, pstatus="directed")
    b.send_presence(pstatus="broadcast")
    await handled(b)
    # Nothing reached alice: what bob's stanzas would have brought is ahead
    # of the answer to her own ping on her node's channel.
    await handled(a1)
    await handled(a2)
    for client in (a1, a2):
        assert client.messages.empty()
        while not client.presences.empty():
            presence = client.presences.get_nowait()
            assert presence["from"].bare != bob, presence

    # Outbound, to the blocked contact: not-acceptable with <blocked/>, for
    # a message, an IQ and directed presence.
    a2.send_message(mto=bob, mbody="can you hear me now?", mtype="chat")
    error = await next_message_error(a2)
    assert error_of(error.xml) == ("not-acceptable", True)
    iq = await iq_error(a1.plugin["xep_0199"].ping(jid=b.boundjid.full, timeout=20))
    assert error_of(iq.xml) == ("not-acceptable", True)
    a1.send_presence(pto=b.boundjid.full, pstatus="to bob")
    presence = await a1.next_presence(lambda p: p["type"] == "error", timeout=20)
    assert error_of(presence.xml) == ("not-acceptable", True)
    await handled(b)
    assert b.messages.empty()

    # Section 3.4: a2 unblocks bob; both resources get the push; bob gets
    # alice's current presence again, and alice bob's.
    await a2.plugin["xep_0191"].unblock(bob, timeout=20)
    for client in (a1, a2):
        assert await next_push(client) == ("unblock", [bob])
    back = set()
    while back != {a1.boundjid.full, a2.boundjid.full}:
        presence = await b.next_presence(lambda p: p["type"] == "available" and p["from"].bare == alice, timeout=20)
        back.add(presence["from"].full)
    await a1.next_presence(lambda p: p["from"] == b.boundjid and p["type"] == "available", timeout=20)
    b.send_message(mto=alice, mbody="hello again", mtype="chat")
    assert (await a1.next_message(timeout=20))["body"] == "hello again"

    # Section 3.5: unblock everything, pushed as an empty unblock.
    await a1.plugin["xep_0191"].block([bob, "spam.example"], timeout=20)
    for client in (a1, a2):
        assert await next_push(client) == ("block", sorted([bob, "spam.example"]))
    await unblock_all(a1)
    for client in (a1, a2):
        assert await next_push(client) == ("unblock", [])
    assert await a1.plugin["xep_0191"].get_blocked_jids(timeout=20) == set()
    b.send_message(mto=alice, mbody="unblocked", mtype="chat")
    assert (await a1.next_message(timeout=20))["body"] == "unblocked"
    await logout(a1, a2, b)


async def test_blocking_in_one_process(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    await blocking_scenario(server, server, server, alice, alice_pw, bob, bob_pw)
    # XEP-0377: the report was stored with the item (then removed with it);
    # the durable list lives in the database, not in a process.
    database = sqlite3.connect(server.dir / "data" / "starling.db")
    assert database.execute("SELECT COUNT(*) FROM blocklist_items").fetchone() == (0,)


async def test_blocking_across_two_connection_managers(cluster):  # noqa: F811 (the fixture)
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    # Alice's resources on both nodes, bob on the second.
    await blocking_scenario(
        cluster.node("cm-1"), cluster.node("cm-2"), cluster.node("cm-2"), alice, alice_pw, bob, bob_pw
    )


async def test_a_block_on_one_node_stops_the_other_node_at_once(cluster):  # noqa: F811 (the fixture)
    """The block is made through cm-1 (router replica of that stream); bob's
    stanzas come through cm-2 (maybe another replica, with its own cache):
    the very next one is refused."""
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    a = await login(cluster.node("cm-1"), alice, alice_pw, "a")
    b = await login(cluster.node("cm-2"), bob, bob_pw, "b")
    with_blocking(a)
    for round_number in range(5):
        # Fill every cache with "not blocked" first.
        b.send_message(mto=a.boundjid.full, mbody=f"before {round_number}", mtype="chat")
        assert (await a.next_message(timeout=20))["body"] == f"before {round_number}"
        await a.plugin["xep_0191"].block(bob, timeout=20)
        b.send_message(mto=a.boundjid.full, mbody=f"after {round_number}", mtype="chat")
        error = await next_message_error(b)
        assert error_of(error.xml) == ("service-unavailable", False)
        await a.plugin["xep_0191"].unblock(bob, timeout=20)
    await handled(a)
    assert a.messages.empty()
    await logout(a, b)


def raw_login(server, jid, password, resource="raw"):
    raw = RawClient(server)
    raw.login(jid, password, resource)
    return raw


def raw_iq(raw, xml):
    """Send an IQ and return the answer with the same id (an empty result
    ends its element at once, an error with `</iq>`)."""
    iq_id = xml.split("id='", 1)[1].split("'", 1)[0]
    raw.send(xml)
    answer = raw.recv_until(f"id='{iq_id}'")
    start = answer.rindex("<iq")
    head = raw.recv_until(">")
    answer = answer[start:] + head
    if not head.endswith("/>"):
        answer += raw.recv_until("</iq>")
    return answer


async def test_bad_requests_get_the_errors_the_xep_names(server_factory):
    server = server_factory(extra_toml="[blocking]\nmax_items = 5\n")
    alice, alice_pw = server.add_user("alice")
    raw = raw_login(server, alice, alice_pw)
    try:
        # Section 3.3: a block without items is bad-request.
        answer = raw_iq(raw, f"<iq type='set' id='e1'><block xmlns='{BLOCKING}'/></iq>")
        assert "id='e1'" in answer and "<bad-request" in answer, answer
        # An item that is not a JID: jid-malformed.
        answer = raw_iq(raw, f"<iq type='set' id='e2'><block xmlns='{BLOCKING}'><item jid='@bad'/></block></iq>")
        assert "id='e2'" in answer and "<jid-malformed" in answer, answer
        # An item without a jid, or a report without a reason: bad-request.
        answer = raw_iq(raw, f"<iq type='set' id='e3'><block xmlns='{BLOCKING}'><item/></block></iq>")
        assert "id='e3'" in answer and "<bad-request" in answer, answer
        answer = raw_iq(
            raw,
            f"<iq type='set' id='e4'><block xmlns='{BLOCKING}'><item jid='x@y.example'>"
            f"<report xmlns='{REPORTING}'/></item></block></iq>",
        )
        assert "id='e4'" in answer and "<bad-request" in answer, answer
        # A get of <block/>: bad-request; another user's list: forbidden.
        answer = raw_iq(raw, f"<iq type='get' id='e5'><block xmlns='{BLOCKING}'><item jid='x@y.example'/></block></iq>")
        assert "id='e5'" in answer and "<bad-request" in answer, answer
        bob, _ = server.add_user("bob")
        answer = raw_iq(raw, f"<iq type='set' id='e6' to='{bob}'><block xmlns='{BLOCKING}'><item jid='x@y.example'/></block></iq>")
        assert "id='e6'" in answer and "<forbidden" in answer, answer

        # The limit (blocking.max_items = 5): more items at once, or more in
        # total, is policy-violation and adds nothing.
        items = "".join(f"<item jid='u{i}@spam.example'/>" for i in range(6))
        answer = raw_iq(raw, f"<iq type='set' id='l1'><block xmlns='{BLOCKING}'>{items}</block></iq>")
        assert "id='l1'" in answer and "<policy-violation" in answer, answer
        items = "".join(f"<item jid='u{i}@spam.example'/>" for i in range(4))
        answer = raw_iq(raw, f"<iq type='set' id='l2'><block xmlns='{BLOCKING}'>{items}</block></iq>")
        assert "id='l2'" in answer and "type='result'" in answer, answer
        items = "".join(f"<item jid='v{i}@spam.example'/>" for i in range(2))
        answer = raw_iq(raw, f"<iq type='set' id='l3'><block xmlns='{BLOCKING}'>{items}</block></iq>")
        assert "id='l3'" in answer and "<policy-violation" in answer, answer
        answer = raw_iq(raw, f"<iq type='get' id='l4'><blocklist xmlns='{BLOCKING}'/></iq>")
        assert answer.count("<item ") == 4 and "v0@" not in answer, answer
        # Re-blocking what is there is no new item: still accepted at the cap.
        answer = raw_iq(raw, f"<iq type='set' id='l5'><block xmlns='{BLOCKING}'><item jid='u0@spam.example'/><item jid='last@spam.example'/></block></iq>")
        assert "id='l5'" in answer and "type='result'" in answer, answer
    finally:
        raw.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_hundred_thousand_items_get_a_clean_error_in_bounded_memory(server_factory):
    # The stanza limit raised so that the 100,000-item request (about 3.5 MB)
    # reaches the router: it is refused before any address is read, and the
    # error does not echo the request back.
    server = server_factory(extra_toml="[limits]\nmax_stanza_bytes = 8000000\n")
    alice, alice_pw = server.add_user("alice")
    raw = raw_login(server, alice, alice_pw)
    items = "".join(f"<item jid='user{i}@spam.example'/>" for i in range(100_000))
    try:
        sizes = []
        rss = []
        for attempt in range(16):
            rss.append(rss_kib(server.process.pid))
            answer = raw_iq(raw, f"<iq type='set' id='big{attempt}'><block xmlns='{BLOCKING}'>{items}</block></iq>")
            assert "<policy-violation" in answer, answer[:500]
            sizes.append(len(answer))
        assert max(sizes) < 1000, sizes
        answer = raw_iq(raw, f"<iq type='get' id='list'><blocklist xmlns='{BLOCKING}'/></iq>")
        assert "<item" not in answer, answer
    finally:
        raw.close()
    rss.append(rss_kib(server.process.pid))
    print(f"RSS (KiB) before each 100,000-item block and after the last: {rss}")
    # Each request's parsed tree (about 20 times the stanza's bytes, the
    # parser's cost) is freed; the allocator keeps the peak of each thread
    # that parsed one, so RSS steps up a few times and stays. Sixteen trees
    # kept would be over a gigabyte.
    assert rss[-1] < 384 * 1024, f"RSS (KiB): {rss}"


async def test_with_the_default_stanza_limit_the_huge_request_ends_the_stream(server):
    alice, alice_pw = server.add_user("alice")
    raw = raw_login(server, alice, alice_pw)
    items = "".join(f"<item jid='user{i}@spam.example'/>" for i in range(100_000))
    try:
        raw.send(f"<iq type='set' id='big'><block xmlns='{BLOCKING}'>{items}</block></iq>")
        closed = raw.read_until_closed(timeout=30)
        assert "policy-violation" in closed, closed[-500:]
    except (BrokenPipeError, ConnectionResetError):
        # The server closed the stream while the request was still being sent.
        pass
    finally:
        raw.close()
    # The server is fine, and nothing was blocked.
    a = await login(server, alice, alice_pw, "after", presence=False)
    a.register_plugin("xep_0191")
    assert await a.plugin["xep_0191"].get_blocked_jids(timeout=20) == set()
    await logout(a)


async def test_full_jid_and_domain_items_match_as_the_xep_says(server):
    """Section 3.3 (JID matching): a full JID blocks that resource only; a
    domain blocks every address at it."""
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a = await login(server, alice, alice_pw, "a")
    b1 = await login(server, bob, bob_pw, "one")
    b2 = await login(server, bob, bob_pw, "two")
    a.register_plugin("xep_0191")
    await a.plugin["xep_0191"].block(f"{bob}/one", timeout=20)
    b1.send_message(mto=a.boundjid.full, mbody="from one", mtype="chat")
    assert error_of((await next_message_error(b1)).xml) == ("service-unavailable", False)
    b2.send_message(mto=a.boundjid.full, mbody="from two", mtype="chat")
    assert (await a.next_message(timeout=20))["body"] == "from two"
    # Outbound to the blocked resource only.
    a.send_message(mto=f"{bob}/one", mbody="to one", mtype="chat")
    assert error_of((await next_message_error(a)).xml) == ("not-acceptable", True)
    a.send_message(mto=f"{bob}/two", mbody="to two", mtype="chat")
    assert (await b2.next_message(timeout=20))["body"] == "to two"
    # The whole domain: both of bob's resources, and the server's own
    # address is still reachable (a ping to it is answered).
    await a.plugin["xep_0191"].block("localhost", timeout=20)
    b2.send_message(mto=a.boundjid.full, mbody="from two again", mtype="chat")
    assert error_of((await next_message_error(b2)).xml) == ("service-unavailable", False)
    await handled(a)
    assert a.messages.empty()
    await logout(a, b1, b2)

