"""XEP-0352 client state indication, seen by a raw client: while it is
inactive, its contacts' presence updates and chat states do not reach it;
the first stanza that matters brings the latest of each first, in order;
`<active/>` flushes before anything the client asks next is answered. In
`starling serve` and with the observer and its contacts on two
connection-managers."""

import asyncio
import base64
import re
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from conftest import RawClient, login, logout, wait_until_async
from test_cluster import befriend, cluster  # noqa: F401 (the cluster fixture)

CSI = "urn:xmpp:csi:0"
CLIENT = "{jabber:client}"
CHAT_STATES = "http://jabber.org/protocol/chatstates"


def raw_login(raw, jid, password, resource):
    """STARTTLS, SASL PLAIN, bind (RawClient.login, keeping the stream
    features offered after authentication); returns (full JID, features)."""
    raw.starttls()
    token = base64.b64encode(f"\0{jid.split('@')[0]}\0{password}".encode()).decode()
    raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    assert "success" in raw.recv_until("success")
    raw.recv_until(">")
    features = raw.open_stream()
    raw.send(
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        f"<resource>{resource}</resource></bind></iq>"
    )
    bound = raw.recv_until("</iq>")
    return bound[bound.index("<jid>") + 5 : bound.index("</jid>")], features


def parse(text):
    """The stanzas in a piece of the stream (whole stanzas only)."""
    return list(ET.fromstring(f"<root xmlns='jabber:client'>{text}</root>"))


def metric(http, name):
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def presence_of(stanza):
    """(sender, status or 'unavailable') of a presence."""
    if stanza.get("type") == "unavailable":
        return stanza.get("from"), "unavailable"
    return stanza.get("from"), stanza.findtext(f"{CLIENT}status")


def read_stanzas_blocking(raw, last):
    """Read whole stanzas until one satisfies `last`; return them all."""
    text = ""
    while True:
        text += raw.recv_until(">")
        try:
            stanzas = parse(text)
        except ET.ParseError:
            continue  # inside a stanza
        if stanzas and last(stanzas[-1]):
            return stanzas


async def read_stanzas(raw, last):
    return await asyncio.to_thread(read_stanzas_blocking, raw, last)


def is_presence(stanza):
    return stanza.tag == f"{CLIENT}presence"


async def observe_inactive_client(observer_node, contacts_node, add_user, metrics_http):
    """The scenario, with the observer on `observer_node` and its three
    contacts (plus a stranger) on `contacts_node`; `metrics_http` is the
    observer's connection-manager's HTTP address."""
    observer_jid, observer_pw = add_user("observer")
    accounts = [add_user(f"contact{n}") for n in range(3)]
    setup = await login(observer_node, observer_jid, observer_pw, "setup")
    contacts = [await login(contacts_node, jid, pw, "phone") for jid, pw in accounts]
    for contact, (jid, _) in zip(contacts, accounts):
        await befriend(contact, setup, observer_jid)
    await logout(setup)

    raw = RawClient(observer_node)
    try:
        full, features = await asyncio.to_thread(raw_login, raw, observer_jid, observer_pw, "raw")
        # XEP-0352 section 3.1: offered after authentication.
        assert f"<csi xmlns='{CSI}'/>" in features, features
        raw.send("<presence/>")
        # Every contact's current presence, answered to the initial presence.
        seen = set()
        while len(seen) < 3:
            for stanza in await read_stanzas(raw, is_presence):
                seen.add(stanza.get("from").split("/")[0])
        held_before = metric(metrics_http, "starling_csi_stanzas_held_total") or 0
        superseded_before = metric(metrics_http, "starling_csi_stanzas_superseded_total") or 0

        # Inactive; the ping's answer shows the server took it (section 5.1).
        raw.send(f"<inactive xmlns='{CSI}'/><iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        await read_stanzas(raw, lambda s: s.get("id") == "p1")
        for index, contact in enumerate(contacts):
            for step in range(1, 6):
                if index == 2 and step == 5:
                    contact.send_presence(ptype="unavailable")
                else:
                    contact.send_presence(pshow="away", pstatus=f"s{step}")
                if step in (2, 4):
                    state = "composing" if step == 2 else "paused"
                    contact.send_raw(f"<message to='{full}' type='chat'><{state} xmlns='{CHAT_STATES}'/></message>")
        # 5 presences and 2 chat states from each contact reached the
        # observer's connection and were held there; 5 of each 7 superseded.
        # Both counters, read apart: one stanza's two increments may straddle the reads.
        await wait_until_async(
            lambda: metric(metrics_http, "starling_csi_stanzas_held_total") == held_before + 21
            and metric(metrics_http, "starling_csi_stanzas_superseded_total") == superseded_before + 15,
            timeout=30,
            what="21 stanzas held for the inactive observer, 15 of them superseded",
        )
        assert metric(metrics_http, "starling_csi_inactive_sessions") >= 1
        # Nothing was written meanwhile.
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(raw.recv_until, "<", 0.5)

        # A message with a body: the held latest presences and chat states
        # first, then the message.
        contacts[0].send_message(mto=full, mbody="wake up", mtype="chat")
        stanzas = await read_stanzas(raw, lambda s: s.findtext(f"{CLIENT}body") == "wake up")
        assert stanzas[-1].tag == f"{CLIENT}message"
        held = stanzas[:-1]
        presences = [presence_of(s) for s in held if s.tag == f"{CLIENT}presence"]
        contact_jids = [f"{jid}/phone" for jid, _ in accounts]
        assert sorted(presences) == sorted(
            [(contact_jids[0], "s5"), (contact_jids[1], "s5"), (contact_jids[2], "unavailable")]
        ), [ET.tostring(s) for s in held]
        chat_states = [s for s in held if s.tag == f"{CLIENT}message"]
        assert sorted(s.get("from") for s in chat_states) == sorted(contact_jids)
        assert all(s.find(f"{{{CHAT_STATES}}}paused") is not None for s in chat_states)
        assert len(held) == 6

        # Still inactive. A subscription request is not held: it comes at
        # once, after the presence that was held before it.
        contacts[1].send_presence(pshow="dnd", pstatus="s6")
        await wait_until_async(
            lambda: metric(metrics_http, "starling_csi_stanzas_held_total") == held_before + 22,
            timeout=30,
            what="the next presence held",
        )
        stranger_jid, stranger_pw = add_user("stranger")
        stranger = await login(contacts_node, stranger_jid, stranger_pw, "phone")
        stranger.send_presence(pto=observer_jid, ptype="subscribe")
        stanzas = await read_stanzas(raw, lambda s: s.get("type") == "subscribe")
        assert [presence_of(s) for s in stanzas[:-1]] == [(contact_jids[1], "s6")]
        assert stanzas[-1].get("from") == stranger_jid

        # <active/>: what was held is written before the answer to the next request.
        contacts[2].send_presence(pstatus="s7")
        await wait_until_async(
            lambda: metric(metrics_http, "starling_csi_stanzas_held_total") == held_before + 23,
            timeout=30,
            what="the returning contact's presence held",
        )
        raw.send(f"<active xmlns='{CSI}'/><iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
        stanzas = await read_stanzas(raw, lambda s: s.get("id") == "p2")
        assert [presence_of(s) for s in stanzas[:-1]] == [(contact_jids[2], "s7")]
        assert stanzas[-1].tag == f"{CLIENT}iq" and stanzas[-1].get("id") == "p2"

        # Active again: a presence comes at once.
        contacts[0].send_presence(pstatus="s8")
        stanzas = await read_stanzas(raw, is_presence)
        assert [presence_of(s) for s in stanzas] == [(contact_jids[0], "s8")]
        await logout(stranger)
    finally:
        raw.close()
        await logout(*contacts)


async def test_an_inactive_client_gets_only_what_matters_in_order(server):
    def add_user(name):
        return server.add_user(name)

    await observe_inactive_client(server, server, add_user, f"127.0.0.1:{server.http}")


async def test_an_inactive_client_on_another_node_than_its_contacts(cluster):  # noqa: F811
    await observe_inactive_client(
        cluster.node("cm-1"), cluster.node("cm-2"), cluster.add_user, cluster.processes["cm-1"]["http"]
    )


def test_switched_off_it_is_not_offered_and_its_nonzas_are_unsupported(server_factory):
    server = server_factory(extra_toml="[csi]\nenabled = false\n")
    jid, password = server.add_user("offline")
    raw = RawClient(server)
    try:
        _, features = raw_login(raw, jid, password, "raw")
        assert "urn:xmpp:csi:0" not in features, features
        raw.send(f"<inactive xmlns='{CSI}'/>")
        closing = raw.read_until_closed()
        assert "<unsupported-stanza-type" in closing, closing
    finally:
        raw.close()
