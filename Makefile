# Agent Sandbox: every entry point. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
K8S_VERSION ?= v1.34.4
export K8S_VERSION
PYTEST_ARGS ?=

.PHONY: help install system k8s etcd demo test test-unit test-http test-controlplane test-dataplane \
        test-metacontroller serve bench lint format manifests check-manifests clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install the package with every extra

system: ## install runsc, openssl and prlimit with apt-get if missing
	bash hack/setup-system.sh

k8s: etcd ## build kube-apiserver, kube-controller-manager, kubectl (and etcd) once into ~/.cache
	bash hack/build-k8s.sh

etcd: ## build etcd v3.6 from its Go modules once into ~/.cache
	bash hack/build-etcd.sh

demo: install system ## run the walkthrough's client script on the local gVisor backend
	$(PY) examples/walkthrough.py

test: install system k8s ## every tier; a tier that cannot run says why
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -m unit $(PYTEST_ARGS)
test-http: install
	$(PY) -m pytest -m http $(PYTEST_ARGS)
test-controlplane: install system k8s
	$(PY) -m pytest -m controlplane $(PYTEST_ARGS)
test-dataplane: install system
	$(PY) -m pytest -m dataplane $(PYTEST_ARGS)
test-metacontroller: install system k8s ## METACONTROLLER_BIN, else ../shared/bin/metacontroller
	$(PY) -m pytest -m metacontroller $(PYTEST_ARGS)

serve: install ## the hook server on 127.0.0.1:9443, where manifests/overlays/loopback points
	$(VENV)/bin/sandbox-hooks --bind 127.0.0.1:9443

bench: install system k8s ## every benchmark: bench/results.json + docs/benchmarks.md
	$(PY) -m bench $(BENCH_ARGS)

lint: install ## ruff, mypy, the import contracts (.importlinter) and the generated-manifest check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy hooks sandbox_runtime sandbox_router agentic_sandbox sandbox_common --ignore-missing-imports
	$(PY) -m hack.render_crds --check

format: install
	$(VENV)/bin/ruff check --fix .

manifests: install ## render the CRDs under manifests/crds from schemas/
	$(PY) -m hack.render_crds

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
