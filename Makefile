# The two commands a newcomer needs: `make lab` and `make test` (see README.md).
# Each installs what it needs: Debian packages (as root) and a pinned .venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := jq xz-utils rsync openssh-server openssh-client openssl
LAB_SECONDS ?= 60

.PHONY: all deps venv lint test unit integration bench bench-stream bench-process lab lab-down clean

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

$(VENV)/.installed: pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e . --config-settings editable_mode=compat -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check collector tests bench
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests/unit

test: deps venv lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: deps venv bench-stream bench-process

bench-stream: venv
	$(PY) -m bench.bench_stream

bench-process: venv
	$(PY) -m bench.bench_process

lab: deps venv
	$(PY) -m tests.lab.local --seconds $(LAB_SECONDS)

lab-down:
	@echo "the one-machine lab stops by itself; nothing to stop"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
