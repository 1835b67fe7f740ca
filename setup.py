"""Build of npedit, including the compiled extension npedit._C (see csrc/).

Metadata lives in pyproject.toml; this file only describes the extension. Build it against the
torch you run with: `pip install --no-build-isolation -e .` (an isolated build would fetch another
torch). The C++ CPU kernels are always built; the CUDA kernels when nvcc and a CUDA build of torch
are both present. NPEDIT_BUILD_CUDA=1 requires them (and fails clearly without), =0 skips them.
csrc/sources.txt lists the sources; CMakeLists.txt reads the same file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
SOURCES = ROOT / "csrc" / "sources.txt"


def read_sources(*groups: str) -> list[str]:
    """Paths (relative to the repository root) of the given groups of csrc/sources.txt, in file order."""
    paths = []
    for line in SOURCES.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            group, path = line.split()
            if group in groups:
                paths.append(path)
    return paths


def want_cuda(torch_cuda: str | None, cuda_home: str | None) -> bool:
    """NPEDIT_BUILD_CUDA=0/1 forces; unset, CUDA when torch is a CUDA build and nvcc is found."""
    setting = os.environ.get("NPEDIT_BUILD_CUDA", "").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return False
    if setting in ("1", "on", "true", "yes"):
        if torch_cuda is None or cuda_home is None:
            raise RuntimeError(
                "NPEDIT_BUILD_CUDA=1 but "
                + ("this torch is a CPU-only build" if torch_cuda is None else "no CUDA toolkit was found (set CUDA_HOME)")
                + "; install a CUDA build of torch and the CUDA toolkit, or unset NPEDIT_BUILD_CUDA")
        return True
    if setting not in ("", "auto"):
        raise RuntimeError(f"NPEDIT_BUILD_CUDA={setting!r}: use 0, 1 or leave it unset")
    return torch_cuda is not None and cuda_home is not None


def extension_kwargs() -> dict:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = want_cuda(torch.version.cuda, CUDA_HOME)
    # no FMA contraction: results bit-equal to PyTorch's kernels
    cxx = ["/O2", "/fp:strict"] if os.name == "nt" else ["-O2", "-g0", "-ffp-contract=off"]
    link = []
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link += ["-fopenmp", f"-Wl,-rpath,{Path(torch.__file__).parent / 'lib'}"]  # `import npedit._C` alone
    sources = read_sources("core", "python") + (read_sources("cuda") if with_cuda else [])
    kwargs = dict(name="npedit._C", sources=sources, include_dirs=[str(ROOT / "csrc")],
                  extra_link_args=link)
    if with_cuda:
        ext = CUDAExtension(**kwargs, define_macros=[("NPEDIT_WITH_CUDA", None)],
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O2", "-lineinfo"]})
    else:
        ext = CppExtension(**kwargs, extra_compile_args={"cxx": cxx})
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**extension_kwargs())
