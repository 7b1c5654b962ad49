"""OpenTelemetry traces (docs/operations.md "Traces"): the processes export
their spans over OTLP/gRPC to a real receiver run by the test (the OTLP
TraceService of opentelemetry-proto on grpcio), and one routed stanza makes
one trace across connection-manager -> router -> presence/storage -> bus ->
delivering connection-manager, in a cluster and in one process."""

import asyncio
import threading
import uuid
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from conftest import login, logout, wait_until
from test_cluster import Cluster, befriend

# Export every span within a fraction of a second (OpenTelemetry SDK setting;
# the default batch delay is 5 s).
FAST_BATCHES = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


def attribute_value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Span:
    def __init__(self, resource, span):
        self.service = resource.get("service.name")
        self.instance = resource.get("service.instance.id")
        self.version = resource.get("service.version")
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex()
        self.name = span.name
        self.kind = span.kind
        self.attributes = {item.key: attribute_value(item.value) for item in span.attributes}

    def __repr__(self):
        return f"<{self.name} {self.service}/{self.instance} {self.span_id}<-{self.parent_id or 'root'}>"


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector on a free loopback port that keeps what it receives."""

    def __init__(self):
        self.lock = threading.Lock()
        self.spans = []
        self.requests = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server.start()

    def Export(self, request, context):  # noqa: N802 (the OTLP method name)
        received = []
        for resource_spans in request.resource_spans:
            resource = {item.key: attribute_value(item.value) for item in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                received.extend(Span(resource, span) for span in scope_spans.spans)
        with self.lock:
            self.requests += 1
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self):
        with self.lock:
            return list(self.spans)

    def handle_marker(self):
        """Send an empty export of the test's own and return once it is
        handled: what reached the receiver before it is counted by then."""
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(
                trace_service_pb2.ExportTraceServiceRequest(), timeout=10
            )

    def stop(self):
        self.server.stop(grace=None)


@pytest.fixture
def receiver():
    collector = OtlpReceiver()
    yield collector
    collector.stop()


class Traces:
    """The received spans, indexed by id."""

    def __init__(self, spans):
        self.spans = spans
        self.by_id = {span.span_id: span for span in spans}

    def parent(self, span):
        return self.by_id.get(span.parent_id)

    def ancestors(self, span):
        seen = []
        parent = self.parent(span)
        while parent is not None and parent not in seen:
            seen.append(parent)
            parent = self.parent(parent)
        return seen

    def named(self, name, **where):
        return [
            span
            for span in self.spans
            if span.name == name and all(getattr(span, key) == value for key, value in where.items())
        ]

    def children(self, span, name=None):
        return [child for child in self.spans if child.parent_id == span.span_id and name in (None, child.name)]


def find_message_trace(receiver, sender_service, sender_instance, receiver_instance):
    """The trace of one chat message: the sender's connection-manager span is
    its root, the router's span its child, and the delivering
    connection-manager's span descends from it through the bus."""
    traces = Traces(receiver.snapshot())
    for root in traces.named("connection_manager.route", service=sender_service, instance=sender_instance):
        if root.attributes.get("stanza.kind") != "message" or root.parent_id:
            continue
        for route in traces.children(root, "router.route"):
            for deliver in traces.named("connection_manager.deliver", instance=receiver_instance):
                if deliver.trace_id == root.trace_id and root in traces.ancestors(deliver):
                    return traces, root, route, deliver
    return None


def wait_for_trace(receiver, *args, timeout=20.0):
    found = []

    def complete():
        result = find_message_trace(receiver, *args)
        if result:
            found.append(result)
        return bool(result)

    try:
        wait_until(complete, timeout=timeout, interval=0.2, what="the message's trace")
    except TimeoutError:
        names = sorted({(span.service, span.instance, span.name) for span in receiver.snapshot()})
        raise AssertionError(f"no complete message trace; received spans: {names}")
    return found[0]


def assert_no_addresses(spans):
    """Span attributes carry kinds and decisions, never JIDs or bodies."""
    for span in spans:
        for key, value in span.attributes.items():
            assert not (isinstance(value, str) and ("@" in value or "secret" in value)), (span, key, value)


@pytest.fixture
def traced_cluster(tmp_path, receiver):
    cluster = Cluster(tmp_path)
    cluster.env.update(
        STARLING_TELEMETRY_OTLP_ENDPOINT=receiver.endpoint,
        STARLING_TELEMETRY_SAMPLE_RATIO="1",
        **FAST_BATCHES,
    )
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


async def test_one_trace_follows_a_message_across_the_cluster(traced_cluster, receiver):
    cluster = traced_cluster
    alice, alice_pw = cluster.add_user("alice")
    bob, bob_pw = cluster.add_user("bob")
    a = await login(cluster.node("cm-1"), alice, alice_pw, "laptop")
    b = await login(cluster.node("cm-2"), bob, bob_pw, "phone")
    await befriend(a, b, bob)
    body = f"secret body {uuid.uuid4().hex}"
    a.send_message(mto=bob, mbody=body, mtype="chat")
    assert (await b.next_message(timeout=20))["body"] == body

    traces, root, route, deliver = await asyncio.to_thread(
        wait_for_trace, receiver, "starling-connection-manager", "cm-1", "cm-2"
    )
    # The root is cm-1's; the router's span is its direct child in another process.
    assert root.parent_id == ""
    assert root.attributes["node.id"] == "cm-1"
    assert route.parent_id == root.span_id and route.trace_id == root.trace_id
    assert route.service == "starling-session-router" and route.instance in ("router-1", "router-2")
    assert route.attributes["stanza.kind"] == "message"
    assert route.attributes["route.decision"] == "delivered"
    # The bus hop: the router published, cm-2 delivered as the publish's child.
    publish = traces.parent(deliver)
    assert publish.name == "bus.publish" and publish.service == "starling-session-router"
    assert publish.attributes["bus.node"] == "cm-2"
    assert route in traces.ancestors(publish)
    assert deliver.service == "starling-connection-manager" and deliver.instance == "cm-2"
    assert deliver.attributes["stanza.kind"] == "message"
    assert root.version and root.version == deliver.version

    # Presence goes router -> presence -> storage over gRPC (metadata), each a
    # child in the next process.
    a.send_presence(pstatus="traced")
    await b.next_presence(lambda p: p["from"] == f"{alice}/laptop" and p["status"] == "traced", timeout=20)

    def presence_chain():
        traces = Traces(receiver.snapshot())
        for outbound in traces.named("presence.outbound_presence", service="starling-presence"):
            parent = traces.parent(outbound)
            if not parent or parent.name != "router.route" or parent.service != "starling-session-router":
                continue
            if not any(
                outbound in traces.ancestors(span)
                for span in traces.spans
                if span.service == "starling-storage" and span.name.startswith("storage.")
            ):
                continue
            if any(
                outbound in traces.ancestors(span) and span.instance == "cm-2"
                for span in traces.named("connection_manager.deliver")
            ):
                return True
        return False

    await asyncio.to_thread(wait_until, presence_chain, 20.0, 0.2, "a presence trace through presence and storage")
    assert_no_addresses(receiver.snapshot())
    await logout(a, b)


def single_process_toml(endpoint, ratio="1.0"):
    return f'[telemetry]\notlp_endpoint = "{endpoint}"\nsample_ratio = {ratio}\n'


@pytest.fixture
def fast_batches(monkeypatch):
    for name, value in FAST_BATCHES.items():
        monkeypatch.setenv(name, value)


async def test_one_process_exports_the_same_spans(server_factory, receiver, fast_batches):
    server = server_factory(extra_toml=single_process_toml(receiver.endpoint))
    alice, alice_pw = server.add_user()
    bob, bob_pw = server.add_user()
    a = await login(server, alice, alice_pw, "laptop")
    b = await login(server, bob, bob_pw, "phone")
    a.send_message(mto=f"{bob}/phone", mbody="in one process", mtype="chat")
    assert (await b.next_message(timeout=20))["body"] == "in one process"

    traces, root, route, deliver = await asyncio.to_thread(
        wait_for_trace, receiver, "starling-all", root_instance(receiver), root_instance(receiver)
    )
    # The same chain as in the cluster, within one process: the in-process bus
    # carries the context beside the delivery.
    publish = traces.parent(deliver)
    assert publish.name == "bus.publish" and traces.parent(publish) == route
    assert publish.attributes["bus.system"] == "in_process"
    assert {span.service for span in (root, route, publish, deliver)} == {"starling-all"}
    assert route.attributes["route.decision"] == "delivered"
    # Storage and presence spans come from the same process too (login, roster, presence).
    names = {span.name for span in receiver.snapshot()}
    assert "storage.credentials" in names and "presence.outbound_presence" in names, names
    assert_no_addresses(receiver.snapshot())
    await logout(a, b)


async def test_the_last_spans_leave_at_shutdown(server_factory, receiver, monkeypatch):
    # Batches would wait a minute: only the flush at exit can send these spans.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    server = server_factory(extra_toml=single_process_toml(receiver.endpoint))
    alice, alice_pw = server.add_user()
    a = await login(server, alice, alice_pw)
    await logout(a)
    assert receiver.snapshot() == []
    assert server.stop() == 0
    names = {span.name for span in receiver.snapshot()}
    assert {"storage.credentials", "router.bind", "router.route", "router.unbind"} <= names, names


def root_instance(receiver):
    """The node id `starling serve` generated for itself (from any span it sent)."""
    def one():
        return next((span.instance for span in receiver.snapshot() if span.service == "starling-all"), None)

    wait_until(lambda: one() is not None, timeout=20, what="a first span")
    return one()


@pytest.mark.parametrize("setting", ["empty endpoint", "sample ratio 0"])
async def test_nothing_is_sent_when_traces_are_off(server_factory, receiver, fast_batches, monkeypatch, setting):
    if setting == "empty endpoint":
        # Even the SDK's own variable, were the exporter built, would point here.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        extra = single_process_toml("")
    else:
        extra = single_process_toml(receiver.endpoint, ratio="0.0")
    server = server_factory(extra_toml=extra)
    alice, alice_pw = server.add_user()
    bob, bob_pw = server.add_user()
    a = await login(server, alice, alice_pw)
    b = await login(server, bob, bob_pw)
    a.send_message(mto=bob, mbody="not traced", mtype="chat")
    assert (await b.next_message(timeout=20))["body"] == "not traced"
    await logout(a, b)
    assert server.stop() == 0  # flushes whatever the process had
    # The process is gone: an export of the test's own, sent now, is the only
    # request the receiver handles (any of the process's would come first).
    receiver.handle_marker()
    assert receiver.snapshot() == [], receiver.snapshot()
    assert receiver.requests == 1
    if setting == "empty endpoint":
        assert "exporting traces" not in server.log_text()
