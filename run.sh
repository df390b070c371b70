#!/usr/bin/env bash
# Container entrypoint: serve the live release and run the publishing pipeline beside it.
# Configured by environment: SITE_REPO (required), SITE_BRANCH, POLL_INTERVAL, DATA_DIR, PORT, … (their
# defaults and checks: pipeline/config.py's SETTINGS; the reference: docs/configuration.md). Exits non-zero
# when either part dies (the other gets SIGTERM, and SIGKILL 10 s later), so whoever runs it (the agent,
# Docker) replaces the instance.
set -u
here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
python=${PEQUOD_PYTHON:-python3}
grace=10

# Every setting is checked before anything starts (a bad one: one line, exit status 2); the two run.sh uses
# itself come back with their defaults applied, as shell assignments (DATA_DIR=… PORT=…).
values=$("$python" -m pipeline check-config --shell DATA_DIR PORT) || exit 2
eval "$values"
data_dir=$DATA_DIR
mkdir -p "$data_dir" || exit 2
# The data directory is the publisher's: whatever took its owner's rights away (a build cannot), they are
# given back before anything reads it; the watcher repairs its parts (pipeline/layout.py repair()).
chmod u+rwx "$data_dir" 2>/dev/null
# With a read-only root filesystem /tmp is not writable: keep temporary files in DATA_DIR.
if [ ! -w "${TMPDIR:-/tmp}" ]; then
    export TMPDIR="$data_dir/tmp"
    mkdir -p "$TMPDIR" || exit 2
fi

export DATA_DIR=$data_dir  # serve.py and the watcher find everything in it (pipeline/layout.py)
# The watcher's heartbeat, which serve.py's health check reads (pipeline/heartbeat.py): this instance's
# own, not on the data volume, which the instance replacing this one shares.
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/pequod-run.XXXXXX") || exit 2
trap 'rm -rf "$run_dir"' EXIT
export WATCHER_HEARTBEAT=$run_dir/watcher-heartbeat
"$python" "$here/serve.py" --port "$PORT" &
serve_pid=$!
"$python" -m pipeline watch &
watch_pid=$!

stopping=0
stop() {
    stopping=1
    kill -TERM "$serve_pid" "$watch_pid" 2>/dev/null
}
trap stop TERM INT

# `wait -n` returns when either child exits or a trapped signal arrives.
wait -n "$serve_pid" "$watch_pid"
status=$?
if [ "$stopping" = 0 ]; then
    echo "run.sh: a component exited (status $status); stopping the other" >&2
    kill -TERM "$serve_pid" "$watch_pid" 2>/dev/null
fi
# What has not stopped after the grace period (a server that lost its signal, a stopped process) is
# killed: the instance must end, so that it is replaced.
deadline=$((SECONDS + grace))
while kill -0 "$serve_pid" 2>/dev/null || kill -0 "$watch_pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "run.sh: still running $grace s after SIGTERM; killing it" >&2
        kill -KILL "$serve_pid" "$watch_pid" 2>/dev/null
        break
    fi
    sleep 0.1
done
wait "$serve_pid" "$watch_pid" 2>/dev/null
if [ "$stopping" = 1 ]; then
    exit 0
fi
exit 1
