# taggnn: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch releases this project is tested with (CUDA build on x86_64 Linux; runs on CPU too).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install install-ext test lint demo bench bench-cuda clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Optional compiled extras (torch-scatter, torch-sparse): ~17 min from source on 2 cores.
install-ext: install
	$(PY) -m pip install --no-build-isolation 'torch-scatter>=2.1' 'torch-sparse>=0.6.17'

test: install
	$(PY) -m pytest -q

# ruff (pinned in the 'lint' extra); one line length (120) for the whole tree, see pyproject.toml.
lint: install
	$(PY) -m pip install -q 'ruff>=0.6'
	$(PY) -m ruff check .

# Train TAG-Head (tiny R(2+1)D) on SynthGym on CPU, then evaluate it on the test split (a
# second `make demo` replaces the previous demo run).
demo: install
	$(PY) -m taggnn train --config synthgym_tiny --out runs/demo --overwrite
	$(PY) -m taggnn eval --checkpoint runs/demo/best.pt --split test

# The quick versions of the benchmarks (see benchmarks/README.md for the full ones).
bench: install
	$(PY) -m benchmarks.propagation --quick
	$(PY) -m benchmarks.complexity --no-latency
	$(PY) -m benchmarks.oversmoothing --no-latency

# Everything that needs a GPU, in one call of at most 8 minutes (tables + JSON under $$OUT or
# results/cuda). Without CUDA it says so and exits 0.
bench-cuda: install
	$(PY) -m benchmarks.cuda

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
