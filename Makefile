# deformbev: `make demo` runs the main job, `make test` the tests; both set up .venv from nothing.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CUDA_TORCH ?= torch==2.14.1
CUDA_HOME ?= /usr/local/cuda
TORCH_CUDA_ARCH_LIST ?= 9.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: env demo demo-bev study test test-all lint bench cuda-compile-check clean

env: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)" -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

demo: env
	PATH="$(abspath $(VENV))/bin:$$PATH" bash tools/demo.sh

# The BEV demo (synthetic nuScenes -> infos -> train -> official evaluation -> pictures).
demo-bev: env
	PATH="$(abspath $(VENV))/bin:$$PATH" bash tools/demo_bev.sh

# Every model side by side on the synthetic data (tools/study.py): work_dirs/study/report.md, sized for
# < 45 min on 2 cores; finished runs are reused, so an interrupted study continues. STUDY_ARGS: --models 2d
study: env
	$(PY) tools/study.py $(STUDY_ARGS)

test: env
	$(PY) -m pytest -q

test-all: env
	$(PY) -m pytest -q -m "slow or not slow"

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: env
	$(PY) tools/benchmark_ops.py --threads 2

# Compile and link the CUDA kernels without a GPU, against the CUDA build of torch in .venv-cuda.
cuda-compile-check:
	test -x .venv-cuda/bin/python || $(PYTHON) -m venv .venv-cuda
	.venv-cuda/bin/python -c "import torch" 2>/dev/null || .venv-cuda/bin/pip install -q "$(CUDA_TORCH)" ninja "numpy<2"
	CUDA_HOME="$(CUDA_HOME)" TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" \
		.venv-cuda/bin/python tools/cuda_compile_check.py

clean:
	rm -rf $(VENV) .venv-cuda build *.egg-info ops/_C*.so ops/_C_build.json
