# syncsnap developer commands. `make run` and `make test` work on a fresh machine (Debian, root or sudo).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-system setup-build run test lint bench bench-scale torture screenshots clean

# setup-build first: pyfuse3 (the `mount` extra that `test` pulls in) has no wheel; pip builds it against
# libfuse3-dev (docs/mount.md).
$(VENV)/.installed: pyproject.toml | setup-build
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,dev,bench]'
	touch $@

setup: $(VENV)/.installed

setup-build:
	bash scripts/install-build-deps.sh

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

# Side-by-side benchmarks against restic, borg and hypercorn; writes docs/benchmarks.md. Then the
# dashboard's weight and event-to-DOM latency in Chromium; writes docs/dashboard.md.
bench: setup setup-system
	$(PY) -m bench
	$(PY) -m bench dashboard

# How syncsnap scales against restic and borg: 100k- and 400k-file trees, a 4 GiB file (append, change in
# the middle, insert 1 byte), many snapshots; a py-spy profile of the initial run. Writes
# docs/benchmarks-scale.md and docs/profile-initial.txt. BENCH_SCALE picks the sizes (default
# 100k,400k,4g: about an hour on 2 cores and ~15 GB free disk; tiny: the self-test's size).
bench-scale: setup setup-system
	$(PY) -m bench scale

# The long torture suite (tests/torture, SYNCSNAP_TORTURE=long): bounded, under 30 min on 2 cores; prints
# the acceptance table and writes docs/robustness.md, even when a test fails (then make fails too).
torture: setup setup-system
	@results=$$(mktemp /tmp/syncsnap-torture-XXXXXX.jsonl); \
	SYNCSNAP_TORTURE=long SYNCSNAP_TORTURE_RESULTS=$$results timeout --signal=INT 35m $(VENV)/bin/pytest -q -p no:cacheprovider \
	  tests/torture; status=$$?; \
	$(PY) -m bench torture-report $$results --out docs/robustness.md; report=$$?; \
	rm -f $$results; \
	[ $$status -eq 0 ] && [ $$report -eq 0 ]

# Refresh the screenshots in docs/img (README.md and docs/dashboard.md show them) from the browser tests.
screenshots: setup setup-system
	SYNCSNAP_SCREENSHOTS=$(CURDIR)/docs/img $(VENV)/bin/pytest -q -p no:cacheprovider tests/browser

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
