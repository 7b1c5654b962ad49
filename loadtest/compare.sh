#!/usr/bin/env bash
# Run the same scenarios, same user counts and rates, against `starling serve`,
# the local Starling cluster (deploy/local-cluster.sh), Prosody and ejabberd
# (from Debian), one after the other, on loopback only, and print a table with
# the ratios of each Starling setup to Prosody and to ejabberd.
#
#   loadtest/compare.sh [--users N] [--rate R] [--duration S] [--ramp R] [--login-max-ramp R]
#                       [--sweep 1000,2000,...] [--sweep-duration S] [--idle-duration S]
#                       [--servers "starling starling-cluster prosody ejabberd"]
#                       [--out DIR] [--bin-dir DIR] [--cluster-base-port P]
#                       [--no-build] [--no-install]
#
# Every run is bounded: each generator run has a `timeout`, every server this
# script starts is stopped by its process id at the end (or on Ctrl-C), the
# cluster by `deploy/local-cluster.sh down`.
set -euo pipefail

USERS=2000
RATE=1000
DURATION=20
RAMP=200
LOGIN_MAX_RAMP=5000
SWEEP="1000,2000,3000,5000,7000,10000,14000,20000,28000,40000"
SWEEP_DURATION=10
IDLE_DURATION=10
SERVERS="starling starling-cluster prosody ejabberd"
OUT=""
BIN_DIR=""
BUILD=1
INSTALL=1
# Own ports on loopback: c2s, c2s + 1 direct TLS, c2s + 58 HTTP (WebSocket).
STARLING_PORT=25222
PROSODY_PORT=25322
EJABBERD_PORT=25422
# The cluster uses base .. base + 62 (deploy/local-cluster.sh) and a Redis on a free port.
CLUSTER_BASE=25500
# The generator's per-login timeout; the `timeout` of each run is derived from it.
LOGIN_TIMEOUT=30

while [ $# -gt 0 ]; do
    case "$1" in
        --users) USERS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --ramp) RAMP=$2; shift 2 ;;
        --login-max-ramp) LOGIN_MAX_RAMP=$2; shift 2 ;;
        --sweep) SWEEP=$2; shift 2 ;;
        --sweep-duration) SWEEP_DURATION=$2; shift 2 ;;
        --idle-duration) IDLE_DURATION=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --bin-dir) BIN_DIR=$2; BUILD=0; shift 2 ;;
        --cluster-base-port) CLUSTER_BASE=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-install) INSTALL=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 64 ;;
    esac
done
for server in $SERVERS; do
    case "$server" in
        starling|starling-cluster|prosody|ejabberd) ;;
        *) echo "unknown server $server (starling, starling-cluster, prosody, ejabberd)" >&2; exit 64 ;;
    esac
done
if [[ " $SERVERS " == *" starling-cluster "* ]] && [ $((USERS % 2)) != 0 ]; then
    # Users go round-robin over cm-1 and cm-2, and every chat pair must cross nodes.
    echo "starling-cluster needs an even --users" >&2
    exit 64
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/starling-compare-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
chmod 755 "$OUT"
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
log() { echo "== $*" >&2; }
# Why a figure is missing or what to know about it: "SERVER|text" lines, printed under the table.
: > "$OUT/notes.txt"
note() { echo "$1|$2" >> "$OUT/notes.txt"; }

# ---------------------------------------------------------------- build, install
if [ "$BUILD" = 1 ]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -p starling-loadtest -p starling)
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd)
LOAD="$BIN_DIR/starling-load"
STARLING="$BIN_DIR/starling"
for binary in "$LOAD" "$STARLING"; do
    [ -x "$binary" ] || { echo "no $binary (build it, or give --bin-dir)" >&2; exit 64; }
done

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

POSTGRES=${STARLING_POSTGRES:-postgres://postgres@127.0.0.1:5432}
if [[ " $SERVERS " == *" starling-cluster "* ]]; then
    # The cluster needs redis-server (a private one is started), curl (readiness
    # checks) and a PostgreSQL server (a fresh database of its own).
    if ! command -v redis-server >/dev/null || ! command -v curl >/dev/null \
        || ! psql "$POSTGRES/postgres" -Atc 'select 1' >/dev/null 2>&1; then
        log "starling-cluster needs redis-server, curl and PostgreSQL at $POSTGRES: skipping it"
        SERVERS=${SERVERS//starling-cluster/}
    fi
fi

# ---------------------------------------------------------------- servers
STARTED_PGIDS=()
CLUSTER_ENV=()
CLUSTER_UP=0
cleanup() {
    if [ "$CLUSTER_UP" = 1 ]; then
        env "${CLUSTER_ENV[@]}" "$ROOT/deploy/local-cluster.sh" down >&2 || true
        CLUSTER_UP=0
    fi
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

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A self-signed certificate for localhost, for the servers that need one for
# TLS (Starling makes its own). Loopback only; it stays in the output directory.
make_certificate() { # DIR
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
    cat "$1/cert.pem" "$1/key.pem" > "$1/combined.pem"
}

# Per server:
#   prepare_SERVER  writes its configuration (fresh) and sets ACCOUNTS: the generator
#                   flags that create the accounts on the running server (empty when
#                   prepare made them itself)
#   launch_SERVER   starts it and sets
#                     C2S      comma list of c2s addresses (users go round-robin over them)
#                     C2S_TLS  comma list of direct TLS addresses (empty: none)
#                     WS       comma list of HTTP addresses serving /xmpp-websocket (empty: none)
#                     PIDS     generator flags measuring every server process (--server-pid ...)
#   stop_SERVER     stops what launch started

prepare_starling() {
    local dir="$OUT/starling"
    rm -rf "$dir" && mkdir -p "$dir/data"
    cat > "$dir/starling.toml" <<EOF
domain = "localhost"
data_dir = "$dir/data"
[listen]
c2s = "127.0.0.1:$STARLING_PORT"
c2s_tls = "127.0.0.1:$((STARLING_PORT + 1))"
http = "127.0.0.1:$((STARLING_PORT + 58))"
[tls]
required = false
[limits]
stanzas_per_second = 0
max_connections_per_ip = 1000000
[log]
level = "warn"
EOF
    # Accounts first, through the operator command, while the database is ours
    # alone; the first alone, so that two commands never create the database at
    # once (the loser's "already exists" error would pass for an existing account).
    local command="$STARLING user add {jid} {password} --config $dir/starling.toml"
    "$LOAD" idle --users 1 --accounts-only -q --accounts-cmd "$command" > "$dir/accounts.log"
    "$LOAD" idle --users "$USERS" --accounts-only --accounts-parallel 2 -q --accounts-cmd "$command" >> "$dir/accounts.log"
    ACCOUNTS=()
}

launch_starling() {
    local dir="$OUT/starling"
    STARLING_TLS_REQUIRED=false start_detached "$dir" "$dir/server.log" "$STARLING" serve --config "$dir/starling.toml"
    SERVER_PID=$PID
    C2S="127.0.0.1:$STARLING_PORT"
    C2S_TLS="127.0.0.1:$((STARLING_PORT + 1))"
    WS="127.0.0.1:$((STARLING_PORT + 58))"
    PIDS=(--server-pid "$SERVER_PID")
    wait_port "$STARLING_PORT"
    wait_port "$((STARLING_PORT + 58))"
}

stop_starling() { stop_server "$SERVER_PID"; }

# deploy/local-cluster.sh: 2 connection-managers, 2 session-routers, 2 presence,
# 1 storage, with a private Redis on a free port and a database of its own
# (starling_cluster_<base port>, dropped first). Users are spread over cm-1 and
# cm-2, so every chat message crosses nodes; CPU and memory are summed over the
# 7 processes and Redis (PostgreSQL is shared, not measured).
prepare_starling-cluster() {
    local dir="$OUT/starling-cluster"
    rm -rf "$dir" && mkdir -p "$dir/state" "$dir/redis"
    CLUSTER_ENV=(
        STARLING_CLUSTER_DIR="$dir/state" STARLING_BASE_PORT="$CLUSTER_BASE"
        STARLING_BIN="$STARLING" STARLING_POSTGRES="$POSTGRES"
        # The settings of `starling serve` above, for every process.
        STARLING_TLS_REQUIRED=false STARLING_LIMITS_STANZAS_PER_SECOND=0
        STARLING_LIMITS_MAX_CONNECTIONS_PER_IP=1000000 STARLING_LOG_LEVEL=warn
    )
    psql "$POSTGRES/postgres" -qc "drop database if exists starling_cluster_$CLUSTER_BASE" > /dev/null
    ACCOUNTS=(--accounts-cmd "$STARLING user add {jid} {password} --config $dir/state/starling.toml"
        --accounts-parallel 2)
}

launch_starling-cluster() {
    local dir="$OUT/starling-cluster" redis_port fields pid address
    redis_port=$(free_port)
    start_detached "$dir/redis" "$dir/redis/server.log" redis-server --port "$redis_port" \
        --bind 127.0.0.1 --save '' --appendonly no --dir "$dir/redis"
    REDIS_PID=$PID
    wait_port "$redis_port"
    CLUSTER_UP=1
    if ! env "${CLUSTER_ENV[@]}" STARLING_REDIS_URL="redis://127.0.0.1:$redis_port" \
        "$ROOT/deploy/local-cluster.sh" up >> "$dir/up.log" 2>&1; then
        tail -n 20 "$dir/up.log" >&2
        return 1
    fi
    fields=$(python3 - "$dir/state/cluster.json" <<'EOF'
import json, sys
processes = json.load(open(sys.argv[1]))["processes"]
managers = [p for p in processes if p["target"] == "connection-manager"]
print(",".join(p["c2s"] for p in managers))
print(",".join(p["c2s_tls"] for p in managers if p["c2s_tls"]))
print(",".join(p["http"] for p in managers))
print(" ".join(str(p["pid"]) for p in processes))
EOF
)
    C2S=$(sed -n 1p <<< "$fields")
    C2S_TLS=$(sed -n 2p <<< "$fields")
    WS=$(sed -n 3p <<< "$fields")
    PIDS=()
    for pid in $(sed -n 4p <<< "$fields") "$REDIS_PID"; do PIDS+=(--server-pid "$pid"); done
    for address in ${C2S//,/ } ${WS//,/ }; do wait_port "${address##*:}"; done
}

stop_starling-cluster() {
    env "${CLUSTER_ENV[@]}" "$ROOT/deploy/local-cluster.sh" down > /dev/null 2>&1 || true
    CLUSTER_UP=0
    stop_server "$REDIS_PID"
}

prepare_prosody() {
    local dir="$OUT/prosody"
    # certs/ only so that Prosody's certificate directory scan finds a folder.
    rm -rf "$dir" && mkdir -p "$dir/data" "$dir/certs"
    make_certificate "$dir"
    # STARTTLS and direct TLS with the self-signed certificate; mod_websocket on
    # Prosody's HTTP port (its own, PROSODY_PORT + 58) at /xmpp-websocket, plain
    # ws:// like the plaintext c2s port.
    cat > "$dir/prosody.cfg.lua" <<EOF
run_as_root = true
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_ports = { $PROSODY_PORT }
c2s_direct_tls_ports = { $((PROSODY_PORT + 1)) }
s2s_ports = { }
http_ports = { $((PROSODY_PORT + 58)) }
http_interfaces = { "127.0.0.1" }
https_ports = { }
admin_socket = "$dir/prosody.sock"
modules_enabled = { "roster"; "saslauth"; "tls"; "disco"; "ping"; "register"; "posix"; "websocket" }
modules_disabled = { "s2s" }
ssl = { certificate = "$dir/cert.pem"; key = "$dir/key.pem" }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
allow_registration = true
min_seconds_between_registrations = 0
authentication = "internal_hashed"
storage = "internal"
log = { warn = "$dir/prosody.log"; error = "$dir/prosody.log" }
VirtualHost "localhost"
    ssl = { certificate = "$dir/cert.pem"; key = "$dir/key.pem" }
EOF
    ACCOUNTS=(--accounts register --accounts-parallel 16)
}

launch_prosody() {
    local dir="$OUT/prosody"
    start_detached "$dir" "$dir/server.log" prosody --config "$dir/prosody.cfg.lua" -F
    SERVER_PID=$PID
    C2S="127.0.0.1:$PROSODY_PORT"
    C2S_TLS="127.0.0.1:$((PROSODY_PORT + 1))"
    WS="127.0.0.1:$((PROSODY_PORT + 58))"
    PIDS=(--server-pid "$SERVER_PID")
    wait_port "$PROSODY_PORT"
}

stop_prosody() { stop_server "$SERVER_PID"; }

prepare_ejabberd() {
    local dir="$OUT/ejabberd"
    rm -rf "$dir" && mkdir -p "$dir/spool" "$dir/logs"
    make_certificate "$dir"
    # c2s with optional STARTTLS, a direct TLS c2s listener (tls: true), and
    # ejabberd_http with the WebSocket handler at /xmpp-websocket.
    cat > "$dir/ejabberd.yml" <<EOF
hosts:
  - localhost
loglevel: warning
log_rotate_count: 0
certfiles:
  - "$dir/combined.pem"
listen:
  -
    port: $EJABBERD_PORT
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: c2s
    starttls: true
  -
    port: $((EJABBERD_PORT + 1))
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: c2s
    tls: true
  -
    port: $((EJABBERD_PORT + 58))
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /xmpp-websocket: ejabberd_http_ws
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
    ACCOUNTS=(--accounts register --accounts-parallel 16)
}

launch_ejabberd() {
    local dir="$OUT/ejabberd"
    # setpriv (not su) so that the server stays in our process group.
    HOME="$dir" start_detached "$dir" "$dir/server.log" setpriv --reuid ejabberd --regid ejabberd --init-groups \
        ejabberdctl --config-dir "$dir" --spool "$dir/spool" --logs "$dir/logs" foreground
    SERVER_PID=$PID
    C2S="127.0.0.1:$EJABBERD_PORT"
    C2S_TLS="127.0.0.1:$((EJABBERD_PORT + 1))"
    WS="127.0.0.1:$((EJABBERD_PORT + 58))"
    PIDS=(--server-pid "$SERVER_PID")
    wait_port "$EJABBERD_PORT"
}

stop_ejabberd() { stop_server "$SERVER_PID"; }

# ---------------------------------------------------------------- scenarios
# budget LOAD_SECONDS RAMP: the generator's own worst case (the ramp, 3 login
# attempts of LOGIN_TIMEOUT s, settle, drain, close) plus the load and slack, so
# that `timeout` only stops a run that hangs: a stopped run writes no JSON.
budget() {
    local ramp=${2%.*}
    [ "$ramp" -gt 0 ] 2>/dev/null || ramp=1
    echo $(( USERS / ramp + 3 * LOGIN_TIMEOUT + 60 + $1 ))
}

# run_load NAME SCENARIO LOAD_SECONDS FLAGS...: FLAGS may hold --ramp R (default
# --ramp) and --server ADDRESSES (default the c2s addresses), anywhere.
run_load() {
    local name=$1 scenario=$2 seconds=$3 ramp=$RAMP addresses=$C2S flags=()
    shift 3
    while [ $# -gt 0 ]; do
        case "$1" in
            --ramp) ramp=$2; shift 2 ;;
            --server) addresses=$2; shift 2 ;;
            *) flags+=("$1"); shift ;;
        esac
    done
    log "$SERVER: $name"
    if ! timeout --signal=INT --kill-after=10 "$(budget "$seconds" "$ramp")" "$LOAD" "$scenario" \
        --server "$addresses" --users "$USERS" --ramp "$ramp" --login-timeout "$LOGIN_TIMEOUT" "${PIDS[@]}" \
        --label "$SERVER" --out "$OUT/$SERVER-$name.json" "${flags[@]}" \
        > "$OUT/$SERVER-$name.txt" 2> "$OUT/$SERVER-$name.progress"; then
        log "$SERVER: $name failed (see $OUT/$SERVER-$name.progress)"
        note "$SERVER" "$name failed or was stopped (exit status in $SERVER-$name.progress)"
    fi
    cat "$OUT/$SERVER-$name.txt" >&2 || true
}

# Wait (at most 30 s) until the resident memory of the measured processes and
# their descendants has stopped moving: a server that just opened its port may
# still be starting (ejabberd's RSS falls by 10-20 MB in its first seconds),
# and the idle run's baseline must not include that.
wait_memory_settled() {
    python3 - "${PIDS[@]}" <<'EOF'
import os, sys, time
roots = {int(p) for p in sys.argv[1:] if p != "--server-pid"}
def rss_kib():
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, grew = set(roots), True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        grew = bool(children)
        tree |= children
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(l.split()[1]) for l in f if l.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total
history = [rss_kib()]
for _ in range(30):
    time.sleep(1)
    history.append(rss_kib())
    window = history[-4:]
    if len(window) == 4 and max(window) - min(window) <= max(256, max(window) // 200):
        break
EOF
}

# An idle run on a server started for it alone: its memory baseline is the
# empty server, not one whose allocator keeps the memory of earlier sessions.
fresh_idle() { # NAME FLAGS...
    local name=$1
    shift
    "launch_$SERVER"
    wait_memory_settled
    run_load "$name" idle $(( IDLE_DURATION + 10 )) --duration "$IDLE_DURATION" "$@"
    "stop_$SERVER"
}

SWEEP_STAGES=$(tr ',' '\n' <<< "$SWEEP" | grep -c .)
for SERVER in $SERVERS; do
    log "preparing $SERVER"
    "prepare_$SERVER"
    if [ ${#ACCOUNTS[@]} -gt 0 ]; then
        # On a start of its own, so that no measurement starts from its memory;
        # the first account alone (see prepare_starling).
        "launch_$SERVER"
        { "$LOAD" idle --server "${C2S%%,*}" --users 1 --accounts-only -q "${ACCOUNTS[@]}" \
            && "$LOAD" idle --server "${C2S%%,*}" --users "$USERS" --accounts-only -q "${ACCOUNTS[@]}"; } \
            > "$OUT/$SERVER-accounts.txt" 2>&1 || log "$SERVER: account creation reported errors"
        "stop_$SERVER"
    fi
    fresh_idle idle
    fresh_idle idle-tls --tls starttls
    if [ -n "$C2S_TLS" ]; then
        fresh_idle idle-direct-tls --tls direct --server "$C2S_TLS"
    else
        note "$SERVER" "no direct TLS port"
    fi
    if [ -n "$WS" ]; then
        fresh_idle idle-websocket --transport websocket --server "$WS"
    else
        note "$SERVER" "no XMPP over WebSocket"
    fi
    log "starting $SERVER for logins and chat"
    "launch_$SERVER"
    run_load login-storm login-storm 0
    run_load login-max login-storm 0 --ramp "$LOGIN_MAX_RAMP"
    run_load chat chat $(( DURATION + 10 )) --rate "$RATE" --duration "$DURATION"
    run_load sweep chat $(( (SWEEP_DURATION + 1) * SWEEP_STAGES + 10 )) --rates "$SWEEP" \
        --duration "$SWEEP_DURATION" --stop-p99-ms 50 --drain 3
    "stop_$SERVER"
done

# ---------------------------------------------------------------- table
python3 - "$OUT" "$RAMP" $SERVERS <<'EOF'
import json, os, sys
out, ramp, servers = sys.argv[1], sys.argv[2], sys.argv[3:]
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
def logins(server, name, key):
    result = load(server, name)
    if not result or not result["logins"]["initial_ok"]:
        return None
    if key == "p95":
        return result["logins"]["latency_us"]["p95"] / 1000.0
    return result["logins"]["per_second"]
def kib_per_session(server, name):
    return ((load(server, name) or {}).get("server_process") or {}).get("kib_per_session")
rows = [
    ("server CPU us per delivered message", lambda s: stage0(load(s, "chat"), "cpu"), "lower"),
    ("KiB per idle session (plaintext)", lambda s: kib_per_session(s, "idle"), "lower"),
    ("KiB per idle session (TLS)", lambda s: kib_per_session(s, "idle-tls"), "lower"),
    ("KiB per idle session (direct TLS)", lambda s: kib_per_session(s, "idle-direct-tls"), "lower"),
    ("KiB per idle session (WebSocket)", lambda s: kib_per_session(s, "idle-websocket"), "lower"),
    ("p99 latency ms at the fixed rate", lambda s: stage0(load(s, "chat"), "p99"), "lower"),
    ("max sustained msg/s with p99 < 50 ms", lambda s: sustained(s), "higher"),
    ("max logins/s (ramp as fast as it goes)", lambda s: logins(s, "login-max", "rate"), "higher"),
    (f"logins/s at {ramp} logins/s", lambda s: logins(s, "login-storm", "rate"), "higher"),
    (f"login p95 ms at {ramp} logins/s", lambda s: logins(s, "login-storm", "p95"), "lower"),
    ("server CPU us per login", lambda s: (load(s, "login-storm") or {}).get("server_process", {}).get("cpu_us_per_login"), "lower"),
]
def fmt(value):
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
ours = [s for s in servers if s.startswith("starling")]
others = [s for s in servers if not s.startswith("starling")]
pairs = [(a, b) for a in ours for b in others]
header = ["metric"] + servers + [f"{a}/{b}" for a, b in pairs]
table = []
for label, get, better in rows:
    values = {s: get(s) for s in servers}
    line = [f"{label} ({better} is better)"] + [fmt(values[s]) for s in servers]
    for a, b in pairs:
        x, y = values.get(a), values.get(b)
        numeric = isinstance(x, (int, float)) and isinstance(y, (int, float))
        line.append(f"{x / y:.2f}" if numeric and y else "n/a")
    table.append(line)
widths = [max(len(row[i]) for row in [header] + table) for i in range(len(header))]
summary = []
for row in [header] + table:
    summary.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
notes = []
try:
    with open(os.path.join(out, "notes.txt")) as f:
        for line in f:
            server, _, text = line.rstrip("\n").partition("|")
            if server in servers and text:
                notes.append(f"  {server}: {text}")
except OSError:
    pass
if notes:
    summary += ["", "notes (n/a and failed runs):"] + notes
text = "\n".join(summary)
print(text)
with open(os.path.join(out, "comparison.txt"), "w") as f:
    f.write(text + "\n")
EOF
log "results in $OUT (per-run JSON, summaries and progress logs; the table in comparison.txt)"
