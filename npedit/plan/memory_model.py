"""Per-GPU bytes of a run: model states by engine (replicas or ZeRO shards) plus the simulated step.

Model states (per parameter, N = GPUs):
- plain (DDP replicas, the mixed-precision recipe of diffusers' training scripts): trainable networks
  keep fp32 weights, fp32 gradients and fp32 AdamW moments, and compute with a bf16 copy of their
  weights (autocast) in a bf16 run; frozen networks are stored in the run's precision; with N > 1,
  DDP's gradient buckets hold another fp32 copy of the gradients.
- npedit (DeepSpeed, `train.zero_stage` for the trainable engines, ZeRO-3 for the frozen ones):
  stage 3 partitions weights, gradients and optimizer states (bf16: bf16 weights and gradients, fp32
  master weights and moments = 16 bytes / N); stages 1-2 keep full weights (and stage 1 full
  gradients). Every trainable engine allocates a contiguous gradient bucket of `reduce_bucket_size`
  elements (npedit's generated config: min(5e8, the engine's weights)); the optimizer step makes an fp32 copy of a sub-group's gradients (`sub_group_size`
  1e9). ZeRO-3 gathers a module's weights while it runs: about two of the largest modules (the
  running one and the prefetched next) plus the prefetch bucket (5e7 elements) and the judge's LM
  head, which the judge reads outside its module. Offload: "optimizer" moves master weights, moments
  and gradient partitions to the host, "param" also the weight partitions (stage 3).
Activations and temporaries come from the simulated step (`simulate.StepProfile`); the CUDA
runtime (context, cuBLAS / NCCL workspaces) is a fixed reserve outside the allocator.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from npedit.engine.ds_config import DEEPSPEED_BUCKET
from npedit.plan.simulate import ModelSize, StepProfile

__all__ = ["DS_DEFAULTS", "RUNTIME_RESERVE", "Breakdown", "Hardware", "per_gpu"]

GB = 1024 ** 3
RUNTIME_RESERVE = int(1.0 * GB)   # CUDA context + library workspaces (not in the allocator's count)
DS_DEFAULTS = {"reduce_bucket_size": DEEPSPEED_BUCKET, "sub_group_size": int(1e9), "prefetch_bucket_size": int(5e7)}
OFFLOADS = ("none", "optimizer", "param")


@dataclass
class Hardware:
    gpus: int = 1
    gpu_mem_gb: float = 80.0
    offload: str = "none"          # none | optimizer | param
    device: str = "cuda"           # cuda | cpu (validation: no runtime reserve, no collectives)

    def __post_init__(self):
        if self.gpus < 1:
            raise ValueError(f"--gpus must be >= 1, got {self.gpus}")
        if self.gpu_mem_gb <= 0:
            raise ValueError(f"--gpu_mem_gb must be > 0, got {self.gpu_mem_gb}")
        if self.offload not in OFFLOADS:
            raise ValueError(f"--offload must be one of {', '.join(OFFLOADS)}, got {self.offload!r}")


@dataclass
class Breakdown:
    """Bytes per GPU, by kind; `total` is the predicted peak of the allocator plus the runtime reserve."""
    stack: str
    params: int = 0
    grads: int = 0
    optimizer: int = 0
    engine_buffers: int = 0
    gathered: int = 0
    activations: dict[str, int] = field(default_factory=dict)
    step_extra: int = 0            # the rest of the step's peak: temporaries, gradients in flight, optimizer step
    runtime: int = 0
    host: int = 0                  # bytes offloaded to the host (per GPU process)
    peak_phase: str = ""

    @property
    def static(self) -> int:
        return self.params + self.grads + self.optimizer + self.engine_buffers + self.gathered

    @property
    def dynamic(self) -> int:
        return sum(self.activations.values()) + self.step_extra

    @property
    def allocated(self) -> int:
        return self.static + self.dynamic

    @property
    def total(self) -> int:
        return self.allocated + self.runtime

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(static=self.static, dynamic=self.dynamic, allocated=self.allocated, total=self.total)
        return d


def _bytes(precision: str) -> int:
    return 2 if precision == "bf16" else 4


def per_gpu(profile: StepProfile, sizes: list[ModelSize], precision: str, zero_stage: int, hw: Hardware,
            engine: str, amp: bool = False) -> Breakdown:
    """Combine a simulated step with the model states of its engine on `hw`: "torch" (full replicas,
    torch AdamW: the plain stack, and any measured run outside DeepSpeed) or "deepspeed" (ZeRO).
    `amp`: the replicas follow the mixed-precision recipe (fp32 trainable states in a bf16 run) instead
    of computing and storing everything in the run's precision (what `run_step` does)."""
    b = _bytes(precision)
    trainable = [s for s in sizes if s.trainable]
    frozen = [s for s in sizes if not s.trainable]
    out = Breakdown(profile.stack, peak_phase=profile.peak_phase)
    out.activations = dict(profile.activations)
    out.step_extra = max(0, profile.dynamic_peak - sum(out.activations.values()))
    out.runtime = RUNTIME_RESERVE if hw.device == "cuda" else 0
    buffers = sum(s.buffers_bytes for s in sizes)
    if engine == "torch":
        _replicas(out, trainable, frozen, b, hw, buffers, amp and b == 2)
    else:
        _zero(out, trainable, frozen, b, zero_stage, hw, buffers)
    return out


def _replicas(out: Breakdown, trainable, frozen, b: int, hw: Hardware, buffers: int, amp: bool) -> None:
    n_train = sum(s.params for s in trainable)
    # fp32 master weights (+ the bf16 working copy the simulation already computes with)
    out.params = n_train * (4 + 2 if amp else b) + sum(s.params for s in frozen) * b + buffers
    out.optimizer = n_train * (8 if amp else 2 * b)
    if amp:  # the simulation's gradients are bf16; the recipe's are fp32
        out.step_extra += max(s.params for s in trainable) * 2
    if hw.gpus > 1 and hw.device == "cuda":
        out.engine_buffers = n_train * 4                         # DDP gradient buckets (fp32)


def _zero(out: Breakdown, trainable, frozen, b: int, stage: int, hw: Hardware, buffers: int) -> None:
    n = hw.gpus
    master = 4 if b == 2 else 0                                  # fp32 master weights of a bf16 run
    offload_opt = hw.offload in ("optimizer", "param")
    offload_param = hw.offload == "param" and stage == 3
    params = grads = optimizer = host = 0
    for s in trainable:
        p = s.params
        w = p * b / n if stage == 3 else p * b
        g = p * b / n if stage >= 2 else p * b
        o = p * (master + 8) / (n if stage >= 1 else 1)
        if offload_param:
            host, w = host + w, 0
        if offload_opt:
            host, o = host + o + p * 4 / n, 0
        params, grads, optimizer = params + w, grads + g, optimizer + o
    for s in frozen:                                             # optimizer-less ZeRO-3 engines
        w = s.params * b / n
        if hw.offload == "param":
            host, w = host + w, 0
        params += w
    out.params = int(params) + buffers
    out.grads = int(grads)
    out.optimizer = int(optimizer)
    out.host = int(host)
    if hw.device == "cuda":
        out.engine_buffers = len(trainable) * min(DS_DEFAULTS["reduce_bucket_size"],
                                                  max(s.params for s in trainable)) * b
        if b == 2 and not offload_opt:                           # fp32 gradients of one sub-group at the step
            out.step_extra += int(min(DS_DEFAULTS["sub_group_size"], max(s.params for s in trainable) / n) * 4)
        models = trainable + frozen if stage == 3 else frozen
        largest = max(s.largest_leaf for s in models)
        external = max(s.external for s in models)
        working = 2 * largest + DS_DEFAULTS["prefetch_bucket_size"] + external
        out.gathered = int(min(working, max(s.params for s in models)) * b)   # never more than a whole model
