"""Benchmark suite set-up: `pytest benchmarks/ --benchmark` enables it; a plain run skips it.

Options: --bench-device cpu|cuda (default: cuda when available), --bench-out DIR (results folder,
default benchmarks/results), --bench-quick (fewer shapes). Files named bench_*.py are collected.
Results of the run are written by `recorder.Recorder` at the end of the session.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="run the npedit benchmark suite (skipped otherwise)")
    parser.addoption("--bench-device", default=None, choices=("cpu", "cuda"),
                     help="device of the benchmarks (default: cuda when available, else cpu)")
    parser.addoption("--bench-out", default=str(HERE / "results"), help="folder for the results JSON and markdown")
    parser.addoption("--bench-quick", action="store_true", default=False, help="fewer shapes")


def pytest_collect_file(file_path, parent):
    # files named on the command line are collected by pytest itself
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and file_path.parent == HERE \
            and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="benchmarks run only with --benchmark")
    for item in items:
        item.add_marker(skip)


def _device(config) -> str:
    return config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def device(request) -> str:
    dev = _device(request.config)
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda without a CUDA device")
    return dev


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return request.config.getoption("--bench-quick")


_RECORDER = None


@pytest.fixture(scope="session")
def recorder(request):
    global _RECORDER
    from recorder import Recorder

    if _RECORDER is None:
        _RECORDER = Recorder(_device(request.config))
    return _RECORDER


def pytest_sessionfinish(session, exitstatus):
    if _RECORDER is not None:
        path = _RECORDER.write(session.config.getoption("--bench-out"))
        if path is not None:
            print(f"\nbenchmark results: {path} (+ .md)")
