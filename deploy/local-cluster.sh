#!/usr/bin/env bash
# Starts (and stops) a local Starling cluster from the release binary on
# loopback: 2 connection-managers, 2 session-routers, 2 presence, 1 storage,
# against the local Redis and PostgreSQL.
#
#   deploy/local-cluster.sh up       start it, print the process table, write cluster.json
#   deploy/local-cluster.sh down     stop exactly what `up` started
#   deploy/local-cluster.sh status   show which of its processes run
#
# The session-routers serve the admin API (`starling admin ...`) on loopback,
# with a token generated once into $STARLING_CLUSTER_DIR/admin.token:
#   starling admin --config $STARLING_CLUSTER_DIR/admin.toml nodes
#
# Environment:
#   STARLING_CLUSTER_DIR  state folder: configs, logs, pid files (default: .cluster/ in the repo, ignored by git)
#   STARLING_BASE_PORT    every port of the cluster counts up from here (default 17000)
#   STARLING_DOMAIN       the XMPP domain (default localhost)
#   STARLING_BIN          the starling binary (default: target/release/starling, built when missing)
#   STARLING_REDIS_URL    (default redis://127.0.0.1:6379)
#   STARLING_POSTGRES     server URL without database (default postgres://postgres@127.0.0.1:5432)
#   STARLING_STORAGE_REPLICAS  1 (default) or 2 storage processes (the second on ports +2/+3)
#   STARLING_CMS          connection-managers, 2 (default) to 8: cm-K on ports +40+10K (c2s),
#                         +41+10K (c2s_tls), +42+10K (http); give the same value to `down`
#   STARLING_EXTRA_TOML   a file appended to every process's config, e.g. `[[components]]` entries
#                         (XEP-0114; each connection-manager listens for components on its c2s port + 3,
#                         and, with `[s2s] enabled = true`, for server-to-server streams on its c2s port + 4)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
state=${STARLING_CLUSTER_DIR:-$repo/.cluster}
base=${STARLING_BASE_PORT:-17000}
domain=${STARLING_DOMAIN:-localhost}
redis_url=${STARLING_REDIS_URL:-redis://127.0.0.1:6379}
postgres=${STARLING_POSTGRES:-postgres://postgres@127.0.0.1:5432}
database="starling_cluster_${base}"
bin=${STARLING_BIN:-}

# name target grpc-offset http-offset c2s-offset c2s_tls-offset (- = none)
processes=(
  "storage-1 storage 0 1 - -"
  "router-1 session-router 10 11 - -"
  "router-2 session-router 20 21 - -"
  "presence-1 presence 30 31 - -"
  "presence-2 presence 40 41 - -"
  "cm-1 connection-manager - 52 50 51"
  "cm-2 connection-manager - 62 60 61"
)
cms=${STARLING_CMS:-2}
case "$cms" in [2-8]) ;; *) echo "STARLING_CMS must be 2 to 8, not $cms" >&2; exit 64 ;; esac
for ((k = 3; k <= cms; k++)); do
  processes+=("cm-$k connection-manager - $((42 + 10 * k)) $((40 + 10 * k)) $((41 + 10 * k))")
done
if [ "${STARLING_STORAGE_REPLICAS:-1}" = 2 ]; then
  processes=("${processes[0]}" "storage-2 storage 2 3 - -" "${processes[@]:1}")
fi

port() { [ "$1" = - ] && echo "" || echo $((base + $1)); }
# The admin API of the session-routers: their gRPC port + 2.
admin_port() { # name -> admin port, or nothing
  local line name target grpc
  for line in "${processes[@]}"; do
    read -r name target grpc _ <<<"$line"
    [ "$name" = "$1" ] && [ "$target" = session-router ] && echo $((base + grpc + 2))
  done
  return 0
}
admin_endpoints() { # the admin endpoints, space-separated
  local line name out=()
  for line in "${processes[@]}"; do
    read -r name _ <<<"$line"
    [ -n "$(admin_port "$name")" ] && out+=("http://127.0.0.1:$(admin_port "$name")")
  done
  echo "${out[*]}"
}
endpoints() { # target -> comma-free TOML list of its gRPC endpoints
  local out=() line
  for line in "${processes[@]}"; do
    read -r name target grpc _ <<<"$line"
    [ "$target" = "$1" ] && out+=("\"http://127.0.0.1:$(port "$grpc")\"")
  done
  (IFS=,; echo "[${out[*]}]")
}

ensure_binary() {
  if [ -z "$bin" ]; then
    bin="$repo/target/release/starling"
    if [ ! -x "$bin" ]; then
      echo "building the release binary" >&2
      (cd "$repo" && cargo build --release -p starling >&2)
    fi
  fi
  [ -x "$bin" ] || { echo "no starling binary at $bin" >&2; exit 1; }
}

ensure_database() {
  if ! psql "$postgres/postgres" -Atc "select 1 from pg_database where datname = '$database'" | grep -q 1; then
    psql "$postgres/postgres" -qc "create database $database" >/dev/null
  fi
}

write_configs() {
  mkdir -p "$state/logs" "$state/run" "$state/data"
  if [ ! -s "$state/admin.token" ]; then
    (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$state/admin.token")
  fi
  local first_admin
  first_admin=$(admin_endpoints | cut -d' ' -f1)
  # For `starling admin --config admin.toml ...`: the first router's admin API.
  cat >"$state/admin.toml" <<TOML
# Written by deploy/local-cluster.sh: \`starling admin --config $state/admin.toml nodes\`
domain = "$domain"
data_dir = "$state/data"
[admin]
listen = "${first_admin#http://}"
token_file = "$state/admin.token"
TOML
  cat >"$state/starling.toml" <<TOML
# Written by deploy/local-cluster.sh: \`starling user add USER@$domain PASSWORD --config $state/starling.toml\`
domain = "$domain"
data_dir = "$state/data"
[storage]
url = "$postgres/$database"
TOML
  local line name target grpc http c2s c2s_tls
  for line in "${processes[@]}"; do
    read -r name target grpc http c2s c2s_tls <<<"$line"
    cat >"$state/$name.toml" <<TOML
domain = "$domain"
data_dir = "$state/data"
[listen]
c2s = "$( [ -n "$(port "$c2s")" ] && echo "127.0.0.1:$(port "$c2s")")"
c2s_tls = "$( [ -n "$(port "$c2s_tls")" ] && echo "127.0.0.1:$(port "$c2s_tls")")"
http = "127.0.0.1:$(port "$http")"
component = "$( [ -n "$(port "$c2s")" ] && echo "127.0.0.1:$(( $(port "$c2s") + 3 ))")"
s2s = "$( [ -n "$(port "$c2s")" ] && echo "127.0.0.1:$(( $(port "$c2s") + 4 ))")"
[storage]
url = "$postgres/$database"
[cluster]
redis = ["$redis_url"]
redis_key_prefix = "lc$base:"
node_id = "$name"
grpc = "$( [ -n "$(port "$grpc")" ] && echo "127.0.0.1:$(port "$grpc")")"
storage = $(endpoints storage)
routers = $(endpoints session-router)
presence = $(endpoints presence)
TOML
    if [ -n "${STARLING_EXTRA_TOML:-}" ]; then
      cat "$STARLING_EXTRA_TOML" >>"$state/$name.toml"
    fi
    if [ -n "$(admin_port "$name")" ]; then
      cat >>"$state/$name.toml" <<TOML
[admin]
listen = "127.0.0.1:$(admin_port "$name")"
token_file = "$state/admin.token"
TOML
    fi
  done
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_ready() { # name http-port
  local tries=0
  until curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ $tries -gt 150 ]; then
      echo "$1 did not become ready; see $state/logs/$1.log" >&2
      tail -n 20 "$state/logs/$1.log" >&2 || true
      return 1
    fi
    running "$state/run/$1.pid" || { echo "$1 exited; see $state/logs/$1.log" >&2; tail -n 20 "$state/logs/$1.log" >&2; return 1; }
    sleep 0.2
  done
}

up() {
  ensure_binary
  ensure_database
  write_configs
  local line name target grpc http c2s c2s_tls json=() pid
  for line in "${processes[@]}"; do
    read -r name target grpc http c2s c2s_tls <<<"$line"
    if running "$state/run/$name.pid"; then
      echo "$name already runs (pid $(cat "$state/run/$name.pid"))" >&2
      continue
    fi
    nohup "$bin" serve --target "$target" --config "$state/$name.toml" >>"$state/logs/$name.log" 2>&1 &
    echo $! >"$state/run/$name.pid"
    # Dependencies first: storage before routers and presence, those before connection-managers.
    wait_ready "$name" "$(port "$http")"
  done
  printf '%-11s %-19s %-8s %-16s %-16s %-16s %-16s\n' NAME TARGET PID C2S C2S_TLS HTTP GRPC
  for line in "${processes[@]}"; do
    read -r name target grpc http c2s c2s_tls <<<"$line"
    pid=$(cat "$state/run/$name.pid")
    local a_c2s="" a_tls="" a_grpc="" a_http="127.0.0.1:$(port "$http")"
    [ "$c2s" != - ] && a_c2s="127.0.0.1:$(port "$c2s")"
    [ "$c2s_tls" != - ] && a_tls="127.0.0.1:$(port "$c2s_tls")"
    [ "$grpc" != - ] && a_grpc="127.0.0.1:$(port "$grpc")"
    printf '%-11s %-19s %-8s %-16s %-16s %-16s %-16s\n' "$name" "$target" "$pid" "${a_c2s:--}" "${a_tls:--}" "$a_http" "${a_grpc:--}"
    json+=("{\"name\":\"$name\",\"target\":\"$target\",\"pid\":$pid,\"c2s\":$( [ -n "$a_c2s" ] && echo "\"$a_c2s\"" || echo null),\"c2s_tls\":$( [ -n "$a_tls" ] && echo "\"$a_tls\"" || echo null),\"http\":\"$a_http\",\"grpc\":$( [ -n "$a_grpc" ] && echo "\"$a_grpc\"" || echo null),\"log\":\"$state/logs/$name.log\"}")
  done
  local admin_json
  admin_json=$(admin_endpoints | sed 's/[^ ][^ ]*/"&"/g; s/ /,/g')
  (IFS=,; printf '{"domain":"%s","config":"%s","processes":[%s],"admin":{"endpoints":[%s],"token_file":"%s","config":"%s"}}\n' "$domain" "$state/starling.toml" "${json[*]}" "$admin_json" "$state/admin.token" "$state/admin.toml") >"$state/cluster.json"
  echo "state: $state (cluster.json, starling.toml, logs/)"
  echo "admin: $(admin_endpoints) (token in $state/admin.token; starling admin --config $state/admin.toml nodes)"
}

down() {
  local line name pidfile pid
  # Edges first, storage last.
  for ((index = ${#processes[@]} - 1; index >= 0; index--)); do
    read -r name _ <<<"${processes[$index]}"
    pidfile="$state/run/$name.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
      echo "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
  done
}

status() {
  local line name
  for line in "${processes[@]}"; do
    read -r name _ <<<"$line"
    if running "$state/run/$name.pid"; then echo "$name running (pid $(cat "$state/run/$name.pid"))"; else echo "$name stopped"; fi
  done
  [ -s "$state/admin.token" ] && echo "admin: $(admin_endpoints) (token in $state/admin.token; starling admin --config $state/admin.toml nodes)"
  return 0
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 64 ;;
esac
