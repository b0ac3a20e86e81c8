# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo quickstart test lint pytest redis-server clean lock

# The toolchain comes from the committed lock (requirements/dev.lock, pip constraints), so a fresh
# clone installs what CI last passed with; `make lock` refreshes it (scripts/lock.sh).
$(VENV)/.installed: pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c requirements/dev.lock pip
	$(PY) -m pip install -q -c requirements/dev.lock -e '.[dev]'
	touch $@

lock:
	bash scripts/lock.sh

demo: $(VENV)/.installed
	$(VENV)/bin/runq demo

quickstart: $(VENV)/.installed
	cd examples && ../$(PY) quickstart.py

test: lint pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check runq tests examples
	$(VENV)/bin/ruff format --check runq tests examples
	$(VENV)/bin/mypy
	VENV=$(VENV) bash scripts/typecheck-redis-majors.sh

pytest: $(VENV)/.installed redis-server
	$(PY) -m pytest

redis-server:
	@bash scripts/install-redis-server.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache examples/*.db*

# Benchmarks (bench/README.md). `make bench`: runq's own workloads, quick, printed (nothing written).
# `make bench-compare`: runq side by side with its peers (the bench extra), 3 runs, writes bench/RESULTS.md.
.PHONY: bench bench-compare
bench: $(VENV)/.installed redis-server
	$(PY) -m bench --libs runq --runs 1 --tasks 5000 --trips 100 --io-tasks 1000 --depths 1000,20000 --no-write

bench-compare: $(VENV)/.installed redis-server
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench --runs 3
