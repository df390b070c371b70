#!/usr/bin/env bash
# The benchmark command: installs what it needs (nginx, wrk, the venv, the image), then runs
# bench/bench.py. Run as root on this kind of machine. Usage: bench/run.sh [--quick]
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
[ "$(id -u)" = 0 ] || { echo "bench/run.sh: run as root" >&2; exit 1; }
echo "==> Debian packages"
scripts/ensure-packages.sh nginx-light wrk haproxy tayga iptables docker.io git python3-venv debootstrap \
    debian-archive-keyring
venv=${PEQUOD_TEST_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q '.[test]'
export PATH="$PWD/$venv/bin:$PATH"
echo "==> Docker engine and the image srcco-de:1"
pequod-agent --build-image srcco-de:1
echo "==> benchmarks"
exec python bench/bench.py "$@"
