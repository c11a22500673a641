# The README's two commands: `make demo` and `make test`. Each creates .venv when it is missing or older
# than pyproject.toml, installs the project into it, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test chromium bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile -e '.[dev,runtimes]'
	@# pip compiles the bytecode of ~22k files on one core; compileall uses both (-j 0): about 35 s less set-up here.
	@# A few shipped files do not compile on this Python (torch has one written for 3.12); they are skipped, so the
	@# status is ignored.
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	touch $(STAMP)

demo: $(STAMP)
	$(PY) workloads/demo.py

# The browser test (tests/test_sweep.py) drives Debian's Chromium through Playwright; installed here when missing.
CHROMIUM := /usr/bin/chromium

chromium:
	@test -x $(CHROMIUM) || { test "$$(id -u)" = 0 \
	  || { echo "error: $(CHROMIUM) is missing and installing it needs root: apt-get install chromium" >&2; exit 1; }; \
	  (apt-get update -q && apt-get install -y -q --no-install-recommends chromium) > .chromium-install.log 2>&1 \
	  || { echo "error: apt-get could not install chromium (see .chromium-install.log)" >&2; exit 1; }; }

test: $(STAMP) chromium
	$(PY) -m ruff check orchestrator benchmarks workloads tests
	$(PY) -m pytest -q -ra --durations=15

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache demo-out benchmarks/out test-artifacts .chromium-install.log
