"""The real Converse.js (npm converse.js) in headless Debian Chromium, driven
by playwright-core (tests/web/converse_chat.mjs), against the real
`starling serve`: alice logs in from the page over WebSocket (RFC 7395, so
SCRAM, see docs/adr/0002-websocket-is-not-tls.md), opens a chat with bob, who
is connected over TCP by slixmpp, and sends him a message; bob's reply shows
up in the page. The screenshot of the page is saved in the test's tmp_path and
copied to tests/out/ (git ignores it); its path is printed. Then alice sends
a picture from the page (XEP-0363 HTTP File Upload: Converse finds the upload
service in disco, asks for a slot and PUTs the file across origins, so the
CORS preflight is exercised too) and bob downloads it from the URL he got.

Without Chromium (/usr/bin/chromium, which scripts/test.sh installs) or the
npm packages, the test is skipped, except under CI (the CI environment
variable is set), where it fails instead."""

import asyncio
import functools
import http.server
import json
import os
import shutil
import struct
import threading
import urllib.request
import zlib

import pytest

from conftest import REPO, Server, login, logout, wait_until_async
from test_cluster import cluster  # noqa: F401 (the cluster fixture)

WEB_DIR = REPO / "tests" / "web"
SCRIPT = WEB_DIR / "converse_chat.mjs"
CONVERSE_DIST = WEB_DIR / "node_modules" / "converse.js" / "dist"
CHROMIUM = os.environ.get("STARLING_CHROMIUM", "/usr/bin/chromium")
NODE = shutil.which("node")
OUT_DIR = REPO / "tests" / "out"

INDEX_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Starling - Converse.js</title>
  <link rel="stylesheet" type="text/css" media="screen" href="/dist/converse.min.css">
  <link rel="icon" href="data:,">
</head>
<body class="converse-fullscreen">
<script type="module">
  // converse.js 14's dist is an ES module whose default export is `converse`.
  import converse from "/dist/converse.min.js";
  converse.initialize(__CONFIG__);
</script>
</body>
</html>
"""


def missing_requirements():
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    if NODE is None:
        missing.append("node")
    if not (CONVERSE_DIST / "converse.min.js").is_file() or not (WEB_DIR / "node_modules" / "playwright-core").is_dir():
        missing.append("the npm packages of tests/web (npm ci --prefix tests/web)")
    return missing


@pytest.fixture
def requirements():
    missing = missing_requirements()
    if missing:
        message = "needs " + ", ".join(missing) + " (scripts/test.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(message + "; under CI this test must run")
        pytest.skip(message)


@pytest.fixture
def web_page(tmp_path):
    """A tiny static site: index.html written by the test, /dist/ = converse's dist."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "dist").symlink_to(CONVERSE_DIST, target_is_directory=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()

    def publish(config):
        (root / "index.html").write_text(INDEX_HTML.replace("__CONFIG__", json.dumps(config, indent=2)))
        return f"http://127.0.0.1:{site.server_address[1]}/index.html"

    yield publish
    site.shutdown()
    site.server_close()


class UploadServer(Server):
    """`starling serve` with HTTP File Upload whose URLs name 127.0.0.1 (the
    browser may reach nothing else)."""

    def write_config(self):
        self.extra_toml = f'[upload]\npublic_url = "http://127.0.0.1:{self.http}"\n'
        super().write_config()


@pytest.fixture
def upload_server(tmp_path):
    srv = UploadServer(tmp_path).start()
    yield srv
    srv.stop()


def png(width=24, height=16):
    """A small valid PNG (a colour gradient) written without an image library."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 10 % 256, y * 15 % 256, 128)) for x in range(width)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def converse_config(ws_url, alice, alice_pw):
    """The settings of the test page: alice logs in by herself over WebSocket."""
    return {
        "websocket_url": ws_url,
        "discover_connection_methods": False,
        "authentication": "login",
        "auto_login": True,
        "jid": alice,
        "password": alice_pw,
        "view_mode": "fullscreen",
        "i18n": "en",
        "assets_path": "/dist/",
        "allow_non_roster_messaging": True,  # the contacts menu's "Start a new chat"
        "show_controlbox_by_default": True,
        "play_sounds": False,
        "show_desktop_notifications": False,
        "loglevel": "info",
        # OMEMO would fetch a wasm file and device lists the tests have no use for.
        "blacklisted_plugins": ["converse-omemo"],
    }


async def share_roster(server, alice, alice_pw, bob):
    """Alice and bob subscribe to each other (alice from a TCP session that then
    ends), so Converse shows bob as a contact. Converse 14 needs that here: for
    a JID outside the roster it awaits its XEP-0191 blocklist before opening
    the chat, and that never resolves on a server without XEP-0191."""
    tcp_alice = await login(server, alice, alice_pw, "setup")
    tcp_alice.auto_authorize = True
    try:
        tcp_alice.send_presence(pto=bob, ptype="subscribe")
        await wait_until_async(
            lambda: tcp_alice.client_roster[bob]["subscription"] == "both",
            timeout=10,
            what=f"alice to see {bob} as a mutual contact",
        )
    finally:
        await logout(tcp_alice)


async def test_converse_in_chromium_chats_and_sends_a_picture_to_slixmpp_over_tcp(requirements, upload_server, web_page, tmp_path):
    server = upload_server
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    tcp = await login(server, bob, bob_pw, "desk")
    tcp.auto_authorize = True
    tcp.auto_subscribe = True
    await share_roster(server, alice, alice_pw, bob)

    page_url = web_page(converse_config(f"ws://127.0.0.1:{server.http}/xmpp-websocket", alice, alice_pw))
    screenshot = tmp_path / "converse.png"
    picture = tmp_path / "picture.png"
    picture.write_bytes(png())
    message = "Hello Bob, this is Alice in Converse.js"
    reply = "Hi Alice, Bob here on slixmpp"

    web = await asyncio.create_subprocess_exec(
        NODE,
        str(SCRIPT),
        cwd=str(WEB_DIR),
        env={
            **os.environ,
            "PAGE_URL": page_url,
            "PEER": bob,
            "MESSAGE": message,
            "REPLY": reply,
            "SCREENSHOT": str(screenshot),
            "UPLOAD_FILE": str(picture),
            "CHROMIUM": CHROMIUM,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    finished = asyncio.ensure_future(web.communicate())
    received = asyncio.ensure_future(tcp.next_message(timeout=90))
    downloaded = None
    try:
        # The browser logs in, opens the chat and sends: bob gets it over TCP
        # (unless the browser gave up first, which the script reports).
        await asyncio.wait([finished, received], return_when=asyncio.FIRST_COMPLETED)
        if received.done():
            msg = received.result()
            assert str(msg["from"]).startswith(f"{alice}/"), msg
            assert msg["body"] == message
            received = asyncio.ensure_future(tcp.next_message(timeout=90))
            tcp.send_message(mto=msg["from"], mbody=reply, mtype="chat")
            # Then the picture: its GET URL as the body (and as XEP-0066 oob).
            await asyncio.wait([finished, received], return_when=asyncio.FIRST_COMPLETED)
            if received.done():
                url = str(received.result()["body"])
                assert url.startswith(f"http://127.0.0.1:{server.http}/"), url
                with urllib.request.urlopen(url, timeout=10) as response:
                    downloaded = (response.headers.get("Content-Type"), response.read())
        stdout, stderr = await asyncio.wait_for(finished, 120)
    finally:
        received.cancel()
        if web.returncode is None:
            web.kill()
            await web.wait()
        await logout(tcp)

    events = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    browser_log = tmp_path / "browser.log"
    browser_log.write_bytes(stderr)
    if screenshot.exists():
        OUT_DIR.mkdir(exist_ok=True)
        copy = OUT_DIR / "converse.png"
        shutil.copyfile(screenshot, copy)
        print(f"Converse.js screenshot: {screenshot} (copied to {copy})")
    detail = f"events: {events}\nbrowser console ({browser_log}):\n{stderr.decode(errors='replace')[-6000:]}"
    assert web.returncode == 0, detail
    assert {"event": "websocket", "url": f"ws://127.0.0.1:{server.http}/xmpp-websocket"} in events, detail
    shown = next(event["messages"] for event in events if event["event"] == "reply-shown")
    assert message in shown and reply in shown, detail
    uploaded = next((event for event in events if event["event"] == "uploaded"), None)
    assert uploaded is not None and uploaded["src"].startswith(f"http://127.0.0.1:{server.http}/"), detail
    assert downloaded == ("image/png", picture.read_bytes()), detail
    assert screenshot.stat().st_size > 0


ACCOUNT_SCRIPT = WEB_DIR / "converse_account.mjs"
BOOKMARKS2 = "urn:xmpp:bookmarks:1"


def bookmarks2_item(client, name, autojoin):
    import xml.etree.ElementTree as ET

    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
    for var, value in (("persist_items", "true"), ("max_items", "max"), ("send_last_published_item", "never"), ("access_model", "whitelist")):
        form.add_field(var=f"pubsub#{var}", value=value)
    payload = ET.fromstring(f"<conference xmlns='{BOOKMARKS2}' name='{name}' autojoin='{str(autojoin).lower()}'><nick>alice</nick></conference>")
    return payload, form


async def account_data_in_converse(ws_url, alice_node, bob_node, add_user, web_page, tmp_path):
    """What Converse.js shows of the account's data the server keeps:
    (a) chat history from the archive (XEP-0313): bob (slixmpp) wrote to
    alice while only another session of hers was online, so the page's
    session got nothing delivered and must fetch it; (b) a bookmark alice
    published through slixmpp as a XEP-0402 item is in Converse's bookmarks
    list, and the room Converse then joins is bookmarked by Converse, which
    slixmpp reads back as a XEP-0402 item; (c) the room (MUC at
    conference.localhost) with bob, a slixmpp occupant on `bob_node`: each
    sees the other's message."""
    alice, alice_pw = add_user("alice")
    bob, bob_pw = add_user("bob")
    room = "orchard@conference.localhost"
    tcp = await login(bob_node, bob, bob_pw, "desk")
    tcp.auto_authorize = True
    tcp.auto_subscribe = True
    await share_roster(alice_node, alice, alice_pw, bob)

    # (a) and (b): written while the page is not logged in.
    setup = await login(alice_node, alice, alice_pw, "setup")
    for plugin in ("xep_0004", "xep_0060", "xep_0045"):
        setup.register_plugin(plugin)
        tcp.register_plugin(plugin)
    payload, options = bookmarks2_item(setup, "The Bookmarked Orchard", autojoin=False)
    await setup.plugin["xep_0060"].publish(alice, BOOKMARKS2, id="bookmarked@conference.localhost", payload=payload, options=options, timeout=20)
    history = ["First archived line from Bob", "Second archived line from Bob"]
    for text in history:
        tcp.send_message(mto=alice, mbody=text, mtype="chat")
        got = await setup.next_message(timeout=20)
        assert got["body"] == text
    await logout(setup)
    # (c): bob creates the room and stays in it.
    muc = tcp.plugin["xep_0045"]
    own, _subject, _occupants, _history = await muc.join_muc_wait(room, "bob", maxstanzas=0, timeout=20)
    await muc.set_room_config(room, tcp.plugin["xep_0004"].make_form(ftype="submit"))

    page_url = web_page(converse_config(ws_url, alice, alice_pw))
    screenshot = tmp_path / "converse-account.png"
    room_message = "Hello room, Alice from Converse.js"
    room_reply = "Hello Alice, Bob in the room"
    web = await asyncio.create_subprocess_exec(
        NODE,
        str(ACCOUNT_SCRIPT),
        cwd=str(WEB_DIR),
        env={
            **os.environ,
            "PAGE_URL": page_url,
            "SCREENSHOT": str(screenshot),
            "CHROMIUM": CHROMIUM,
            "BOOKMARK_NAME": "The Bookmarked Orchard",
            "PEER": bob,
            "HISTORY": json.dumps(history),
            "ROOM": room,
            "NICK": "alice",
            "ROOM_MESSAGE": room_message,
            "ROOM_REPLY": room_reply,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    finished = asyncio.ensure_future(web.communicate())

    async def alice_in_the_room():
        while True:
            message = await tcp.next_message(timeout=120)
            if message["type"] == "groupchat" and message["body"] == room_message:
                return message

    heard = asyncio.ensure_future(alice_in_the_room())
    bookmarked = None
    try:
        await asyncio.wait([finished, heard], return_when=asyncio.FIRST_COMPLETED)
        if heard.done():
            message = heard.result()
            assert str(message["from"]) == f"{room}/alice", message
            tcp.send_message(mto=room, mbody=room_reply, mtype="groupchat")
        stdout, stderr = await asyncio.wait_for(finished, 180)
        # Converse bookmarked the room it joined (XEP-0402, autojoin): read by slixmpp.
        reader = await login(bob_node, alice, alice_pw, "reader")
        reader.register_plugin("xep_0060")
        items = await reader.plugin["xep_0060"].get_items(alice, BOOKMARKS2, timeout=20)
        bookmarked = {item["id"]: item.xml.find(f"{{{BOOKMARKS2}}}conference").get("autojoin") for item in items["pubsub"]["items"]}
        await logout(reader)
    finally:
        heard.cancel()
        if web.returncode is None:
            web.kill()
            await web.wait()
        await logout(tcp)

    events = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    browser_log = tmp_path / "browser-account.log"
    browser_log.write_bytes(stderr)
    if screenshot.exists():
        OUT_DIR.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, OUT_DIR / "converse-account.png")
    detail = f"events: {events}\nbrowser console ({browser_log}):\n{stderr.decode(errors='replace')[-6000:]}"
    assert web.returncode == 0, detail
    bookmarks = next(event["bookmarks"] for event in events if event["event"] == "bookmarks-shown")
    assert "The Bookmarked Orchard" in bookmarks, detail
    shown = next(event["messages"] for event in events if event["event"] == "history-shown")
    assert all(text in shown for text in history), detail
    in_room = next(event["messages"] for event in events if event["event"] == "room-shown")
    assert room_message in in_room and room_reply in in_room, detail
    assert bookmarked is not None and room in bookmarked and bookmarked[room] in ("true", "1"), (bookmarked, detail)
    assert "bookmarked@conference.localhost" in bookmarked, bookmarked


async def test_converse_shows_history_bookmarks_and_a_room(requirements, server, web_page, tmp_path):
    await account_data_in_converse(
        f"ws://127.0.0.1:{server.http}/xmpp-websocket", server, server, server.add_user, web_page, tmp_path
    )


async def test_converse_on_cm_1_with_a_slixmpp_occupant_on_cm_2(requirements, cluster, web_page, tmp_path):  # noqa: F811
    http = cluster.processes["cm-1"]["http"]
    await account_data_in_converse(
        f"ws://{http}/xmpp-websocket", cluster.node("cm-1"), cluster.node("cm-2"), cluster.add_user, web_page, tmp_path
    )
