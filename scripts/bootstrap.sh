#!/usr/bin/env bash
# Installs what `make up` and `make test` need and skips what is already there (idempotent):
#   - Debian packages: ffmpeg (with ffprobe, libsrt, librist, libx264), nats-server, and chromium
#     (the dashboard's browser tests drive /usr/bin/chromium with Playwright)
#   - uv (pinned), when it is not on PATH: into .cache/tools
#   - the FerretDB helper (tools/ferretdb-lite), built once per machine and cached in
#     ${XDG_CACHE_HOME:-~/.cache}/reelhouse; skipped when REELHOUSE_MONGODB_URL points at a real MongoDB
#   - the Python workspace: uv sync --locked
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION="0.13.9"
say() { printf 'bootstrap: %s\n' "$*" >&2; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
{ command -v ffmpeg && command -v ffprobe; } >/dev/null 2>&1 || missing+=(ffmpeg)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
# Debian installs nats-server under /usr/sbin, which a non-root PATH may lack.
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || {
  say "nats-server is still missing after apt-get install"; exit 1; }

UV="$(command -v uv || true)"
if [ -z "$UV" ]; then
  UV="$PWD/.cache/tools/bin/uv"
  if [ ! -x "$UV" ]; then
    say "installing uv $UV_VERSION into .cache/tools"
    python3 -m pip install --quiet --disable-pip-version-check --target .cache/tools "uv==$UV_VERSION"
  fi
fi

if [ -z "${REELHOUSE_MONGODB_URL:-}" ]; then
  src=tools/ferretdb-lite
  hash="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)"
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/reelhouse"
  bin="$cache/ferretdb-lite-$hash"
  if [ ! -x "$bin" ]; then
    command -v go >/dev/null 2>&1 || {
      say "Go is needed once to build the FerretDB helper (tools/ferretdb-lite); install Go >= 1.22"
      say "or set REELHOUSE_MONGODB_URL to a real MongoDB"; exit 1; }
    say "building the FerretDB helper (once per machine; about a minute)"
    mkdir -p "$cache"
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -o "$bin.tmp.$$" .)
    mv "$bin.tmp.$$" "$bin"
  fi
  mkdir -p .cache/bin
  ln -sfn "$bin" .cache/bin/ferretdb-lite
fi

"$UV" sync --locked --quiet
