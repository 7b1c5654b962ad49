"""Stream management (XEP-0198) in `starling serve`: acks, resumption, the
resumption timeout, and every bad input the XEP names an error for."""

import asyncio
import re
import socket
import ssl
import time

from conftest import login, logout, handled
from sm_raw import SM, SmClient, sm_id


def recv_nonza(raw, name):
    """Read up to the end of the next `<name .../>` or `</name>`."""
    text = raw.recv_until(f"<{name}")
    rest = raw.recv_until(">")
    if not rest.endswith("/>"):
        rest += raw.recv_until(f"</{name}>")
    return text + rest


async def test_enable_ack_counts_and_server_requests(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    raw = SmClient(server)
    features = raw.authenticate(alice, alice_pw)
    assert f"<sm xmlns='{SM}'/>" in features
    raw.bind("phone")
    enabled = raw.enable()
    assert "<enabled" in enabled and "resume='true'" in enabled and "max='300'" in enabled
    raw.send(f"<r xmlns='{SM}'/>")
    assert "h='0'" in recv_nonza(raw, "a")
    raw.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert "type='result'" in recv_nonza(raw, "iq")
    raw.send(f"<r xmlns='{SM}'/>")
    assert "h='1'" in recv_nonza(raw, "a")

    b = await login(server, bob, bob_pw, "desk")
    for number in range(5):
        b.send_message(mto=f"{alice}/phone", mbody=f"m{number}", mtype="chat")
    await handled(b)
    # The server asks for an ack once five stanzas wait (the iq result counted too).
    text = raw.recv_until(f"<r xmlns='{SM}'/>")
    assert len(re.findall(r"<body>", text)) >= 4
    raw.send(f"<a xmlns='{SM}' h='6'/>")
    raw.send(f"<r xmlns='{SM}'/>")
    assert "h='1'" in recv_nonza(raw, "a")
    raw.close()
    await logout(b)


async def test_resume_on_the_same_node_gets_exactly_the_unacked(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    b = await login(server, bob, bob_pw, "desk")
    raw = SmClient(server)
    raw.authenticate(alice, alice_pw)
    raw.bind("phone")
    previd = sm_id(raw.enable())
    for number in range(3):
        b.send_message(mto=f"{alice}/phone", mbody=f"m{number}", mtype="chat")
    await handled(b)
    assert raw.read_bodies(3) == ["m0", "m1", "m2"]
    raw.drop()
    await asyncio.sleep(0.5)
    # Detached: the session stays and what is sent to it waits.
    for number in range(3, 6):
        b.send_message(mto=f"{alice}/phone", mbody=f"m{number}", mtype="chat")
    await handled(b)
    again = SmClient(server)
    features = again.authenticate(alice, alice_pw)
    assert "<sm " in features
    # The client handled 2 of the 3 it read (it saw m0, m1 processed).
    again.send(f"<resume xmlns='{SM}' previd='{previd}' h='2'/>")
    resumed = recv_nonza(again, "resumed")
    assert f"previd='{previd}'" in resumed, resumed
    bodies = again.read_bodies(4)
    assert bodies == ["m2", "m3", "m4", "m5"], bodies
    # Nothing more, and nothing was stored offline.
    again.send(f"<r xmlns='{SM}'/>")
    ack = recv_nonza(again, "a")
    assert "<body>" not in ack
    again.close()
    await logout(b)


def test_bad_resumption_requests_get_the_errors_the_xep_names(server):
    alice, alice_pw = server.add_user("alice")
    mallory, mallory_pw = server.add_user("mallory")
    raw = SmClient(server)
    raw.authenticate(alice, alice_pw)
    # Enable before binding: unexpected-request (section 3).
    raw.send(f"<enable xmlns='{SM}' resume='true'/>")
    assert "unexpected-request" in recv_nonza(raw, "failed")
    raw.bind("phone")
    previd = sm_id(raw.enable())
    # Enable twice: unexpected-request.
    raw.send(f"<enable xmlns='{SM}'/>")
    assert "unexpected-request" in recv_nonza(raw, "failed")
    raw.drop()
    time.sleep(0.3)

    # Another account's id is not found (and nothing tells it exists).
    thief = SmClient(server)
    thief.authenticate(mallory, mallory_pw)
    thief.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
    answer = recv_nonza(thief, "failed")
    assert "item-not-found" in answer and "h=" not in answer
    # A forged id: the same answer; the client may still bind.
    thief.send(f"<resume xmlns='{SM}' previd='{'0' * 32}' h='0'/>")
    assert "item-not-found" in recv_nonza(thief, "failed")
    assert thief.bind("laptop").startswith(mallory)
    thief.close()

    # h larger than what was sent: handled-count-too-high.
    owner = SmClient(server)
    owner.authenticate(alice, alice_pw)
    owner.send(f"<resume xmlns='{SM}' previd='{previd}' h='7'/>")
    answer = recv_nonza(owner, "failed")
    assert "handled-count-too-high" in answer and "send-count='0'" in answer, answer
    # The stream is still resumable with the right h.
    owner.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
    assert "<resumed" in recv_nonza(owner, "resumed")
    # An ack of more than was sent ends the stream (section 6).
    owner.send(f"<a xmlns='{SM}' h='99'/>")
    closing = owner.read_until_closed()
    assert "<undefined-condition" in closing and "handled-count-too-high" in closing, closing
    owner.close()

    # The stream ended for good: its id is gone.
    late = SmClient(server)
    late.authenticate(alice, alice_pw)
    late.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
    assert "item-not-found" in recv_nonza(late, "failed")
    late.close()


async def test_unacked_bound_ends_the_stream_and_nothing_is_lost(server_factory):
    server = server_factory(extra_toml="[sm]\nmax_unacked_stanzas = 10\n")
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    raw = SmClient(server)
    raw.authenticate(alice, alice_pw)
    raw.bind("phone")
    raw.enable()
    raw.presence()
    b = await login(server, bob, bob_pw, "desk")
    for number in range(15):
        b.send_message(mto=alice, mbody=f"m{number}", mtype="chat")
    await handled(b)
    closing = raw.read_until_closed(timeout=15)
    assert "<policy-violation" in closing, closing[-500:]
    seen = set(re.findall(r"<body>(m\d+)</body>", closing))
    # What the client did not acknowledge goes offline: it gets it at its next login.
    a = await login(server, alice, alice_pw, "laptop")
    deadline = time.monotonic() + 15
    while len(seen) < 15 and time.monotonic() < deadline:
        try:
            seen.add((await a.next_message(timeout=5))["body"])
        except asyncio.TimeoutError:
            break
    assert seen == {f"m{number}" for number in range(15)}, sorted(seen)
    await logout(a, b)


async def test_unacked_bytes_count_against_the_queue_bound_and_nothing_is_lost(server_factory):
    """Issue 18: what a client read but never acknowledged is held by the
    server (XEP-0198), so it counts in bytes against
    `limits.outbound_queue_bytes` like the queue itself: a client that reads
    large messages and never acks ends with policy-violation once it holds
    that much, instead of making the server hold 1,000 stanzas of any size;
    nothing is lost."""
    server = server_factory(
        extra_toml="[limits]\noutbound_queue_bytes = 262144\n[storage]\nmax_offline_bytes_per_user = 131072\n"
    )
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    raw = SmClient(server)
    raw.authenticate(alice, alice_pw)
    raw.bind("phone")
    raw.enable()
    raw.presence()
    b = await login(server, bob, bob_pw, "desk")
    filler = "x" * 40_000
    for number in range(10):
        b.send_message(mto=alice, mbody=f"m{number} {filler}", mtype="chat")
    await handled(b)
    closing = raw.read_until_closed(timeout=15)
    assert "<policy-violation" in closing, closing[-500:]
    read = set(re.findall(r"<body>(m\d+) ", closing))
    assert len(read) < 10, "the stream ended before every message was written"
    # What the client did not acknowledge is rerouted: to offline storage
    # (128 KiB here), and past that back to Bob with an error.
    seen = set()
    bounced = set()
    deadline = time.monotonic() + 20
    while len(bounced) < 10 and time.monotonic() < deadline:
        try:
            message = await b.next_message(body=False, timeout=2)
        except asyncio.TimeoutError:
            break
        if message["type"] == "error":
            bounced.add(message["body"].split(" ")[0])
    a = await login(server, alice, alice_pw, "laptop")
    while len(seen | bounced) < 10 and time.monotonic() < deadline:
        try:
            seen.add((await a.next_message(timeout=5))["body"].split(" ")[0])
        except asyncio.TimeoutError:
            break
    print(f"read by the phone {len(read)}, offline {len(seen)}, bounced {len(bounced)}")
    assert seen | bounced == {f"m{number}" for number in range(10)}, (sorted(seen), sorted(bounced))
    await logout(a, b)


async def test_timeout_without_resumption_sends_the_queue_offline(server_factory):
    server = server_factory(extra_toml="[sm]\nresume_timeout_secs = 2\n")
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    raw = SmClient(server)
    raw.authenticate(alice, alice_pw)
    raw.bind("phone")
    enabled = raw.enable()
    assert "max='2'" in enabled
    raw.presence()
    b = await login(server, bob, bob_pw, "desk")
    b.send_message(mto=alice, mbody="read-not-acked", mtype="chat")
    await handled(b)
    assert raw.read_bodies(1) == ["read-not-acked"]
    raw.drop()
    await asyncio.sleep(0.5)
    b.send_message(mto=alice, mbody="while-detached", mtype="chat")
    await handled(b)
    await asyncio.sleep(3.5)
    a = await login(server, alice, alice_pw, "laptop")
    bodies = {(await a.next_message(timeout=10))["body"] for _ in range(2)}
    assert bodies == {"read-not-acked", "while-detached"}
    await logout(a, b)


async def test_ack_and_request_floods_hurt_nobody_else(server_factory):
    # No stanza rate limit (by default it slows a flood of nonzas too).
    server = server_factory(extra_toml="[limits]\nstanzas_per_second = 0\n")
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    b = await login(server, bob, bob_pw, "desk")
    raw = SmClient(server)
    raw.authenticate(alice, alice_pw)
    raw.bind("phone")
    raw.enable()
    # Acks of nothing new, by the thousand: no answer, no harm.
    raw.send(f"<a xmlns='{SM}' h='0'/>" * 5000)
    raw.send(f"<r xmlns='{SM}'/>")
    assert "h='0'" in recv_nonza(raw, "a")
    # Requests by the hundred thousand, answers not read meanwhile: once the
    # socket buffers are full the answers wait in the connection's bounded
    # queue, and past its bound the stream ends (policy-violation, written
    # only if the full socket takes it): the server does not hold 200,000.
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        raw.send(f"<r xmlns='{SM}'/>" * 200000)
    except (OSError, ssl.SSLError):
        pass  # the server closed the stream while the flood was still being sent
    closing = raw.read_until_closed(timeout=60)
    assert closing.count("<a ") < 200000, "every request was answered: nothing bounded them"
    # Nobody else noticed.
    b.send_message(mto=bob, mbody="still here", mtype="chat")
    assert (await b.next_message())["body"] == "still here"
    await logout(b)
