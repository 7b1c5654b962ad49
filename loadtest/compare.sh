#!/usr/bin/env bash
# Run the same scenarios, same user counts and rates, against `starling serve`,
# Prosody and ejabberd (from Debian), one after the other, on loopback only,
# and print a table with the ratios Starling/Prosody and Starling/ejabberd.
#
#   loadtest/compare.sh [--users N] [--rate R] [--duration S] [--ramp R] [--login-max-ramp R]
#                       [--sweep 1000,2000,...] [--servers "starling prosody ejabberd"]
#                       [--out DIR] [--no-build] [--no-install]
#
# Every run is bounded: each generator run has a `timeout`, every server this
# script starts is stopped by its process id at the end (or on Ctrl-C).
set -euo pipefail

USERS=2000
RATE=1000
DURATION=20
RAMP=200
LOGIN_MAX_RAMP=5000
SWEEP="1000,2000,3000,5000,7000,10000,14000,20000,28000,40000"
SWEEP_DURATION=10
SERVERS="starling prosody ejabberd"
OUT=""
BUILD=1
INSTALL=1
STARLING_PORT=25222
PROSODY_PORT=25322
EJABBERD_PORT=25422

while [ $# -gt 0 ]; do
    case "$1" in
        --users) USERS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --ramp) RAMP=$2; shift 2 ;;
        --login-max-ramp) LOGIN_MAX_RAMP=$2; shift 2 ;;
        --sweep) SWEEP=$2; shift 2 ;;
        --sweep-duration) SWEEP_DURATION=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-install) INSTALL=0; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 64 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/starling-compare-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
chmod 755 "$OUT"
LOAD="$ROOT/target/release/starling-load"
STARLING="$ROOT/target/release/starling"
log() { echo "== $*" >&2; }

# ---------------------------------------------------------------- build, install
if [ "$BUILD" = 1 ]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -p starling-loadtest -p starling)
fi

install_missing() {
    local packages=()
    [[ " $SERVERS " == *" prosody "* ]] && ! command -v prosody >/dev/null && packages+=(prosody)
    [[ " $SERVERS " == *" ejabberd "* ]] && ! command -v ejabberdctl >/dev/null && packages+=(ejabberd)
    [ ${#packages[@]} -eq 0 ] && return 0
    if [ "$INSTALL" = 0 ] || ! command -v apt-get >/dev/null; then
        log "missing ${packages[*]}: skipping those servers"
        for package in "${packages[@]}"; do SERVERS=${SERVERS//$package/}; done
        return 0
    fi
    log "installing ${packages[*]} from Debian"
    # Keep the packages' own services from starting (and listening on public ports).
    local created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
    [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    return 0
}
install_missing

# ---------------------------------------------------------------- servers
STARTED_PGIDS=()
cleanup() {
    for pgid in "${STARTED_PGIDS[@]}"; do
        kill -TERM -- "-$pgid" 2>/dev/null || true
    done
    sleep 1
    for pgid in "${STARTED_PGIDS[@]}"; do
        kill -KILL -- "-$pgid" 2>/dev/null || true
    done
    STARTED_PGIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
    local port=$1
    for _ in $(seq 120); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.5
    done
    echo "port $port did not open" >&2
    return 1
}

# start_detached DIR LOG CMD...: run CMD in its own session (so its whole
# process group can be stopped by id); sets PID to the session leader.
start_detached() {
    local dir=$1 logfile=$2
    shift 2
    rm -f "$dir/leader.pid"
    (cd "$dir" && setsid sh -c 'echo $$ > leader.pid; exec "$@"' sh "$@" > "$logfile" 2>&1 < /dev/null &)
    for _ in $(seq 50); do [ -s "$dir/leader.pid" ] && break; sleep 0.1; done
    PID=$(cat "$dir/leader.pid")
    STARTED_PGIDS+=("$PID")
}

stop_server() {
    local pgid=$1
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 40); do
        kill -0 -- "-$pgid" 2>/dev/null || break
        sleep 0.25
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    local kept=()
    for started in "${STARTED_PGIDS[@]}"; do [ "$started" != "$pgid" ] && kept+=("$started"); done
    STARTED_PGIDS=("${kept[@]+"${kept[@]}"}")
}

# Each start_* sets PORT, PID (the process group leader to measure, with descendants)
# and ACCOUNTS (generator flags that create the accounts).
start_starling() {
    local dir="$OUT/starling"
    rm -rf "$dir" && mkdir -p "$dir/data"
    cat > "$dir/starling.toml" <<EOF
domain = "localhost"
data_dir = "$dir/data"
[listen]
c2s = "127.0.0.1:$STARLING_PORT"
c2s_tls = ""
http = "127.0.0.1:$((STARLING_PORT + 58))"
[tls]
required = false
[limits]
stanzas_per_second = 0
max_connections_per_ip = 1000000
[log]
level = "warn"
EOF
    # Accounts first, through the operator command, while the database is ours alone.
    "$LOAD" idle --users "$USERS" --accounts-only --accounts-parallel 2 -q \
        --accounts-cmd "$STARLING user add {jid} {password} --config $dir/starling.toml" > "$dir/accounts.log"
    STARLING_TLS_REQUIRED=false start_detached "$dir" "$dir/server.log" "$STARLING" serve --config "$dir/starling.toml"
    PORT=$STARLING_PORT
    ACCOUNTS=()
    wait_port "$PORT"
}

start_prosody() {
    local dir="$OUT/prosody"
    rm -rf "$dir" && mkdir -p "$dir/data"
    cat > "$dir/prosody.cfg.lua" <<EOF
run_as_root = true
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_ports = { $PROSODY_PORT }
c2s_direct_tls_ports = { }
s2s_ports = { }
http_ports = { }
https_ports = { }
admin_socket = "$dir/prosody.sock"
modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "register"; "posix" }
modules_disabled = { "s2s" }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
allow_registration = true
min_seconds_between_registrations = 0
authentication = "internal_hashed"
storage = "internal"
log = { warn = "$dir/prosody.log"; error = "$dir/prosody.log" }
VirtualHost "localhost"
EOF
    start_detached "$dir" "$dir/server.log" prosody --config "$dir/prosody.cfg.lua" -F
    PORT=$PROSODY_PORT
    ACCOUNTS=(--accounts register --accounts-parallel 16)
    wait_port "$PORT"
}

start_ejabberd() {
    local dir="$OUT/ejabberd"
    rm -rf "$dir" && mkdir -p "$dir/spool" "$dir/logs"
    cat > "$dir/ejabberd.yml" <<EOF
hosts:
  - localhost
loglevel: warning
log_rotate_count: 0
certfiles: []
listen:
  -
    port: $EJABBERD_PORT
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: c2s
    starttls: false
auth_method: internal
auth_password_format: scram
registration_timeout: infinity
acl:
  loopback:
    ip:
      - 127.0.0.0/8
access_rules:
  c2s:
    allow: all
  register:
    allow: all
  trusted_network:
    allow: loopback
shaper_rules:
  max_user_sessions: 10
  max_user_offline_messages: 5000
modules:
  mod_roster: {}
  mod_disco: {}
  mod_ping: {}
  mod_offline: {}
  mod_register:
    access: register
    ip_access: trusted_network
EOF
    cat > "$dir/ejabberdctl.cfg" <<EOF
ERLANG_NODE=ejabberdlt$$@localhost
ERL_EPMD_ADDRESS=127.0.0.1
INET_DIST_INTERFACE=127.0.0.1
POLL=true
ERL_MAX_PORTS=65536
EOF
    cp /etc/ejabberd/inetrc "$dir/" 2>/dev/null || true
    chown -R ejabberd:ejabberd "$dir"
    chmod 777 "$dir"
    # setpriv (not su) so that the server stays in our process group.
    HOME="$dir" start_detached "$dir" "$dir/server.log" setpriv --reuid ejabberd --regid ejabberd --init-groups \
        ejabberdctl --config-dir "$dir" --spool "$dir/spool" --logs "$dir/logs" foreground
    PORT=$EJABBERD_PORT
    ACCOUNTS=(--accounts register --accounts-parallel 16)
    wait_port "$PORT"
}

# ---------------------------------------------------------------- scenarios
run_load() {
    local name=$1 scenario=$2 budget=$3 ramp=$RAMP
    shift 3
    if [ "${1:-}" = "--ramp" ]; then ramp=$2; shift 2; fi
    log "$SERVER: $name"
    timeout --signal=INT --kill-after=10 "$budget" "$LOAD" "$scenario" \
        --server "127.0.0.1:$PORT" --users "$USERS" --ramp "$ramp" --server-pid "$PID" \
        --label "$SERVER" --out "$OUT/$SERVER-$name.json" "$@" \
        > "$OUT/$SERVER-$name.txt" 2> "$OUT/$SERVER-$name.progress" || log "$SERVER: $name failed (see $OUT/$SERVER-$name.progress)"
    cat "$OUT/$SERVER-$name.txt" >&2 || true
}

RAMP_SECONDS=$(( USERS / ${RAMP%.*} + 60 ))
for SERVER in $SERVERS; do
    log "starting $SERVER"
    "start_$SERVER"
    if [ ${#ACCOUNTS[@]} -gt 0 ]; then
        "$LOAD" idle --server "127.0.0.1:$PORT" --users "$USERS" --accounts-only -q "${ACCOUNTS[@]}" \
            > "$OUT/$SERVER-accounts.txt" 2>&1 || log "$SERVER: account creation reported errors"
    fi
    # idle first: its memory baseline must be the fresh server.
    run_load idle idle $(( RAMP_SECONDS + 60 )) --duration 10
    run_load login-storm login-storm $(( RAMP_SECONDS + 30 ))
    run_load login-max login-storm $(( RAMP_SECONDS + 30 )) --ramp "$LOGIN_MAX_RAMP"
    run_load chat chat $(( RAMP_SECONDS + DURATION + 60 )) --rate "$RATE" --duration "$DURATION"
    run_load sweep chat $(( RAMP_SECONDS + 30 + SWEEP_DURATION * 12 )) --rates "$SWEEP" --duration "$SWEEP_DURATION" \
        --stop-p99-ms 50 --drain 3
    stop_server "$PID"
done

# ---------------------------------------------------------------- table
python3 - "$OUT" $SERVERS <<'EOF'
import json, os, sys
out, servers = sys.argv[1], sys.argv[2:]
def load(server, name):
    try:
        with open(os.path.join(out, f"{server}-{name}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def stage0(result, key):
    if not result or not result["stages"]:
        return None
    stage = result["stages"][0]
    return stage["latency_us"]["p99"] / 1000.0 if key == "p99" else stage["server_cpu_us_per_delivered"]
def sustained(server):
    result = load(server, "sweep")
    if not result:
        return None
    if result.get("max_sustained_rate") is None and result.get("target_rates"):
        return f"<{result['target_rates'][0]:.0f}"
    return result.get("max_sustained_rate")
rows = [
    ("server CPU us per delivered message", lambda s: stage0(load(s, "chat"), "cpu"), "lower"),
    ("KiB of server memory per idle session", lambda s: (load(s, "idle") or {}).get("server_process", {}).get("kib_per_session"), "lower"),
    ("p99 latency ms at the fixed rate", lambda s: stage0(load(s, "chat"), "p99"), "lower"),
    ("max sustained msg/s with p99 < 50 ms", lambda s: sustained(s), "higher"),
    ("max logins/s (ramp as fast as it goes)", lambda s: (load(s, "login-max") or {}).get("logins", {}).get("per_second"), "higher"),
    ("logins/s at the fixed ramp", lambda s: (load(s, "login-storm") or {}).get("logins", {}).get("per_second"), "higher"),
    ("login p95 ms at the fixed ramp", lambda s: ((load(s, "login-storm") or {}).get("logins", {}).get("latency_us", {}).get("p95") or 0) / 1000.0 or None, "lower"),
    ("server CPU us per login", lambda s: (load(s, "login-storm") or {}).get("server_process", {}).get("cpu_us_per_login"), "lower"),
]
def fmt(value):
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
others = [s for s in servers if s != "starling"]
header = ["metric"] + servers + [f"starling/{s}" for s in others if "starling" in servers]
table = []
for label, get, better in rows:
    values = {s: get(s) for s in servers}
    line = [f"{label} ({better} is better)"] + [fmt(values[s]) for s in servers]
    if "starling" in servers:
        for other in others:
            a, b = values.get("starling"), values.get(other)
            numeric = isinstance(a, (int, float)) and isinstance(b, (int, float))
            line.append(f"{a / b:.2f}" if numeric and b else "n/a")
    table.append(line)
widths = [max(len(row[i]) for row in [header] + table) for i in range(len(header))]
summary = []
for row in [header] + table:
    summary.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
text = "\n".join(summary)
print(text)
with open(os.path.join(out, "comparison.txt"), "w") as f:
    f.write(text + "\n")
EOF
log "results in $OUT (per-run JSON, summaries and progress logs; the table in comparison.txt)"
