"""The documents an account keeps on the server, with real slixmpp clients:
private XML storage (XEP-0049, through its `xep_0049` plugin and the
bookmarks of XEP-0048 that older clients keep there) and the vCard
(XEP-0054, `xep_0054`), in `starling serve` and across two
connection-managers of the local cluster (set on cm-1, read on cm-2: the
documents live in PostgreSQL behind the storage service)."""

import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0048.stanza import Bookmarks

from conftest import login, logout
from test_cluster import cluster  # noqa: F401 (the cluster fixture)

PRIVATE = "jabber:iq:private"
VCARD = "vcard-temp"


def load_plugins(*clients):
    for client in clients:
        for plugin in ("xep_0049", "xep_0048", "xep_0054"):
            client.register_plugin(plugin)


async def iq_error(iq):
    """The condition of the error an IQ gets (it must get one)."""
    with pytest.raises(IqError) as raised:
        await iq.send(timeout=20)
    return raised.value.iq["error"]["condition"]


def private_iq(client, kind, xml, to=None):
    iq = client.make_iq_set(ito=to) if kind == "set" else client.make_iq_get(ito=to)
    query = ET.Element(f"{{{PRIVATE}}}query")
    if xml:
        query.append(ET.fromstring(xml))
    iq.append(query)
    return iq


async def documents_scenario(node_a, node_b, alice, alice_pw, bob, bob_pw):
    a = await login(node_a, alice, alice_pw, "a", presence=False)
    b = await login(node_b, bob, bob_pw, "b", presence=False)
    load_plugins(a, b)

    info = await a.plugin["xep_0030"].get_info(jid=a.boundjid.domain, timeout=20)
    assert PRIVATE in info["disco_info"]["features"]
    assert VCARD in info["disco_info"]["features"]

    # XEP-0048 bookmarks kept in private XML storage (XEP-0049).
    empty = await a.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=20)
    assert list(empty["private"]["bookmarks"]["conferences"]) == []
    bookmarks = Bookmarks()
    bookmarks.add_conference("room@conference.example.org", "juliet", name="The Room", autojoin=True)
    await a.plugin["xep_0048"].set_bookmarks(bookmarks, method="xep_0049", timeout=20)
    # Another session of the same account, on the other node, reads them back.
    a2 = await login(node_b, alice, alice_pw, "a2", presence=False)
    load_plugins(a2)
    stored = await a2.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=20)
    conferences = list(stored["private"]["bookmarks"]["conferences"])
    assert [c["jid"] for c in conferences] == ["room@conference.example.org"]
    assert conferences[0]["nick"] == "juliet" and conferences[0]["autojoin"]

    # A fragment of its own namespace, replaced as a whole by the next set.
    await private_iq(a, "set", "<prefs xmlns='urn:example:prefs'><theme>dark</theme></prefs>").send(timeout=20)
    await private_iq(a, "set", "<prefs xmlns='urn:example:prefs'><theme>light</theme></prefs>").send(timeout=20)
    got = await private_iq(a2, "get", "<prefs xmlns='urn:example:prefs'/>").send(timeout=20)
    assert "<theme>light</theme>" in str(got) and "dark" not in str(got)

    # XEP-0049 section 3: errors.
    assert await iq_error(private_iq(a, "get", None)) == "bad-request"
    assert await iq_error(private_iq(a, "set", None)) == "not-acceptable"
    assert await iq_error(private_iq(a, "set", "<vCard xmlns='vcard-temp'/>")) == "not-acceptable"
    assert await iq_error(private_iq(a, "set", "<x xmlns='jabber:iq:roster'/>")) == "not-acceptable"
    # Another account's private data, read or written: forbidden.
    assert await iq_error(private_iq(b, "get", "<prefs xmlns='urn:example:prefs'/>", to=alice)) == "forbidden"
    assert await iq_error(private_iq(b, "set", "<prefs xmlns='urn:example:prefs'/>", to=alice)) == "forbidden"
    # bob's own storage is his own.
    got = await private_iq(b, "get", "<prefs xmlns='urn:example:prefs'/>").send(timeout=20)
    assert "theme" not in str(got)

    # XEP-0054: no vCard yet is an empty one; alice publishes hers on cm-1.
    none = await b.plugin["xep_0054"].get_vcard(alice, local=False, timeout=20)
    assert none["vcard_temp"]["FN"] == ""
    vcard = a.plugin["xep_0054"].make_vcard()
    vcard["FN"] = "Alice Liddell"
    vcard["NICKNAME"] = "alice"
    await a.plugin["xep_0054"].publish_vcard(vcard, timeout=20)
    # Anyone reads it from her bare JID, bob on cm-2 included; she reads her own.
    theirs = await b.plugin["xep_0054"].get_vcard(alice, local=False, timeout=20)
    assert theirs["vcard_temp"]["FN"] == "Alice Liddell"
    own = await a2.plugin["xep_0054"].get_vcard(alice, local=False, timeout=20)
    assert own["vcard_temp"]["NICKNAME"] == ["alice"]
    # Section 3.2: only the account sets its vCard.
    forged = b.make_iq_set(ito=alice)
    forged.append(ET.fromstring("<vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard>"))
    assert await iq_error(forged) == "forbidden"
    theirs = await b.plugin["xep_0054"].get_vcard(alice, local=False, timeout=20)
    assert theirs["vcard_temp"]["FN"] == "Alice Liddell"
    # An account that does not exist has no vCard to give.
    ghost = b.make_iq_get(ito=f"nobody@{a.boundjid.domain}")
    ghost.append(ET.fromstring("<vCard xmlns='vcard-temp'/>"))
    assert await iq_error(ghost) == "service-unavailable"

    await logout(a, a2, b)


async def test_private_storage_and_vcard_in_one_process(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    await documents_scenario(server, server, alice, alice_pw, bob, bob_pw)


async def test_private_storage_and_vcard_across_two_connection_managers(cluster):  # noqa: F811 (the fixture)
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    await documents_scenario(cluster.node("cm-1"), cluster.node("cm-2"), alice, alice_pw, bob, bob_pw)


async def test_an_account_s_documents_are_bounded_in_bytes(server_factory):
    """`storage.max_account_data_bytes`: documents past it are refused with
    `resource-constraint`, what was stored stays, and a removal of room
    (a smaller replacement) lets the next set through."""
    server = server_factory(extra_toml="[storage]\nmax_account_data_bytes = 20000\n")
    alice, alice_pw = server.add_user("alice")
    a = await login(server, alice, alice_pw, "a", presence=False)
    load_plugins(a)
    big = "x" * 12000
    await private_iq(a, "set", f"<one xmlns='urn:example:one'>{big}</one>").send(timeout=20)
    assert await iq_error(private_iq(a, "set", f"<two xmlns='urn:example:two'>{big}</two>")) == "resource-constraint"
    got = await private_iq(a, "get", "<one xmlns='urn:example:one'/>").send(timeout=20)
    assert big in str(got)
    # A vCard counts against the same bound.
    vcard = ET.fromstring(f"<vCard xmlns='vcard-temp'><DESC>{big}</DESC></vCard>")
    iq = a.make_iq_set()
    iq.append(vcard)
    assert await iq_error(iq) == "resource-constraint"
    await private_iq(a, "set", "<one xmlns='urn:example:one'/>").send(timeout=20)
    await private_iq(a, "set", f"<two xmlns='urn:example:two'>{big}</two>").send(timeout=20)
    await logout(a)


def last_query(client, to):
    iq = client.make_iq_get(ito=to)
    iq.append(ET.fromstring("<query xmlns='jabber:iq:last'/>"))
    return iq


def seconds_and_status(result):
    query = result.xml.find("{jabber:iq:last}query")
    return int(query.get("seconds")), (query.text or "")


async def last_activity_scenario(node_a, node_b, alice, alice_pw, bob, bob_pw, carol, carol_pw):
    """XEP-0012: the server's uptime; an account's last logout, with the
    status it left with, to a contact with a presence subscription; 0 while
    available; forbidden to anyone else. (An account that never logged out
    answers `item-not-found`: Rust test `tests/iq.rs`.)"""
    a = await login(node_a, alice, alice_pw, "a")
    b = await login(node_b, bob, bob_pw, "b", presence=False)
    c = await login(node_b, carol, carol_pw, "c", presence=False)
    b.auto_authorize = True
    b.auto_subscribe = True
    a.auto_authorize = True
    info = await a.plugin["xep_0030"].get_info(jid=a.boundjid.domain, timeout=20)
    assert "jabber:iq:last" in info["disco_info"]["features"]
    uptime, text = seconds_and_status(await last_query(a, a.boundjid.domain).send(timeout=20))
    assert 0 <= uptime < 3600 and text == ""

    # No subscription to bob yet: forbidden.
    assert await iq_error(last_query(a, bob)) == "forbidden"
    # Bob's client approves (and subscribes back) once available.
    a.send_presence(pto=bob, ptype="subscribe")
    b.send_presence(pstatus="here")
    await a.next_presence(lambda p: p["type"] == "subscribed" and p["from"].bare == bob, timeout=20)
    await b.next_presence(lambda p: p["type"] == "subscribed" and p["from"].bare == alice, timeout=20)
    # Available: active now.
    await a.next_presence(lambda p: p["from"].bare == bob and p["status"] == "here", timeout=20)
    assert seconds_and_status(await last_query(a, bob).send(timeout=20)) == (0, "")

    # Bob leaves with a status; alice (subscribed, on the other node) learns
    # when and with what, carol (no subscription) is refused.
    b.send_presence(ptype="unavailable", pstatus="Heading Home")
    await a.next_presence(lambda p: p["from"].bare == bob and p["type"] == "unavailable", timeout=20)
    seconds, status = seconds_and_status(await last_query(a, bob).send(timeout=20))
    assert 0 <= seconds < 60 and status == "Heading Home"
    assert await iq_error(last_query(c, bob)) == "forbidden"
    # The account itself may ask.
    seconds, status = seconds_and_status(await last_query(b, bob).send(timeout=20))
    assert status == "Heading Home"
    await logout(a, b, c)


async def test_last_activity_in_one_process(server):
    users = [server.add_user(name) for name in ("alice", "bob", "carol")]
    await last_activity_scenario(server, server, *users[0], *users[1], *users[2])


async def test_last_activity_across_two_connection_managers(cluster):  # noqa: F811 (the fixture)
    users = [cluster.add_user(name) for name in ("alice", "bob", "carol")]
    await last_activity_scenario(cluster.node("cm-1"), cluster.node("cm-2"), *users[0], *users[1], *users[2])


BOOKMARKS = "storage:bookmarks"


def conference_jids(result):
    return [c.get("jid") for c in result.xml.iter(f"{{{BOOKMARKS}}}conference")]


async def bookmarks_conversion_scenario(node_a, node_b, alice, alice_pw):
    """XEP-0411: bookmarks set through private XML (XEP-0049) are read
    through PEP (XEP-0223, the `storage:bookmarks` node) by another session
    (on the other node in the cluster), and the other way round."""
    a = await login(node_a, alice, alice_pw, "a", presence=False)
    a2 = await login(node_b, alice, alice_pw, "a2", presence=False)
    load_plugins(a, a2)
    info = await a.plugin["xep_0030"].get_info(jid=alice, timeout=20)
    assert "urn:xmpp:bookmarks-conversion:0" in info["disco_info"]["features"]

    bookmarks = Bookmarks()
    bookmarks.add_conference("orchard@conference.example.org", "juliet", name="The Orchard", autojoin=True)
    await a.plugin["xep_0048"].set_bookmarks(bookmarks, method="xep_0049", timeout=20)
    over_pep = await a2.plugin["xep_0048"].get_bookmarks(method="xep_0223", timeout=20)
    assert conference_jids(over_pep) == ["orchard@conference.example.org"]

    garden = Bookmarks()
    garden.add_conference("garden@conference.example.org", "juliet", autojoin=False)
    await a2.plugin["xep_0048"].set_bookmarks(garden, method="xep_0223", timeout=20)
    private = await a.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=20)
    assert conference_jids(private) == ["garden@conference.example.org"]
    await logout(a, a2)


async def test_bookmarks_conversion_in_one_process(server):
    alice, alice_pw = server.add_user("alice")
    await bookmarks_conversion_scenario(server, server, alice, alice_pw)


async def test_bookmarks_conversion_across_two_connection_managers(cluster):  # noqa: F811 (the fixture)
    alice, alice_pw = cluster.add_user("alice")
    await bookmarks_conversion_scenario(cluster.node("cm-1"), cluster.node("cm-2"), alice, alice_pw)


BOOKMARKS2 = "urn:xmpp:bookmarks:1"


def bookmarks2_options(client):
    """The publish-options of XEP-0402 section 3.2."""
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
    for var, value in (("persist_items", "true"), ("max_items", "max"), ("send_last_published_item", "never"), ("access_model", "whitelist")):
        form.add_field(var=f"pubsub#{var}", value=value)
    return form


async def bookmarks2_compat_scenario(node_a, node_b, alice, alice_pw):
    """XEP-0402 section 5: a room published as a Bookmarks 2 item (slixmpp
    xep_0402 stanza over xep_0060) is read as XEP-0048 bookmarks through
    private XML (XEP-0049, `#compat`) and the PEP node (XEP-0223,
    `#compat-pep`) by another session, on the other node in the cluster;
    XEP-0048 bookmarks set by that session are read back as one item per room."""
    from slixmpp.plugins.xep_0402.stanza import Conference

    a = await login(node_a, alice, alice_pw, "a", presence=False)
    a2 = await login(node_b, alice, alice_pw, "a2", presence=False)
    load_plugins(a, a2)
    for plugin in ("xep_0004", "xep_0060", "xep_0402"):
        a.register_plugin(plugin)
    info = await a.plugin["xep_0030"].get_info(jid=alice, timeout=20)
    features = info["disco_info"]["features"]
    assert "urn:xmpp:bookmarks:1#compat" in features and "urn:xmpp:bookmarks:1#compat-pep" in features

    conference = Conference()
    conference["name"] = "The Orchard"
    conference["autojoin"] = True
    conference["nick"] = "juliet"
    await a.plugin["xep_0060"].publish(
        alice, BOOKMARKS2, id="orchard@conference.example.org", payload=conference, options=bookmarks2_options(a), timeout=20
    )
    for method in ("xep_0049", "xep_0223"):
        legacy = await a2.plugin["xep_0048"].get_bookmarks(method=method, timeout=20)
        rooms = [(c.get("jid"), c.get("name"), c.get("autojoin")) for c in legacy.xml.iter(f"{{{BOOKMARKS}}}conference")]
        assert rooms == [("orchard@conference.example.org", "The Orchard", "true")], (method, rooms)

    garden = Bookmarks()
    garden.add_conference("garden@conference.example.org", "romeo", name="The Garden", autojoin=True)
    garden.add_conference("orchard@conference.example.org", "juliet", name="The Orchard", autojoin=True)
    await a2.plugin["xep_0048"].set_bookmarks(garden, method="xep_0049", timeout=20)
    items = await a.plugin["xep_0060"].get_items(alice, BOOKMARKS2, timeout=20)
    rooms = {
        item["id"]: (item.xml.find(f"{{{BOOKMARKS2}}}conference").get("name"), item.xml.findtext(f"{{{BOOKMARKS2}}}conference/{{{BOOKMARKS2}}}nick"))
        for item in items["pubsub"]["items"]
    }
    assert rooms == {
        "orchard@conference.example.org": ("The Orchard", "juliet"),
        "garden@conference.example.org": ("The Garden", "romeo"),
    }
    # A XEP-0402 retraction reaches the XEP-0048 copies.
    await a.plugin["xep_0060"].retract(alice, BOOKMARKS2, "orchard@conference.example.org", notify=True, timeout=20)
    private = await a2.plugin["xep_0048"].get_bookmarks(method="xep_0049", timeout=20)
    assert conference_jids(private) == ["garden@conference.example.org"]
    await logout(a, a2)


async def test_bookmarks2_compat_in_one_process(server):
    alice, alice_pw = server.add_user("alice")
    await bookmarks2_compat_scenario(server, server, alice, alice_pw)


async def test_bookmarks2_compat_across_two_connection_managers(cluster):  # noqa: F811 (the fixture)
    alice, alice_pw = cluster.add_user("alice")
    await bookmarks2_compat_scenario(cluster.node("cm-1"), cluster.node("cm-2"), alice, alice_pw)
