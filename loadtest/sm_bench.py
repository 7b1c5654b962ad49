#!/usr/bin/env python3
"""What XEP-0198 stream management costs (issue 11): `chat` at a fixed rate
with `--sm off` and `--sm resume`, alternately, against one `starling serve`
and against the local cluster (deploy/local-cluster.sh: 2 connection-managers,
private Redis, PostgreSQL), in the same session so that the ratios are fair.

Per run it samples, at two progress lines of the generator inside the stage
(after `--skip` seconds, and `--window` seconds later):

- the CPU time of every measured process (`/proc/PID/stat`): `starling serve`,
  or the 7 cluster processes plus Redis, split per process;
- the generator's cumulative `recv` (delivered messages) and, with SM, the
  `<a/>` it sent (acked batches) from the same lines;
- Redis `INFO commandstats` (calls per command) and every process's
  `/metrics` (`starling_sm_journal_entries_total`,
  `starling_redis_operation_duration_seconds_count{operation}`: one count per
  round trip of an operation, the journal's pipeline included;
  `starling_grpc_client_duration_seconds_count{service,method}`: gRPC calls
  made, a stanza on a route stream counted as one `router/route_stream`).

With `--cms 2,4,8` the cluster setup runs once per number of
connection-managers (`STARLING_CMS` of deploy/local-cluster.sh), users spread
over all of them and every message crossing nodes: what a delivered message
costs in Redis commands and gRPC calls as the cluster grows (issue 16).

It prints, per setup and mode: CPU µs per delivered message, the generator's
p50/p99, Redis commands per delivered message by command, resumption round
trips (pipelines) and journal entries per acked batch; writes everything to
OUT/results.json.

    loadtest/sm_bench.py --bin-dir DIR [--users 2000] [--rate 1000] [--duration 20]
        [--repeats 2] [--setups serve,cluster] [--modes off,resume] [--out DIR]
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POSTGRES = os.environ.get("STARLING_POSTGRES", "postgres://postgres@127.0.0.1:5432")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_ENV = {
    "STARLING_TLS_REQUIRED": "false",
    "STARLING_LIMITS_STANZAS_PER_SECOND": "0",
    "STARLING_LIMITS_MAX_CONNECTIONS_PER_IP": "1000000",
    "STARLING_LOG_LEVEL": "warn",
}


def log(*parts):
    print("==", *parts, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"port {port} did not open")


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return 0.0


def redis_commandstats(port):
    if port is None:
        return {}
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    calls = {}
    for line in out.splitlines():
        match = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
        if match:
            calls[match.group(1)] = int(match.group(2))
    return calls


METRIC = re.compile(r'^(starling_sm_journal_entries_total|starling_redis_operation_duration_seconds_count\{operation="([a-z_]+)"\}|starling_sm_events_total\{event="([a-z_]+)"\})\s+(\S+)')
GRPC_CALLS = re.compile(r'^starling_grpc_client_duration_seconds_count\{code="[A-Za-z]+",method="([a-z_]+)",service="([a-z_]+)"\}\s+(\S+)')


def scrape(http_addresses):
    """Sum the metrics we need over every process."""
    totals = {}
    for address in http_addresses:
        try:
            text = urllib.request.urlopen(f"http://{address}/metrics", timeout=2).read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            grpc = GRPC_CALLS.match(line)
            if grpc:
                key = f"grpc:{grpc.group(2)}/{grpc.group(1)}"
                totals[key] = totals.get(key, 0) + float(grpc.group(3))
                continue
            match = METRIC.match(line)
            if not match:
                continue
            if match.group(2):
                key = "redis_op:" + match.group(2)
            elif match.group(3):
                key = "sm_event:" + match.group(3)
            else:
                key = "sm_journal_entries"
            totals[key] = totals.get(key, 0) + float(match.group(4))
    return totals


class Setup:
    """A running server (one process, or the cluster with its Redis)."""

    def __init__(self, kind, args, cms=2):
        self.kind, self.args, self.cms = kind, args, cms
        self.dir = os.path.join(args.out, kind)
        os.makedirs(self.dir, exist_ok=True)
        self.groups = []  # process groups we started
        self.redis_port = None
        self.cluster_env = None

    def start_detached(self, argv, logname, env=None):
        logfile = open(os.path.join(self.dir, logname), "w")
        process = subprocess.Popen(argv, stdout=logfile, stderr=subprocess.STDOUT, cwd=self.dir,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
        self.groups.append(process.pid)
        return process.pid

    def start(self):
        binary = os.path.join(self.args.bin_dir, "starling")
        if self.kind == "serve":
            port = self.args.serve_port
            config = os.path.join(self.dir, "starling.toml")
            with open(config, "w") as out:
                out.write(f"""domain = "localhost"
data_dir = "{self.dir}/data"
[listen]
c2s = "127.0.0.1:{port}"
c2s_tls = ""
http = "127.0.0.1:{port + 58}"
[tls]
required = false
[limits]
stanzas_per_second = 0
max_connections_per_ip = 1000000
[log]
level = "warn"
""")
            os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
            self.create_accounts(f"{binary} user add {{jid}} {{password}} --config {config}")
            pid = self.start_detached([binary, "serve", "--config", config], "server.log", SERVER_ENV)
            wait_port(port)
            wait_port(port + 58)
            self.pids = {"serve": pid}
            self.c2s = [f"127.0.0.1:{port}"]
            self.http = [f"127.0.0.1:{port + 58}"]
            return
        base = self.args.cluster_base_port
        self.redis_port = free_port()
        redis_dir = os.path.join(self.dir, "redis")
        os.makedirs(redis_dir, exist_ok=True)
        redis_pid = self.start_detached(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--dir", redis_dir], "redis.log")
        wait_port(self.redis_port)
        state = os.path.join(self.dir, "state")
        self.cluster_env = {**SERVER_ENV, "STARLING_CLUSTER_DIR": state, "STARLING_BASE_PORT": str(base),
                            "STARLING_BIN": binary, "STARLING_POSTGRES": POSTGRES,
                            "STARLING_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}",
                            "STARLING_CMS": str(self.cms)}
        subprocess.run(["psql", f"{POSTGRES}/postgres", "-qc",
                        f"drop database if exists starling_cluster_{base} with (force)"],
                       check=True, capture_output=True)
        with open(os.path.join(self.dir, "up.log"), "w") as up:
            subprocess.run([os.path.join(ROOT, "deploy/local-cluster.sh"), "up"], check=True,
                           env={**os.environ, **self.cluster_env}, stdout=up, stderr=subprocess.STDOUT)
        with open(os.path.join(state, "cluster.json")) as cluster:
            processes = json.load(cluster)["processes"]
        self.pids = {p["name"]: p["pid"] for p in processes}
        self.pids["redis"] = redis_pid
        self.c2s = [p["c2s"] for p in processes if p["target"] == "connection-manager"]
        self.http = [p["http"] for p in processes]
        for address in self.c2s:
            wait_port(int(address.rsplit(":", 1)[1]))
        self.create_accounts(f"{binary} user add {{jid}} {{password}} --config {state}/starling.toml")

    def create_accounts(self, command):
        load = os.path.join(self.args.bin_dir, "starling-load")
        log(self.kind, f"creating {self.args.users} accounts")
        with open(os.path.join(self.dir, "accounts.log"), "a") as out:
            # One first: it creates the database, which two at once would race for.
            subprocess.run([load, "idle", "-n", "1", "--accounts-only", "-q", "--accounts-cmd", command],
                           check=True, stdout=out, stderr=subprocess.STDOUT)
            subprocess.run([load, "idle", "-n", str(self.args.users), "--accounts-only", "--accounts-parallel", "2",
                            "-q", "--accounts-cmd", command], check=True, stdout=out, stderr=subprocess.STDOUT)

    def stop(self):
        if self.cluster_env:
            subprocess.run([os.path.join(ROOT, "deploy/local-cluster.sh"), "down"],
                           env={**os.environ, **self.cluster_env}, capture_output=True)
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(1)
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def sample(self, line):
        recv = int(re.search(r"recv (\d+)", line).group(1))
        acks = re.search(r"sm acks sent (\d+) recv (\d+)", line)
        return {
            "time": time.monotonic(),
            "recv": recv,
            "acks_sent": int(acks.group(1)) if acks else 0,
            "acks_recv": int(acks.group(2)) if acks else 0,
            "cpu": {name: cpu_seconds(pid) for name, pid in self.pids.items()},
            "redis": redis_commandstats(self.redis_port),
            "metrics": scrape(self.http),
        }


def delta(after, before):
    return {key: after.get(key, 0) - before.get(key, 0) for key in after if after.get(key, 0) != before.get(key, 0)}


def run_once(setup, mode, label):
    args = setup.args
    load = os.path.join(args.bin_dir, "starling-load")
    out_json = os.path.join(args.out, f"{label}.json")
    argv = [load, "chat", "--server", ",".join(setup.c2s), "-n", str(args.users), "--ramp", str(args.ramp),
            "--rate", str(args.rate), "-d", str(args.duration), "--sm", mode, "--label", label,
            "--out", out_json]
    for pid in setup.pids.values():
        argv += ["--server-pid", str(pid)]
    log(label, " ".join(argv))
    progress = open(os.path.join(args.out, f"{label}.progress"), "w")
    generator = subprocess.Popen(argv, stdout=open(os.path.join(args.out, f"{label}.txt"), "w"),
                                 stderr=subprocess.PIPE, text=True)
    first = last = None
    stage_seen = None
    for line in generator.stderr:
        progress.write(line)
        if not line.startswith("[") or "] stage 0 " not in line:
            continue
        now = int(line[1:line.index("s]")])  # the generator's own clock, seconds
        if stage_seen is None:
            stage_seen = now
        if first is None and now - stage_seen >= args.skip:
            first = setup.sample(line)
            first["line_time"] = now
        elif first is not None and last is None and now - first["line_time"] >= args.window:
            last = setup.sample(line)
    generator.wait(timeout=600)
    progress.close()
    with open(out_json) as result_file:
        result = json.load(result_file)
    stage = result["stages"][0]
    if first is None or last is None:
        raise RuntimeError(f"{label}: no sampling window (stage too short?)")
    delivered = last["recv"] - first["recv"]
    acked = last["acks_sent"] - first["acks_sent"]
    cpu = delta(last["cpu"], first["cpu"])
    metrics = delta(last["metrics"], first["metrics"])
    redis = delta(last["redis"], first["redis"])
    redis.pop("info", None)
    summary = {
        "label": label, "setup": setup.kind, "mode": mode,
        "window_seconds": last["time"] - first["time"], "delivered": delivered, "acked_batches": acked,
        "cpu_seconds": cpu, "cpu_us_per_delivered": sum(cpu.values()) * 1e6 / max(delivered, 1),
        "cpu_us_per_delivered_by_process": {name: value * 1e6 / max(delivered, 1) for name, value in cpu.items()},
        "redis_calls": redis,
        "redis_calls_per_delivered": {name: value / max(delivered, 1) for name, value in redis.items()},
        "grpc_calls_per_delivered": {name[5:]: value / max(delivered, 1) for name, value in metrics.items()
                                     if name.startswith("grpc:")},
        "metrics": metrics,
        "generator": {
            "p50_ms": stage["latency_us"]["p50"] / 1000, "p99_ms": stage["latency_us"]["p99"] / 1000,
            "delivery_ratio": stage["delivery_ratio"], "server_cpu_us_per_delivered": stage["server_cpu_us_per_delivered"],
            "machine_cpu_percent": stage.get("machine_cpu_percent"),
            "client_cpu_percent": result["client_process"]["cpu_percent"],
            "errors": result["errors"], "sm": result.get("sm"),
        },
    }
    if acked:
        summary["resumption_round_trips_per_acked_batch"] = metrics.get("redis_op:resumption", 0) / acked
        summary["journal_entries_per_acked_batch"] = metrics.get("sm_journal_entries", 0) / acked
    return summary


def print_summary(summary):
    generator = summary["generator"]
    redis = " ".join(f"{name} {value:.3f}" for name, value in sorted(summary["redis_calls_per_delivered"].items(),
                                                                     key=lambda item: -item[1]))
    line = (f"{summary['label']:<20} delivered {summary['delivered']:>6} in {summary['window_seconds']:.1f}s"
            f"  cpu {summary['cpu_us_per_delivered']:.1f} us/msg  p50 {generator['p50_ms']:.2f} p99 {generator['p99_ms']:.2f} ms"
            f"  machine {generator['machine_cpu_percent']}%  errors {generator['errors'] or 'none'}")
    print(line)
    processes = " ".join(f"{name} {value:.0f}" for name, value in summary["cpu_us_per_delivered_by_process"].items())
    print(f"    cpu us/msg by process: {processes}")
    if redis:
        print(f"    redis calls/msg: {redis} (all: {sum(summary['redis_calls_per_delivered'].values()):.3f})")
    grpc = " ".join(f"{name} {value:.3f}" for name, value in sorted(summary["grpc_calls_per_delivered"].items(),
                                                                   key=lambda item: -item[1]))
    if grpc:
        print(f"    grpc calls/msg: {grpc}")
    if summary.get("acked_batches"):
        print(f"    acked batches {summary['acked_batches']}: journal entries {summary['metrics'].get('sm_journal_entries', 0):.0f}"
              f" ({summary['journal_entries_per_acked_batch']:.2f}/batch), resumption round trips"
              f" {summary['metrics'].get('redis_op:resumption', 0):.0f} ({summary['resumption_round_trips_per_acked_batch']:.2f}/batch)")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--ramp", type=float, default=500)
    parser.add_argument("--skip", type=float, default=3, help="seconds of the stage before the window")
    parser.add_argument("--window", type=float, default=14, help="seconds measured")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--setups", default="serve,cluster")
    parser.add_argument("--cms", default="2", help="connection-managers of the cluster setup, a comma list: one cluster per value")
    parser.add_argument("--modes", default="off,resume")
    parser.add_argument("--serve-port", type=int, default=24622)
    parser.add_argument("--cluster-base-port", type=int, default=24700)
    parser.add_argument("--out", default=f"/tmp/sm-bench-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    args.bin_dir = os.path.abspath(args.bin_dir)
    os.makedirs(args.out, exist_ok=True)
    results = []
    setups = []
    for kind in args.setups.split(","):
        if kind == "cluster":
            setups += [(f"cluster-{cms}cm" if args.cms != "2" else kind, int(cms)) for cms in args.cms.split(",")]
        else:
            setups.append((kind, 2))
    for kind, cms in setups:
        setup = Setup(kind, args, cms)
        try:
            setup.start()
            for repeat in range(args.repeats):
                for mode in args.modes.split(","):
                    summary = run_once(setup, mode, f"{kind}-{mode}-{repeat + 1}")
                    print_summary(summary)
                    results.append(summary)
                    with open(os.path.join(args.out, "results.json"), "w") as out:
                        json.dump(results, out, indent=1)
        finally:
            setup.stop()
    log("results in", os.path.join(args.out, "results.json"))


if __name__ == "__main__":
    main()
