# The two commands a new user needs: `make demo` and `make test` (plus `make install`, `make lab`).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.mimbench-installed

.PHONY: install demo test lab export check-export nbtest pytest browser-deps bench bench-deps gpu-check gpu-check-tiny gpu-wheels speed-table clean-runs

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

# Peer libraries of the benchmarks (lightly, pytorch-cka, torch-cka); offline, the benchmarks skip a missing peer's rows.
bench-deps: install
	$(BIN)/python -m pip install -q -e ".[dev,bench]" || echo "bench peers not installed (offline?): their comparisons are skipped"

# CPU benchmarks against the peers; the ones with --save write bench/results/<bench>-cpu.json, then the README table.
bench: bench-deps
	for b in mae_step attacks cka adpe; do $(BIN)/python bench/$$b.py --save || exit 1; done
	for b in pretrain de3; do $(BIN)/python bench/$$b.py || exit 1; done
	$(BIN)/python bench/speed_table.py

# Every CUDA path in one script (≤ 8 minutes on one GPU): bench/results/gpu-<device>.json and .md, then the README table.
gpu-check: bench-deps
	$(BIN)/python bench/gpu_check.py
	$(BIN)/python bench/speed_table.py

# For a GPU machine without a package index (torch, timm, matplotlib, safetensors taken from its image): the other
# packages gpu_check imports, as wheels in .whl/ for GPU_PY. There: pip install --no-index --no-deps --target /tmp/site
# .whl/*.whl, then PYTHONPATH=/tmp/site:$$PWD MIMBENCH_COMMIT=<commit> python3 bench/gpu_check.py (no .git travels).
GPU_PY ?= 3.12
GPU_WHEELS = fastcore==1.14.5 ipywidgets==8.1.9 comm==0.2.3 widgetsnbextension==4.0.16 jupyterlab_widgets==3.0.17 \
	traitlets==5.16.1 ipython==9.18.1 ipython_pygments_lexers==1.1.1 jedi==0.20.1 parso==0.8.7 matplotlib-inline==0.2.2 \
	pexpect==4.9.0 ptyprocess==0.7.0 prompt_toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3 asttokens==3.0.2 \
	executing==2.3.0 pure_eval==0.2.4 decorator==5.3.1 torchattacks==3.5.1 lightly==1.6.0 pytorch-cka==1.1.3 torch-cka==0.21 captum==0.9.0
gpu-wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
	  -d .whl $(GPU_WHEELS)

# The same script at tiny sizes on CPU (seconds to a minute or two); `make test` runs it through tests/test_bench.py.
gpu-check-tiny: install
	$(BIN)/python bench/gpu_check.py --tiny --out $${TMPDIR:-/tmp}/mimbench-gpu-check

speed-table:
	$(BIN)/python bench/speed_table.py
