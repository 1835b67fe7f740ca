"""Process-group set-up: the same entry point under `deepspeed`, `torchrun` or plain `python`."""
from __future__ import annotations

import gc
import os
import socket

import torch

from npedit.engine.process_exit import mark_finished_cleanly


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it from its ephemeral range)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_single_process_env() -> None:
    """Plain `python train.py`: DeepSpeed needs RANK/WORLD_SIZE/MASTER_* (else it asks for mpi4py)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def init_distributed() -> tuple[int, int, torch.device]:
    """-> (rank, world_size, device). gloo on CPU, nccl on CUDA."""
    ensure_single_process_env()
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def shutdown_distributed() -> None:
    """End of a run that finished on every rank (its engines destroyed, its files closed): free what
    still holds communication buffers, wait for the others, then destroy every process group.

    Left to interpreter exit, gloo's worker threads can outlive Python and abort the process
    ("terminate called without an active exception") after all the work is done. Call this only on
    the success path: a rank that raised must not enter a collective its peers never reach. Then the
    entry point may leave without the interpreter's teardown (npedit.engine.process_exit)."""
    gc.collect()
    if torch.distributed.is_initialized():
        barrier()
        torch.distributed.destroy_process_group()
    mark_finished_cleanly()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def mean_across_ranks(values: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Average scalar metrics over ranks (one all-reduce), -> plain floats."""
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        backend_device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
        tensor = tensor.to(backend_device)
        torch.distributed.all_reduce(tensor)
        tensor = tensor.cpu() / torch.distributed.get_world_size()
    return {k: float(v) for k, v in zip(keys, tensor.tolist())}
