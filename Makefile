# tunewright: `make demo` trains a real adapter on CPU; `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint crds bench images clean

install: $(STAMP)

# torch is installed first and pinned: on these machines torch==2.13.0 is the local CPU wheel, and an
# unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[trainer,operator,test]'
	touch $@

demo: install
	$(PY) -m tunewright.demo

lint: install
	$(PY) -m ruff check .

test: install lint
	$(PY) -m pytest -q

crds: install
	$(PY) -m tunewright_operator.crdgen crds/

clean:
	rm -rf .tunewright build *.egg-info
