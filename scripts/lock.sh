#!/usr/bin/env bash
# Refresh requirements/dev.lock: resolve runq[dev] afresh in a throw-away venv and pin every
# package it installed. `make test`, `make demo` and .ci/run install with this file as pip
# constraints, so a fresh clone gets the versions CI last passed with. Run it (`make lock`),
# then `make test`, and commit the lock with whatever the new versions needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q '.[dev]'
{
    echo "# runq's development and CI toolchain, pinned. Made by scripts/lock.sh (make lock) with"
    echo "# $("$venv/bin/python" --version) on $(date -u +%Y-%m-%d); used as pip constraints (-c)."
    "$venv/bin/python" -m pip freeze --all | grep -v -i '^runq[ =@]'
} > requirements/dev.lock
echo "requirements/dev.lock: $(grep -vc '^#' requirements/dev.lock) packages pinned"
