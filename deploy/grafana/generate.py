#!/usr/bin/env python3
"""Writes the Grafana dashboards of deploy/grafana/*.json (Grafana 10+ schema,
the Prometheus data source chosen by the `datasource` template variable).

The JSON files are what Grafana imports and what the tests read
(tests/integration/test_observability.py runs every panel's query against a
real Prometheus that scraped a local cluster). Edit this script, then run
`python3 deploy/grafana/generate.py` and commit both.

The PromQL assumes one scrape job per Starling target named `starling-<target>`
(deploy/prometheus/prometheus.yml); the `job` and `instance` variables select
among them.
"""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"


def datasource_variable():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
    }


def query_variable(name, label, query, multi=True):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": multi,
        "current": {"selected": True, "text": "All", "value": "$__all"},
        "sort": 1,
        "hide": 0,
        "regex": "",
    }


JOB = query_variable("job", "Service (scrape job)", 'label_values(starling_build_info, job)')
INSTANCE = query_variable("instance", "Instance", 'label_values(starling_build_info{job=~"$job"}, instance)')


class Dashboard:
    def __init__(self, uid, title, description, variables):
        self.uid = uid
        self.title = title
        self.description = description
        self.variables = variables
        self.panels = []
        self.y = 0
        self.x = 0
        self.row_height = 0
        self.next_id = 1

    def row(self, title):
        self._newline()
        self.panels.append({
            "id": self.next_id, "type": "row", "title": title, "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": [],
        })
        self.next_id += 1
        self.y += 1

    def _newline(self):
        if self.x:
            self.y += self.row_height
            self.x = 0
            self.row_height = 0

    def panel(self, title, description, targets, kind="timeseries", unit="short", width=8, height=8,
              stacked=False, min_zero=True):
        if self.x + width > 24:
            self._newline()
        panel = {
            "id": self.next_id,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DATASOURCE,
            "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            "targets": [
                {"refId": chr(ord("A") + index), "datasource": DATASOURCE, "expr": expr,
                 "legendFormat": legend, "range": kind != "stat", "instant": kind == "stat"}
                for index, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
        }
        if min_zero:
            panel["fieldConfig"]["defaults"]["min"] = 0
        if kind == "timeseries":
            panel["fieldConfig"]["defaults"]["custom"] = {
                "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if stacked else 0,
                "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
                "showPoints": "never", "spanNulls": True,
            }
            panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                "tooltip": {"mode": "multi", "sort": "desc"}}
        elif kind == "stat":
            panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                                "colorMode": "value", "graphMode": "none", "textMode": "auto"}
        self.panels.append(panel)
        self.next_id += 1
        self.x += width
        self.row_height = max(self.row_height, height)

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["starling", "xmpp"],
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "time": {"from": "now-1h", "to": "now"},
            "refresh": "30s",
            "timezone": "",
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["starling"], "asDropdown": True, "title": "Starling"}],
            "panels": self.panels,
        }


def quantiles(metric, by, selector, legend_prefix=""):
    """p50 and p99 of a histogram, per `by` labels."""
    group = f"le, {by}" if by else "le"
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
         f"{legend_prefix}p{int(q * 100)}" + (" {{" + by + "}}" if by else ""))
        for q in (0.5, 0.99)
    ]


def overview():
    d = Dashboard("starling-overview", "Starling / Cluster overview",
                  "The whole cluster: processes up, sessions, connections, traffic, routing decisions, "
                  "end-to-end latency and errors. docs/operations.md explains every metric.",
                  [datasource_variable(), JOB])
    sel = 'job=~"$job"'
    d.row("Health")
    d.panel("Processes up", "Scrape targets answering, by job (up == 1).",
            [(f"sum by (job) (up{{{sel}}})", "{{job}}")], kind="stat", width=6, height=5)
    d.panel("Processes down", "Scrape targets not answering (up == 0). Alert: StarlingProcessDown.",
            [(f"count(up{{{sel}}} == 0) or vector(0)", "down")], kind="stat", width=6, height=5)
    d.panel("Bound sessions", "Client sessions with a bound resource, whole cluster.",
            [(f"sum(starling_sessions{{{sel}}})", "sessions")], kind="stat", width=6, height=5)
    d.panel("Offline messages waiting", "Messages in every offline queue (counted by storage every 15 s).",
            [(f"max(starling_offline_messages_queued{{{sel}}})", "queued")], kind="stat", width=6, height=5)
    d.row("Connections and sessions")
    d.panel("Connections by transport and state", "Open client connections: negotiating (TLS, SASL, bind) or bound.",
            [(f"sum by (transport, state) (starling_connections{{{sel}}})", "{{transport}} {{state}}")], stacked=True)
    d.panel("Sessions per connection-manager", "Bound sessions on each node.",
            [(f"sum by (instance) (starling_sessions{{{sel}}})", "{{instance}}")], stacked=True)
    d.panel("Logins", "SASL authentications per second, by result.",
            [(f"sum by (result) (rate(starling_logins_total{{{sel}}}[{RATE}]))", "{{result}}")], unit="ops")
    d.row("Traffic and routing")
    d.panel("Stanzas received from clients", "Per second, by kind.",
            [(f"sum by (kind) (rate(starling_stanzas_received_total{{{sel}}}[{RATE}]))", "{{kind}}")], unit="ops")
    d.panel("Stanzas sent to clients", "Per second, by kind.",
            [(f"sum by (kind) (rate(starling_stanzas_sent_total{{{sel}}}[{RATE}]))", "{{kind}}")], unit="ops")
    d.panel("Routing decisions", "What the routers did with each stanza, per second.",
            [(f"sum by (decision) (rate(starling_router_routed_total{{{sel}}}[{RATE}]))", "{{decision}}")],
            unit="ops", stacked=True)
    d.panel("End-to-end message latency", "From the sending connection-manager to the delivering one "
            "(wall clocks of two nodes). SLO: 99% under 100 ms.",
            quantiles("starling_stanza_delivery_latency_seconds", "", f'{sel}, kind="message"'), unit="s", width=12)
    d.panel("Router time per stanza", "From a router receiving a stanza to its last publish or store.",
            quantiles("starling_router_route_duration_seconds", "", sel), unit="s", width=12)
    d.row("Errors")
    d.panel("Routing error ratio", "Stanzas whose routing failed on a dependency, over all routed. "
            "Alert: StarlingRoutingErrors.",
            [(f'sum(rate(starling_router_routed_total{{{sel}, decision="error"}}[{RATE}])) '
              f"/ sum(rate(starling_router_routed_total{{{sel}}}[{RATE}]))", "error ratio")], unit="percentunit")
    d.panel("SASL failures", "Per second, by mechanism and RFC 6120 condition. Alert: StarlingAuthFailureSpike.",
            [(f"sum by (mechanism, reason) (rate(starling_sasl_failures_total{{{sel}}}[{RATE}]))",
              "{{mechanism}} {{reason}}")], unit="ops")
    d.panel("Stream errors", "Stream errors sent to clients per second, by condition.",
            [(f"sum by (condition) (rate(starling_stream_errors_total{{{sel}}}[{RATE}]))", "{{condition}}")],
            unit="ops")
    d.panel("Limits hit", "Per second, by limit.",
            [(f"sum by (limit) (rate(starling_limits_hit_total{{{sel}}}[{RATE}]))", "{{limit}}")], unit="ops")
    d.panel("Bus publish failures", "Per second. Alert: StarlingBusPublishFailures.",
            [(f"sum(rate(starling_bus_publish_failures_total{{{sel}}}[{RATE}]))", "failures")], unit="ops")
    d.panel("Dependency errors", "Redis and database operations that failed, per second.",
            [(f"sum(rate(starling_redis_operation_errors_total{{{sel}}}[{RATE}]))", "redis"),
             (f"sum(rate(starling_db_query_errors_total{{{sel}}}[{RATE}]))", "database")], unit="ops")
    return d


def service():
    d = Dashboard("starling-service", "Starling / Service",
                  "One service (scrape job) and its instances: what each Starling target exposes. "
                  "Panels of metrics another target owns stay empty.",
                  [datasource_variable(), JOB, INSTANCE])
    d.row("Processes")
    d.panel("Build", "Version and target of each process (starling_build_info).",
            [(f"sum by (instance, version, target) (starling_build_info{{{SEL}}})", "{{instance}} {{target}} {{version}}")],
            kind="table", width=12, height=6)
    d.panel("Up", "1 when the last scrape succeeded.",
            [(f"up{{{SEL}}}", "{{instance}}")], width=12, height=6)
    d.row("connection-manager")
    d.panel("Connections", "By transport and state, per instance.",
            [(f"sum by (instance, transport, state) (starling_connections{{{SEL}}})",
              "{{instance}} {{transport}} {{state}}")])
    d.panel("Sessions", "Bound sessions per instance.",
            [(f"sum by (instance) (starling_sessions{{{SEL}}})", "{{instance}}")])
    d.panel("Logins", "Per second, by mechanism and result.",
            [(f"sum by (mechanism, result) (rate(starling_logins_total{{{SEL}}}[{RATE}]))", "{{mechanism}} {{result}}")],
            unit="ops")
    d.panel("Stanzas in", "Read from clients per second, by kind.",
            [(f"sum by (instance, kind) (rate(starling_stanzas_received_total{{{SEL}}}[{RATE}]))", "{{instance}} {{kind}}")],
            unit="ops")
    d.panel("Stanzas out", "Written to clients per second, by kind.",
            [(f"sum by (instance, kind) (rate(starling_stanzas_sent_total{{{SEL}}}[{RATE}]))", "{{instance}} {{kind}}")],
            unit="ops")
    d.panel("Delivery latency p99 by kind", "End-to-end, observed at the delivering connection-manager.",
            [(f"histogram_quantile(0.99, sum by (le, kind) (rate(starling_stanza_delivery_latency_seconds_bucket{{{SEL}}}[{RATE}])))",
              "{{kind}}")], unit="s")
    d.panel("Stream errors", "By condition, per second.",
            [(f"sum by (condition) (rate(starling_stream_errors_total{{{SEL}}}[{RATE}]))", "{{condition}}")], unit="ops")
    d.panel("Limits hit", "By limit, per second.",
            [(f"sum by (limit) (rate(starling_limits_hit_total{{{SEL}}}[{RATE}]))", "{{limit}}")], unit="ops")
    d.panel("SASL failures", "By mechanism and condition, per second.",
            [(f"sum by (mechanism, reason) (rate(starling_sasl_failures_total{{{SEL}}}[{RATE}]))", "{{mechanism}} {{reason}}")],
            unit="ops")
    d.row("session-router")
    d.panel("Routed by decision", "Per second, by kind and decision.",
            [(f"sum by (kind, decision) (rate(starling_router_routed_total{{{SEL}}}[{RATE}]))", "{{kind}} {{decision}}")],
            unit="ops", stacked=True, width=12)
    d.panel("Route duration", "p50 and p99 by kind.",
            quantiles("starling_router_route_duration_seconds", "kind", SEL), unit="s", width=12)
    d.row("storage")
    d.panel("Database p99 by operation", "",
            [(f"histogram_quantile(0.99, sum by (le, operation) (rate(starling_db_query_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
              "{{operation}}")], unit="s")
    d.panel("Database operations", "Per second, by operation.",
            [(f"sum by (operation) (rate(starling_db_query_duration_seconds_count{{{SEL}}}[{RATE}]))", "{{operation}}")],
            unit="ops")
    d.panel("Offline queue", "Messages stored and delivered per second; waiting in total.",
            [(f"sum(rate(starling_offline_messages_stored_total{{{SEL}}}[{RATE}]))", "stored/s"),
             (f"sum(rate(starling_offline_messages_delivered_total{{{SEL}}}[{RATE}]))", "delivered/s"),
             (f"max(starling_offline_messages_queued{{{SEL}}})", "waiting")])
    d.panel("Offline messages per login", "p50 and p99 of the queue length a login found.",
            quantiles("starling_offline_messages_per_login", "", SEL), width=12)
    d.row("Bus, Redis and gRPC clients of this service")
    d.panel("Bus envelopes", "Published (by result) and received, per second.",
            [(f"sum by (result) (rate(starling_bus_messages_published_total{{{SEL}}}[{RATE}]))", "published {{result}}"),
             (f"sum(rate(starling_bus_messages_received_total{{{SEL}}}[{RATE}]))", "received")], unit="ops")
    d.panel("Redis p99 by operation", "",
            [(f"histogram_quantile(0.99, sum by (le, operation) (rate(starling_redis_operation_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
              "{{operation}}")], unit="s")
    d.panel("gRPC client p99 by method", "",
            [(f"histogram_quantile(0.99, sum by (le, service, method) (rate(starling_grpc_client_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
              "{{service}}.{{method}}")], unit="s")
    return d


def dependencies():
    d = Dashboard("starling-dependencies", "Starling / Dependencies",
                  "What Starling waits for: Redis (registry and bus), the database, and the gRPC calls between services.",
                  [datasource_variable(), JOB, INSTANCE])
    d.row("Redis")
    d.panel("Redis p50/p99 by operation", "Each registry operation with all its round trips, and bus publishes.",
            quantiles("starling_redis_operation_duration_seconds", "operation", SEL), unit="s", width=12)
    d.panel("Redis operations", "Per second, by operation.",
            [(f"sum by (operation) (rate(starling_redis_operation_duration_seconds_count{{{SEL}}}[{RATE}]))",
              "{{operation}}")], unit="ops", width=12)
    d.panel("Redis errors", "Failed operations per second. Alert: StarlingRedisErrors.",
            [(f"sum by (operation) (rate(starling_redis_operation_errors_total{{{SEL}}}[{RATE}]))", "{{operation}}")],
            unit="ops")
    d.panel("Bus publishes", "Delivery envelopes per second, by result.",
            [(f"sum by (result) (rate(starling_bus_messages_published_total{{{SEL}}}[{RATE}]))", "{{result}}"),
             (f"sum(rate(starling_bus_publish_failures_total{{{SEL}}}[{RATE}]))", "failed")], unit="ops")
    d.panel("Bus receptions", "Envelopes received by connection-managers, and those dropped as invalid.",
            [(f"sum by (instance) (rate(starling_bus_messages_received_total{{{SEL}}}[{RATE}]))", "{{instance}}"),
             (f"sum(rate(starling_bus_messages_invalid_total{{{SEL}}}[{RATE}]))", "invalid")], unit="ops")
    d.row("Database")
    d.panel("Database p50/p99 by operation", "",
            quantiles("starling_db_query_duration_seconds", "operation", SEL), unit="s", width=12)
    d.panel("Database errors", "Failed operations per second. Alert: StarlingDatabaseErrors.",
            [(f"sum by (operation) (rate(starling_db_query_errors_total{{{SEL}}}[{RATE}]))", "{{operation}}")],
            unit="ops", width=12)
    d.row("gRPC between services")
    d.panel("gRPC client p99 by service and method", "Unary calls with their retries; route_stream is per stanza, until its ack.",
            [(f"histogram_quantile(0.99, sum by (le, service, method) (rate(starling_grpc_client_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
              "{{service}}.{{method}}")], unit="s", width=12)
    d.panel("gRPC calls by code", "Per second, by service and gRPC status code.",
            [(f"sum by (service, code) (rate(starling_grpc_client_duration_seconds_count{{{SEL}}}[{RATE}]))",
              "{{service}} {{code}}")], unit="ops", width=12)
    d.panel("gRPC failure ratio", "UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL and UNKNOWN over all calls, by service. "
            "Alert: StarlingGrpcErrors.",
            [(f'(sum by (service) (rate(starling_grpc_client_duration_seconds_count{{{SEL}, code=~"UNAVAILABLE|DEADLINE_EXCEEDED|INTERNAL|UNKNOWN"}}[{RATE}])) '
              f"or 0 * sum by (service) (rate(starling_grpc_client_duration_seconds_count{{{SEL}}}[{RATE}]))) "
              f"/ sum by (service) (rate(starling_grpc_client_duration_seconds_count{{{SEL}}}[{RATE}]))", "{{service}}")],
            unit="percentunit", width=12)
    d.panel("gRPC server p99 by service and method", "Unary calls as the serving process sees them (RouteStream excluded: "
            "the router's route duration measures each stanza).",
            [(f"histogram_quantile(0.99, sum by (le, service, method) (rate(starling_grpc_server_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
              "{{service}}.{{method}}")], unit="s", width=12)
    return d


def main():
    for dashboard in (overview(), service(), dependencies()):
        path = HERE / f"{dashboard.uid}.json"
        path.write_text(json.dumps(dashboard.json(), indent=2) + "\n")
        print(f"wrote {path.relative_to(HERE.parent.parent)}")


if __name__ == "__main__":
    main()
