"""Build checks of csrc/ that need no GPU: the one source list, the CUDA sources compiled by nvcc for
sm_80 and sm_90, the CUDA branch of the ATen boundary compiled by the host compiler, and the CMake
build with its ctest of the CPU paths. Each is skipped when its tool is missing."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
GROUPS = ("core", "cuda", "python")
# what CUDAExtension passes to nvcc: the .cu files must not rely on implicit half/bf16 conversions
NVCC_TORCH_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]


def _sources() -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {g: [] for g in GROUPS}
    for line in (CSRC / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            group, path = line.split()
            groups[group].append(REPO / path)
    return groups


def _run(cmd: list[str], timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_one_source_list_names_every_source():
    groups = _sources()
    listed = {p for paths in groups.values() for p in paths}
    assert all(p.is_file() for p in listed), [str(p) for p in listed if not p.is_file()]
    on_disk = {p for p in (CSRC / "npedit").rglob("*") if p.suffix in (".cpp", ".cu")}
    assert on_disk == listed, f"csrc/sources.txt and csrc/npedit disagree: {on_disk ^ listed}"
    assert all(p.suffix == ".cu" for p in groups["cuda"])
    assert "sources.txt" in (REPO / "setup.py").read_text() and "sources.txt" in (REPO / "CMakeLists.txt").read_text()


def test_cuda_sources_are_plain_cuda():
    """The .cu/.cuh files include no ATen, c10 or torch header: api.cpp is the only ATen boundary."""
    for path in (CSRC / "npedit" / "cuda").glob("*.cu*"):
        includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', path.read_text())
        bad = [i for i in includes if i.split("/")[0] in ("ATen", "c10", "torch", "caffe2")]
        assert not bad, f"{path.name} includes {bad}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_sources_compile_with_nvcc(tmp_path, arch):
    for src in _sources()["cuda"]:
        _run(["nvcc", "-c", "-std=c++17", "-O2", f"-arch={arch}", *NVCC_TORCH_FLAGS, "-I", str(CSRC),
              str(src), "-o", str(tmp_path / (src.stem + ".o"))])


def _cuda_include_dir() -> Path | None:
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_runtime_api.h").is_file():
            return Path(root) / "include"
    return None


@pytest.mark.skipif(_cuda_include_dir() is None or shutil.which("c++") is None,
                    reason="no CUDA headers or no C++ compiler")
def test_cuda_branch_of_the_aten_boundary_compiles(tmp_path):
    """api.cpp and bindings.cpp with NPEDIT_WITH_CUDA, against this torch's c10/cuda headers.

    A CPU torch lacks one generated header (c10/cuda/impl/cuda_cmake_macros.h): a stand-in is used.
    """
    from torch.utils.cpp_extension import include_paths

    shim = tmp_path / "c10" / "cuda" / "impl"
    shim.mkdir(parents=True)
    (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [str(CSRC), *include_paths(), str(_cuda_include_dir()), sysconfig.get_paths()["include"], str(tmp_path)]
    for name in ("api.cpp", "bindings.cpp"):
        _run(["c++", "-std=c++20", "-fsyntax-only", "-DNPEDIT_WITH_CUDA", *[f"-I{i}" for i in includes],
              str(CSRC / "npedit" / name)])


@pytest.mark.slow  # ~40-70 s on 2 cores
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None, reason="cmake or c++ not found")
def test_cmake_build_and_ctest(tmp_path):
    """`cmake -S . -B build && cmake --build build`, then ctest runs the C++ tests of the CPU paths."""
    build = tmp_path / "build"
    env = {**os.environ, "NPEDIT_BUILD_CUDA": "0"}
    _run(["cmake", "-S", str(REPO), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"], env=env)
    _run(["cmake", "--build", str(build), "-j", str(min(4, os.cpu_count() or 1))], timeout=900, env=env)
    assert list(build.glob("libnpedit_ops*")) and list(build.glob("_C*"))
    out = _run(["ctest", "--output-on-failure"], cwd=build).stdout
    assert "100% tests passed" in out
