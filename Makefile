# The two commands a newcomer needs: `make lab` and `make test` (see README.md).
# Each installs what it needs: Debian packages (as root) and a pinned .venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := jq xz-utils rsync openssh-server openssh-client debootstrap systemd-container openssl e2fsprogs mount
LAB_SECONDS ?= 60

.PHONY: all deps venv lint test unit integration bench bench-stream bench-process bench-bluesky bench-bluesky-ingest bench-replication lock lab lab-down lab-status lab-local wheelhouse ansible-lint molecule faults clean

all: test

# Debian packages the tests and the lab use; installs only what is missing.
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The controller's tools from the lock, every file checked against its hash (Python 3.11 to
# 3.13, Linux or macOS); then the collector itself, editable, built by the locked setuptools.
$(VENV)/.installed: pyproject.toml requirements/controller.txt
	$(PYTHON) -m venv $(VENV)
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(VENV)/bin/pip install -q --require-hashes -r requirements/controller.txt
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(VENV)/bin/pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed

# uv.lock is the one lock of the whole tree (the collector's dependencies and the controller's
# tools, every platform, Python >= 3.11). After an edit of pyproject.toml: resolve it again and
# export it, with hashes, for pip: requirements/controller.txt (.venv) and requirements/hosts.txt
# (the wheelhouse). tests/unit/test_lock.py fails while the three disagree.
lock: venv
	$(VENV)/bin/uv lock
	$(VENV)/bin/uv export -q --frozen --all-groups --no-emit-project --format requirements-txt -o requirements/controller.txt
	$(VENV)/bin/uv export -q --frozen --no-dev --no-emit-project --format requirements-txt -o requirements/hosts.txt

lint: venv
	$(VENV)/bin/ruff check collector tests bench tools
	$(VENV)/bin/mypy
	$(VENV)/bin/ansible-lint -q --profile production

unit: venv
	$(VENV)/bin/pytest -q tests/unit

# Everything: lint, the pytest suites, then Molecule and the fault suite on real nspawn hosts
# (root only).
test: deps venv lint
	$(VENV)/bin/pytest -q -p no:cacheprovider
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory molecule faults; \
	 else echo "molecule and faults skipped: booting nspawn hosts needs root"; fi

bench: deps venv bench-stream bench-process bench-bluesky bench-bluesky-ingest bench-replication

bench-stream: venv
	$(PY) -m bench.bench_stream

bench-process: venv
	$(PY) -m bench.bench_process

bench-bluesky: venv
	$(PY) -m bench.bench_bluesky_merge

bench-replication: venv
	$(PY) -m bench.bench_replication

bench-bluesky-ingest: venv
	$(PY) -m bench.bench_bluesky_ingest

# The collector and its locked dependencies as Linux wheels, one folder per target host
# (CPython version and CPU: build/wheelhouse/cp313-aarch64/), for hosts without a package index.
# Default: Debian 12 and 13 (cp311, cp313) on x86_64 and aarch64.
WHEELHOUSE_TARGETS ?= cp311-x86_64 cp313-x86_64 cp311-aarch64 cp313-aarch64
wheelhouse: venv
	$(PY) -m tools.wheelhouse --target "$(WHEELHOUSE_TARGETS)"

# The fleet lab: Debian 12 hosts (systemd-nspawn) + fakes, site.yml, stream, one forced cycle,
# summary. LAB_HOSTS=3 for three hosts; `make lab-down` stops everything it started.
lab: deps venv
	$(PY) -m tests.lab.fleet up --seconds $(LAB_SECONDS)

# The fault suite (root only): boots its own labs side by side ("faults", and one for each
# power cut), runs every scenario, rewrites docs/RELIABILITY.md, brings the labs down.
# FAULTS="--scenario NAME ..." picks scenarios; FAULTS=--one-lab keeps them in one lab.
faults: deps venv
	$(PY) -m tests.faults.run $(FAULTS)

lab-down:
	$(PY) -m tests.lab.fleet down

lab-status:
	$(PY) -m tests.lab.fleet status

# The one-machine lab: the fake API and one collector stream, no hosts (stops by itself).
lab-local: deps venv
	$(PY) -m tests.lab.local --seconds $(LAB_SECONDS)

ansible-lint: venv
	$(VENV)/bin/ansible-lint --profile production

# The role's molecule scenario on two nspawn hosts (root): check, converge, idempotence,
# swap of the main, key rotation, testinfra.
molecule: deps venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/molecule test -s default

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
