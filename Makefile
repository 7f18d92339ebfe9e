# ccbuild developer entry points. `make demo` builds the default recipe; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= recipes/snp.yaml

.PHONY: deps setup demo run test test-fast bench clean

deps:                     ## Debian packages the build and the tests need (apt; idempotent)
	@sh scripts/install-deps

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

setup: deps $(VENV)/.installed   ## deps + the Python environment

demo run: setup           ## build the default recipe into out/<name>/
	$(VENV)/bin/ccbuild build $(RECIPE)

test: setup               ## the whole suite, real downloads, builds and boots included
	$(VENV)/bin/pytest -q

test-fast: setup          ## only the tests that need no downloads, builds or boots
	$(VENV)/bin/pytest -q -m 'not slow and not boot'

bench: setup              ## benchmarks, reported as ratios against a baseline in the same run
	$(PY) -m bench

clean:
	rm -rf out build
