"""XMPP over WebSocket (RFC 7395) on the real `starling serve` HTTP listener:
XEP-0156 discovery, and a real web client library (npm @xmpp/client, run by
Node) chatting with a TCP user connected by slixmpp. The framing, SASL and
bad-frame cases are covered by the connection-manager's Rust tests
(services/connection-manager/tests/websocket.rs)."""

import asyncio
import json
import os
import shutil
import subprocess
import urllib.request

import pytest

from conftest import REPO, login, logout

WEB_DIR = REPO / "tests" / "web"
SCRIPT = WEB_DIR / "xmpp_client_websocket.mjs"
NODE = shutil.which("node")


def node_arguments():
    """Node before 22 has the WebSocket global behind a flag."""
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(version.strip().lstrip("v").split(".")[0])
    return ["--experimental-websocket"] if major < 22 else []


def test_host_meta_advertises_the_websocket_endpoint(server):
    # XEP-0156 section 3: the URL is built from the Host the client used.
    base = f"http://127.0.0.1:{server.http}"
    with urllib.request.urlopen(f"{base}/.well-known/host-meta.json", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        links = json.load(response)["links"]
    assert links == [
        {
            "rel": "urn:xmpp:alt-connections:websocket",
            "href": f"ws://127.0.0.1:{server.http}/xmpp-websocket",
        }
    ]
    with urllib.request.urlopen(f"{base}/.well-known/host-meta", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/xrd+xml"
        xrd = response.read().decode()
    assert (
        f"<Link rel='urn:xmpp:alt-connections:websocket' href='ws://127.0.0.1:{server.http}/xmpp-websocket'/>"
        in xrd
    )


@pytest.mark.skipif(
    NODE is None or not (WEB_DIR / "node_modules" / "@xmpp" / "client").is_dir(),
    reason="needs node and `npm ci --prefix tests/web` (scripts/test.sh installs them)",
)
async def test_xmpp_client_over_websocket_chats_with_slixmpp_over_tcp(server):
    juliet, juliet_pw = server.add_user("juliet")
    romeo, romeo_pw = server.add_user("romeo")
    tcp = await login(server, romeo, romeo_pw, "orchard")
    tcp.auto_authorize = True
    tcp.auto_subscribe = True

    web = await asyncio.create_subprocess_exec(
        NODE,
        *node_arguments(),
        str(SCRIPT),
        cwd=str(WEB_DIR),
        env={
            **os.environ,
            "WS_URL": f"ws://127.0.0.1:{server.http}/xmpp-websocket",
            "DOMAIN": server.domain,
            "USERNAME": "juliet",
            "PASSWORD": juliet_pw,
            "PEER": romeo,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # The web client subscribes, is approved, then says hello.
        msg = await tcp.next_message(timeout=30)
        assert str(msg["from"]) == f"{juliet}/web"
        assert msg["body"] == "ping from @xmpp/client"
        # Presence and a reply from the TCP side reach the browser-style session.
        tcp.send_presence(pstatus="in the orchard")
        tcp.send_message(mto=msg["from"], mbody="pong from slixmpp", mtype="chat")
        stdout, stderr = await asyncio.wait_for(web.communicate(), 40)
    finally:
        if web.returncode is None:
            web.kill()
            await web.wait()
        await logout(tcp)

    events = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    assert web.returncode == 0, (events, stderr.decode(errors="replace"), server.log_text()[-4000:])
    assert {"event": "online", "jid": f"{juliet}/web"} in events
    assert {"event": "presence", "from": f"{romeo}/orchard", "status": "in the orchard"} in events
    assert {"event": "message", "from": f"{romeo}/orchard", "body": "pong from slixmpp"} in events
