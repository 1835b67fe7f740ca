"""Simulated wgmma: an fp32-accumulated matmul whose shared-memory operands are read at issue or at
the warpgroup_mma_wait that retires it (the policy decides), and whose result exists only then."""
from __future__ import annotations

import torch

from npedit.ops.triton.gluon_sim.memory import Shared
from npedit.ops.triton.gluon_sim.program import AsyncResult, SimError, ready_value, scheduling_point


class Pending(AsyncResult):
    """An issued wgmma. Its result exists once a warpgroup_mma_wait retired it."""

    def __init__(self, a, b, acc, use_acc: bool, read_at_issue: bool, shape: list[int]):
        self.a, self.b, self.acc, self.use_acc, self.shape = a, b, acc, use_acc, shape
        self.value: torch.Tensor | None = None
        if read_at_issue:
            self.a, self.b = _operand(a), _operand(b)

    def retire(self) -> None:
        if self.value is not None:
            return
        acc = self.acc
        if isinstance(acc, Pending):
            acc.retire()
            acc = acc.value
        a, b = _operand(self.a).float(), _operand(self.b).float()
        prod = a @ b
        self.value = acc + prod if self.use_acc else prod

    def _misuse(self, *_, **__):
        raise SimError("an async wgmma result was used before warpgroup_mma_wait retired it")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = _misuse
    to = _misuse


def _operand(x) -> torch.Tensor:
    if isinstance(x, Shared):
        return x.data.clone()
    return ready_value(x, "wgmma operand")


def _shape(x) -> list[int]:
    return list(x.shape)


def warpgroup_mma(a, b, acc, *, use_acc=True, precision=None, max_num_imprecise_acc=None, is_async=False):
    me = scheduling_point()
    program = me.program
    if not isinstance(b, Shared):
        raise SimError("wgmma reads its B operand from shared memory")
    a_shape = a.shape if isinstance(a, Shared) else _shape(ready_value(a, "wgmma A"))
    b_shape, acc_shape = b.shape, _shape(acc)
    if len(a_shape) != 2 or a_shape[1] != b_shape[0] or acc_shape != [a_shape[0], b_shape[1]]:
        raise SimError(f"wgmma shapes: A {a_shape} @ B {b_shape} into {acc_shape}")
    if a.dtype != b.dtype:
        raise SimError(f"wgmma operands of different types: {a.dtype}, {b.dtype}")
    # eager: operands read as late as possible (at retirement), lazy: at issue, random: either
    if program.policy == "random":
        read_at_issue = program.rng.random() < 0.5
    else:
        read_at_issue = program.policy == "lazy"
    pending = Pending(a, b, acc, bool(use_acc), read_at_issue, acc_shape)
    me.mma.append(pending)
    if not is_async:
        return warpgroup_mma_wait(0, (pending,))
    return pending


def warpgroup_mma_wait(num_outstanding=0, deps=None):
    me = scheduling_point()
    while len(me.mma) > int(num_outstanding):
        me.mma.pop(0).retire()
    out = []
    for d in deps or ():
        if isinstance(d, Pending):
            if d.value is None:
                raise SimError(f"warpgroup_mma_wait({num_outstanding}) returned a wgmma result still in flight")
            out.append(d.value)
        else:
            out.append(d)
    return out[0] if len(out) == 1 else tuple(out)
