"""Issue 18, "bounded by bytes, everywhere": each row of the issue's table as
an attack, with the bound it must meet and another user's round trip during it."""

import time

import pytest

from conftest import RawClient

LIMIT = 262_144  # limits.max_stanza_bytes, the default


def rss_kib(server):
    for line in open(f"/proc/{server.process.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def raw_login(server, jid, password, resource="raw", presence=False):
    raw = RawClient(server, timeout=20)
    full = raw.login(jid, password, resource)
    if presence:
        raw.send("<presence/><iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        raw.recv_until("id='sync'")
    return raw, full


def round_trip(server, sender, recipient, marker):
    """One message from `sender` (raw, logged in) to `recipient` (raw, with
    presence), read by the recipient: the other user's traffic still flows."""
    sender_raw, _ = sender
    recipient_raw, recipient_jid = recipient
    started = time.monotonic()
    sender_raw.send(f"<message to='{recipient_jid}' type='chat'><body>{marker}</body></message>")
    got = recipient_raw.recv_until(f"{marker}</body>")
    assert marker in got
    return time.monotonic() - started


def message_of_size(size, to, attrs=""):
    """`<message to=... type='chat' ATTRS><body>...</body></message>` of exactly `size` bytes."""
    head = f"<message to='{to}' type='chat'{attrs}><body>"
    tail = "</body></message>"
    return head + "a" * (size - len(head) - len(tail)) + tail


def stamped(full_jid):
    """The attributes the edge stamps, given in advance with the values it
    would write (RFC 6120 section 8.1.2.1), so that the stanza's size on the
    wire is its size as the server sends it on."""
    return f" from='{full_jid}' xml:lang='en'"


def expect_policy_violation(raw, message_id):
    answer = raw.recv_until("</message>", timeout=20)
    assert f"id='{message_id}'" in answer and "type='error'" in answer, answer
    assert "<policy-violation" in answer, answer


def offline_messages(raw, count, timeout=30):
    """Send initial presence and read `count` offline messages (with their delay stamps)."""
    raw.send("<presence/>")
    got = []
    for _ in range(count):
        text = raw.recv_until("</message>", timeout=timeout)
        got.append(text[text.index("<message") :])
    return got


@pytest.mark.parametrize("recipient_online", [False, True], ids=["offline", "online"])
def test_a_body_that_grows_when_escaped_is_refused_not_lost(server, recipient_online):
    """Issue 18: 70,000 `>` characters (70 KB on the wire) are 280 KB
    re-serialised as `&gt;`; the stored copy did not parse again under the
    256 KiB limit and vanished. Now the sender is told (`policy-violation`),
    and a stanza at exactly the limit as the server sends it (here all of its
    growth written out as `&gt;`) is delivered, online and from offline storage."""
    alice, alice_password = server.add_user()
    bob, bob_password = server.add_user()
    sender = raw_login(server, alice, alice_password)
    _, alice_full = sender
    receiver = raw_login(server, bob, bob_password, presence=True) if recipient_online else None

    sender[0].send(
        f"<message to='{bob}' type='chat' id='grows'><body>{'>' * 70_000}</body></message>"
    )
    expect_policy_violation(sender[0], "grows")

    head = f"<message to='{bob}' type='chat'{stamped(alice_full)} id='fits'><body>"
    tail = "</body></message>"
    room = LIMIT - len(head) - len(tail)
    fits = head + "&gt;" * (room // 4) + "a" * (room % 4) + tail
    assert len(fits.encode()) == LIMIT
    sender[0].send(fits)
    sender[0].send(f"<message to='{bob}' type='chat' id='marker'><body>after</body></message>")

    if receiver is None:
        receiver = raw_login(server, bob, bob_password)
        delivered = offline_messages(receiver[0], 2)
        assert "urn:xmpp:delay" in delivered[0]
    else:
        delivered = [receiver[0].recv_until("</message>", timeout=20) for _ in range(2)]
    assert "id='fits'" in delivered[0], delivered[0][:300]
    assert delivered[0].count("&gt;") == fits.count("&gt;")
    assert "id='marker'" in delivered[1] and "id='grows'" not in "".join(delivered)
    assert "stored stanza does not parse" not in server.log_text()

    metrics = scrape(server)
    assert metric(metrics, 'starling_limits_hit_total{limit="stanza_growth"}') >= 1


@pytest.mark.parametrize("recipient_online", [False, True], ids=["offline", "online"])
def test_a_stanza_that_stamping_pushes_over_the_limit_is_refused_not_lost(server, recipient_online):
    """Issue 18: a message under the limit without `from` (262,096 bytes in
    the report) is over it once the edge stamps `from`: it was accepted and
    never delivered. Now the sender is told (`policy-violation`); the same
    message a few bytes shorter, at the limit once stamped, is delivered."""
    alice, alice_password = server.add_user()
    bob, bob_password = server.add_user()
    sender = raw_login(server, alice, alice_password)
    _, alice_full = sender
    receiver = raw_login(server, bob, bob_password, presence=True) if recipient_online else None
    stamp = len(f" from='{alice_full}'")

    over = message_of_size(LIMIT - stamp + 1, bob, " xml:lang='en' id='over'")
    assert len(over) < LIMIT
    sender[0].send(over)
    expect_policy_violation(sender[0], "over")

    at_limit = message_of_size(LIMIT - stamp, bob, " xml:lang='en' id='at-limit'")
    sender[0].send(at_limit)
    sender[0].send(f"<message to='{bob}' type='chat' id='marker'><body>after</body></message>")
    if receiver is None:
        receiver = raw_login(server, bob, bob_password)
        delivered = offline_messages(receiver[0], 2)
    else:
        delivered = [receiver[0].recv_until("</message>", timeout=20) for _ in range(2)]
    assert "id='at-limit'" in delivered[0], delivered[0][:300]
    assert "id='marker'" in delivered[1] and "id='over'" not in "".join(delivered)

    # Another user's round trip still works.
    carol, carol_password = server.add_user()
    dave, dave_password = server.add_user()
    assert round_trip(
        server, raw_login(server, carol, carol_password), raw_login(server, dave, dave_password, presence=True), "ping"
    ) < 5


def scrape(server):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/metrics", timeout=10) as answer:
        return answer.read().decode()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
