# Set-up and the two main commands. The CPU path pins torch==2.13.0 (a bare `torch` pulls CUDA).
PY := .venv/bin/python
OUT ?= runs/shapes

.PHONY: install train test bench

.venv/installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q "triton==3.7.1" "deepspeed==0.19.8" "diffusers==0.42.1" \
		"transformers==5.24.0" "accelerate==1.15.0" pybind11 ninja
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	touch $@

install: .venv/installed

train: install
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PY) npedit/train.py --preset shapes --output_dir $(OUT)

test: install
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PY) -m pytest -q --durations=30 tests

bench: install
	PATH=$(CURDIR)/.venv/bin:$$PATH $(PY) -m pytest -q benchmarks --benchmark
