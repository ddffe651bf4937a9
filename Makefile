# The two commands of the README: `make quickstart` and `make test`.
# Both set up .venv from scratch on a machine with Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: quickstart test venv cluster tools crd images e2e bench-operator

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh
	VENV=$(VENV) PYTHON=$(PYTHON) scripts/install.sh
	touch $@

quickstart: venv
	$(BIN)/kubetune run examples/quickstart-cpu.yaml --output out/quickstart

# The real control plane the operator, chart and kubectl tests run against: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, helm and the Kueue controller built from Go modules into build/cluster/bin
# (skipped when already built for the pinned versions; scripts/build-cluster.sh).
cluster:
	scripts/build-cluster.sh

# Prometheus and promtool for the monitoring tests (Debian's package).
tools:
	scripts/install-test-tools.sh

test: venv cluster tools
	$(BIN)/python -m pytest -q

crd: venv
	$(BIN)/kubetune crd -o crds/finetunejob.yaml

# The operator and trainer images (scripts/build-images.sh says which, and how to pick).
images:
	scripts/build-images.sh

# The kind suite: a kind cluster, both images, the chart, the quickstart scenarios (tests/e2e/test_kind.py).
e2e: venv
	$(BIN)/python -m pytest tests/e2e -v -rs
