# pushtrain: every target does its own set-up, so `make test` and `make demo` work on a fresh machine.
# Steps are cached (venv keyed on the requirements files, images on their content, data sets on their
# split version): a second run takes seconds.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/plugins

.PHONY: help setup venv images datasets test test-deps test-unit test-docker lint demo bench bench-search clean \
	compose-images compose-up compose-down

help:
	@echo "make demo   - set up everything and run the main job end to end (web UI on http://localhost:8080)"
	@echo "make test   - set up everything and run the test suite"
	@echo "make images / datasets / lint / bench / bench-search / clean"
	@echo "make compose-up / compose-down / compose-images - the team deployment (docker-compose.yaml)"

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@echo "[venv] installing requirements-dev.txt into $(VENV) (about a minute the first time)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

images: venv
	@$(PY) -m pushtrain images

datasets: venv
	@$(PY) -m pushtrain datasets

setup: venv images datasets

lint: venv
	@$(PY) -m ruff format --check .
	@$(PY) -m ruff check .

# Debian packages the tests need, installed once and skipped when present: the real git servers
# (tests/servers.py), and the headless browser of tests/integration/test_ui_browser.py.
TEST_DEBS := lighttpd lighttpd-mod-webdav openssh-server git-lfs chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600

test-deps:
	@missing=$$(for deb in $(TEST_DEBS); do dpkg-query -W -f='$${Status}\n' $$deb 2>/dev/null \
	    | grep -q '^install ok installed' || echo $$deb; done); \
	if [ -n "$$missing" ]; then \
	  echo "[test-deps] apt-get install" $$missing; \
	  $(APT_GET) install -y --no-install-recommends $$missing >/dev/null \
	    || { $(APT_GET) update >/dev/null && $(APT_GET) install -y --no-install-recommends $$missing >/dev/null; }; \
	fi

test: setup test-deps lint
	@$(PY) -m pytest

test-unit: venv
	@$(PY) -m pytest -m "not docker"

demo: setup
	@$(PY) -m pushtrain.demo

bench: setup
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script; done

# The tweak-strategy benchmark trains in process with the training images' own library versions, plus the
# search libraries it compares against (KerasTuner, Optuna), in a venv of its own: .venv-bench.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: benchmarks/requirements-search.txt images/tensorflow/requirements.txt images/sklearn/requirements.txt
	@echo "[bench] installing benchmarks/requirements-search.txt into $(BENCH_VENV) (a few minutes the first time)"
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	@$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check -r benchmarks/requirements-search.txt
	@touch $@

# make bench-search ARGS=--quick   (digits tasks, 2 seeds: a few minutes; the full run takes about an hour)
bench-search: datasets $(BENCH_VENV)/.installed
	@$(BENCH_VENV)/bin/python benchmarks/search_efficiency.py $(ARGS)

# The team deployment (docker-compose.yaml). compose-images uses the public service images where they can
# be pulled and builds local stand-ins (images/compose/) where not; compose-up and compose-down run docker
# compose with the image variables set to what it chose (plugins/pushtrain/compose_images.py).
compose-images: venv
	@$(PY) -m pushtrain.compose_images images

compose-up: setup
	@$(PY) -m pushtrain.compose_images up

compose-down: venv
	@$(PY) -m pushtrain.compose_images down

clean:
	rm -rf $(VENV) $(BENCH_VENV) data airflow_home
