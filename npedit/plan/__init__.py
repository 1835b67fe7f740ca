"""Memory planner: predict the per-GPU memory of an NP-Edit run, plain stack vs npedit.

    npedit plan --preset shapes --gpus 8 --gpu_mem_gb 40 [--set key=value ...] [--json]

How: the run's networks are instantiated on the meta device from their configs (no weights), one
training step is simulated with the trainer's own code (`simulate`: meta tensors for activations,
real integer tensors for ids / masks / grids, a tracker of live bytes per phase), and the model
states (weights, gradients, AdamW states, engine buffers) are added per engine and GPU count
(`memory_model`). `measure` runs the same step for real and reports the allocator's peak, which is
what the predictions are validated against (tests/test_plan.py, benchmarks/).
"""
from npedit.plan.memory_model import Breakdown, Hardware
from npedit.plan.predict import Prediction, predict, predict_measurable

__all__ = ["Breakdown", "Hardware", "Prediction", "predict", "predict_measurable"]
