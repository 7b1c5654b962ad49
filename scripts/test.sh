#!/usr/bin/env bash
# Runs every test of the repository. It first makes sure that what the tests
# need is installed and running (it checks first and starts only what is not
# running): PostgreSQL and Redis on 127.0.0.1, a Python venv with slixmpp and
# pytest, Node with the web client packages of tests/web, Chromium, promtool and prometheus, buildah. Then: clippy (any warning fails), the Rust unit and crate tests, then the integration tests that
# drive the real `starling` binary with real clients.
#
# Environment:
#   CARGO_TARGET_DIR        where cargo builds (CI keeps it in a cache folder)
#   STARLING_VENV           the Python venv (default: ~/.cache/starling/venv)
#   STARLING_TEST_JOBS      parallel integration test workers (default 4)
#   STARLING_SKIP_SERVICES  1: do not check or start PostgreSQL/Redis
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

log() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    log "installing postgresql"
    apt_install postgresql postgresql-client
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting postgresql"
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || as_root pg_ctlcluster "$version" main start
    for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
    # A fresh Debian cluster asks for passwords on TCP: the tests use trust on loopback only.
    log "allowing trust authentication for postgres on 127.0.0.1"
    hba=$(as_root su postgres -c "psql -Atc 'show hba_file'")
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    as_root su postgres -c "psql -Atc 'select pg_reload_conf()'" >/dev/null
    for _ in $(seq 1 20); do psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null
}

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis"
    apt_install redis-server redis-tools
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    log "starting redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/starling-tests.log
    for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.25; done
  fi
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
}

ensure_python() {
  venv=${STARLING_VENV:-$HOME/.cache/starling/venv}
  if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -m venv --help >/dev/null 2>&1; then apt_install python3-venv; fi
    log "creating python venv $venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
  fi
  if ! "$venv/bin/python" - "$repo/tests/requirements.txt" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split('#')[0].strip()
    if line:
        name, wanted = line.split('==')
        assert version(name) == wanted, name
PY
  then
    log "installing python test packages"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/tests/requirements.txt"
  fi
  PYTHON="$venv/bin/python"
  # proto/tests/router_grpc.rs starts kmock (tests/integration/kmock_server.py) with it.
  export STARLING_TEST_PYTHON="$PYTHON"
}

ensure_node_packages() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "installing nodejs"
    apt_install nodejs npm
  fi
  local web="$repo/tests/web/node_modules"
  if [ ! -d "$web/@xmpp/client" ] || [ ! -d "$web/converse.js/dist" ] || [ ! -d "$web/playwright-core" ]; then
    log "installing the web client test packages (tests/web)"
    npm ci --prefix "$repo/tests/web" --no-audit --no-fund >/dev/null
  fi
}

# Headless Debian Chromium for the Converse.js test (tests/integration/test_converse.py),
# driven by playwright-core with executablePath /usr/bin/chromium.
ensure_chromium() {
  if [ ! -x /usr/bin/chromium ]; then
    log "installing chromium"
    apt_install chromium fonts-liberation
  fi
}

# promtool and prometheus (Debian package prometheus) for the metrics, dashboard
# and alert rule tests (tests/integration/test_observability.py). Only the
# binaries are used: the package's own service is not started.
ensure_prometheus() {
  if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    log "installing prometheus (promtool)"
    apt_install prometheus
  fi
}

# buildah (Debian) for the image test (tests/integration/test_image.py): it builds
# the image from `scratch` with scripts/build-image.sh, no registry needed.
ensure_buildah() {
  if ! command -v buildah >/dev/null 2>&1; then
    log "installing buildah"
    apt_install buildah
  fi
}

# biboumi (IRC gateway, an XEP-0114 component) and ngircd (IRC server) from Debian for
# the real-gateway test (tests/integration/test_component.py). Only the binaries are
# used: the packages' own services are not started.
ensure_biboumi() {
  if ! command -v biboumi >/dev/null 2>&1 || ! command -v ngircd >/dev/null 2>&1; then
    log "installing biboumi and ngircd"
    apt_install biboumi ngircd
  fi
}

# Prosody (with lua-unbound, whose hosts file the test points at) from Debian, the federation
# peer of tests/integration/test_s2s.py; run by the test itself, the package's service is not used.
ensure_prosody() {
  if ! command -v prosody >/dev/null 2>&1 || ! dpkg -s lua-unbound >/dev/null 2>&1; then
    log "installing prosody and lua-unbound"
    apt_install prosody lua-unbound
    # The package's own service (if its install started one) would hold port 5269 on every address.
    as_root service prosody stop >/dev/null 2>&1 || true
  fi
}

# ejabberd from Debian, the federation peer of tests/integration/test_s2s_ejabberd.py; run by the
# test itself as the ejabberd user, the package's service is not used.
ensure_ejabberd() {
  if ! command -v ejabberdctl >/dev/null 2>&1; then
    log "installing ejabberd"
    apt_install ejabberd
    # The package's own service (if its install started one) would hold 5222 and 5269 on every address.
    as_root service ejabberd stop >/dev/null 2>&1 || true
  fi
}

# Clippy ships with the rustup toolchains, except the minimal profile: add it only when missing.
ensure_clippy() {
  if ! cargo clippy --version >/dev/null 2>&1; then
    log "installing clippy"
    rustup component add clippy
  fi
}

if [ "${STARLING_SKIP_SERVICES:-0}" != 1 ]; then
  ensure_postgres
  ensure_redis
fi
ensure_python
ensure_node_packages
ensure_chromium
ensure_prometheus
ensure_buildah
ensure_biboumi
ensure_prosody
ensure_ejabberd
ensure_clippy

# Needs no build: fails fast when a connection-manager module imports one
# that imports it.
log "module graph of the connection-manager"
python3 scripts/module-graph.py services/connection-manager/src

log "building"
cargo build --workspace --locked 2>&1 | tail -n 3
target_dir=$(cargo metadata --format-version 1 --no-deps | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export STARLING_BIN="$target_dir/debug/starling"

log "clippy (the lints of [workspace.lints] in Cargo.toml; a warning fails)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "rust tests"
cargo test --workspace --locked

log "integration tests (real server, real clients)"
cd "$repo/tests"
"$PYTHON" -m pytest -n "${STARLING_TEST_JOBS:-4}" "$@"
