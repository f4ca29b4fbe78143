# taggnn: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch releases this project is tested with (CUDA build on x86_64 Linux; runs on CPU too).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# The oldest releases pyproject.toml declares (its floors; tests/test_packaging.py keeps the two
# in step), checked by make test-min in a venv of their own.
MIN_SPEC ?= torch==2.7.0 torchvision==0.22.0 torch-geometric==2.8.0
MIN_VENV ?= build/venv-min
WHEEL_VENV ?= build/venv-wheel
WHEEL_DIR ?= build/wheel
WHEEL_DEPS ?= build/wheel-deps
# A CLI run small enough for a check (tests/engine/test_trainer.py's SMALL, one epoch).
TINY_TRAIN := --config synthgym_tiny --no-progress --set data.num_frames=8 --set data.crop_size=32 \
	--set data.short_side=32 --set data.synth_size=32 --set data.synth_train=48 --set data.synth_val=16 \
	--set data.synth_test=16 --set train.batch_size=8 --set train.eval_batch_size=16 --set model.ffn_dim=32 \
	--set train.epochs=1

.PHONY: install install-ext test test-min test-wheel lint demo bench bench-cuda clean

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
	$(PY) -m pytest -q -m slow

# The declared floors are facts: the graph and nn tests against the oldest torch, torchvision and
# torch-geometric pyproject.toml allows, in a fresh venv (several GB of CUDA wheels from PyPI).
test-min:
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --no-cache-dir $(MIN_SPEC) -e . 'pytest>=7.3'
	$(MIN_VENV)/bin/python -m pytest -q tests/graph tests/nn

# `pip install .` gives a working taggnn: build the wheel, check what it ships, install it into a
# fresh venv and run the command from outside the source tree. The venv's only other packages are
# links to the wheel's declared dependencies and theirs in $(VENV) (.ci/dependency_view.py): an
# undeclared import still fails, without a second multi-GB torch on disk.
test-wheel: install
	rm -rf $(WHEEL_DIR) $(WHEEL_VENV) $(WHEEL_DEPS)
	$(PY) -m pip wheel --no-deps -w $(WHEEL_DIR) .
	$(PY) -c "import glob, sys, zipfile; names = zipfile.ZipFile(glob.glob(sys.argv[1])[0]).namelist(); \
	need = ['taggnn/py.typed', '.dist-info/licenses/LICENSE'] + glob.glob('taggnn/configs/*.yaml'); \
	missing = [n for n in need if not any(x.endswith(n) for x in names)]; \
	sys.exit(f'wheel lacks {missing}' if missing else 0)" '$(WHEEL_DIR)/taggnn-*.whl'
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip uninstall -q -y setuptools  # older venvs seed one; the view has torch's
	$(PY) .ci/dependency_view.py $(WHEEL_DIR)/taggnn-*.whl $(WHEEL_DEPS)
	$(WHEEL_VENV)/bin/python -c "import pathlib, sys, sysconfig; \
	pathlib.Path(sysconfig.get_paths()['purelib'], 'taggnn-dependencies.pth').write_text(sys.argv[1] + '\n')" \
	  "$(CURDIR)/$(WHEEL_DEPS)"
	$(WHEEL_VENV)/bin/python -m pip install --no-deps $(WHEEL_DIR)/taggnn-*.whl
	$(WHEEL_VENV)/bin/python -m pip check
	cd "$$(mktemp -d)" && bin="$(CURDIR)/$(WHEEL_VENV)/bin" \
	  && "$$bin/python" -c "import sys, taggnn; sys.exit(0 if taggnn.__file__.startswith(sys.prefix) else taggnn.__file__)" \
	  && "$$bin/taggnn" --version && "$$bin/taggnn" --help > /dev/null \
	  && "$$bin/taggnn" train --out run $(TINY_TRAIN) && test -f run/best.pt

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
# results/cuda); CUDA_ARGS="--steps NAME ..." runs some steps. Without CUDA it says so and exits 0.
bench-cuda: install
	$(PY) -m benchmarks.cuda $(CUDA_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
