"""Issue 15, part 4: the janitor's leader elected by a coordination.k8s.io/v1
Lease, between two real `starling serve` processes (Redis routing state),
against kmock, a Kubernetes API emulator. kmock is a MOCK (see
kmock_server.py for what it emulates and what was added to it); the test
names say so.

Setup: kmock_server.py serves the emulator on a loopback port and writes a
kubeconfig pointing at it; the servers find it through `KUBECONFIG`, like
kubectl, with `cluster.leader_election = "kubernetes"` (outside a pod `auto`
would pick the Redis lock).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import Server, free_port, wait_until
from test_bounds import metric, scrape

HERE = pathlib.Path(__file__).resolve().parent
LEASE_DURATION = 3  # seconds; the janitor then tries every second
NAMESPACE = "starling-test"


class KMock:
    """kmock_server.py in a process of its own."""

    def __init__(self, tmp_path):
        self.kubeconfig = tmp_path / "kubeconfig"
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "kmock_server.py"), str(self.kubeconfig)],
            stdout=subprocess.PIPE, stderr=open(tmp_path / "kmock.log", "wb"), text=True,
        )
        self.port = int(self.process.stdout.readline())

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def lease(self, name="starling-janitor"):
        return self.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{name}")

    def stop(self):
        self.process.kill()
        self.process.wait()


@pytest.fixture
def kmock_api(tmp_path, monkeypatch):
    api = KMock(tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield api
    api.stop()


@pytest.fixture
def redis_url():
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0,
               what="redis")
    yield f"redis://127.0.0.1:{port}"
    redis.kill()
    redis.wait()


def janitor_server(tmp_path, name, redis_url):
    directory = tmp_path / name
    directory.mkdir()
    return Server(directory, extra_toml=f"""
[cluster]
redis = ["{redis_url}"]
node_id = "{name}"
leader_election = "kubernetes"
lease_duration_secs = {LEASE_DURATION}
""").start()


def leading(server):
    return metric(scrape(server), 'starling_janitor_leader{election="kubernetes"}') == 1


def holder(kmock_api):
    lease = kmock_api.lease()
    return (lease or {}).get("spec", {}).get("holderIdentity")


def test_lease_election_against_kmock_mock_api_one_leader_and_takeover_after_kill(tmp_path, kmock_api, redis_url):
    servers = {name: janitor_server(tmp_path, name, redis_url) for name in ("janitor-a", "janitor-b")}
    try:
        wait_until(lambda: holder(kmock_api) in servers and leading(servers[holder(kmock_api)]),
                   timeout=20, what="a janitor holding the lease")
        # Exactly one leads, and it stays so over several renewals.
        for _ in range(6):
            leaders = [name for name, server in servers.items() if leading(server)]
            assert leaders == [holder(kmock_api)], leaders
            time.sleep(0.5)
        lease = kmock_api.lease()
        assert lease["spec"]["leaseDurationSeconds"] == LEASE_DURATION
        transitions = lease["spec"].get("leaseTransitions", 0)

        first = holder(kmock_api)
        (other,) = [name for name in servers if name != first]
        servers[first].process.send_signal(signal.SIGKILL)
        servers[first].process.wait()
        killed_at = time.monotonic()
        wait_until(lambda: holder(kmock_api) == other and leading(servers[other]),
                   timeout=4 * LEASE_DURATION, interval=0.1, what="the other janitor taking the lease over")
        takeover = time.monotonic() - killed_at
        print(f"takeover {takeover:.2f} s after kill -9 (lease duration {LEASE_DURATION} s)")
        # Within the lease duration after the holder's last renewal, plus one
        # attempt interval (a third of it) for the candidate to notice.
        assert takeover <= LEASE_DURATION * 4 / 3 + 1.0, takeover
        assert kmock_api.lease()["spec"]["leaseTransitions"] == transitions + 1

        # A stopped (drained) janitor releases the lease at once.
        servers[other].stop()
        wait_until(lambda: holder(kmock_api) is None, timeout=5, what="the lease released on stop")
    finally:
        for server in servers.values():
            server.stop()
            if os.environ.get("STARLING_TEST_SHOW_LOGS"):
                print(server.log_text())
