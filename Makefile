# The README's two commands: `make demo` and `make test`. Each creates .venv when it is missing or older
# than pyproject.toml, installs the project into it, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) workloads/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache demo-out benchmarks/out
