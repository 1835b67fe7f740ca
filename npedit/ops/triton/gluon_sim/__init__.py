"""A CPU simulator for the Gluon subset of npedit's warp-specialised Hopper kernels.

Gluon has no interpreter (`TRITON_INTERPRET` runs Triton kernels only), so the Gluon attention kernels
(attention_ws.py, attention_ws_bwd.py) could only be compiled on a CPU. This module runs their Python
bodies instead, on CPU tensors, with the semantics that decide whether such a kernel is right:

- each program of the grid in turn; each `warp_specialize` partition in its own thread, under a
  deterministic scheduler: one thread runs at a time and, at every operation on shared state (an
  mbarrier, shared memory, a TMA copy, a wgmma, a global store), the policy decides which runnable
  thread goes on, or whether the copy engine lands one of the copies in flight;
- shared memory as tensors; a fresh allocation holds NaN, so data read before it landed shows up;
- mbarriers as the hardware has them: an arrival count and a transaction byte count per phase;
  `expect` is an arrive that also expects bytes (mbarrier.arrive.expect_tx), a TMA copy completes its
  bytes when it lands, `wait(bar, parity)` returns once the phase of that parity has completed (so a
  fresh barrier passes a wait on parity 1);
- TMA loads (the descriptor's box, zero-filled past the tensor), stores and add-reductions, landed by
  a copy engine in no fixed order;
- wgmma as an fp32-accumulated matmul of its operands, its result usable only once a
  `warpgroup_mma_wait` retired it;
- layouts are accepted and ignored; `fence_async_shared` and a partition's own barrier only yield.

The scheduling policy picks the adversary: "eager" runs the worker partitions (here the TMA producers)
whenever they can, lands copies at issue and lets wgmma read shared memory only when it retires, so a
stage released too early is refilled before its reader is done; "lazy" runs the default partition
first, lands a copy only when no thread can go on and lets wgmma read at issue, so data read before
its barrier said so is not there yet; "random" makes every choice by a seeded coin.

What it finds: wrong results (the numerics, a ring stage refilled before its reader was done, a tile
read before its bytes landed), deadlocks (no thread can go on and nothing is in flight; reported with
every barrier's state), an arrival or a byte count beyond what a phase expects, a wgmma result used or
waited for while still in flight, copies still in flight when a program ends, out-of-bounds global
stores.

A partition runs as one thread of whole-tile operations. That is what the compiled code does at the
points where partitions meet: Triton puts a `bar.sync` over the partition before its one elected
`mbarrier.arrive`, and after a TMA store's `cp.async.bulk.wait_group.read` (kernels/ptx_order.py
counts these in the PTX; the compile tests assert every one is so ordered, under Triton 3.6 and 3.7).
What it cannot find: races between the warps of one partition through shared memory (the backward's
dS^T and dQ tiles, each warp storing its rows: ptx_order.py checks instead that each is fenced and
synced over the partition before wgmma or TMA reads it), registers, layouts and resources
(compile_check.py lowers the kernels for sm_90), the memory model below the barriers (fences do
nothing here), and speed.

Use: `SimKernel(kernel, policy, seed)[grid](*args, **constexprs)`, or `simulated_kernels(...)` to swap
the launchers' kernels for simulated ones (tests/test_gluon_sim.py). Modules: program (threads,
scheduler, copy engine), memory (mbarriers, shared and global memory, TMA), wgmma, language (what
replaces `gl`, `mbarrier`, `tma`), kernel (running a jit function in all this).
"""

from npedit.ops.triton.gluon_sim.kernel import SimKernel, simulated, simulated_kernels
from npedit.ops.triton.gluon_sim.memory import Pointer, Shared, SimDescriptor
from npedit.ops.triton.gluon_sim.program import POLICIES, Deadlock, SimError

__all__ = ["POLICIES", "Deadlock", "Pointer", "Shared", "SimDescriptor", "SimError", "SimKernel", "simulated",
           "simulated_kernels"]
