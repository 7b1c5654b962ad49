"""The admin API and `starling admin`: against one `starling serve` process,
and against the local cluster (deploy/local-cluster.sh), where the
session-routers serve it and the users sit on cm-1 and cm-2."""

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import BIN, RawClient, Server, free_port, login, logout, wait_until
from test_cluster import SCRIPT, Cluster, befriend

TOKEN = "admin-test-token-0123456789"
ADMIN_SECTION = """
[admin]
listen = "127.0.0.1:{port}"
token = "{token}"
"""


def admin(endpoint, *args, token=TOKEN, json_output=True, config=None):
    """Run `starling admin`; returns (exit code, parsed JSON or text, stderr)."""
    command = [BIN, "admin"]
    if endpoint:
        command += ["--endpoint", endpoint]
    if token:
        command += ["--token", token]
    if json_output:
        command.append("--json")
    if config:
        command += ["--config", str(config)]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith("STARLING_")})
    out = result.stdout
    if json_output and result.returncode == 0 and out.strip():
        out = json.loads(out)
    return result.returncode, out, result.stderr


def ok(endpoint, *args, **kwargs):
    code, out, err = admin(endpoint, *args, **kwargs)
    assert code == 0, f"starling admin {' '.join(args)} exited {code}: {err}"
    return out


def listening_ports(pid):
    """The TCP ports process `pid` listens on (from /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def readyz(http_address):
    try:
        with urllib.request.urlopen(f"http://{http_address}/readyz", timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def refused(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


# ------------------------------------------------------------ one process


def test_admin_is_off_by_default_and_never_open_without_a_token(server, tmp_path):
    # Only the configured listeners: no admin port.
    ports = listening_ports(server.process.pid)
    assert ports == {server.c2s, server.c2s_tls, server.http, server.https}, ports
    # Without an endpoint there is nothing to talk to: a usage error.
    code, _, err = admin(None, "nodes", config=server.config)
    assert code == 64, err
    # A listen address without a token is a configuration error naming the key.
    config = tmp_path / "open.toml"
    config.write_text(f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n')
    result = subprocess.run([BIN, "serve", "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 64
    assert "admin.token" in result.stderr


async def test_one_process_sessions_kick_announce_users_and_drain(server_factory):
    port = free_port()
    srv = server_factory(extra_toml=ADMIN_SECTION.format(port=port, token=TOKEN))
    endpoint = f"http://127.0.0.1:{port}"

    # A wrong token: refused with EX_NOPERM, and nothing happens.
    code, _, err = admin(endpoint, "users", "add", "mallory@localhost", "pw", token="wrong-token-wrong-token")
    assert code == 77, err
    code, _, err = admin(endpoint, "users", "list", token=None)
    assert code == 64, err  # no token at all: a usage error
    # The CLI reads endpoint and token from the server's own config too.
    assert ok(None, "users", "list", token=None, config=srv.config) == []

    ok(endpoint, "users", "add", "alice@localhost", "alice-pass")
    ok(endpoint, "users", "add", "bob@localhost", "bob-pass")
    code, _, err = admin(endpoint, "users", "add", "alice@localhost", "again")
    assert code == 1 and "already exists" in err
    ok(endpoint, "users", "passwd", "bob@localhost", "bob-pass-2")
    assert ok(endpoint, "users", "list") == ["alice@localhost", "bob@localhost"]

    bob = await login(srv, "bob@localhost", "bob-pass-2", "desk")
    raw = RawClient(srv)
    raw.login("alice@localhost", "alice-pass", resource="phone")

    sessions = ok(endpoint, "sessions", "list")
    assert [s["jid"] for s in sessions] == ["alice@localhost/phone", "bob@localhost/desk"]
    assert ok(endpoint, "sessions", "list", "--user", "bob@localhost")[0]["jid"] == "bob@localhost/desk"
    count = ok(endpoint, "sessions", "count")
    assert count["total"] == 2
    [node] = ok(endpoint, "nodes")
    assert node["state"] == "ready" and node["sessions"] == 2
    assert count["nodes"] == {node["node"]: 2}
    table = ok(endpoint, "sessions", "list", json_output=False)
    assert table.splitlines()[0].split() == ["JID", "NODE", "CONN", "AVAILABLE", "PRIORITY"]

    # Announce: a headline from the server's domain.
    assert ok(endpoint, "announce", "maintenance tonight")["recipients"] == 2
    message = await bob.next_message(timeout=10)
    assert message["body"] == "maintenance tonight"
    assert message["from"].full == "localhost" and message["type"] == "headline"

    # Kick: the stream ends with the stream error, and the session is gone.
    assert ok(endpoint, "kick", "alice@localhost/phone")["kicked"] == ["alice@localhost/phone"]
    closed = raw.read_until_closed()
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in closed, closed
    wait_until(lambda: [s["jid"] for s in ok(endpoint, "sessions", "list")] == ["bob@localhost/desk"],
               what="the kicked session to be gone")
    code, _, err = admin(endpoint, "kick", "nobody@localhost")
    assert code == 1, err

    # A kicked session ends like any disconnect: its contacts see it leave
    # (RFC 6121 section 4.5.2).
    ok(endpoint, "users", "add", "carol@localhost", "carol-pass")
    carol = await login(srv, "carol@localhost", "carol-pass", "tablet")
    await befriend(bob, carol, "carol@localhost")
    carol.send_presence(pstatus="here")
    await bob.next_presence(lambda p: p["from"].full == "carol@localhost/tablet" and p["status"] == "here")
    # slixmpp replaces its `disconnected` future at each disconnect: hold this one.
    carol_gone = carol.disconnected
    assert ok(endpoint, "kick", "carol@localhost", "--condition", "reset")["kicked"] == ["carol@localhost/tablet"]
    await bob.next_presence(lambda p: p["from"].full == "carol@localhost/tablet" and p["type"] == "unavailable")
    await asyncio.wait_for(carol_gone, 10)

    # Drain: not ready at once, no new connections, streams closed.
    assert readyz(f"127.0.0.1:{srv.http}") == 200
    bob_gone = bob.disconnected
    ok(endpoint, "drain", node["node"], "--window", "2")
    assert readyz(f"127.0.0.1:{srv.http}") == 503
    wait_until(lambda: refused(srv.c2s), timeout=2, what="the c2s listener to close")
    wait_until(lambda: ok(endpoint, "nodes")[0]["state"] == "draining", what="the node to report draining")
    await asyncio.wait_for(bob_gone, 10)
    raw.close()
    assert srv.stop() == 0


# ------------------------------------------------------------ the cluster


@pytest.fixture
def admin_cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.up()
        yield c
    finally:
        if os.environ.get("STARLING_TEST_SHOW_LOGS"):
            print(c.logs())
        c.down()


async def test_cluster_admin_from_the_routers(admin_cluster):
    c = admin_cluster
    admin_info = c.info["admin"]
    router_1, router_2 = admin_info["endpoints"]
    token = open(admin_info["token_file"]).read().strip()
    assert len(token) >= 16

    # Membership: both connection-managers, alive and ready, seen from either router.
    for endpoint in (router_1, router_2):
        nodes = {n["node"]: n for n in ok(endpoint, "nodes", token=token)}
        assert set(nodes) == {"cm-1", "cm-2"}, nodes
        assert all(n["state"] == "ready" for n in nodes.values())
    code, _, err = admin(router_1, "nodes", token="not-the-cluster-token")
    assert code == 77, err
    # `status` names the admin endpoints, and admin.toml drives the CLI.
    status = subprocess.run([str(SCRIPT), "status"], env=c.env, capture_output=True, text=True, timeout=30)
    assert router_1 in status.stdout, status.stdout
    assert {n["node"] for n in ok(None, "nodes", token=None, config=admin_info["config"])} == {"cm-1", "cm-2"}

    alice, alice_pw = c.add_user("alice")
    bob, bob_pw = c.add_user("bob")
    carol, carol_pw = c.add_user("carol")
    dave, dave_pw = c.add_user("dave")
    a = await login(c.node("cm-1"), alice, alice_pw, "laptop")
    b = await login(c.node("cm-2"), bob, bob_pw, "phone")
    carol_raw = RawClient(c.node("cm-2"))
    carol_raw.login(carol, carol_pw, resource="raw")
    dave_raw = RawClient(c.node("cm-2"))
    dave_raw.login(dave, dave_pw, resource="raw")

    def per_node():
        return ok(router_2, "sessions", "count", token=token)["nodes"]

    wait_until(lambda: per_node() == {"cm-1": 1, "cm-2": 3}, what="sessions counted per node")
    on_cm2 = ok(router_1, "sessions", "list", "--node", "cm-2", token=token)
    assert [s["jid"] for s in on_cm2] == [f"{bob}/phone", f"{carol}/raw", f"{dave}/raw"]
    assert all(s["node"] == "cm-2" for s in on_cm2)

    # An announcement reaches users on both nodes.
    assert ok(router_2, "announce", "cluster maintenance", token=token)["recipients"] == 4
    for client in (a, b):
        message = await client.next_message(timeout=15)
        assert message["body"] == "cluster maintenance" and message["from"].full == "localhost"

    # Kick carol (on cm-2) from router-1's admin endpoint: her stream ends with the error.
    assert ok(router_1, "kick", carol, "--text", "bye", token=token)["kicked"] == [f"{carol}/raw"]
    closed = carol_raw.read_until_closed(timeout=15)
    assert "<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in closed, closed
    wait_until(lambda: per_node() == {"cm-1": 1, "cm-2": 2}, what="the kicked session to be unbound")

    # Drain cm-2 over 4 s: not ready at once, refuses new connections, its
    # clients get <system-shutdown/> within the window and log in on cm-1.
    cm2 = c.processes["cm-2"]
    assert readyz(cm2["http"]) == 200
    started = time.monotonic()
    b_gone = b.disconnected
    ok(router_2, "drain", "cm-2", "--window", "4", token=token)
    wait_until(lambda: readyz(cm2["http"]) == 503, timeout=1, what="cm-2 not ready")
    wait_until(lambda: refused(c.node("cm-2").c2s), timeout=2, what="cm-2 to refuse connections")
    nodes = {n["node"]: n for n in ok(router_1, "nodes", token=token)}
    assert nodes["cm-2"]["state"] == "draining" and nodes["cm-2"]["draining"]
    assert nodes["cm-1"]["state"] == "ready"
    closed = dave_raw.read_until_closed(timeout=15)
    assert "<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in closed, closed
    await asyncio.wait_for(b_gone, 15)
    assert time.monotonic() - started < 4 + 3
    wait_until(lambda: per_node().get("cm-2", 0) == 0, what="cm-2's sessions to be unbound")
    b_again = await login(c.node("cm-1"), bob, bob_pw, "phone")
    a.send_message(mto=f"{bob}/phone", mbody="welcome back", mtype="chat")
    assert (await b_again.next_message(timeout=15))["body"] == "welcome back"
    assert [s["node"] for s in ok(router_1, "sessions", "list", "--user", bob, token=token)] == ["cm-1"]
    await logout(a, b_again)
    carol_raw.close()
    dave_raw.close()
