#!/usr/bin/env bash
# Builds the Starling image from `scratch` with buildah, without any image
# registry: the already-built `starling` binary, the shared libraries it links
# (as `ldd` lists them, with the dynamic loader), an /etc/passwd and
# /etc/group naming the unprivileged user 65532, and the data directory.
# The image has the same contract as the Dockerfile's (entrypoint, command,
# user, data directory, ports), so the Helm chart takes either.
#
#   scripts/build-image.sh [IMAGE]        default IMAGE: localhost/starling:<version>
#
# Environment:
#   STARLING_BIN     the binary to put in the image (default target/release/starling,
#                    else target/debug/starling; build one with `cargo build -p starling`)
#   STARLING_IMAGE_ARCHIVE  also write the image to this file as an OCI archive
#                    (for `podman load`, `ctr images import`, `kind load image-archive`)
#
# Needs buildah (Debian: `apt-get install buildah`) and root (or a rootless
# buildah set up with `buildah unshare`). Prints the image id on success.
# No CA certificates are added: Starling makes no outbound TLS connection.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

bin=${STARLING_BIN:-}
if [ -z "$bin" ]; then
  for candidate in "${CARGO_TARGET_DIR:-$repo/target}/release/starling" "${CARGO_TARGET_DIR:-$repo/target}/debug/starling"; do
    if [ -x "$candidate" ]; then bin=$candidate; break; fi
  done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "build-image: no starling binary (set STARLING_BIN or run: cargo build --release -p starling)" >&2
  exit 64
fi
command -v buildah >/dev/null || { echo "build-image: buildah is not installed (apt-get install buildah)" >&2; exit 69; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
image=${1:-localhost/starling:$version}
uid=65532

container=$(buildah from scratch)
cleanup() { buildah rm "$container" >/dev/null 2>&1 || true; }
trap cleanup EXIT
root=$(buildah mount "$container")

install -D -m 0755 "$bin" "$root/usr/local/bin/starling"

# Every library the binary links, at the path the loader looks for it (the
# path ldd prints), with symbolic links followed (`cp -L`). The line with no
# "=>" is the dynamic loader itself (its path is written in the binary).
ldd "$bin" | while read -r first second third _; do
  case "$first" in linux-vdso.so.*|linux-gate.so.*) continue ;; esac
  if [ "$second" = "=>" ]; then path=$third; else path=$first; fi
  case "$path" in /*) ;; *) echo "build-image: cannot place library '$first' (ldd: $first $second $third)" >&2; exit 1 ;; esac
  mkdir -p "$root$(dirname "$path")"
  cp -L "$path" "$root$path"
done

mkdir -p "$root/etc" "$root/tmp" "$root/var/lib/starling"
printf 'root:x:0:0:root:/root:/sbin/nologin\nstarling:x:%s:%s:starling:/var/lib/starling:/sbin/nologin\n' "$uid" "$uid" >"$root/etc/passwd"
printf 'root:x:0:\nstarling:x:%s:\n' "$uid" >"$root/etc/group"
chmod 1777 "$root/tmp"
chown "$uid:$uid" "$root/var/lib/starling"
chmod 0750 "$root/var/lib/starling"

buildah umount "$container" >/dev/null

buildah config \
  --user "$uid:$uid" \
  --workingdir /var/lib/starling \
  --env STARLING_DATA_DIR=/var/lib/starling \
  --entrypoint '["/usr/local/bin/starling"]' \
  --cmd '["serve"]' \
  --port 5222 --port 5223 --port 5280 --port 7000 \
  --label org.opencontainers.image.title=starling \
  --label org.opencontainers.image.description="Starling, a cluster-native XMPP server" \
  --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.licenses=AGPL-3.0-or-later \
  "$container"

id=$(buildah commit --quiet --rm "$container" "$image")
trap - EXIT
if [ -n "${STARLING_IMAGE_ARCHIVE:-}" ]; then
  buildah push --quiet "$image" "oci-archive:$STARLING_IMAGE_ARCHIVE:$image" >/dev/null
fi
echo "$id"
