#!/usr/bin/env bash
# The tests start private redis-server processes; install the binary when it is missing.
set -euo pipefail
command -v redis-server >/dev/null && exit 0
if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
else
    echo "redis-server is missing: install it (e.g. apt-get install redis-server); Redis tests will be skipped" >&2
fi
