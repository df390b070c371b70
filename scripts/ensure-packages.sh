#!/usr/bin/env bash
# Installs those of the given Debian packages that are missing (as root); says what it did.
# Used by bootstrap.sh, test.sh and bench/run.sh. Usage: scripts/ensure-packages.sh PACKAGE...
set -euo pipefail
missing=()
for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "    all present: $*"
    exit 0
fi
echo "    installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
