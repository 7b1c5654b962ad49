"""The Helm chart (charts/starling), rendered by the real Helm engine
(helm-python-sdk runs Helm v4's Go code in process: no `helm` binary, no
cluster) with the default values and with values-production.yaml, linted
strictly, and every rendered object validated against the Kubernetes 1.30
schemas (kubernetes-validate, strict: unknown fields fail). Then the tests
read the objects: what each target gets, the Service ports against the
rendered TOML, which the real `starling config check --target` accepts."""

import base64
import os
import pathlib
import subprocess
import tomllib

import pytest
import yaml

from conftest import BIN, REPO

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (tests/requirements.txt)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (tests/requirements.txt)"
)

CHART = REPO / "charts" / "starling"
PRODUCTION = yaml.safe_load((CHART / "values-production.yaml").read_text())
KUBERNETES_VERSION = "1.30.0"
TARGETS = ["connection-manager", "session-router", "presence", "storage"]
# Kinds of operators whose schemas Kubernetes does not ship; only these may
# go unvalidated, by name.
OPERATOR_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
}


@pytest.fixture(scope="module")
def chart():
    helm.disable_logging()
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values=None, release="starling"):
    manifests = chart.render(values=values or {}, name=release, namespace="chat", is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(document for document in yaml.safe_load_all(text) if document)
    return objects


def find(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''}"
    return found


def component(o):
    return o["metadata"]["labels"].get("app.kubernetes.io/component")


def rendered_toml(objects):
    (configmap,) = find(objects, "ConfigMap", "starling-config")
    return tomllib.loads(configmap["data"]["starling.toml"])


VALUE_SETS = [pytest.param({}, id="default"), pytest.param(PRODUCTION, id="production")]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_chart_lints_strictly(values):
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    assert report["errors"] == [], report
    # Severity 2 is a warning, 3 an error; 1 (info) is "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_rendered_object_is_valid_for_kubernetes_1_30_strictly(chart, values):
    objects = render(chart, values)
    unvalidated = set()
    for o in objects:
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert (o["apiVersion"], o["kind"]) in OPERATOR_KINDS, f"no schema for {o['apiVersion']} {o['kind']}"
            unvalidated.add(o["kind"])
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{o['kind']} {o['metadata']['name']}: {error.message} at {list(error.path)}")
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"} <= kinds
    if values is PRODUCTION:
        assert unvalidated == {"ServiceMonitor", "PrometheusRule", "Certificate"}


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_target_has_probes_a_pdb_an_hpa_and_a_restrictive_security_context(chart, values):
    objects = render(chart, values)
    deployments = {component(d): d for d in find(objects, "Deployment")}
    pdbs = {component(p): p for p in find(objects, "PodDisruptionBudget")}
    hpas = {component(h): h for h in find(objects, "HorizontalPodAutoscaler")}
    images = set()
    for target in TARGETS:
        deployment = deployments[target]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        images.add(container["image"])
        assert container["args"][:3] == ["serve", "--target", target]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        # Only the janitor's pods (the routers) talk to the API: the Lease.
        assert pod["automountServiceAccountToken"] is (target == "session-router")
        zones = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone"]
        assert zones and zones[0]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        assert pdbs[target]["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        hpa = hpas[target]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
        metrics = {m["type"]: m for m in hpa["metrics"]}
        assert metrics["Resource"]["resource"]["name"] == "cpu"
        if target == "connection-manager":
            assert metrics["Pods"]["pods"]["metric"]["name"] == "starling_connections"
        else:
            assert "Pods" not in metrics
        # The HPA owns the replica count.
        assert "replicas" not in deployment["spec"]
    assert len(images) == 1, "one image for every target"


@pytest.mark.parametrize("values", VALUE_SETS)
def test_the_grace_period_covers_the_prestop_wait_and_the_drain_window(chart, values):
    objects = render(chart, values)
    toml = rendered_toml(objects)
    window = toml["drain"]["window_secs"]
    for deployment in find(objects, "Deployment"):
        if component(deployment) not in TARGETS:
            continue
        pod = deployment["spec"]["template"]["spec"]
        pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = pod["terminationGracePeriodSeconds"]
        assert grace > pre_stop
        if component(deployment) == "connection-manager":
            assert grace >= pre_stop + window + 10, (grace, pre_stop, window)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="default"),
        pytest.param(PRODUCTION, id="production"),
        pytest.param({"ports": {"c2s": 15222, "c2sTls": 0, "http": 8080}, "service": {"type": "NodePort", "nodePorts": {"c2s": 30222}}}, id="nodeport"),
    ],
)
def test_client_service_ports_equal_the_listeners_of_the_rendered_toml(chart, values):
    objects = render(chart, values)
    listen = rendered_toml(objects)["listen"]
    (service,) = find(objects, "Service", "starling")
    expected_type = (values.get("service") or {}).get("type", "LoadBalancer")
    assert service["spec"]["type"] == expected_type
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    listeners = {
        name: int(address.rsplit(":", 1)[1])
        for name, address in (("c2s", listen["c2s"]), ("c2s-tls", listen["c2s_tls"]), ("http", listen["http"]))
        if address
    }
    if not (values.get("service") or {}).get("exposeHttp", True):
        listeners.pop("http")
    assert ports == listeners
    (deployment,) = [d for d in find(objects, "Deployment") if component(d) == "connection-manager"]
    container_ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for name, port in listeners.items():
        assert container_ports[name] == port
    if expected_type == "NodePort":
        assert {p["name"]: p.get("nodePort") for p in service["spec"]["ports"]}["c2s"] == 30222


def container_environment(objects, deployment, pod_name):
    """The environment Kubernetes would give the container: values, the pod
    name from the downward API, and Secret keys from the rendered Secrets
    (or a stand-in for a Secret the chart expects to exist)."""
    secrets = {s["metadata"]["name"]: s for s in objects if s["kind"] == "Secret"}
    environment = {}
    for variable in deployment["spec"]["template"]["spec"]["containers"][0].get("env", []):
        source = variable.get("valueFrom")
        if source is None:
            environment[variable["name"]] = variable["value"]
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            environment[variable["name"]] = pod_name
        else:
            reference = source["secretKeyRef"]
            secret = secrets.get(reference["name"])
            if secret is None:
                # A Secret of the operator's (values-production.yaml): a value of the documented form.
                stand_in = {"urls": "redis://redis.example:6379", "url": "postgres://u:p@db.example:5432/starling"}
                environment[variable["name"]] = stand_in[reference["key"]]
            elif "stringData" in secret:
                environment[variable["name"]] = secret["stringData"][reference["key"]]
            else:
                environment[variable["name"]] = base64.b64decode(secret["data"][reference["key"]]).decode()
    return environment


@pytest.mark.skipif(not pathlib.Path(BIN).exists(), reason=f"no starling binary at {BIN}")
@pytest.mark.parametrize("values", VALUE_SETS)
def test_starling_config_check_accepts_the_rendered_config_of_every_target(chart, values, tmp_path):
    objects = render(chart, values)
    (configmap,) = find(objects, "ConfigMap", "starling-config")
    text = configmap["data"]["starling.toml"]
    if "/etc/starling/tls/" in text:
        # What the TLS Secret's volume would hold at that path: a certificate
        # and its key (the configuration check opens them).
        tls = tmp_path / "tls"
        tls.mkdir()
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=chat.example.org",
             "-keyout", str(tls / "tls.key"), "-out", str(tls / "tls.crt")],
            check=True, capture_output=True, timeout=60,
        )
        text = text.replace("/etc/starling/tls/", f"{tls}/")
    config = tmp_path / "starling.toml"
    config.write_text(text)
    environments = {}
    for deployment in find(objects, "Deployment"):
        target = component(deployment)
        if target not in TARGETS:
            continue
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[-2:] == ["--config", "/etc/starling/starling.toml"]
        environment = container_environment(objects, deployment, f"{target}-5d9c7b-x2k4q")
        checked = subprocess.run(
            [BIN, "config", "check", "--target", target, "--config", str(config)],
            env={"PATH": os.environ.get("PATH", ""), **environment},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0, (target, checked.stderr)
        environments[target] = environment
        effective = tomllib.loads(checked.stdout)
        assert effective["cluster"]["node_id"] == f"{target}-5d9c7b-x2k4q"
        if target == "session-router":
            assert effective["admin"]["listen"].endswith(":5290")
            assert effective["admin"]["token"] == "(set, not shown)"
        if target == "storage":
            assert effective["storage"]["url"].startswith("postgres://")
    # The check is not a rubber stamp: a router without its presence replicas is refused.
    refused = subprocess.run(
        [BIN, "config", "check", "--target", "session-router", "--config", str(config)],
        env={"PATH": os.environ.get("PATH", ""), **environments["session-router"], "STARLING_CLUSTER_PRESENCE": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 64 and "cluster.presence" in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    "bad, complaint",
    [
        ({"service": {"type": "Ingress"}}, "/service/type"),
        ({"ports": {"c2s": 70000}}, "/ports/c2s"),
        ({"config": {"cluster": {"redis": ["redis://elsewhere"]}}}, "cluster"),
        ({"drain": {"windowSeconds": 7200}}, "/drain/windowSeconds"),
        ({"connectionManager": {"replicaz": 3}}, "replicaz"),
        ({"redis": {"external": {"urls": ["http://not-redis"]}}}, "/redis/external/urls/0"),
        ({"kubernetes": {"leaseDurationSeconds": 1}}, "/kubernetes/leaseDurationSeconds"),
    ],
)
def test_the_values_schema_rejects_bad_values(chart, bad, complaint):
    with pytest.raises(helm.HelmValuesError) as raised:
        chart.render(values=bad, name="starling")
    assert complaint in str(raised.value)


def test_the_lease_and_endpointslices_get_a_role_with_only_what_they_need(chart):
    # Default: the janitor's Lease, so leases in the Role and the routers' token mounted.
    objects = render(chart)
    (role,) = find(objects, "Role")
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "patch"]},
    ]
    (binding,) = find(objects, "RoleBinding")
    (account,) = find(objects, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "chat"}]
    cluster = rendered_toml(objects)["cluster"]
    assert (cluster["leader_election"], cluster["lease_name"], cluster["lease_duration_secs"]) == (
        "kubernetes", "starling-janitor", 15)
    assert cluster["routers"] == ["dns:///starling-session-router:7000"]

    # EndpointSlices: k8s:/// endpoints in the release's namespace, every pod but storage's mounts the token.
    objects = render(chart, {"kubernetes": {"endpointSlices": True}})
    (role,) = find(objects, "Role")
    assert {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]} in role["rules"]
    cluster = rendered_toml(objects)["cluster"]
    assert cluster["routers"] == ["k8s:///starling-session-router.chat:7000"]
    for deployment in find(objects, "Deployment"):
        if component(deployment) in TARGETS:
            mounted = deployment["spec"]["template"]["spec"]["automountServiceAccountToken"]
            assert mounted is (component(deployment) != "storage"), component(deployment)

    # Neither: the Redis lock, no Role, no token anywhere.
    objects = render(chart, {"kubernetes": {"leaderElection": False}})
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    assert rendered_toml(objects)["cluster"]["leader_election"] == "redis"
    assert all(d["spec"]["template"]["spec"]["automountServiceAccountToken"] is False for d in find(objects, "Deployment"))


def test_network_policies_let_clients_reach_only_the_client_ports_and_grpc_only_from_starling_pods(chart):
    objects = render(chart)
    policies = {component_of_policy(p): p for p in find(objects, "NetworkPolicy")}
    client = policies["connection-manager"]["spec"]["ingress"]
    assert client == [{"ports": [{"port": "c2s", "protocol": "TCP"}, {"port": "c2s-tls", "protocol": "TCP"}, {"port": "http", "protocol": "TCP"}]}]
    starling_pods = {"app.kubernetes.io/name": "starling", "app.kubernetes.io/instance": "starling", "starling.im/server": "true"}
    for target in ("session-router", "presence", "storage"):
        rules = policies[target]["spec"]["ingress"]
        grpc_rules = [r for r in rules if {"port": "grpc", "protocol": "TCP"} in r["ports"]]
        assert len(grpc_rules) == 1 and grpc_rules[0]["from"] == [{"podSelector": {"matchLabels": starling_pods}}]
        assert all(p["port"] in ("grpc", "admin", "http") for r in rules for p in r["ports"])
    # Every Starling pod carries the label the policies admit; the in-chart Redis does not.
    for deployment in find(objects, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert (labels.get("starling.im/server") == "true") == (component(deployment) in TARGETS)
    postgres = policies["postgresql"]
    assert postgres["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "storage"


def component_of_policy(policy):
    return policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]


def test_the_alerts_and_dashboards_of_deploy_ship_with_the_chart(chart):
    objects = render(chart, PRODUCTION)
    (rule,) = find(objects, "PrometheusRule")
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    (monitor,) = find(objects, "ServiceMonitor")
    assert monitor["spec"]["jobLabel"] == "starling.im/job"
    scraped = [s for s in find(objects, "Service") if s["metadata"]["labels"].get("starling.im/scrape") == "true"]
    # One job per target, named as deploy/prometheus/prometheus.yml names them.
    assert sorted(s["metadata"]["labels"]["starling.im/job"] for s in scraped) == sorted(f"starling-{t}" for t in TARGETS)
    dashboards = {}
    for configmap in find(objects, "ConfigMap"):
        if configmap["metadata"]["labels"].get("grafana_dashboard") == "1":
            dashboards.update(configmap["data"])
    shipped = {p.name: p.read_text() for p in (REPO / "deploy" / "grafana").glob("*.json")}
    assert dashboards.keys() == shipped.keys()
    for name, text in shipped.items():
        assert dashboards[name].strip() == text.strip()


def test_an_operator_secret_replaces_the_in_chart_redis_and_postgresql(chart):
    objects = render(chart, PRODUCTION)
    assert not [o for o in objects if component(o) in ("redis", "postgresql")]
    assert rendered_toml(objects)["cluster"]["redis"] == []
    assert not [s for s in objects if s["kind"] == "Secret" and s["metadata"]["name"] == "starling-postgresql"]
    default = render(chart)
    assert rendered_toml(default)["cluster"]["redis"] == ["redis://starling-redis:6379"]
    (secret,) = find(default, "Secret", "starling-postgresql")
    assert secret["stringData"]["url"] == f"postgres://starling:{secret['stringData']['password']}@starling-postgresql:5432/starling"


def test_the_packaged_chart_carries_the_linked_files_and_renders_the_same(chart, tmp_path):
    """`helm package` puts the contents of files/ (links to deploy/) in the archive."""
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        from_archive = render(packaged, PRODUCTION)
    from_directory = render(chart, PRODUCTION)
    # Generated Secrets differ from one rendering to the next: compare the rest.
    def comparable(objects):
        return [o for o in objects if o["kind"] != "Secret"]

    assert comparable(from_archive) == comparable(from_directory)
    assert find(from_archive, "PrometheusRule")[0]["spec"]["groups"]
