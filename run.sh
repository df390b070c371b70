#!/usr/bin/env bash
# Container entrypoint: serve the live release and run the publishing pipeline beside it.
# Configured by environment: SITE_REPO (required), SITE_BRANCH (main), POLL_INTERVAL (10),
# DATA_DIR (/workdir), PORT (8000), BUILD_TIMEOUT (600). Exits non-zero when either part dies,
# so whoever runs it (the agent, Docker) restarts it.
set -u
here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
python=${PEQUOD_PYTHON:-python3}

"$python" -m pipeline check-config || exit 2
data_dir=${DATA_DIR:-/workdir}
mkdir -p "$data_dir" || exit 2
# With a read-only root filesystem /tmp is not writable: keep temporary files in DATA_DIR.
if [ ! -w "${TMPDIR:-/tmp}" ]; then
    export TMPDIR="$data_dir/tmp"
    mkdir -p "$TMPDIR" || exit 2
fi

export DATA_DIR=$data_dir  # serve.py and the watcher find everything in it (pipeline/layout.py)
"$python" "$here/serve.py" --port "${PORT:-8000}" &
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
wait "$serve_pid" "$watch_pid" 2>/dev/null
if [ "$stopping" = 1 ]; then
    exit 0
fi
exit 1
