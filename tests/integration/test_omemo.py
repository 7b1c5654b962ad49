"""OMEMO end to end with a real OMEMO implementation (slixmpp-omemo 2.x from
PyPI, both OMEMO 2 `urn:xmpp:omemo:2` and the `eu.siacs.conversations.axolotl`
version that Conversations, Dino and Gajim still speak): what a server must do
for it is PEP (XEP-0163) with the XEP-0223 publish options (`pubsub#access_model
= open`, `pubsub#max_items = max`) that the library requires as preconditions,
items that another account can fetch (the bundles), `+notify` device-list
notifications, and routing messages without touching their payload.

Each client generates its identity, publishes its device lists and bundles on
Starling, fetches the other's, and they exchange encrypted messages both ways,
in `starling serve` and with the two accounts on different connection-managers
of a cluster. The server only ever sees ciphertext: the body in the stanza
Starling delivers is the library's fallback text, never the plaintext."""

import sys

from omemo.storage import Just, Nothing, Storage
from slixmpp.jid import JID
from slixmpp.plugins import register_plugin
from slixmpp_omemo import XEP_0384

from conftest import login, logout
from test_cluster import Cluster, befriend

FALLBACK = "This message is OMEMO encrypted."
OMEMO_VERSIONS = ("urn:xmpp:omemo:2", "eu.siacs.conversations.axolotl")


class MemoryStorage(Storage):
    """The OMEMO library's key-value storage, in memory (one per client)."""

    def __init__(self):
        super().__init__()
        self.data = {}

    async def _load(self, key):
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key, value):
        self.data[key] = value

    async def _delete(self, key):
        self.data.pop(key, None)


class OmemoPlugin(XEP_0384):
    """slixmpp-omemo's plugin made concrete: memory storage and blind trust
    before verification (BTBV), as a new client does."""

    default_config = {"fallback_message": FALLBACK}

    def plugin_init(self):
        self._storage = MemoryStorage()
        super().plugin_init()

    @property
    def storage(self):
        return self._storage

    @property
    def _btbv_enabled(self):
        return True

    async def _devices_blindly_trusted(self, blindly_trusted, identifier):
        pass

    async def _prompt_manual_trust(self, manually_trusted, identifier):
        raise AssertionError(f"manual trust asked for {manually_trusted} (BTBV is on)")


register_plugin(OmemoPlugin)


async def omemo_client(node, jid, password, resource):
    """A logged-in client whose OMEMO identity, device lists and bundles are
    published on the server before this returns."""
    client = await login(node, jid, password, resource)
    client.register_plugin("xep_0380")
    client.register_plugin("xep_0384", module=sys.modules[__name__])
    await client.plugin["xep_0384"].get_session_manager()
    return client


async def send_encrypted(client, to, body):
    message = client.make_message(mto=to, mtype="chat")
    message["body"] = body
    message.set_from(client.boundjid)
    encrypted, errors = await client.plugin["xep_0384"].encrypt_message(message, {JID(to)})
    assert encrypted is not None, f"nothing encrypted for {to}: {errors}"
    namespaces = {namespace for namespace in OMEMO_VERSIONS if encrypted.xml.find(f"{{{namespace}}}encrypted") is not None}
    assert len(namespaces) == 1, encrypted
    (namespace,) = namespaces
    encrypted["eme"]["namespace"] = namespace
    encrypted["eme"]["name"] = client.plugin["xep_0380"].mechanisms[namespace]
    encrypted.send()
    return namespace


async def receive_decrypted(client, sender, timeout=20):
    """The next encrypted message from `sender`, decrypted; its stanza as
    delivered carries the fallback body, not the plaintext."""
    while True:
        stanza = await client.next_message(timeout=timeout)
        if stanza["from"].bare != sender or not client.plugin["xep_0384"].is_encrypted(stanza):
            continue
        assert stanza["body"] == FALLBACK, stanza
        plain, device = await client.plugin["xep_0384"].decrypt_message(stanza)
        assert device.bare_jid == sender
        return plain["body"]


async def exchange(alice_node, alice, alice_pw, bob_node, bob, bob_pw):
    a = await omemo_client(alice_node, alice, alice_pw, "phone")
    b = await omemo_client(bob_node, bob, bob_pw, "laptop")
    try:
        await befriend(a, b, bob)
        # The library picks a version both devices published.
        assert await send_encrypted(a, bob, "meet at the usual place at 7") in OMEMO_VERSIONS
        assert await receive_decrypted(b, alice) == "meet at the usual place at 7"
        await send_encrypted(b, alice, "see you there")
        assert await receive_decrypted(a, bob) == "see you there"
        # Alice's device is in both of her device lists as bob fetches them,
        # and bob's library knows it under both versions.
        manager = await a.plugin["xep_0384"].get_session_manager()
        own, _ = await manager.get_own_device_information()
        for node in ("urn:xmpp:omemo:2:devices", "eu.siacs.conversations.axolotl.devicelist"):
            items = await b.plugin["xep_0060"].get_items(JID(alice), node, timeout=10)
            listed = [device.get("id") for device in items["pubsub"]["items"]["item"]["payload"]]
            assert listed == [str(own.device_id)], (node, listed)
        seen = await (await b.plugin["xep_0384"].get_session_manager()).get_device_information(alice)
        assert {device.device_id: device.namespaces for device in seen} == {own.device_id: frozenset(OMEMO_VERSIONS)}
    finally:
        await logout(a, b)


async def test_omemo_messages_both_ways_in_serve(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    await exchange(server, alice, alice_pw, server, bob, bob_pw)


async def test_omemo_messages_both_ways_across_two_connection_managers(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.up()
        alice, alice_pw = c.add_user("alice")
        bob, bob_pw = c.add_user("bob")
        await exchange(c.node("cm-1"), alice, alice_pw, c.node("cm-2"), bob, bob_pw)
    finally:
        c.down()
