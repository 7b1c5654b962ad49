"""The cluster: the four services as separate processes (deploy/local-cluster.sh)
over gRPC, a Redis of the test's own and PostgreSQL; real clients on two
connection-managers."""

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.request
import uuid

import pytest

from conftest import BIN, REPO, free_port, handled, login, logout, presence_applied, wait_until, wait_until_async

SCRIPT = REPO / "deploy" / "local-cluster.sh"
POSTGRES = os.environ.get("STARLING_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")


_held_port_locks = []


def pick_base_port(span=70):
    """A base below the ephemeral port range whose next `span` ports are all
    free now, reserved against the other test workers by an flock on a file
    named after the base (released when the worker exits)."""
    import fcntl
    import socket

    lock_dir = pathlib.Path("/tmp/starling-test-ports")
    lock_dir.mkdir(exist_ok=True)
    for _ in range(500):
        base = 10000 + (uuid.uuid4().int % 220) * 100
        handle = open(lock_dir / f"{base}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        sockets = []
        try:
            for port in range(base, base + span):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sockets.append(sock)
            _held_port_locks.append(handle)
            return base
        except OSError:
            handle.close()
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free range of ports for the cluster")


async def befriend(a, b, bob):
    """Mutual subscription: `a` asks `b` (bare JID `bob`), whose client
    approves and subscribes back, which `a`'s client approves; returns once
    both rosters show it."""
    b.auto_authorize = True
    b.auto_subscribe = True
    a.auto_authorize = True
    a.send_presence(pto=bob, ptype="subscribe")
    await a.next_presence(lambda p: p["type"] == "subscribed" and p["from"].bare == bob, timeout=20)
    alice = a.boundjid.bare
    for client, contact in ((a, bob), (b, alice)):
        await wait_until_async(
            lambda: client.client_roster[contact]["subscription"] == "both",
            timeout=20,
            what=f"{client.boundjid} to see {contact} as a mutual contact",
        )


class Node:
    """What `login` needs to reach one connection-manager."""

    def __init__(self, domain, c2s):
        self.domain = domain
        self.c2s = c2s


class Cluster:
    def __init__(self, tmp_path: pathlib.Path, liveness_ttl=3, redis_cluster=False, postgres=POSTGRES, storage_replicas=1):
        self.dir = tmp_path / "cluster"
        self.tmp_path = tmp_path
        self.redis_cluster = redis_cluster
        self.redis_nodes = []
        self.postgres = postgres
        self.redis_port = free_port()
        self.base = pick_base_port()
        self.env = dict(
            os.environ,
            STARLING_BIN=BIN,
            STARLING_CLUSTER_DIR=str(self.dir),
            STARLING_BASE_PORT=str(self.base),
            STARLING_DOMAIN="localhost",
            STARLING_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}",
            STARLING_POSTGRES=postgres,
            STARLING_CLUSTER_LIVENESS_TTL_SECS=str(liveness_ttl),
            STARLING_STORAGE_REPLICAS=str(storage_replicas),
        )
        self.redis = None

    def start_redis_cluster(self):
        """Three masters on loopback, made a Redis Cluster by redis-cli."""
        # Redis Cluster needs port + 10000 for its bus: stay low (below the ephemeral range).
        base = pick_base_port(span=3)
        ports = [base, base + 1, base + 2]
        for port in ports:
            directory = self.tmp_path / f"redis-{port}"
            directory.mkdir()
            self.redis_nodes.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(directory / "nodes.conf"), "--dir", str(directory),
                 "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port in ports:
            wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0,
                       what=f"redis node {port}")
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_until(lambda: all(b"cluster_state:ok" in subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"],
                                                                     capture_output=True).stdout for p in ports),
                   what="cluster_state:ok")
        # Environment overrides win over the script's config files.
        self.env["STARLING_CLUSTER_REDIS"] = ",".join(f"redis://127.0.0.1:{p}" for p in ports)
        self.env["STARLING_CLUSTER_REDIS_CLUSTER"] = "true"

    def start_redis(self):
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: subprocess.run(["redis-cli", "-p", str(self.redis_port), "ping"], capture_output=True).returncode == 0,
            what="the test's redis",
        )

    def up(self):
        if self.redis_cluster:
            self.start_redis_cluster()
        else:
            self.start_redis()
        result = subprocess.run([str(SCRIPT), "up"], env=self.env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        self.table = result.stdout
        self.info = json.loads((self.dir / "cluster.json").read_text())
        self.processes = {p["name"]: p for p in self.info["processes"]}
        return self

    def node(self, name):
        address = self.processes[name]["c2s"]
        return Node("localhost", int(address.rsplit(":", 1)[1]))

    def add_user(self, localpart, password="cluster-pass"):
        jid = f"{localpart}@localhost"
        result = subprocess.run(
            [BIN, "user", "add", jid, password, "--config", str(self.dir / "starling.toml")],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return jid, password

    def kill(self, name, sig=signal.SIGKILL):
        os.kill(self.processes[name]["pid"], sig)

    def logs(self):
        out = []
        for path in sorted((self.dir / "logs").glob("*.log")):
            out.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def down(self):
        subprocess.run([str(SCRIPT), "down"], env=self.env, capture_output=True, timeout=120)
        for process in [self.redis, *self.redis_nodes]:
            if process:
                process.kill()
                process.wait()
        database = f"starling_cluster_{self.base}"
        subprocess.run(["psql", f"{self.postgres}/postgres", "-qc", f"drop database if exists {database} with (force)"],
                       capture_output=True, timeout=60)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.up()
        yield c
    finally:
        if os.environ.get("STARLING_TEST_SHOW_LOGS"):
            print(c.logs())
        c.down()


def test_up_writes_its_state_and_down_stops_exactly_it(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.up()
        names = {p["name"]: p["target"] for p in c.info["processes"]}
        # The local cluster of the issue: 2 connection-managers, 2 routers, 2 presence, 1 storage.
        assert names == {
            "storage-1": "storage", "router-1": "session-router", "router-2": "session-router",
            "presence-1": "presence", "presence-2": "presence",
            "cm-1": "connection-manager", "cm-2": "connection-manager",
        }
        for process in c.info["processes"]:
            for role in ("c2s", "c2s_tls", "http", "grpc"):
                assert role in process
            os.kill(process["pid"], 0)
        assert "cm-1" in c.table and str(c.base + 50) in c.table
        pids = [p["pid"] for p in c.info["processes"]]
    finally:
        c.down()

    def all_gone():
        for pid in pids:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                pass
        return True

    wait_until(all_gone, what="every cluster process to stop")


async def test_users_on_two_nodes_see_presence_and_chat(cluster):
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    a = await login(cluster.node("cm-1"), alice, alice_pw, "laptop")
    b = await login(cluster.node("cm-2"), bob, bob_pw, "phone")
    await befriend(a, b, bob)

    a.send_presence(pstatus="across nodes")
    await b.next_presence(lambda p: p["from"] == f"{alice}/laptop" and p["status"] == "across nodes", timeout=20)

    a.send_message(mto=bob, mbody="hello from cm-1", mtype="chat")
    assert (await b.next_message(timeout=20))["body"] == "hello from cm-1"
    b.send_message(mto=f"{alice}/laptop", mbody="hello from cm-2", mtype="chat")
    assert (await a.next_message(timeout=20))["body"] == "hello from cm-2"

    # A second resource of bob on the other node: both get a bare-JID message
    # (equal priority), and roster pushes reach both.
    b2 = await login(cluster.node("cm-1"), bob, bob_pw, "desktop")
    await presence_applied(b2, timeout=20)
    a.send_message(mto=bob, mbody="to both resources", mtype="chat")
    assert (await b.next_message(timeout=20))["body"] == "to both resources"
    assert (await b2.next_message(timeout=20))["body"] == "to both resources"
    carol = "carol@localhost"
    await b.update_roster(carol, name="Carol")
    for client in (b, b2):
        await wait_until_async(
            lambda: carol in client.client_roster and client.client_roster[carol]["name"] == "Carol",
            timeout=10,
            what=f"the roster push at {client.boundjid}",
        )
    await logout(a, b, b2)


async def test_large_stanzas_cross_nodes_or_their_sender_hears_why(tmp_path):
    """Issue 10: with `limits.max_stanza_bytes` raised to 2 MiB, a 400 KB message
    from cm-1 reaches its recipient on cm-2 (the bus used to parse under its
    256 KiB default and drop it without a word). A stanza that would not
    decode on the receiving node (here: 600,000 '>' characters, which the edge
    re-serialises as '&gt;', 2.4 MB) is answered with policy-violation, never
    dropped silently: since issue 18 the sending edge measures the stanza as
    it sends it on and refuses it there, so the bus never carries it."""
    c = Cluster(tmp_path)
    c.env["STARLING_LIMITS_MAX_STANZA_BYTES"] = str(2 * 1024 * 1024)
    try:
        c.up()
        alice, alice_pw = c.add_user("alice")
        bob, bob_pw = c.add_user("bob")
        a = await login(c.node("cm-1"), alice, alice_pw, "laptop")
        b = await login(c.node("cm-2"), bob, bob_pw, "phone")

        body = "".join(f"{n:07d} " for n in range(50_000))  # 400,000 bytes
        large = a.make_message(mto=f"{bob}/phone", mbody=body, mtype="chat")
        large["id"] = "large"
        large.send()
        received = await b.next_message(timeout=30)
        assert received["id"] == "large" and received["body"] == body

        errors = asyncio.Queue()
        a.add_event_handler("message_error", errors.put_nowait)
        # Sent raw: slixmpp would escape '>' itself.
        a.send_raw(f"<message to='{bob}/phone' type='chat' id='amplified'><body>{'>' * 600_000}</body></message>")
        error = await asyncio.wait_for(errors.get(), 30)
        assert error["type"] == "error" and error["id"] == "amplified", error
        assert error["from"] == f"{bob}/phone"
        # slixmpp predates RFC 6120's policy-violation: read the element itself.
        condition = "{urn:ietf:params:xml:ns:xmpp-stanzas}policy-violation"
        assert error.xml.find(f"{{jabber:client}}error/{condition}") is not None, str(error)

        # Bob got nothing of it: the next message he receives is the marker.
        a.send_message(mto=f"{bob}/phone", mbody="marker", mtype="chat")
        assert (await b.next_message(timeout=20))["body"] == "marker"
        metrics = urllib.request.urlopen(f"http://{c.processes['cm-1']['http']}/metrics", timeout=5).read().decode()
        assert 'starling_limits_hit_total{limit="stanza_growth"} 1' in metrics
        metrics = urllib.request.urlopen(f"http://{c.processes['cm-2']['http']}/metrics", timeout=5).read().decode()
        assert "starling_bus_messages_invalid_total 1" not in metrics
        await logout(a, b)
    finally:
        if os.environ.get("STARLING_TEST_SHOW_LOGS"):
            print(c.logs())
        c.down()


async def test_thousand_messages_across_nodes_keep_their_order(cluster):
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    a = await login(cluster.node("cm-1"), alice, alice_pw, "sender")
    b = await login(cluster.node("cm-2"), bob, bob_pw, "receiver")
    for number in range(1000):
        a.send_message(mto=f"{bob}/receiver", mbody=str(number), mtype="chat")
    received = [int((await b.next_message(timeout=30))["body"]) for _ in range(1000)]
    assert received == list(range(1000))
    await logout(a, b)


async def test_killed_connection_manager_sessions_leave_and_messages_go_offline(cluster):
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    a = await login(cluster.node("cm-1"), alice, alice_pw, "laptop")
    b = await login(cluster.node("cm-2"), bob, bob_pw, "phone")
    await befriend(a, b, bob)

    cluster.kill("cm-2")
    started = time.monotonic()
    # Within the liveness time (3 s here) plus a janitor round, alice sees bob leave.
    await a.next_presence(lambda p: p["from"] == f"{bob}/phone" and p["type"] == "unavailable", timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 20, elapsed

    a.send_message(mto=bob, mbody="while you were gone", mtype="chat")
    await handled(a)
    b.disconnect()
    b2 = await login(cluster.node("cm-1"), bob, bob_pw, "phone")
    assert (await b2.next_message(timeout=20))["body"] == "while you were gone"
    await logout(a, b2)


async def test_losing_one_replica_of_router_presence_and_storage_keeps_service(tmp_path):
    c = Cluster(tmp_path, storage_replicas=2)
    try:
        c.up()
        alice, alice_pw = c.add_user("alice")
        bob, bob_pw = c.add_user("bob")
        carol, carol_pw = c.add_user("carol")
        a = await login(c.node("cm-1"), alice, alice_pw, "x")
        b = await login(c.node("cm-2"), bob, bob_pw, "y")
        # Stanzas are in flight while the replicas go: SIGTERM for one, kill -9 for the others.
        for number in range(100):
            a.send_message(mto=f"{bob}/y", mbody=f"m{number}", mtype="chat")
            if number == 20:
                c.kill("router-1", signal.SIGTERM)
            if number == 50:
                c.kill("presence-2", signal.SIGKILL)
            if number == 70:
                c.kill("storage-2", signal.SIGKILL)
        # At-least-once across a replica loss: nothing is lost and, counting
        # each message where it first arrives, the sender's order holds.
        numbers = []
        while len(set(numbers)) < 100:
            numbers.append(int((await b.next_message(timeout=30))["body"][1:]))
        assert list(dict.fromkeys(numbers)) == list(range(100))
        # Presence (the survivors) and storage (the surviving replica) still work.
        b.auto_authorize = True
        a.send_presence(pto=bob, ptype="subscribe")
        await a.next_presence(lambda p: p["type"] == "subscribed", timeout=30)
        a.send_message(mto=carol, mbody="for later", mtype="chat")
        await handled(a)
        c3 = await login(c.node("cm-1"), carol, carol_pw, "z")
        assert (await c3.next_message(timeout=20))["body"] == "for later"
        await logout(a, b, c3)
    finally:
        if os.environ.get("STARLING_TEST_SHOW_LOGS"):
            print(c.logs())
        c.down()


async def test_redis_restart_routing_recovers(cluster):
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    a = await login(cluster.node("cm-1"), alice, alice_pw, "x")
    b = await login(cluster.node("cm-2"), bob, bob_pw, "y")
    a.send_message(mto=f"{bob}/y", mbody="before", mtype="chat")
    assert (await b.next_message(timeout=20))["body"] == "before"

    cluster.redis.kill()
    cluster.redis.wait()
    cluster.start_redis()  # empty: the routing state is gone

    deadline = time.monotonic() + 40
    while True:
        a.send_message(mto=f"{bob}/y", mbody="after", mtype="chat")
        try:
            msg = await b.next_message(timeout=2)
            if msg["body"] == "after":
                break
        except asyncio.TimeoutError:
            pass
        assert time.monotonic() < deadline, "routing did not recover after the redis restart\n" + cluster.logs()
    await logout(a, b)


async def test_redis_cluster_carries_cross_node_messages(tmp_path):
    c = Cluster(tmp_path, redis_cluster=True)
    try:
        c.up()
        alice, alice_pw = c.add_user("alice")
        bob, bob_pw = c.add_user("bob")
        a = await login(c.node("cm-1"), alice, alice_pw, "laptop")
        b = await login(c.node("cm-2"), bob, bob_pw, "phone")
        await befriend(a, b, bob)
        a.send_presence(pstatus="sharded")
        await b.next_presence(lambda p: p["from"] == f"{alice}/laptop" and p["status"] == "sharded", timeout=20)
        for number in range(200):
            a.send_message(mto=f"{bob}/phone", mbody=str(number), mtype="chat")
        received = [int((await b.next_message(timeout=30))["body"]) for _ in range(200)]
        assert received == list(range(200))
        b.send_message(mto=alice, mbody="back over the cluster", mtype="chat")
        assert (await a.next_message(timeout=20))["body"] == "back over the cluster"
        await logout(a, b)
    finally:
        if os.environ.get("STARLING_TEST_SHOW_LOGS"):
            print(c.logs())
        c.down()


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb as the postgres user), so
    that stopping it disturbs nothing else."""

    def __init__(self):
        import glob
        import shutil
        import tempfile

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if os.geteuid() != 0 or not bins or shutil.which("su") is None:
            pytest.skip("needs root and a Debian postgresql installation")
        self.bin = bins[-1]
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="starling-pg-"))
        os.chmod(self.root, 0o777)
        self.data = self.root / "data"
        self.port = free_port()
        self.as_postgres(f"{self.bin}/initdb -D {self.data} -A trust -U postgres >/dev/null")
        self.start()

    def as_postgres(self, command):
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, timeout=120)

    def start(self):
        self.as_postgres(
            f"{self.bin}/pg_ctl -D {self.data} -l {self.root}/log -w "
            f"-o '-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1' start >/dev/null"
        )

    def stop(self):
        self.as_postgres(f"{self.bin}/pg_ctl -D {self.data} -m fast -w stop >/dev/null")

    def url(self):
        return f"postgres://postgres@127.0.0.1:{self.port}"

    def destroy(self):
        import shutil

        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


async def test_postgres_outage_gives_stanza_errors_and_service_resumes(tmp_path):
    postgres = PrivatePostgres()
    c = Cluster(tmp_path, postgres=postgres.url())
    try:
        c.up()
        alice, alice_pw = c.add_user("alice")
        bob, bob_pw = c.add_user("bob")
        a = await login(c.node("cm-1"), alice, alice_pw, "laptop")

        postgres.stop()
        # Bob is offline: the message needs storage, which is down => an error
        # of type wait (RFC 6120 section 8.3.2), and nothing crashes.
        a.send_message(mto=bob, mbody="during the outage", mtype="chat")
        error = await a.next_message(timeout=30, body=False)
        while error["type"] != "error":
            error = await a.next_message(timeout=30, body=False)
        assert error["error"]["type"] == "wait", str(error)
        assert error["error"]["condition"] in ("internal-server-error", "resource-constraint", "service-unavailable")
        for process in c.info["processes"]:
            os.kill(process["pid"], 0)

        postgres.start()

        async def stored():
            """Send one more; stored when no error came back before the pong."""
            a.send_message(mto=bob, mbody="after the outage", mtype="chat")
            await handled(a)
            if a.messages.empty():
                return True
            reply = a.messages.get_nowait()
            assert reply["type"] == "error", str(reply)
            return False

        try:
            await wait_until_async(stored, timeout=60, interval=1, what="storage to come back")
        except TimeoutError:
            raise AssertionError("storage did not come back\n" + c.logs())
        b = await login(c.node("cm-2"), bob, bob_pw, "phone")
        assert (await b.next_message(timeout=20))["body"] == "after the outage"
        await logout(a, b)
    finally:
        if os.environ.get("STARLING_TEST_SHOW_LOGS"):
            print(c.logs())
        c.down()
        postgres.destroy()
