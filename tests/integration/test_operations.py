"""Operating the server: configuration errors, account commands, health,
in-band registration."""

import asyncio
import re
import shutil
import subprocess
import urllib.request

from conftest import BIN, Client, login, logout


def test_config_error_names_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_stanza_byte = 5\n")
    result = subprocess.run([BIN, "serve", "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 64
    assert "max_stanza_byte" in result.stderr

    config.write_text("[listen]\nc2s = 'not an address'\n")
    result = subprocess.run([BIN, "serve", "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 64
    assert "listen.c2s" in result.stderr


def test_environment_override_is_validated(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "STARLING_LIMITS_MAX_STANZA_BYTES": "lots"}
    result = subprocess.run([BIN, "config", "check"], capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert result.returncode == 64
    assert "STARLING_LIMITS_MAX_STANZA_BYTES" in result.stderr


def test_user_commands(server):
    assert server.cli("user", "add", "dave@localhost", "pw1").returncode == 0
    duplicate = server.cli("user", "add", "Dave@LOCALHOST", "pw2", check=False)
    assert duplicate.returncode != 0 and "already exists" in duplicate.stderr
    assert "dave@localhost" in server.cli("user", "list", "localhost").stdout.split()
    assert server.cli("user", "passwd", "dave@localhost", "pw3").returncode == 0
    assert server.cli("user", "remove", "dave@localhost").returncode == 0
    assert "dave@localhost" not in server.cli("user", "list", "localhost").stdout.split()
    missing = server.cli("user", "remove", "dave@localhost", check=False)
    assert missing.returncode != 0


async def test_password_change_takes_effect(server):
    jid, _ = server.add_user("erin", "old-password")
    server.cli("user", "passwd", jid, "new-password")
    client = await login(server, jid, "new-password")
    await logout(client)
    refused = Client(jid, "old-password")
    refused.connect(host="127.0.0.1", port=server.c2s)
    done, _ = await asyncio.wait([refused.started, refused.failed], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    assert refused.failed in done
    refused.disconnect()


def test_health_and_readiness(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/healthz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/readyz", timeout=5) as response:
        assert response.status == 200


def scrape(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def series_sum(text: str, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total


async def test_metrics_after_a_login(server):
    jid, _ = server.add_user("mallory", "secret")
    before = scrape(server)
    assert series_sum(before, "starling_logins_total", result="success") == 0
    client = await login(server, jid, "secret")
    client.send_message(mto=jid, mbody="to myself")
    text = scrape(server)
    await logout(client)
    assert series_sum(text, "starling_logins_total", result="success") == 1, text
    assert series_sum(text, "starling_sessions") == 1, text
    assert series_sum(text, "starling_connections") >= 1, text
    assert series_sum(text, "starling_build_info", target="all") == 1, text
    assert "# TYPE starling_logins_total counter" in text
    assert "# TYPE starling_sessions gauge" in text
    # Never a JID (nor any address) in a label.
    assert not [line for line in text.splitlines() if "@" in line], text
    promtool = shutil.which("promtool")
    if promtool:
        checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_in_band_registration_when_enabled(server_factory):
    srv = server_factory("[registration]\nenabled = true\n")
    client = Client(f"newbie@{srv.domain}", "fresh-password")
    client.register_plugin("xep_0077")
    client.plugin["xep_0077"].force_registration = True
    registered = asyncio.get_event_loop().create_future()

    async def on_register(_event):
        response = client.Iq()
        response["type"] = "set"
        response["register"]["username"] = "newbie"
        response["register"]["password"] = "fresh-password"
        await response.send()
        registered.set_result(True)

    client.add_event_handler("register", on_register)
    client.connect(host="127.0.0.1", port=srv.c2s)
    await asyncio.wait_for(registered, 15)
    await asyncio.wait_for(client.started, 15)
    # Enabled, it is advertised (XEP-0077 section 7; off: test_im.py's disco test).
    info = await client.plugin["xep_0030"].get_info(jid=srv.domain)
    assert "jabber:iq:register" in info["disco_info"]["features"]
    await logout(client)
    assert "newbie@localhost" in srv.cli("user", "list", "localhost").stdout.split()


def test_registration_is_off_by_default(server):
    from conftest import RawClient

    raw = RawClient(server)
    features = raw.starttls()
    assert "iq-register" not in features
    raw.send("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>")
    # Without registration a pre-authentication IQ is just an unauthenticated
    # stanza: RFC 6120 section 6.4.1 closes the stream with <not-authorized/>.
    answer = raw.read_until_closed()
    assert "<not-authorized" in answer
    assert "jabber:iq:register" not in answer
    raw.close()
