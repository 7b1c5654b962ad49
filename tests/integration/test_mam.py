"""Message Archive Management (XEP-0313) with XEP-0441 preferences and
XEP-0359 stanza ids, with real slixmpp clients (the `xep_0313` and
`xep_0441` plugins) and raw queries where the plugin cannot express one
(flipped pages, before-id/after-id, malformed fields): both directions
archived, the stanza id on delivery, paging both ways with the complete
flag, the with/start/end filters, the errors, the server's page bound,
preferences, the offline copy that is archived once, and the same across
the two connection-managers (and two routers) of the local cluster."""

import asyncio
import uuid
import xml.etree.ElementTree as ET

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from conftest import handled, login, logout
from test_cluster import cluster  # noqa: F401 (the cluster fixture)

MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"
SID = "urn:xmpp:sid:0"
DATA = "jabber:x:data"
CLIENT = "jabber:client"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def with_mam(client):
    client.register_plugin("xep_0313")
    client.register_plugin("xep_0441")
    client.register_plugin("xep_0359")
    return client


async def mam_login(server, jid, password, resource=None, presence=True):
    return with_mam(await login(server, jid, password, resource, presence=presence))


class Page:
    """The results and the <fin/> of one raw query."""

    def __init__(self, results, fin):
        self.results = results
        self.fin = fin
        self.ids = [result.get("id") for result in results]
        self.bodies = [result.find(f"{{{FORWARD}}}forwarded/{{{CLIENT}}}message/{{{CLIENT}}}body").text
                       for result in results]
        self.stamps = [result.find(f"{{{FORWARD}}}forwarded/{{{DELAY}}}delay").get("stamp") for result in results]
        self.complete = fin.get("complete") == "true"
        result_set = fin.find(f"{{{RSM}}}set")
        self.first = result_set.findtext(f"{{{RSM}}}first")
        self.last = result_set.findtext(f"{{{RSM}}}last")
        self.count = result_set.findtext(f"{{{RSM}}}count")


async def query(client, fields=None, rsm=None, flip=False, to=None, timeout=20):
    """A raw archive query; `fields` maps a var to a value or list of values,
    `rsm` an RSM child name to its text (None: empty element)."""
    queryid = uuid.uuid4().hex
    iq = client.make_iq_set(ito=to)
    element = ET.SubElement(iq.xml, f"{{{MAM}}}query", {"queryid": queryid})
    if fields:
        form = ET.SubElement(element, f"{{{DATA}}}x", {"type": "submit"})
        form_type = ET.SubElement(form, f"{{{DATA}}}field", {"var": "FORM_TYPE", "type": "hidden"})
        ET.SubElement(form_type, f"{{{DATA}}}value").text = MAM
        for var, values in fields.items():
            field = ET.SubElement(form, f"{{{DATA}}}field", {"var": var})
            for value in values if isinstance(values, list) else [values]:
                ET.SubElement(field, f"{{{DATA}}}value").text = value
    if rsm is not None:
        result_set = ET.SubElement(element, f"{{{RSM}}}set")
        for name, text in rsm.items():
            child = ET.SubElement(result_set, f"{{{RSM}}}{name}")
            if text is not None:
                child.text = str(text)
    if flip:
        ET.SubElement(element, f"{{{MAM}}}flip-page")
    results = []
    handler = f"mam-{queryid}"

    def collect(message):
        result = message.xml.find(f"{{{MAM}}}result")
        if result is not None and result.get("queryid") == queryid:
            results.append(result)

    client.register_handler(Callback(handler, MatchXPath(f"{{{CLIENT}}}message/{{{MAM}}}result"), collect))
    try:
        reply = await iq.send(timeout=timeout)
    finally:
        client.remove_handler(handler)
    fin = reply.xml.find(f"{{{MAM}}}fin")
    assert fin is not None, str(reply)
    return Page(results, fin)


async def query_error(client, **kwargs):
    with pytest.raises(IqError) as raised:
        await query(client, **kwargs)
    error = raised.value.iq.xml.find(f"{{{CLIENT}}}error")
    return [child.tag.split("}")[1] for child in error if child.tag.startswith("{" + STANZAS)][0]


def stanza_ids(message):
    return [(element.get("by"), element.get("id")) for element in message.xml.findall(f"{{{SID}}}stanza-id")]


async def chat(sender, to, body, **extra):
    message = sender.make_message(mto=to, mbody=body, mtype="chat")
    for element in extra.get("elements", []):
        message.xml.append(element)
    message.send()


async def exchange(sender, receiver, bodies):
    """`sender` sends `bodies` to `receiver`'s bare JID, which receives each."""
    received = []
    for body in bodies:
        await chat(sender, receiver.boundjid.bare, body)
        message = await receiver.next_message(timeout=20)
        assert message["body"] == body
        received.append(message)
    return received


async def archived_bodies(client, **kwargs):
    result = await client.plugin["xep_0313"].retrieve(**kwargs, timeout=20)
    return [message["mam_result"]["forwarded"]["stanza"]["body"] for message in result["mam"]["results"]]


async def test_both_directions_are_archived_and_stamped_on_delivery(server):
    alice, alice_pw = server.add_user()
    bob, bob_pw = server.add_user()
    a = await mam_login(server, alice, alice_pw, "a")
    b = await mam_login(server, bob, bob_pw, "b")
    try:
        # The account advertises the archive and stanza ids (XEP-0313 section 7, XEP-0359 section 4).
        info = await a.plugin["xep_0030"].get_info(jid=alice, timeout=20)
        features = set(info["disco_info"]["features"])
        assert {MAM, MAM + "#extended", SID} <= features

        [received] = await exchange(a, b, ["hello bob"])
        # XEP-0359: the server's stanza id, by the recipient's account; the client's origin-id kept.
        [(by, stanza_id)] = stanza_ids(received)
        assert by == bob
        [reply] = await exchange(b, a, ["hello alice"])
        [(by, reply_id)] = stanza_ids(reply)
        assert by == alice

        # A chat state alone, a no-store hint: delivered, not archived.
        state = a.make_message(mto=bob, mtype="chat")
        ET.SubElement(state.xml, "{http://jabber.org/protocol/chatstates}composing")
        state.send()
        hinted = a.make_message(mto=bob, mbody="off the record", mtype="chat")
        ET.SubElement(hinted.xml, "{urn:xmpp:hints}no-store")
        hinted.send()
        assert (await b.next_message(timeout=20))["body"] == "off the record"
        await handled(a)

        # Both archives hold both messages, in order, under the delivered ids.
        await handled(b)
        for client, peer in ((a, bob), (b, alice)):
            page = await wait_for_archive(client, 2)
            assert page.bodies == ["hello bob", "hello alice"]
            assert page.ids == [stanza_id, reply_id]
            assert page.complete and page.count == "2"
            assert await archived_bodies(client, with_jid=JID(peer)) == ["hello bob", "hello alice"]
        # The forwarded copy is the message as delivered: from the sender's full JID.
        page = await query(b)
        original = page.results[0].find(f"{{{FORWARD}}}forwarded/{{{CLIENT}}}message")
        assert original.get("from") == f"{alice}/a"

        # A stanza id a client forges in the recipient's name is removed.
        forged = ET.Element(f"{{{SID}}}stanza-id", {"by": bob, "id": "forged"})
        await chat(a, bob, "forged", elements=[forged])
        message = await b.next_message(timeout=20)
        assert message["body"] == "forged"
        [(by, real_id)] = stanza_ids(message)
        assert by == bob and real_id != "forged"
    finally:
        await logout(a, b)


async def wait_for_archive(client, count, timeout=20.0, **kwargs):
    """The archive is written just after delivery: query until `count`
    messages are in it (a bounded retry, never a fixed sleep)."""
    deadline = asyncio.get_event_loop().time() + timeout
    while True:
        page = await query(client, **kwargs)
        if len(page.results) >= count or asyncio.get_event_loop().time() > deadline:
            return page
        await asyncio.sleep(0.1)


async def test_pages_forward_backward_and_flipped(server):
    alice, alice_pw = server.add_user()
    bob, bob_pw = server.add_user()
    a = await mam_login(server, alice, alice_pw, "a")
    b = await mam_login(server, bob, bob_pw, "b")
    try:
        bodies = [f"m{index}" for index in range(7)]
        await exchange(a, b, bodies)
        everything = await wait_for_archive(b, 7)
        assert everything.bodies == bodies

        # Forward, three at a time: complete only on the last page.
        pages = []
        after = None
        while True:
            rsm = {"max": 3} if after is None else {"max": 3, "after": after}
            page = await query(b, rsm=rsm)
            pages.append(page)
            if page.complete:
                break
            after = page.last
        assert [page.bodies for page in pages] == [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"]]
        assert [page.complete for page in pages] == [False, False, True]
        assert pages[0].first == everything.ids[0] and pages[0].last == everything.ids[2]

        # Backward from the end (<before/> empty): complete on the first page of the archive.
        pages = []
        before = ""
        while True:
            page = await query(b, rsm={"max": 3, "before": before or None})
            pages.append(page)
            if page.complete:
                break
            before = page.first
        assert [page.bodies for page in pages] == [["m4", "m5", "m6"], ["m1", "m2", "m3"], ["m0"]]
        assert [page.complete for page in pages] == [False, False, True]

        # A flipped page: the same page, newest first (XEP-0313 section 4.3.3).
        flipped = await query(b, rsm={"max": 3, "before": None}, flip=True)
        assert flipped.bodies == ["m6", "m5", "m4"]
        assert (flipped.first, flipped.last) == (everything.ids[4], everything.ids[6])

        # The plugin's own paging (RSM iteration) gets everything in order.
        collected = [message["mam_result"]["forwarded"]["stanza"]["body"]
                     async for message in b.plugin["xep_0313"].iterate(rsm={"max": 2})]
        assert collected == bodies

        # before-id / after-id and ids (urn:xmpp:mam:2#extended).
        between = await query(b, fields={"after-id": everything.ids[1], "before-id": everything.ids[5]})
        assert between.bodies == ["m2", "m3", "m4"]
        some = await query(b, fields={"ids": [everything.ids[6], everything.ids[0]]})
        assert some.bodies == ["m0", "m6"]

        # Metadata: the first and last message.
        metadata = await b.plugin["xep_0313"].get_archive_metadata(timeout=20)
        element = metadata.xml.find(f"{{{MAM}}}metadata")
        assert element.find(f"{{{MAM}}}start").get("id") == everything.ids[0]
        assert element.find(f"{{{MAM}}}end").get("id") == everything.ids[6]
    finally:
        await logout(a, b)


async def test_with_start_and_end_filter(server):
    alice, alice_pw = server.add_user()
    bob, bob_pw = server.add_user()
    carol, carol_pw = server.add_user()
    a = await mam_login(server, alice, alice_pw, "a")
    b = await mam_login(server, bob, bob_pw, "phone")
    c = await mam_login(server, carol, carol_pw, "c")
    try:
        await exchange(b, a, ["bob 1"])
        await exchange(c, a, ["carol 1"])
        await exchange(b, a, ["bob 2"])
        await exchange(c, a, ["carol 2"])
        everything = await wait_for_archive(a, 4)
        assert everything.bodies == ["bob 1", "carol 1", "bob 2", "carol 2"]

        assert (await query(a, fields={"with": bob})).bodies == ["bob 1", "bob 2"]
        assert (await query(a, fields={"with": f"{bob}/phone"})).bodies == ["bob 1", "bob 2"]
        assert (await query(a, fields={"with": f"{bob}/laptop"})).bodies == []
        assert await archived_bodies(a, with_jid=JID(carol)) == ["carol 1", "carol 2"]

        # start and end are inclusive, to the microsecond of the stamps the results carry.
        since = await query(a, fields={"start": everything.stamps[1]})
        assert since.bodies == ["carol 1", "bob 2", "carol 2"]
        until = await query(a, fields={"end": everything.stamps[2]})
        assert until.bodies == ["bob 1", "carol 1", "bob 2"]
        window = await query(a, fields={"start": everything.stamps[1], "end": everything.stamps[2], "with": carol})
        assert window.bodies == ["carol 1"]
        assert (await query(a, fields={"start": "2000-01-01T00:00:00Z", "end": "2000-01-02T00:00:00+02:00"})).bodies == []
    finally:
        await logout(a, b, c)


async def test_errors_and_the_page_bound(server_factory):
    server = server_factory("[mam]\nmax_page_size = 5\n")
    alice, alice_pw = server.add_user()
    bob, bob_pw = server.add_user()
    a = await mam_login(server, alice, alice_pw, "a")
    b = await mam_login(server, bob, bob_pw, "b")
    try:
        await exchange(a, b, [f"m{index}" for index in range(7)])
        await wait_for_archive(b, 5)
        # A huge <max/> is clamped to mam.max_page_size (XEP-0313 section 4.3.1), as is none.
        huge = await query(b, rsm={"max": 10**30})
        assert len(huge.results) == 5 and not huge.complete
        assert len((await query(b)).results) == 5

        assert await query_error(b, fields={"start": "yesterday"}) == "bad-request"
        assert await query_error(b, fields={"end": "2024-02-30T00:00:00Z"}) == "bad-request"
        assert await query_error(b, fields={"with": "@nobody"}) == "jid-malformed"
        assert await query_error(b, rsm={"after": "12345"}) == "item-not-found"
        assert await query_error(b, rsm={"before": "not-an-id"}) == "item-not-found"
        assert await query_error(b, fields={"after-id": huge.ids[0] + "0"}) == "item-not-found"
        assert await query_error(b, fields={"include-groupchat": "true"}) == "feature-not-implemented"
        # Another user's archive.
        assert await query_error(b, to=alice) == "forbidden"
        # Alice's ids are not in Bob's archive view... but the same message is: ids are per archive.
        alice_page = await query(a)
        assert alice_page.ids[:5] == huge.ids

        # Form discovery (section 4.1.5): every supported field, none required.
        form = await b.plugin["xep_0313"].get_fields(timeout=20)
        fields = {field["var"]: field for field in form["fields"]}
        assert {"FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"} <= set(fields)
        assert not any(field["required"] for field in fields.values())
        assert fields["with"]["type"] == "jid-single"
    finally:
        await logout(a, b)


async def test_prefs_never_is_not_archived(server):
    alice, alice_pw = server.add_user()
    bob, bob_pw = server.add_user()
    carol, carol_pw = server.add_user()
    a = await mam_login(server, alice, alice_pw, "a")
    b = await mam_login(server, bob, bob_pw, "b")
    c = await mam_login(server, carol, carol_pw, "c")
    try:
        assert (await a.plugin["xep_0441"].get_preferences(timeout=20))[0] == "always"
        # Alice never archives Bob; everyone else by default.
        await a.plugin["xep_0441"].set_preferences(default="always", never=[JID(bob)], timeout=20)
        default, always, never = await a.plugin["xep_0441"].get_preferences(timeout=20)
        assert default == "always" and [str(jid) for jid in never] == [bob]

        [from_bob] = await exchange(b, a, ["not kept by alice"])
        # Not in Alice's archive: no stanza id in her name.
        assert stanza_ids(from_bob) == []
        await exchange(c, a, ["kept"])
        page = await wait_for_archive(a, 1)
        await handled(b)
        assert (await query(a)).bodies == ["kept"]
        # Bob's own archive keeps his outgoing copy.
        assert (await wait_for_archive(b, 1)).bodies == ["not kept by alice"]

        await a.plugin["xep_0441"].set_preferences(default="never", timeout=20)
        [from_carol] = await exchange(c, a, ["nothing kept"])
        assert stanza_ids(from_carol) == []
        await handled(c)
        assert (await wait_for_archive(c, 2)).bodies == ["kept", "nothing kept"]
        assert (await query(a)).bodies == ["kept"]
        assert page.bodies == ["kept"]
    finally:
        await logout(a, b, c)


async def test_an_offline_message_is_archived_once(server):
    alice, alice_pw = server.add_user()
    bob, bob_pw = server.add_user()
    a = await mam_login(server, alice, alice_pw, "a")
    try:
        await chat(a, bob, "while you were away")
        await handled(a)
        b = await mam_login(server, bob, bob_pw, "b")
        try:
            message = await b.next_message(timeout=20)
            assert message["body"] == "while you were away"
            assert message.xml.find(f"{{{DELAY}}}delay") is not None
            [(by, stanza_id)] = stanza_ids(message)
            assert by == bob
            page = await wait_for_archive(b, 1)
            await handled(b)
            page = await query(b)
            assert page.bodies == ["while you were away"]
            assert page.ids == [stanza_id]
        finally:
            await logout(b)
    finally:
        await logout(a)


async def test_the_archive_across_two_connection_managers(cluster):  # noqa: F811 (the fixture)
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    a = await mam_login(cluster.node("cm-1"), alice, alice_pw, "a")
    b = await mam_login(cluster.node("cm-2"), bob, bob_pw, "b")
    try:
        received = await exchange(a, b, [f"across {index}" for index in range(4)])
        ids = [stanza_ids(message)[0] for message in received]
        assert all(by == bob for by, _ in ids)
        page = await wait_for_archive(b, 4)
        assert page.ids == [stanza_id for _, stanza_id in ids]
        assert page.bodies == [f"across {index}" for index in range(4)]
        forward = await query(a, rsm={"max": 2})
        assert forward.bodies == ["across 0", "across 1"] and not forward.complete
        rest = await query(a, rsm={"max": 2, "after": forward.last})
        assert rest.bodies == ["across 2", "across 3"] and rest.complete
        backward = await query(b, rsm={"max": 3, "before": None})
        assert backward.bodies == ["across 1", "across 2", "across 3"] and not backward.complete

        # Preferences set through one node hold on the other (storage decides, no node cache).
        await b.plugin["xep_0441"].set_preferences(default="never", timeout=20)
        [unkept] = await exchange(a, b, ["unkept"])
        assert stanza_ids(unkept) == []
        await handled(a)
        assert len((await wait_for_archive(a, 5)).results) == 5
        assert len((await query(b)).results) == 4
        assert await query_error(a, to=bob) == "forbidden"
    finally:
        await logout(a, b)


async def test_a_message_over_the_archive_bound_is_delivered_not_archived(server):
    """Issue 18: what one message adds to the archives is bounded
    (`mam.max_message_bytes`, 64 KiB): a 100 KB message is delivered, carries
    no stanza id and is counted, the next small one is archived as ever."""
    alice, alice_pw = server.add_user()
    bob, bob_pw = server.add_user()
    a = await mam_login(server, alice, alice_pw, "a")
    b = await mam_login(server, bob, bob_pw, "b")
    try:
        [large] = await exchange(a, b, ["x" * 100_000])
        assert stanza_ids(large) == []
        [small] = await exchange(a, b, ["small"])
        assert len(stanza_ids(small)) == 1
        await handled(a)
        assert (await wait_for_archive(b, 1)).bodies == ["small"]
        assert (await query(a)).bodies == ["small"]
        import urllib.request

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.http}/metrics", timeout=10).read().decode()
        assert 'starling_router_archive_total{outcome="too_large"} 1' in metrics
    finally:
        await logout(a, b)
