"""Multi-user chat (XEP-0045) with slixmpp's xep_0045 plugin: join, messages,
history, nick change, kick, conflicts and bad nicks, leaving with the
session; in `starling serve` and across the two connection-managers of the
cluster; a room whose router replica is killed keeps its occupants; a
persistent room comes back from the database when Redis loses its keys and
when `starling serve` restarts."""

import asyncio
import re
import signal
import subprocess
import urllib.request

import pytest
from slixmpp.exceptions import IqError, PresenceError

from conftest import handled, login, logout, next_matching, wait_until_async
from test_cluster import Cluster, cluster  # noqa: F401 (the cluster fixture)

ROOM = "coven@conference.localhost"


async def muc_login(node, jid, password, resource):
    client = await login(node, jid, password, resource)
    client.register_plugin("xep_0004")
    client.register_plugin("xep_0045")
    # The MUC plugin takes the room's presence: queued here.
    client.room_presences = asyncio.Queue()
    client.add_event_handler("groupchat_presence", lambda p: client.room_presences.put_nowait(p))
    return client


async def room_presence(client, predicate, timeout=20):
    return await next_matching(client.room_presences, predicate, timeout)


def codes(presence):
    return set(presence["muc"]["status_codes"])


async def create_instant_room(client, nick):
    muc = client.plugin["xep_0045"]
    own, _subject, _occupants, _history = await muc.join_muc_wait(ROOM, nick, maxstanzas=0, timeout=20)
    assert {110, 201} <= codes(own), own
    # Section 10.1.2: an instant room, the default configuration accepted.
    await muc.set_room_config(ROOM, client.plugin["xep_0004"].make_form(ftype="submit"))


async def groupchat(client, predicate=lambda m: True, timeout=20):
    while True:
        message = await client.next_message(timeout=timeout)
        if message["type"] == "groupchat" and predicate(message):
            return message


async def scenario(node_a, node_b, a_creds, b_creds, c_creds):
    a = await muc_login(node_a, *a_creds, "a")
    b = await muc_login(node_b, *b_creds, "b")
    c = await muc_login(node_a, *c_creds, "c")
    try:
        await create_instant_room(a, "alice")
        for number in range(3):
            a.send_message(mto=ROOM, mbody=f"early {number}", mtype="groupchat")
        # The sender gets its message back from the room, in order.
        for number in range(3):
            reflected = await groupchat(a)
            assert reflected["body"] == f"early {number}"
            assert reflected["from"] == f"{ROOM}/alice"

        # bob joins from the other node with the last two messages of history.
        own, subject, occupants, history = await b.plugin["xep_0045"].join_muc_wait(ROOM, "bob", maxstanzas=2, timeout=20)
        assert 110 in codes(own)
        assert own["muc"]["role"] == "participant"
        # slixmpp counts the self-presence among the occupants.
        assert sorted(p["from"].resource for p in occupants) == ["alice", "bob"]
        assert [m["body"] for m in history] == ["early 1", "early 2"]
        assert not subject["subject"]
        joined = await room_presence(a, lambda p: p["from"] == f"{ROOM}/bob", timeout=20)
        # alice, a moderator of a semi-anonymous room, sees bob's real JID.
        assert joined["muc"]["jid"].bare == b_creds[0]

        # A message from bob reaches alice with the room's stanza-id.
        b.send_message(mto=ROOM, mbody="hello coven", mtype="groupchat")
        got = await groupchat(a, lambda m: m["body"] == "hello coven")
        assert got["from"] == f"{ROOM}/bob"
        assert f"by=\"{ROOM}\"" in str(got) or f"by='{ROOM}'" in str(got)
        assert "urn:xmpp:occupant-id:0" in str(got)

        # A taken nick is a conflict, an overlong nick is refused (nicks with
        # bidi or control characters, which slixmpp will not send, are
        # refused the same way: the engine's unit tests).
        with pytest.raises(PresenceError) as conflict:
            await c.plugin["xep_0045"].join_muc_wait(ROOM, "alice", timeout=20)
        assert conflict.value.condition == "conflict"
        with pytest.raises(PresenceError) as bad:
            await c.plugin["xep_0045"].join_muc_wait(ROOM, "x" * 100, timeout=20)
        assert bad.value.condition == "jid-malformed"

        # bob changes his nick: 303 to everyone, the new name afterwards.
        assert await b.plugin["xep_0045"].set_self_nick(ROOM, "bobby", timeout=20) == "bobby"
        gone = await room_presence(a, lambda p: p["from"] == f"{ROOM}/bob" and p["type"] == "unavailable", timeout=20)
        assert 303 in codes(gone) and gone["muc"]["item_nick"] == "bobby"
        await room_presence(a, lambda p: p["from"] == f"{ROOM}/bobby" and p["type"] != "unavailable", timeout=20)

        # Private message between occupants.
        b.send_message(mto=f"{ROOM}/alice", mbody="just you", mtype="chat")
        private = await a.next_message(timeout=20)
        assert private["body"] == "just you" and private["from"] == f"{ROOM}/bobby"

        # XEP-0410: the room answers a joined client's self-ping.
        await b.plugin["xep_0199"].ping(jid=f"{ROOM}/bobby", timeout=20)

        # alice kicks bobby (section 8.2): 307 to him.
        await a.plugin["xep_0045"].set_role(ROOM, "bobby", "none")
        kicked = await room_presence(b, lambda p: p["from"] == f"{ROOM}/bobby" and p["type"] == "unavailable", timeout=20)
        assert {307, 110} <= codes(kicked)
        b.send_message(mto=ROOM, mbody="still here?", mtype="groupchat")
        refused = await b.next_message(timeout=20, body=False)
        while refused["type"] != "error":
            refused = await b.next_message(timeout=20, body=False)
        assert refused["error"]["condition"] == "not-acceptable"

        # carol joins, then her session ends without a word: the room hears it
        # (her join was directed presence, RFC 6121 section 4.6.3).
        await c.plugin["xep_0045"].join_muc_wait(ROOM, "carol", maxstanzas=0, timeout=20)
        await room_presence(a, lambda p: p["from"] == f"{ROOM}/carol" and p["type"] != "unavailable", timeout=20)
        await logout(c)
        await room_presence(a, lambda p: p["from"] == f"{ROOM}/carol" and p["type"] == "unavailable", timeout=30)

        # The service and the room in disco.
        items = await a.plugin["xep_0030"].get_items(jid="conference.localhost", timeout=20)
        assert ROOM in [item[0] for item in items["disco_items"]["items"]]
        info = await a.plugin["xep_0030"].get_info(jid=ROOM, timeout=20)
        assert "muc_temporary" in info["disco_info"]["features"]
    finally:
        await logout(a, b, c)


async def test_muc_in_serve(server):
    creds = [server.add_user(name) for name in ("alice", "bob", "carol")]
    await scenario(server, server, *creds)


async def test_muc_across_two_connection_managers(cluster):
    creds = [cluster.add_user(name) for name in ("alice", "bob", "carol")]
    await scenario(cluster.node("cm-1"), cluster.node("cm-2"), *creds)


async def test_members_only_room_refuses_strangers(server):
    alice = server.add_user("alice")
    bob = server.add_user("bob")
    a = await muc_login(server, *alice, "a")
    b = await muc_login(server, *bob, "b")
    try:
        await create_instant_room(a, "alice")
        form = await a.plugin["xep_0045"].get_room_config(ROOM)
        assert "muc#roomconfig_membersonly" in [field["var"] for field in form["fields"]]
        submit = a.plugin["xep_0004"].make_form(ftype="submit")
        submit.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
        submit.add_field(var="muc#roomconfig_membersonly", ftype="boolean", value=True)
        await a.plugin["xep_0045"].set_room_config(ROOM, submit)
        with pytest.raises(PresenceError) as refused:
            await b.plugin["xep_0045"].join_muc_wait(ROOM, "bob", timeout=20)
        assert refused.value.condition == "registration-required"
        await a.plugin["xep_0045"].set_affiliation(ROOM, "member", jid=bob[0])
        await b.plugin["xep_0045"].join_muc_wait(ROOM, "bob", timeout=20)
        # Only owners read the configuration.
        with pytest.raises(IqError) as forbidden:
            await b.plugin["xep_0045"].get_room_config(ROOM)
        assert forbidden.value.condition == "forbidden"
    finally:
        await logout(a, b)


def muc_accepted(cluster, router):
    """The room stanzas a router replica applied (its /metrics, local-cluster.sh ports)."""
    offset = {"router-1": 11, "router-2": 21}[router]
    text = urllib.request.urlopen(f"http://127.0.0.1:{cluster.base + offset}/metrics", timeout=10).read().decode()
    match = re.search(r'^starling_muc_stanzas_total\{outcome="accepted"\} (\d+)', text, re.M)
    return int(match.group(1)) if match else 0


async def test_room_survives_its_router_replica_killed(tmp_path):
    """kill -9 one router replica while a numbered message goes to the room
    every 20 ms: every message the room accepted reaches both occupants in
    the room's order, and nobody left the room."""
    c = Cluster(tmp_path)
    try:
        c.up()
        alice = c.add_user("alice")
        bob = c.add_user("bob")
        a = await muc_login(c.node("cm-1"), *alice, "a")
        b = await muc_login(c.node("cm-2"), *bob, "b")
        await create_instant_room(a, "alice")
        await b.plugin["xep_0045"].join_muc_wait(ROOM, "bob", maxstanzas=0, timeout=20)
        await room_presence(a, lambda p: p["from"] == f"{ROOM}/bob", timeout=20)
        count = 150
        before = {router: muc_accepted(c, router) for router in ("router-1", "router-2")}
        for number in range(count):
            a.send_message(mto=ROOM, mbody=f"n{number}", mtype="groupchat")
            if number == 50:
                # The replica that has been applying alice's messages dies.
                def applied():
                    return {router: muc_accepted(c, router) - before[router] for router in before}
                await wait_until_async(lambda: sum(applied().values()) >= 40, what="40 messages applied")
                serving = max(before, key=lambda router: applied()[router])
                c.kill(serving, signal.SIGKILL)
            await asyncio.sleep(0.02)

        async def numbers(client):
            seen = []
            while len(set(seen)) < count:
                message = await groupchat(client, timeout=30)
                if message["body"].startswith("n"):
                    seen.append(int(message["body"][1:]))
            return list(dict.fromkeys(seen))

        assert await numbers(b) == list(range(count))
        assert await numbers(a) == list(range(count))
        for client, nick in ((a, "bob"), (b, "alice")):
            while not client.room_presences.empty():
                presence = client.room_presences.get_nowait()
                assert not (presence["from"] == f"{ROOM}/{nick}" and presence["type"] == "unavailable"), "an occupant left"
        await handled(a)
        await logout(a, b)
    finally:
        c.down()


async def create_persistent_members_only_room(owner, member_jid, banned_jid):
    """The owner creates a named, persistent, members-only room, makes a
    member, bans someone with a reason and leaves: the room stays with no
    occupant (XEP-0045 sections 10.1, 10.2, 9.3, 9.1)."""
    muc = owner.plugin["xep_0045"]
    own, _subject, _occupants, _history = await muc.join_muc_wait(ROOM, "alice", maxstanzas=0, timeout=20)
    assert 201 in codes(own)
    submit = owner.plugin["xep_0004"].make_form(ftype="submit")
    submit.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
    submit.add_field(var="muc#roomconfig_roomname", ftype="text-single", value="The Coven")
    submit.add_field(var="muc#roomconfig_persistentroom", ftype="boolean", value=True)
    submit.add_field(var="muc#roomconfig_membersonly", ftype="boolean", value=True)
    await muc.set_room_config(ROOM, submit)
    await muc.set_affiliation(ROOM, "member", jid=member_jid)
    await muc.set_affiliation(ROOM, "outcast", jid=banned_jid, reason="Treason")
    muc.leave_muc(ROOM, "alice")
    await room_presence(owner, lambda p: p["from"] == f"{ROOM}/alice" and p["type"] == "unavailable", timeout=20)


async def assert_room_came_back(owner, member, outsider):
    """The room is as configured: the outsider is refused, the member
    enters (not a new room: no 201), the owner is its owner with the
    configuration and the ban list it had, the service lists it."""
    with pytest.raises(PresenceError) as refused:
        await outsider.plugin["xep_0045"].join_muc_wait(ROOM, "carol", timeout=20)
    assert refused.value.condition == "registration-required"
    own, _subject, _occupants, _history = await member.plugin["xep_0045"].join_muc_wait(ROOM, "bob", maxstanzas=0, timeout=20)
    assert 201 not in codes(own) and 110 in codes(own)
    assert own["muc"]["affiliation"] == "member"
    items = await outsider.plugin["xep_0030"].get_items(jid="conference.localhost", timeout=20)
    assert (ROOM, None, "The Coven") in items["disco_items"]["items"]
    own, _subject, _occupants, _history = await owner.plugin["xep_0045"].join_muc_wait(ROOM, "alice", maxstanzas=0, timeout=20)
    assert own["muc"]["affiliation"] == "owner"
    form = await owner.plugin["xep_0045"].get_room_config(ROOM)
    values = {field["var"]: field["value"] for field in form["fields"]}
    assert values["muc#roomconfig_roomname"] == "The Coven"
    assert values["muc#roomconfig_persistentroom"] in (True, "1")
    assert values["muc#roomconfig_membersonly"] in (True, "1")
    bans = await owner.plugin["xep_0045"].get_affiliation_list(ROOM, "outcast")
    assert len(bans) == 1
    info = await outsider.plugin["xep_0030"].get_info(jid=ROOM, timeout=20)
    assert "muc_persistent" in info["disco_info"]["features"]


async def test_persistent_room_survives_the_loss_of_its_redis_keys(cluster):
    alice, bob, carol, earl = [cluster.add_user(name) for name in ("alice", "bob", "carol", "earl")]
    a = await muc_login(cluster.node("cm-1"), *alice, "a")
    b = await muc_login(cluster.node("cm-2"), *bob, "b")
    c = await muc_login(cluster.node("cm-1"), *carol, "c")
    try:
        await create_persistent_members_only_room(a, bob[0], earl[0])
        # Every room key goes (the records, histories, leases, the index):
        # what a Redis restart does, Redis keeping nothing on disk.
        deleted = subprocess.run(
            ["redis-cli", "-p", str(cluster.redis_port), "EVAL",
             "local n = 0 for _, key in ipairs(redis.call('KEYS', ARGV[1])) do n = n + redis.call('DEL', key) end return n",
             "0", "*muc:*"],
            capture_output=True, text=True, check=True, timeout=20,
        )
        assert int(deleted.stdout.strip()) >= 2, deleted
        await assert_room_came_back(a, b, c)
    finally:
        await logout(a, b, c)


async def test_persistent_room_survives_a_restart_of_serve(server):
    alice, bob, carol, earl = [server.add_user(name) for name in ("alice", "bob", "carol", "earl")]
    a = await muc_login(server, *alice, "a")
    try:
        await create_persistent_members_only_room(a, bob[0], earl[0])
    finally:
        await logout(a)
    # The process goes, with the rooms it held in memory; SQLite keeps the room.
    server.stop()
    server.start()
    a = await muc_login(server, *alice, "a")
    b = await muc_login(server, *bob, "b")
    c = await muc_login(server, *carol, "c")
    try:
        await assert_room_came_back(a, b, c)
    finally:
        await logout(a, b, c)
