#!/usr/bin/env bash
# Installs what `make up` and `make test` need and skips what is already there (idempotent):
#   - Debian packages: ffmpeg (with ffprobe, libsrt, librist, libx264), chromium (the
#     dashboard's browser tests drive /usr/bin/chromium with Playwright) and, unless
#     REELHOUSE_MONGODB_URL points at a real MongoDB, postgresql (the local FerretDB's backend:
#     ferretdb-lite runs a private cluster of its own; the package's default cluster is not used)
#   - nats-server, the official Go module at the exact version pinned in tools/nats-server/go.mod
#     (Debian's 2.9 lacks per-key TTLs and expiry markers, which the live plane needs), built once
#     per machine and cached in ${XDG_CACHE_HOME:-~/.cache}/reelhouse; needs Go
#   - uv (pinned), when it is not on PATH: into .cache/tools
#   - the FerretDB helper (tools/ferretdb-lite), built once per machine and cached in
#     ${XDG_CACHE_HOME:-~/.cache}/reelhouse; skipped when REELHOUSE_MONGODB_URL points at a real MongoDB
#   - versitygw, the S3-compatible server of the object-storage tests and `make up S3=1`, at the
#     version pinned in tools/versitygw/go.mod (issue 24)
#   - reelhouse-ingest, the ingest data plane (services/ingest/dataplane, Go: gosrt, gortmplib,
#     mediacommon at the versions pinned in its go.mod), built once per source version and cached
#     in ${XDG_CACHE_HOME:-~/.cache}/reelhouse; needs Go
#   - the Python workspace: uv sync --locked
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION="0.13.9"
say() { printf 'bootstrap: %s\n' "$*" >&2; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
{ command -v ffmpeg && command -v ffprobe; } >/dev/null 2>&1 || missing+=(ffmpeg)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ -z "${REELHOUSE_MONGODB_URL:-}" ] && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

UV="$(command -v uv || true)"
if [ -z "$UV" ]; then
  UV="$PWD/.cache/tools/bin/uv"
  if [ ! -x "$UV" ]; then
    say "installing uv $UV_VERSION into .cache/tools"
    python3 -m pip install --quiet --disable-pip-version-check --target .cache/tools "uv==$UV_VERSION"
  fi
fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/reelhouse"
mkdir -p .cache/bin

# build_go NAME SRC PACKAGE: builds PACKAGE from the Go module in SRC once per machine (the binary
# is named after a hash of the module's pins and sources, subpackages included, so any source
# change rebuilds) and links it as .cache/bin/NAME.
build_go() {
  local name="$1" src="$2" pkg="$3" hash bin
  hash="$(cat "$src"/go.mod "$src"/go.sum $(find "$src" -name '*.go' | LC_ALL=C sort) | sha256sum | cut -c1-16)"
  bin="$cache/$name-$hash"
  if [ ! -x "$bin" ]; then
    command -v go >/dev/null 2>&1 || {
      say "Go >= 1.24 is needed once to build $name ($src); install Go"; exit 1; }
    say "building $name from $src (once per machine; a few minutes)"
    mkdir -p "$cache"
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -o "$bin.tmp.$$" "$pkg")
    mv "$bin.tmp.$$" "$bin"
  fi
  ln -sfn "$bin" ".cache/bin/$name"
}

build_go nats-server tools/nats-server github.com/nats-io/nats-server/v2
build_go reelhouse-ingest services/ingest/dataplane .
build_go versitygw tools/versitygw github.com/versity/versitygw/cmd/versitygw
if [ -z "${REELHOUSE_MONGODB_URL:-}" ]; then
  build_go ferretdb-lite tools/ferretdb-lite .
fi

"$UV" sync --locked --quiet
