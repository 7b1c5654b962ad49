"""Metrics, dashboards and alert rules against the real thing (docs/operations.md):

- after traffic, the /metrics text of every target (the one-process `all` and
  each process of the local cluster) passes `promtool check metrics`, carries no
  JID, and counts what the traffic did;
- a real Prometheus scrapes the cluster every second, loads
  deploy/prometheus/alerts.yml (every rule must evaluate without error) and
  answers every panel query of deploy/grafana/*.json with data;
- `promtool check rules` and `promtool test rules` pass on the alert rules.

promtool and prometheus come from the Debian `prometheus` package
(scripts/test.sh installs it).
"""

import json
import pathlib
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import REPO, RawClient, free_port, login, logout, wait_until
from test_cluster import Cluster, befriend

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
DASHBOARDS = sorted((REPO / "deploy" / "grafana").glob("*.json"))
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"


def require(tool, name):
    assert tool, f"{name} is missing: scripts/test.sh installs the Debian package prometheus"
    return tool


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def series_sum(text: str, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(3))
    return total


def promtool_check_metrics(text: str, what: str):
    checked = subprocess.run([require(PROMTOOL, "promtool"), "check", "metrics"], input=text,
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, f"{what}: {checked.stdout}{checked.stderr}"
    # Never a JID (nor any address) in a label.
    assert not [line for line in text.splitlines() if "@" in line], what


class Prometheus:
    """A real Prometheus on a free port with its own storage, scraping `jobs`
    ({job: [host:port, ...]}) every second and evaluating the alert rules."""

    def __init__(self, tmp_path: pathlib.Path, jobs: dict):
        self.port = free_port()
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        rules = self.dir / "alerts.yml"
        shutil.copy(ALERTS, rules)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in jobs.items()
            ],
        }
        # JSON is YAML.
        (self.dir / "prometheus.yml").write_text(json.dumps(config))
        self.log = open(self.dir / "prometheus.log", "w")
        self.process = subprocess.Popen(
            [require(PROMETHEUS, "prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_until(self.ready, timeout=30, what="prometheus ready")

    def ready(self):
        if self.process.poll() is not None:
            raise AssertionError("prometheus exited: " + (self.dir / "prometheus.log").read_text())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read())

    def query(self, expr: str):
        return self.api("query", query=expr)

    def value(self, expr: str) -> float:
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else float("nan")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def panel_queries():
    """(dashboard file, panel title, refId, expr) of every panel target."""
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                yield path.name, panel["title"], target["refId"], target["expr"]


def concrete(expr: str) -> str:
    """A panel query as Grafana would send it with "All" selected."""
    return (expr.replace("$__rate_interval", "15s")
            .replace("$job", ".*")
            .replace("$instance", ".*"))


async def generate_traffic(cluster: Cluster):
    """Logins on both connection-managers, messages across nodes, to oneself,
    to an offline user and to nobody, a failed login and a stream error."""
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    carol, carol_pw = cluster.add_user("carol")
    a = await login(cluster.node("cm-1"), alice, alice_pw, "laptop")
    b = await login(cluster.node("cm-2"), bob, bob_pw, "phone")
    await befriend(a, b, bob)
    for number in range(5):
        a.send_message(mto=bob, mbody=f"remote {number}", mtype="chat")
        assert (await b.next_message(timeout=20))["body"] == f"remote {number}"
        b.send_message(mto=f"{alice}/laptop", mbody=f"back {number}", mtype="chat")
        assert (await a.next_message(timeout=20))["body"] == f"back {number}"
    # To its own bare JID: delivered on the sender's node.
    a.send_message(mto=alice, mbody="note to self", mtype="chat")
    assert (await a.next_message(timeout=20))["body"] == "note to self"
    # Offline storage, then delivery when carol comes online.
    a.send_message(mto=carol, mbody="while you were away", mtype="chat")
    # No such account: bounced with service-unavailable.
    a.send_message(mto="nobody@localhost", mbody="hello?", mtype="chat")
    error = await a.next_message(timeout=20, body=False)
    assert error["type"] == "error", error
    # The bounce of the later message means the earlier one is stored: one
    # session's stanzas are routed one after another, each to its end.
    c = await login(cluster.node("cm-2"), carol, carol_pw, "tablet")
    assert (await c.next_message(timeout=20))["body"] == "while you were away"
    with pytest.raises(AssertionError):
        await login(cluster.node("cm-1"), bob, "not-the-password", "wrong")
    raw = RawClient(cluster.node("cm-1"))
    raw.open_stream()
    raw.send("<message><unclosed></message>")
    assert "not-well-formed" in raw.read_until_closed()
    raw.close()
    return [a, b, c]


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.up()
        yield c
    finally:
        c.down()


async def test_cluster_metrics_promtool_dashboards_and_rules_on_a_real_prometheus(cluster, tmp_path):
    require(PROMTOOL, "promtool")
    jobs = {}
    for process in cluster.info["processes"]:
        jobs.setdefault(f"starling-{process['target']}", []).append(process["http"])
    prometheus = Prometheus(tmp_path, jobs)
    try:
        clients = await generate_traffic(cluster)
        try:
            await check_cluster(cluster, prometheus)
            check_routers_lost(cluster, prometheus)
        finally:
            await logout(*clients)
    finally:
        prometheus.stop()


async def check_cluster(cluster: Cluster, prometheus: Prometheus):
    # Every target's own text, after the traffic: valid, and counting what happened.
    texts = {}
    for process in cluster.info["processes"]:
        text = scrape(process["http"])
        promtool_check_metrics(text, process["name"])
        assert series_sum(text, "starling_build_info", target=process["target"]) == 1, process["name"]
        texts[process["name"]] = text

    def total(names, metric, **labels):
        return sum(series_sum(texts[name], metric, **labels) for name in names)

    cms, routers, storage = ["cm-1", "cm-2"], ["router-1", "router-2"], ["storage-1"]
    presence = ["presence-1", "presence-2"]
    assert total(cms, "starling_connections", state="bound") == 3, texts["cm-1"]
    assert total(cms, "starling_sessions") == 3
    assert total(cms, "starling_sasl_failures_total", reason="not-authorized") == 1
    # The raw client's; slixmpp's first connection attempts may add their own.
    assert total(cms, "starling_stream_errors_total", condition="not-well-formed") >= 1
    assert total(routers, "starling_router_routed_total", kind="message", decision="remote") >= 10
    assert total(routers, "starling_router_routed_total", kind="message", decision="local") >= 1
    assert total(routers, "starling_router_routed_total", kind="message", decision="offline") == 1
    assert total(routers, "starling_router_routed_total", kind="message", decision="bounced") >= 1
    assert total(routers, "starling_router_routed_total", kind="presence", decision="server") >= 1
    assert total(routers, "starling_router_route_duration_seconds_count", kind="message") >= 12
    # Messages delivered across nodes carry their origin time to the delivering node.
    assert total(cms, "starling_stanza_delivery_latency_seconds_count", kind="message") >= 11
    assert total(cms, "starling_grpc_client_duration_seconds_count",
                 service="router", method="route_stream", code="OK") >= 12
    assert total(cms, "starling_grpc_client_duration_seconds_count", service="storage", code="OK") >= 3
    assert total(cms, "starling_redis_operation_duration_seconds_count", operation="bind") == 0
    assert total(routers, "starling_redis_operation_duration_seconds_count", operation="bind") >= 3
    assert total(routers + presence, "starling_redis_operation_duration_seconds_count", operation="publish") >= 12
    assert total(routers + presence, "starling_bus_messages_published_total", result="delivered") >= 12
    assert total(cms, "starling_bus_messages_received_total") >= 12
    assert total(storage, "starling_db_query_duration_seconds_count", operation="credentials") >= 3
    assert total(storage, "starling_grpc_server_duration_seconds_count",
                 service="storage", method="GetCredentials", code="OK") >= 3
    assert total(routers, "starling_grpc_server_duration_seconds_count", service="router", method="Bind", code="OK") == 3
    assert total(presence, "starling_grpc_server_duration_seconds_count", service="presence", code="OK") >= 3
    assert "RouteStream" not in texts["router-1"] + texts["router-2"]
    assert total(storage, "starling_offline_messages_stored_total") == 1
    assert total(storage, "starling_offline_messages_delivered_total") == 1
    assert total(storage, "starling_offline_messages_per_login_count") >= 3
    assert total(storage, "starling_offline_messages_per_login_bucket", le="0") >= 2

    # Prometheus has scraped the traffic (a few scrapes after it).
    wait_until(lambda: prometheus.value('sum(starling_offline_messages_delivered_total)') >= 1
               and prometheus.value('count(up{job=~"starling-.*"} == 1)') == len(cluster.info["processes"]),
               timeout=30, what="prometheus to scrape the traffic")

    # Rates need two samples in their window, so panels fill in over a few
    # scrapes: query them all until each has data, or one fails (waiting
    # does not mend a failure). The assertions below name what is wrong.
    answers = {}

    def every_panel_answered():
        failures = []
        empty = []
        checked = 0
        for dashboard, title, ref, expr in panel_queries():
            assert "$" not in concrete(expr), f"{dashboard} / {title}: a template variable the test does not know"
            answer = prometheus.query(concrete(expr))
            checked += 1
            if answer.get("status") != "success":
                failures.append(f"{dashboard} / {title} / {ref}: {answer.get('error')} in {expr}")
            elif not answer["data"]["result"]:
                empty.append(f"{dashboard} / {title} / {ref}: {expr}")
        answers.update(failures=failures, empty=empty, checked=checked)
        return bool(failures) or not empty

    try:
        wait_until(every_panel_answered, timeout=30, interval=1, what="data in every dashboard panel")
    except TimeoutError:
        pass
    failures, empty, checked = answers["failures"], answers["empty"], answers["checked"]
    assert checked >= 50, checked
    assert not failures, "\n".join(failures)
    assert not empty, "no data for:\n" + "\n".join(empty)

    # Every alert and recording rule evaluates on the real metrics without error.
    rules = prometheus.api("rules")
    assert rules["status"] == "success", rules
    evaluated = [rule for group in rules["data"]["groups"] for rule in group["rules"]]
    assert len(evaluated) == 13, evaluated
    wait_until(lambda: all(r["health"] == "ok" for g in prometheus.api("rules")["data"]["groups"] for r in g["rules"]),
               timeout=15, what="every rule evaluated healthy")
    # A healthy cluster pages nobody.
    alerts = prometheus.api("alerts")["data"]["alerts"]
    assert not [alert for alert in alerts if alert["state"] == "firing"], alerts


def readyz(address: str):
    try:
        with urllib.request.urlopen(f"http://{address}/readyz", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def check_routers_lost(cluster: Cluster, prometheus: Prometheus):
    """Both routers die: what needs them reports not-ready, and Prometheus
    sees them down (StarlingProcessDown pending, firing after its minute)."""
    processes = cluster.processes
    for name in ["cm-1", "cm-2", "presence-1"]:
        assert readyz(processes[name]["http"]) == (200, "ready\n"), name
    cluster.kill("router-1")
    cluster.kill("router-2")
    for name in ["cm-1", "cm-2", "presence-1"]:
        wait_until(lambda: readyz(processes[name]["http"])[0] == 503, timeout=30, what=f"{name} not ready")
        assert "routers" in readyz(processes[name]["http"])[1], name
    # Storage does not need the routers.
    assert readyz(processes["storage-1"]["http"]) == (200, "ready\n")

    def down_alerts():
        alerts = prometheus.api("alerts")["data"]["alerts"]
        return sorted(alert["labels"]["instance"] for alert in alerts
                      if alert["labels"]["alertname"] == "StarlingProcessDown"
                      and alert["labels"]["job"] == "starling-session-router")

    wait_until(lambda: down_alerts() == sorted([processes["router-1"]["http"], processes["router-2"]["http"]]),
               timeout=30, what="StarlingProcessDown for both routers")


async def test_one_process_metrics_pass_promtool(server):
    jid, _ = server.add_user("mallory", "secret")
    other, _ = server.add_user("trent", "secret")
    client = await login(server, jid, "secret")
    client.send_message(mto=other, mbody="stored offline", mtype="chat")
    client.send_message(mto=jid, mbody="to myself", mtype="chat")
    assert (await client.next_message(timeout=10))["body"] == "to myself"
    receiver = await login(server, other, "secret")
    assert (await receiver.next_message(timeout=10))["body"] == "stored offline"
    text = scrape(f"127.0.0.1:{server.http}")
    await logout(client, receiver)
    promtool_check_metrics(text, "starling serve (all)")
    assert series_sum(text, "starling_build_info", target="all") == 1
    assert series_sum(text, "starling_router_routed_total", kind="message", decision="local") >= 1
    assert series_sum(text, "starling_router_routed_total", kind="message", decision="offline") == 1
    assert series_sum(text, "starling_stanza_delivery_latency_seconds_count", kind="message") >= 1
    assert series_sum(text, "starling_offline_messages_delivered_total") == 1
    assert series_sum(text, "starling_db_query_duration_seconds_count", operation="store_offline") == 1
    assert series_sum(text, "starling_bus_messages_published_total", result="delivered") >= 1
    # One process has no gRPC client and no Redis: those metrics are absent, not zero.
    assert "starling_grpc_client_duration_seconds" not in text
    assert "starling_redis_operation_duration_seconds" not in text


def test_alert_rules_check_and_unit_tests():
    promtool = require(PROMTOOL, "promtool")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 13 rules found" in checked.stdout, checked.stdout
    tested = subprocess.run([promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # The example scrape configuration of the local cluster loads the same rules.
    config = REPO / "deploy" / "prometheus" / "prometheus.yml"
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboards_are_generated_and_use_the_datasource_variable(tmp_path):
    """The committed JSON is what deploy/grafana/generate.py writes, and every
    panel reads the Prometheus data source chosen by `$datasource`."""
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        names = [variable["name"] for variable in dashboard["templating"]["list"]]
        assert names[0] == "datasource", path.name
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
    copy = tmp_path / "grafana"
    shutil.copytree(REPO / "deploy" / "grafana", copy)
    for path in copy.glob("*.json"):
        path.unlink()
    subprocess.run(["python3", str(copy / "generate.py")], check=True, capture_output=True, timeout=60)
    for path in DASHBOARDS:
        assert (copy / path.name).read_text() == path.read_text(), f"{path.name}: run deploy/grafana/generate.py"
