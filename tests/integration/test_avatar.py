"""Avatars with real slixmpp clients: User Avatar (XEP-0084, `xep_0084`),
the vCard photo (XEP-0054, `xep_0054`), the server's conversion between them
(XEP-0398) and the photo hash it stamps on presence (XEP-0153), in
`starling serve` and across two connection-managers (the owner on cm-1, the
contact on cm-2)."""

import base64
import hashlib
import xml.etree.ElementTree as ET

from conftest import handled, logout
from test_cluster import befriend, cluster  # noqa: F401 (the cluster fixture)
from test_pep import EVENT, MOOD, next_event, pep_login

VCARD = "vcard-temp"
METADATA = "urn:xmpp:avatar:metadata"
DATA = "urn:xmpp:avatar:data"
UPDATE = "vcard-temp:x:update"
CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
# A 1x1 PNG, and a GIF header: the bytes matter only for their hashes.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
PLUGINS = ("xep_0084", "xep_0054")


def vcard_set(client, photo):
    iq = client.make_iq_set()
    vcard = ET.Element(f"{{{VCARD}}}vCard")
    ET.SubElement(vcard, f"{{{VCARD}}}FN").text = "Alice"
    element = ET.SubElement(vcard, f"{{{VCARD}}}PHOTO")
    ET.SubElement(element, f"{{{VCARD}}}TYPE").text = "image/png"
    # XEP-0153 section 4.1: BINVAL may be wrapped over lines.
    encoded = base64.b64encode(photo).decode()
    ET.SubElement(element, f"{{{VCARD}}}BINVAL").text = "\n".join(encoded[i : i + 40] for i in range(0, len(encoded), 40))
    iq.append(vcard)
    return iq


async def vcard_photo(client, owner):
    iq = client.make_iq_get(ito=owner)
    iq.append(ET.Element(f"{{{VCARD}}}vCard"))
    result = await iq.send(timeout=20)
    binval = result.xml.find(f"{{{VCARD}}}vCard/{{{VCARD}}}PHOTO/{{{VCARD}}}BINVAL")
    kind = result.xml.find(f"{{{VCARD}}}vCard/{{{VCARD}}}PHOTO/{{{VCARD}}}TYPE")
    if binval is None:
        return None
    return kind.text, base64.b64decode("".join(binval.text.split()))


async def next_avatar_event(client):
    """The next metadata notification's (item id, info attributes)."""
    while True:
        _, msg = await next_event(client, timeout=30)
        items = msg.xml.find(f"{{{EVENT}}}event/{{{EVENT}}}items")
        if items.get("node") == METADATA:
            item = items.find(f"{{{EVENT}}}item")
            info = item.find(f"{{{METADATA}}}metadata/{{{METADATA}}}info")
            return item.get("id"), dict(info.attrib)


def photo_hash(presence):
    photo = presence.xml.find(f"{{{UPDATE}}}x/{{{UPDATE}}}photo")
    return None if photo is None else (photo.text or "")


async def avatar_scenario(node_a, node_b, alice, alice_pw, bob, bob_pw):
    # Alice's client does XEP-0084; bob's announces metadata+notify (xep_0084).
    a = await pep_login(node_a, alice, alice_pw, "phone", notify=[MOOD], plugins=PLUGINS)
    b = await pep_login(node_b, bob, bob_pw, "laptop", notify=[MOOD], plugins=PLUGINS)
    await befriend(a, b, bob)

    # XEP-0398 section 2: the conversion is advertised on the account.
    info = await a.plugin["xep_0030"].get_info(jid=alice, timeout=20)
    assert CONVERSION in info["disco_info"]["features"]

    # vCard to PEP (section 3.2): bob gets the metadata notification and
    # can fetch the data by its id, the SHA-1 of the image.
    await vcard_set(a, PNG).send(timeout=20)
    png_id = hashlib.sha1(PNG).hexdigest()
    item_id, info = await next_avatar_event(b)
    assert item_id == png_id
    assert info == {"bytes": str(len(PNG)), "id": png_id, "type": "image/png", "height": "1", "width": "1"}
    data = await b.plugin["xep_0084"].retrieve_avatar(alice, png_id, timeout=20)
    assert data["pubsub"]["items"]["item"]["avatar_data"]["value"] == PNG

    # Section 4: alice's next available presence carries the hash.
    a.send_presence(pstatus="with a photo")
    presence = await b.next_presence(lambda p: p["from"] == a.boundjid and p["status"] == "with a photo", timeout=20)
    assert photo_hash(presence) == png_id

    # PEP to vCard (section 3.1): a XEP-0084 publish changes the vCard that
    # anyone reads (bob here, through the other node in the cluster).
    gif_id = hashlib.sha1(GIF).hexdigest()
    await a.plugin["xep_0084"].publish_avatar(GIF, timeout=20)
    await a.plugin["xep_0084"].publish_avatar_metadata(
        items=[{"id": gif_id, "type": "image/gif", "bytes": len(GIF)}], timeout=20
    )
    item_id, _ = await next_avatar_event(b)
    assert item_id == gif_id
    assert await vcard_photo(b, alice) == ("image/gif", GIF)
    a.send_presence(pstatus="with a gif")
    presence = await b.next_presence(lambda p: p["from"] == a.boundjid and p["status"] == "with a gif", timeout=20)
    assert photo_hash(presence) == gif_id
    await handled(a)
    await logout(a, b)


async def test_avatar_conversion_in_one_process(server):
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    await avatar_scenario(server, server, alice, alice_pw, bob, bob_pw)


async def test_avatar_conversion_across_two_connection_managers(cluster):  # noqa: F811 (the fixture)
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    await avatar_scenario(cluster.node("cm-1"), cluster.node("cm-2"), alice, alice_pw, bob, bob_pw)
