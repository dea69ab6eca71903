# The two commands a new user needs: `make demo` and `make test` (plus `make install`, `make lab`).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.mimbench-installed

.PHONY: install demo test lab export check-export nbtest pytest browser-deps bench clean-runs

install: $(STAMP)
$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps $$(sed -n 's/^nodeps_requirements *= *//p' settings.ini)
	touch $(STAMP)

demo: install
	$(BIN)/mimbench demo

test: install browser-deps check-export nbtest pytest

browser-deps:  # Debian chromium + playwright for tests/test_browser.py (skips cleanly where they cannot be installed)
	bash tests/browser_deps.sh

check-export:
	@tmp=$$(mktemp -d) && cp -r nbs mimbench settings.ini setup.py $$tmp/ && \
	 (cd $$tmp && $(CURDIR)/$(BIN)/nbdev_export) && \
	 if diff -rq -x __pycache__ mimbench $$tmp/mimbench; then echo "export check: mimbench/ matches the notebooks"; rm -rf $$tmp; \
	 else echo "mimbench/ does not match nbs/: run 'make export' and commit both"; rm -rf $$tmp; exit 1; fi

export: install
	$(BIN)/nbdev_export

nbtest:  # one BLAS thread per worker: two workers x default threads oversubscribe 2 cores badly
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing

pytest:
	$(BIN)/python -m pytest -q tests

lab: install
	$(BIN)/jupyter lab --notebook-dir=nbs $$([ "$$(id -u)" = 0 ] && echo --allow-root)

bench: install
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done
