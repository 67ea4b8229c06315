# fastseg. A fresh machine needs two commands: `make bench` and `make test`. Each creates .venv,
# installs torch and the project, builds the extension (incrementally), then runs its job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
DEV_DEPS := pytest hypothesis pytest-benchmark numpy ninja matplotlib pycocotools
export MAX_JOBS ?= 2

.PHONY: setup build test bench bench-pytest info gpu-check clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $(TORCH_PIN) $(DEV_DEPS)
	FASTSEG_SKIP_EXT=1 $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# fastseg._C in place: CPU kernels always, CUDA kernels when nvcc and a CUDA torch are present.
# setuptools skips it when up to date; ninja recompiles only what changed.
build: setup
	$(PY) setup.py --quiet build_ext --inplace

test: build
	$(PY) -m pytest -q

bench: build
	$(PY) -m fastseg bench

# The same cases through pytest-benchmark (one test per case and implementation).
bench-pytest: build
	$(PY) -m pytest -q benchmarks -p no:randomly --benchmark-columns=median,iqr,rounds --benchmark-sort=name

info: build
	$(PY) -m fastseg info

# On a machine with a CUDA GPU and its own python3 (torch, triton, pytest, hypothesis preinstalled;
# no venv, no network): build, run every test on the GPU, benchmark; results in benchmarks/results/.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build fastseg/_C*.so *.egg-info
