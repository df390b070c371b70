#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian/Ubuntu machine (as root),
# then runs the linter and the whole test suite. Usage: ./test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
venv=${PEQUOD_TEST_VENV:-.venv}

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root: the tests create network namespaces, bridges and containers"

step "Debian packages the tests drive for real"
scripts/ensure-packages.sh git python3 python3-venv ca-certificates iproute2 iptables e2fsprogs mount docker.io debootstrap \
    podman catatonit chromium chromium-driver prometheus lego pebble curl openssh-server openssh-client \
    debian-archive-keyring haproxy tayga

python=${PEQUOD_PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "$python is older than 3.11; set PEQUOD_PYTHON to a Python 3.11+ interpreter"

step "preparing the virtual environment $venv"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q '.[test]'
export PATH="$PWD/$venv/bin:$PATH"

step "Docker engine, stand-in base image and the blog image (srcco-de:1)"
pequod-agent --build-image srcco-de:1

step "ruff"
ruff check .

step "pytest"
exec python -m pytest "$@"
