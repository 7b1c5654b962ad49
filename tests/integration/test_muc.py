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
from slixmpp import JID
from slixmpp.exceptions import IqError, PresenceError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import handled, login, logout, next_matching, wait_until_async
from test_cluster import Cluster, cluster  # noqa: F401 (the cluster fixture)
from test_mam import query as mam_query

ROOM = "coven@conference.localhost"


async def muc_login(node, jid, password, resource):
    client = await login(node, jid, password, resource)
    client.register_plugin("xep_0004")
    client.register_plugin("xep_0045")
    # The MUC plugin takes the room's presence: queued here.
    client.room_presences = asyncio.Queue()
    client.add_event_handler("groupchat_presence", lambda p: client.room_presences.put_nowait(p))
    # Every message, those without a body too (slixmpp's "message" event
    # is for messages with a body only).
    client.all_messages = asyncio.Queue()
    client.register_handler(Callback("all messages", MatchXPath("{jabber:client}message"),
                                     lambda m: client.all_messages.put_nowait(m)))
    return client


async def any_message(client, predicate=lambda m: True, timeout=20):
    """The next message of any kind `predicate` accepts (from `all_messages`)."""
    return await next_matching(client.all_messages, predicate, timeout)


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


async def groupchat(client, predicate=lambda m: True, timeout=20, body=True):
    if not body:
        return await any_message(client, lambda m: m["type"] == "groupchat" and predicate(m), timeout)
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


RETRACT = "urn:xmpp:message-retract:1"
MODERATE = "urn:xmpp:message-moderate:1"
SID = "urn:xmpp:sid:0"


def room_stanza_id(message):
    element = message.xml.find(f"{{{SID}}}stanza-id")
    assert element is not None and element.get("by") == ROOM, str(message)
    return element.get("id")


async def archive_of(client):
    """The room's whole archive as `client` reads it (slixmpp's RSM paging, two a page)."""
    return [message["mam_result"] async for message in client.plugin["xep_0313"].iterate(jid=ROOM, rsm={"max": 2})]


def archived_body(result):
    return result["forwarded"]["stanza"]["body"]


async def archive_scenario(node_a, node_b, a_creds, b_creds, c_creds):
    """XEP-0313 on a room, XEP-0425 moderation and XEP-0424 retraction."""
    a = await muc_login(node_a, *a_creds, "a")
    b = await muc_login(node_b, *b_creds, "b")
    c = await muc_login(node_a, *c_creds, "c")
    for client in (a, b, c):
        client.register_plugin("xep_0313")
        client.register_plugin("xep_0424")
        client.register_plugin("xep_0425")
    try:
        await create_instant_room(a, "alice")
        submit = a.plugin["xep_0004"].make_form(ftype="submit")
        submit.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
        submit.add_field(var="muc#roomconfig_persistentroom", ftype="boolean", value=True)
        await a.plugin["xep_0045"].set_room_config(ROOM, submit)
        info = await c.plugin["xep_0030"].get_info(jid=ROOM, timeout=20)
        features = set(info["disco_info"]["features"])
        assert {"urn:xmpp:mam:2", MODERATE, "muc_persistent"} <= features, features

        await b.plugin["xep_0045"].join_muc_wait(ROOM, "bob", maxstanzas=0, timeout=20)
        ids = []
        for number in range(5):
            a.send_message(mto=ROOM, mbody=f"m{number}", mtype="groupchat")
            got = await groupchat(b, lambda m, number=number: m["body"] == f"m{number}")
            ids.append(room_stanza_id(got))

        # bob (a participant of a semi-anonymous room) reads the archive from
        # the other node: every message once, from alice's occupant JID, under
        # the stanza-id he received, without alice's real JID.
        results = await archive_of(b)
        assert [archived_body(result) for result in results] == [f"m{n}" for n in range(5)]
        assert [result["id"] for result in results] == ids
        assert all(result["forwarded"]["stanza"]["from"] == f"{ROOM}/alice" for result in results)
        assert all(a_creds[0] not in str(result) for result in results)
        # The owner sees the real JIDs (XEP-0313 section 5.1.2).
        assert all(a_creds[0] in str(result) for result in await archive_of(a))
        # Anyone who may enter an open room may read it, without joining.
        assert len(await archive_of(c)) == 5
        # RSM paging and <fin complete/> as in an account's archive.
        page = await mam_query(b, rsm={"max": 2}, to=ROOM)
        assert page.bodies == ["m0", "m1"] and not page.complete
        page = await mam_query(b, rsm={"max": 2, "after": page.last}, to=ROOM)
        assert page.bodies == ["m2", "m3"]
        page = await mam_query(b, rsm={"max": 10, "after": page.last}, to=ROOM)
        assert page.bodies == ["m4"] and page.complete

        # XEP-0425: only a moderator moderates; an unknown id is item-not-found.
        with pytest.raises(IqError) as refused:
            await b.plugin["xep_0425"].moderate(JID(ROOM), ids[1], "no", timeout=20)
        assert refused.value.condition == "forbidden"
        with pytest.raises(IqError) as unknown:
            await a.plugin["xep_0425"].moderate(JID(ROOM), "12345", "no", timeout=20)
        assert unknown.value.condition == "item-not-found"
        await a.plugin["xep_0425"].moderate(JID(ROOM), ids[1], "spam", timeout=20)
        notice = await groupchat(b, lambda m: m.xml.find(f"{{{RETRACT}}}retract") is not None, body=False)
        retract = notice.xml.find(f"{{{RETRACT}}}retract")
        assert retract.get("id") == ids[1] and notice["from"] == ROOM
        assert retract.find(f"{{{MODERATE}}}moderated").get("by") == f"{ROOM}/alice"

        # XEP-0424: bob retracts his own message, not alice's.
        b.send_message(mto=ROOM, mbody="oops", mtype="groupchat")
        oops = await groupchat(b, lambda m: m["body"] == "oops")
        b.plugin["xep_0424"].send_retraction(JID(ROOM), ids[2], mtype="groupchat")
        refused = await any_message(b, lambda m: m["type"] == "error")
        assert refused["error"]["condition"] == "forbidden"
        b.plugin["xep_0424"].send_retraction(JID(ROOM), room_stanza_id(oops), mtype="groupchat")
        await groupchat(a, lambda m: m.xml.find(f"{{{RETRACT}}}retract") is not None
                        and m.xml.find(f"{{{RETRACT}}}retract").get("id") == room_stanza_id(oops), body=False)

        # The archive keeps tombstones in their place: no body, a <retracted/>.
        results = {result["id"]: result for result in await archive_of(c)}
        for gone in (ids[1], room_stanza_id(oops)):
            stanza = results[gone]["forwarded"]["stanza"]
            assert not stanza["body"], str(stanza)
            assert stanza.xml.find(f"{{{RETRACT}}}retracted") is not None, str(stanza)
        assert archived_body(results[ids[0]]) == "m0"
        assert archived_body(results[ids[2]]) == "m2"
    finally:
        await logout(a, b, c)


async def test_room_archive_and_moderation_in_serve(server):
    creds = [server.add_user(name) for name in ("alice", "bob", "carol")]
    await archive_scenario(server, server, *creds)


async def test_room_archive_and_moderation_across_two_connection_managers(cluster):
    creds = [cluster.add_user(name) for name in ("alice", "bob", "carol")]
    await archive_scenario(cluster.node("cm-1"), cluster.node("cm-2"), *creds)


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


def raw_room_answers(raw, rooms, timeout=60):
    """Read until every room in `rooms` (localparts) answered the join sent
    to `room@conference.localhost/me`: a presence from that occupant JID
    (the self-presence, or the error). Returns {room: error condition or None}."""
    answers = {}
    text = ""
    while len(answers) < len(rooms):
        text += raw.recv_until("</presence>", timeout=timeout)
        for tag in re.finditer(r"<presence\b[^>]*>", text):
            found = re.search(r"from='([^@']+)@conference\.localhost/me'", tag.group(0))
            if not found or found.group(1) not in rooms or found.group(1) in answers:
                continue
            if "type='error'" in tag.group(0):
                rest = text[tag.end():]
                condition = re.search(r"<([a-z-]+) xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'", rest)
                if condition is None:
                    break  # the rest of this error is still to come
                answers[found.group(1)] = condition.group(1)
            else:
                answers[found.group(1)] = None
        # Keep only what may hold an unfinished stanza.
        text = text[text.rfind("<presence"):] if len(answers) < len(rooms) else ""
    return answers


async def test_ten_thousand_joins_from_one_account_are_bounded_and_answered(server_factory):
    """One account tries to join 10,000 rooms: past `muc.max_rooms_per_user`
    each join is refused (resource-constraint; past the session's directed
    presences, policy-violation from the presence service); every attempt is
    answered, no room is made for a refused join, and two other users'
    room carries on."""
    from test_bounds import raw_login

    # The edge's stanza rate limit off: the whole flood reaches the rooms.
    server = server_factory(extra_toml="[limits]\nstanzas_per_second = 0\n[muc]\nmax_rooms_per_user = 50\n")
    flooder, flooder_pw = server.add_user()
    alice = server.add_user("alice")
    bob = server.add_user("bob")
    a = await muc_login(server, *alice, "a")
    b = await muc_login(server, *bob, "b")
    raw, _ = raw_login(server, flooder, flooder_pw, presence=True)
    try:
        await create_instant_room(a, "alice")
        await b.plugin["xep_0045"].join_muc_wait(ROOM, "bob", maxstanzas=0, timeout=20)
        answers = {}
        batch = 200
        for start in range(0, 10_000, batch):
            rooms = [f"flood{n}" for n in range(start, start + batch)]
            raw.send("".join(
                f"<presence to='{room}@conference.localhost/me'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
                for room in rooms
            ))
            # Blocking reads (the raw client): the other clients wait meanwhile.
            answers.update(raw_room_answers(raw, set(rooms)))
        assert len(answers) == 10_000
        joined = [room for room, condition in answers.items() if condition is None]
        assert len(joined) == 50
        refused = {condition for condition in answers.values() if condition is not None}
        assert refused <= {"resource-constraint", "policy-violation"}, refused
        assert "resource-constraint" in refused
        # The other users' room is unaffected.
        b.send_message(mto=ROOM, mbody="still talking", mtype="groupchat")
        got = await groupchat(a, lambda m: m["body"] == "still talking")
        assert got["from"] == f"{ROOM}/bob"
    finally:
        raw.close()
        await logout(a, b)


async def test_an_invitation_flood_is_bounded_per_occupant(server_factory):
    """`muc.max_requests_per_minute` invitations from one occupant go out;
    the next are refused with policy-violation, and another occupant's
    invitations still go."""
    server = server_factory(extra_toml="[muc]\nmax_requests_per_minute = 5\n")
    alice, bob, carol = (server.add_user(name) for name in ("alice", "bob", "carol"))
    a = await muc_login(server, *alice, "a")
    b = await muc_login(server, *bob, "b")
    c = await muc_login(server, *carol, "c")
    try:
        await create_instant_room(a, "alice")
        await b.plugin["xep_0045"].join_muc_wait(ROOM, "bob", maxstanzas=0, timeout=20)
        for number in range(20):
            b.plugin["xep_0045"].invite(ROOM, carol[0], reason=f"flood {number}")
        for _ in range(15):
            message = await any_message(b, lambda m: m["type"] == "error")
            # (slixmpp's error conditions predate RFC 6120's policy-violation.)
            condition = message.xml.find("{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}policy-violation")
            assert condition is not None, str(message)
        # Bob's twenty were applied before his refusals came back: alice's
        # invitation, sent now, is the one after bob's five.
        a.plugin["xep_0045"].invite(ROOM, carol[0], reason="from alice")
        reasons = []
        while "from alice" not in reasons:
            got = await any_message(c)
            invite = got.xml.find("{http://jabber.org/protocol/muc#user}x/{http://jabber.org/protocol/muc#user}invite")
            if invite is not None:
                reasons.append(invite.findtext("{http://jabber.org/protocol/muc#user}reason"))
        assert reasons == [f"flood {n}" for n in range(5)] + ["from alice"]
    finally:
        await logout(a, b, c)
