"""Running a Gluon / Triton jit kernel in the simulator: its Python body with the simulated language in
place of the real one, program by program over the grid."""
from __future__ import annotations

import contextlib
import inspect
import itertools
import random
import re
import textwrap
import types
from typing import Callable

import torch

from npedit.ops.triton.gluon_sim.language import OVERRIDES
from npedit.ops.triton.gluon_sim.memory import Pointer, SimDescriptor
from npedit.ops.triton.gluon_sim.program import POLICIES, Program, SimError

_simulated: dict[tuple, Callable] = {}

Mutations = dict  # {jit function name: [(old source text, new source text), ...]}


def _is_jit(obj) -> bool:
    return inspect.isfunction(getattr(obj, "fn", None)) and type(obj).__module__.startswith("triton")


def simulated(kernel, mutations: Mutations | None = None) -> Callable:
    """The Python function of a @gluon.jit / @triton.jit `kernel` with the simulator in place of the
    language, and every jit function it calls simulated too. Refuses kernels that use a Triton or Gluon
    name the simulator does not model. `mutations` edits the source of named jit functions on the way
    (each old text must occur exactly once): how the tests check that a wrong kernel fails here."""
    mutations = mutations or {}
    key = (id(kernel), repr(sorted(mutations.items())))
    if key in _simulated:
        return _simulated[key]
    fn = _mutated(kernel.fn, mutations.get(kernel.fn.__name__, ()))
    env = dict(fn.__globals__)
    for name in _names(fn.__code__):
        if name in OVERRIDES:
            env[name] = OVERRIDES[name]
        elif name in env and _is_jit(env[name]):
            env[name] = simulated(env[name], mutations)
        elif name in env and getattr(env[name], "__module__", "").startswith("triton"):
            raise SimError(f"{fn.__name__} uses {name} ({env[name]!r}), which the simulator does not model")
    sim = types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)
    _simulated[key] = sim
    return sim


def _mutated(fn, edits) -> Callable:
    if not edits:
        return fn
    source = inspect.getsource(fn)
    for old, new in edits:
        if source.count(old) != 1:
            raise ValueError(f"mutation of {fn.__name__}: {old!r} occurs {source.count(old)} times")
        source = source.replace(old, new)
    source = re.sub(r"^@.*\n", "", textwrap.dedent(source), flags=re.M)  # the jit decorator
    scope: dict = {}
    exec(compile(source, f"<mutated {fn.__name__}>", "exec"), fn.__globals__, scope)  # noqa: S102
    return scope[fn.__name__]


def _names(code) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _sim_arg(x):
    if isinstance(x, torch.Tensor):
        return Pointer(x)
    if hasattr(x, "block_shape") and hasattr(x, "base"):  # a host TensorDescriptor (Triton's or Gluon's)
        return SimDescriptor(x.base, x.block_shape, getattr(x, "layout", None))
    return x


class SimKernel:
    """`SimKernel(kernel, policy, seed)[grid](*args, **kwargs)` runs `kernel` as its launcher would
    launch it: tensors become global pointers, host TMA descriptors simulated ones; programs run one
    after another (each with a seed of its own), and the first failure is raised."""

    def __init__(self, kernel, policy: str = "random", seed: int = 0, mutations: Mutations | None = None):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.kernel, self.policy, self.seed, self.mutations = kernel, policy, seed, mutations
        self.launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.run(tuple(grid) if isinstance(grid, (tuple, list)) else (grid,), args, kwargs)
        return launch

    @torch.no_grad()
    def run(self, grid, args, kwargs) -> None:
        fn = simulated(self.kernel, self.mutations)
        num_warps = int(kwargs.get("num_warps", 4))
        params = inspect.signature(fn).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in params}  # launch options (num_stages, ...) dropped
        args = [_sim_arg(a) for a in args]
        kwargs = {k: _sim_arg(v) for k, v in kwargs.items()}
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        self.launches += 1
        for n, pid in enumerate(itertools.product(*(range(g) for g in reversed(grid)))):
            pid = tuple(reversed(pid))
            program = Program(pid, num_warps, self.policy, random.Random(hash((self.seed, self.launches, n))))
            program.run(fn, args, kwargs)


@contextlib.contextmanager
def simulated_kernels(module, names, policy: str = "random", seed: int = 0, mutations: Mutations | None = None):
    """Within the block, `module.<name>` for each name is a SimKernel of the kernel it held."""
    saved = {name: getattr(module, name) for name in names}
    try:
        for name, kernel in saved.items():
            setattr(module, name, SimKernel(kernel, policy, seed, mutations))
        yield {name: getattr(module, name) for name in names}
    finally:
        for name, kernel in saved.items():
            setattr(module, name, kernel)
