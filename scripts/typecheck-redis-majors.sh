#!/usr/bin/env bash
# pyproject.toml claims redis>=5.0, and redis-py's annotations differ from one major to the
# next: type-check runq against each major in requirements/redis-majors.txt (mypy reads that
# redis-py from MYPYPATH in place of the installed one; only runq's own errors count).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
status=0
while read -r pin; do
    case "$pin" in ''|'#'*) continue ;; esac
    target="$VENV/redis-majors/$pin"
    if [ ! -d "$target" ]; then
        "$VENV/bin/python" -m pip install -q --no-deps --target "$target.tmp" "$pin"
        mv "$target.tmp" "$target"
    fi
    errors=$(MYPYPATH="$target" "$VENV/bin/mypy" 2>&1 | grep '^runq/' || true)
    if [ -n "$errors" ]; then
        echo "mypy with $pin:"; echo "$errors"; status=1
    else
        echo "mypy with $pin: clean"
    fi
done < requirements/redis-majors.txt
exit $status
