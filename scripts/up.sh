#!/usr/bin/env bash
# Runs the whole stack in the foreground: nats-server, the local MongoDB-compatible server
# (FerretDB, unless REELHOUSE_MONGODB_URL is set), and the five services, each log line prefixed
# with its process name (honcho). Ctrl-C or SIGTERM stops everything.
#
# Knobs (environment or make variables): API_PORT (8080), NATS_PORT (4222), DB_PORT (27017),
# UP_DATA_DIR (./data), RECORDERS (1), RESTREAMERS (1), DB_BACKEND (postgresql: a private
# cluster under $UP_DATA_DIR/db/pg; or sqlite), and any REELHOUSE_* setting.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
data="$(realpath -m "${UP_DATA_DIR:-$root/data}")"
mkdir -p "$data/nats" "$data/db" "$data/recordings"
chmod a+x "$data" "$data/db"  # PostgreSQL runs as its own user and must reach data/db/pg

export UP_NATS_PORT="${NATS_PORT:-4222}"
export UP_DB_PORT="${DB_PORT:-27017}"
export UP_DATA_DIR="$data"
export UP_DB_BACKEND="${DB_BACKEND:-postgresql}"
export REELHOUSE_MONGODB_DATABASE="${REELHOUSE_MONGODB_DATABASE:-reelhouse}"
export REELHOUSE_API_PORT="${REELHOUSE_API_PORT:-${API_PORT:-8080}}"
export REELHOUSE_STORAGE_ROOT="${REELHOUSE_STORAGE_ROOT:-$data/recordings}"
export REELHOUSE_BOOTSTRAP_TOKEN_FILE="${REELHOUSE_BOOTSTRAP_TOKEN_FILE:-$data/bootstrap-token}"
export PYTHONUNBUFFERED=1

procs=(api recorder restreamer prober janitor)
if [ -z "${REELHOUSE_NATS_URL:-}" ]; then
  export REELHOUSE_NATS_URL="nats://127.0.0.1:$UP_NATS_PORT"
  procs=(nats "${procs[@]}")
fi
if [ -z "${REELHOUSE_MONGODB_URL:-}" ]; then
  export REELHOUSE_MONGODB_URL="mongodb://127.0.0.1:$UP_DB_PORT/"
  procs=(db "${procs[@]}")
fi

UV="$(command -v uv || echo "$root/.cache/tools/bin/uv")"
echo "reelhouse: API on http://127.0.0.1:$REELHOUSE_API_PORT  data in $data" >&2
echo "reelhouse: token in $REELHOUSE_BOOTSTRAP_TOKEN_FILE (written at first start)" >&2
exec "$UV" run --locked --no-sync honcho --no-colour -f "$root/Procfile" -d "$root" start \
  -c "recorder=${RECORDERS:-1},restreamer=${RESTREAMERS:-1}" "${procs[@]}"
