# syncsnap developer commands. `make run` and `make test` work on a fresh machine (Debian, root or sudo).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-system run test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,dev,bench]'
	touch $@

setup: $(VENV)/.installed

# Debian packages the tests use as real peers (curl, ...). Installed only when missing.
setup-system:
	bash scripts/install-system-deps.sh

# Start the daemon on an embedded default: ~/Sync (created if missing), the local store under XDG dirs.
run: setup
	$(VENV)/bin/syncsnapd

lint: setup
	$(VENV)/bin/ruff check daemon client tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Sets up everything the tests need, then runs lint and the whole suite.
test: setup setup-system
	$(MAKE) lint
	$(VENV)/bin/pytest -q

# Side-by-side benchmarks against restic, borg and hypercorn; writes docs/benchmarks.md.
bench: setup setup-system
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
