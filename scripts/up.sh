#!/usr/bin/env bash
# Runs the whole stack in the foreground under supervisord: nats-server, the local
# MongoDB-compatible server (FerretDB, unless REELHOUSE_MONGODB_URL is set), and the six
# services (ingest among them). A process that dies is started again at once and the others keep running; each
# log line is prefixed with its process name (scripts/log_prefix.py). Ctrl-C or SIGTERM stops
# everything: the services first (SIGTERM, they drain; SIGKILL to the process group after
# STOP_WAIT), then nats-server and the database.
#
# Knobs (environment or make variables): API_PORT (8080), NATS_PORT (4222), DB_PORT (27017),
# UP_DATA_DIR (./data), RECORDERS (1), RESTREAMERS (1), DB_BACKEND (postgresql: a private
# cluster under $UP_DATA_DIR/db/pg; or sqlite), S3 (1: also run a local S3-compatible server,
# versitygw, on S3_PORT (7070) with the bucket `recordings` under $UP_DATA_DIR/s3; its keys in
# $UP_DATA_DIR/s3-credentials), and any REELHOUSE_* setting.
# The supervisord configuration is written afresh at each start to $UP_DATA_DIR/run/.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
data="$(realpath -m "${UP_DATA_DIR:-$root/data}")"
run="$data/run"
mkdir -p "$data/nats" "$data/db" "$data/recordings" "$run"
chmod a+x "$data" "$data/db"  # PostgreSQL runs as its own user and must reach data/db/pg

export UP_NATS_PORT="${NATS_PORT:-4222}"
export UP_DB_PORT="${DB_PORT:-27017}"
export UP_DATA_DIR="$data"
export UP_DB_BACKEND="${DB_BACKEND:-postgresql}"
# Run as root, the helper starts PostgreSQL as the `postgres` user (PostgreSQL refuses root), which
# must be able to reach the data directory: a checkout under a private home (/root is 0700) is out
# of its reach. Then the local database keeps its data with the SQLite backend instead, and says so.
if [ "$UP_DB_BACKEND" = postgresql ] && [ "$(id -u)" -eq 0 ] && [ -z "${REELHOUSE_MONGODB_URL:-}" ] \
   && ! runuser -u postgres -- test -x "$data/db" 2>/dev/null; then
  echo "reelhouse: the postgres user cannot reach $data/db (a parent directory is private);" \
       "the local database uses its SQLite backend (DB_BACKEND=sqlite). Put the data elsewhere" \
       "(UP_DATA_DIR) to use PostgreSQL." >&2
  export UP_DB_BACKEND=sqlite
fi
export REELHOUSE_MONGODB_DATABASE="${REELHOUSE_MONGODB_DATABASE:-reelhouse}"
export REELHOUSE_API_PORT="${REELHOUSE_API_PORT:-${API_PORT:-8080}}"
export REELHOUSE_STORAGE_ROOT="${REELHOUSE_STORAGE_ROOT:-$data/recordings}"
export REELHOUSE_BOOTSTRAP_TOKEN_FILE="${REELHOUSE_BOOTSTRAP_TOKEN_FILE:-$data/bootstrap-token}"
export PYTHONUNBUFFERED=1
# POST /api/system/shutdown ends the stack by signalling supervisord (which stops every program
# in order and exits), after the active recordings are finished.
export REELHOUSE_SUPERVISOR_PIDFILE="$run/supervisord.pid"
# A one-machine stack reads local sources (and the README's examples use 127.0.0.1): loopback
# may be reached on a user's behalf here; nothing else private (docs/SECURITY.md).
export REELHOUSE_PROBE_ALLOW_NETWORKS="${REELHOUSE_PROBE_ALLOW_NETWORKS-127.0.0.0/8,::1/128}"
# Ingest (docs/INGEST.md): the data plane built by bootstrap, and the address encoders reach.
export REELHOUSE_INGEST_DATAPLANE_PATH="${REELHOUSE_INGEST_DATAPLANE_PATH:-$root/.cache/bin/reelhouse-ingest}"
export REELHOUSE_INGEST_PUBLIC_HOST="${REELHOUSE_INGEST_PUBLIC_HOST:-127.0.0.1}"
recorders="${RECORDERS:-1}"
restreamers="${RESTREAMERS:-1}"

# S3=1 (issue 24): a local versitygw (posix backend: a bucket is a folder) with a `recordings`
# bucket and keys generated once, for a storage target at http://127.0.0.1:$S3_PORT.
if [ "${S3:-0}" = 1 ]; then
  export UP_S3_PORT="${S3_PORT:-7070}"
  mkdir -p "$data/s3/recordings"
  if [ ! -s "$data/s3-credentials" ]; then
    (umask 077 && printf 'ROOT_ACCESS_KEY_ID=%s\nROOT_SECRET_ACCESS_KEY=%s\n' \
      "reelhouse$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
      "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$data/s3-credentials")
  fi
  # versitygw reads its root keys from these variables (supervisord passes them on).
  set -a; . "$data/s3-credentials"; set +a
  echo "reelhouse: S3 (versitygw) on http://127.0.0.1:$UP_S3_PORT, bucket recordings," \
       "keys in $data/s3-credentials" >&2
fi

# A token given in the environment is written where a generated one would be (mode 0600), so
# the start-up line below and the README's `$(cat data/bootstrap-token)` hold either way.
if [ -n "${REELHOUSE_BOOTSTRAP_TOKEN:-}" ]; then
  mkdir -p "$(dirname "$REELHOUSE_BOOTSTRAP_TOKEN_FILE")"
  (umask 077 && printf '%s\n' "$REELHOUSE_BOOTSTRAP_TOKEN" >"$REELHOUSE_BOOTSTRAP_TOKEN_FILE")
  chmod 600 "$REELHOUSE_BOOTSTRAP_TOKEN_FILE"
fi

infra=()
if [ -z "${REELHOUSE_NATS_URL:-}" ]; then
  export REELHOUSE_NATS_URL="nats://127.0.0.1:$UP_NATS_PORT"
  infra+=(nats)
fi
if [ -z "${REELHOUSE_MONGODB_URL:-}" ]; then
  export REELHOUSE_MONGODB_URL="mongodb://127.0.0.1:$UP_DB_PORT/"
  infra+=(db)
fi

# supervisord reads %(...)s in its configuration: a literal % in a path is written %%. In a
# command (split like a shell line) a path is also quoted; in a path setting it is not.
e() { printf '%s' "${1//%/%%}"; }
q() { printf '"%s"' "$(e "$1")"; }

# program NAME COUNT AUTORESTART STOP_WAIT COMMAND: one [program:] section; processes NAME.1 …
# NAME.COUNT. Restart policy: a process that dies is started again on supervisord's next tick
# (it looks once a second), or after 1 s more if it had run less than STARTSECS; one that keeps
# dying that early is given up after STARTRETRIES (FATAL, logged). A service's exit code 2 (a bad
# setting) is final (AUTORESTART=unexpected): starting again cannot help. Any other end is not:
# exit 3 (uvicorn's failed start, e.g. its port still taken; nats-server too old), and exit 0
# too, so that `kill PID` (SIGTERM) of one service is a graceful restart of that one.
program() {
  cat <<EOF

[program:$1]
command=$5
process_name=%(program_name)s.%(process_num)d
numprocs=$2
numprocs_start=1
directory=$(e "$root")
autorestart=$3
exitcodes=2
startsecs=1
startretries=5
stopsignal=TERM
stopwaitsecs=$4
stopasgroup=false
killasgroup=true
redirect_stderr=true
stdout_logfile=NONE
stdout_events_enabled=true
EOF
}

conf="$run/supervisord.conf"
# The longest process name, so that the log prefixes line up.
width=9  # janitor.1, the longest of the others
for n in "recorder.$recorders" "restreamer.$restreamers"; do
  if [ ${#n} -gt $width ]; then width=${#n}; fi
done
{
  cat <<EOF
; Written by scripts/up.sh at each start; edits are lost.
[supervisord]
nodaemon=true
identifier=reelhouse
logfile=$(e "$run/supervisord.log")
logfile_maxbytes=10MB
logfile_backups=1
pidfile=$(e "$run/supervisord.pid")
childlogdir=$(e "$run")
loglevel=info
$(if [ "$(id -u)" -eq 0 ]; then echo "user=root  ; as root on purpose: no privilege to drop"; fi)

; Every process's output, prefixed with its name, on supervisord's stdout (see the script).
; Lowest priority: started first, stopped last.
[eventlistener:logs]
command=python $(q "$root/scripts/log_prefix.py") listen
priority=1
events=PROCESS_LOG_STDOUT
result_handler=log_prefix:write
buffer_size=10000
autorestart=true
EOF
  # Services stop first (one group: all at once), then nats-server and the database.
  if [ "${S3:-0}" = 1 ]; then infra+=(s3); fi
  if [ ${#infra[@]} -gt 0 ]; then
    printf '\n[group:infra]\nprograms=%s\npriority=100\n' "$(IFS=,; echo "${infra[*]}")"
  fi
  services=(api prober janitor ingest)
  if [ "$recorders" -gt 0 ]; then services+=(recorder); fi
  if [ "$restreamers" -gt 0 ]; then services+=(restreamer); fi
  printf '\n[group:services]\nprograms=%s\npriority=200\n' "$(IFS=,; echo "${services[*]}")"
  for p in "${infra[@]}"; do
    case "$p" in
      nats) program nats 1 true 10 "$(q "$root/.cache/bin/nats-server") -js -a 127.0.0.1 \
-p $UP_NATS_PORT -sd $(q "$data/nats")" ;;
      db) program db 1 true 10 "$(q "$root/.cache/bin/ferretdb-lite") \
-listen 127.0.0.1:$UP_DB_PORT -data $(q "$data/db") -log-level error -backend $UP_DB_BACKEND \
-prepare $(q "${REELHOUSE_MONGODB_DATABASE:-reelhouse}")" ;;
      s3) program s3 1 true 10 "$(q "$root/.cache/bin/versitygw") --port 127.0.0.1:$UP_S3_PORT \
--quiet posix $(q "$data/s3")" ;;
    esac
  done
  # The workers get REELHOUSE_STOP_GRACE_S (10 s) to stop FFmpeg, and a little more to drain.
  program api 1 unexpected 15 "python -m reelhouse.api"
  program prober 1 unexpected 15 "python -m reelhouse.prober"
  program janitor 1 unexpected 15 "python -m reelhouse.janitor"
  # The ingest service runs the data plane (.cache/bin/reelhouse-ingest) as its own child.
  program ingest 1 unexpected 15 "python -m reelhouse.ingest"
  if [ "$recorders" -gt 0 ]; then
    program recorder "$recorders" unexpected 20 "python -m reelhouse.recorder"
  fi
  if [ "$restreamers" -gt 0 ]; then
    program restreamer "$restreamers" unexpected 20 "python -m reelhouse.restreamer"
  fi
} >"$conf"

UV="$(command -v uv || echo "$root/.cache/tools/bin/uv")"
echo "reelhouse: API on http://127.0.0.1:$REELHOUSE_API_PORT  data in $data" >&2
if [ -n "${REELHOUSE_BOOTSTRAP_TOKEN:-}" ]; then
  echo "reelhouse: token in $REELHOUSE_BOOTSTRAP_TOKEN_FILE (REELHOUSE_BOOTSTRAP_TOKEN's value)" >&2
else
  echo "reelhouse: token in $REELHOUSE_BOOTSTRAP_TOKEN_FILE (written at first start)" >&2
fi
echo "reelhouse: supervisord, configuration in $conf" >&2
export UP_LOG_WIDTH="$width"
exec "$UV" run --locked --no-sync python "$root/scripts/log_prefix.py" supervisord -c "$conf"
