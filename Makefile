# The two commands of the README (`make demo`, `make test`) set up .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint clean bench

setup: $(STAMP)

# torch first, pinned to the CPU wheel the machines carry: otherwise a dependency's bare `torch`
# pulls the newest CUDA build (several GB). deepspeed is built against that torch, hence
# --no-build-isolation.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-build-isolation ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deepspeed train.py --config configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs .pytest_cache

# CPU benchmark set; each script writes benchmarks/results/<name>-cpu.json.
bench: $(STAMP)
	@for f in benchmarks/[a-z]*.py; do case $$f in */harness.py) continue;; esac; \
		echo "== $$f"; $(PY) -m benchmarks.$$(basename $$f .py) --device cpu || exit 1; done
