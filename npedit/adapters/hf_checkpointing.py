"""Activation checkpointing of a frozen transformers judge's layers while it runs in the student loss.

The judge runs with gradient (the student's images reach it), so its backward needs the activations
of every layer: without checkpointing, in the paper's setting (Qwen2.5-VL-7B, 448 px images) the
largest part of npedit's step memory. `set_layer_checkpointing(model, mode)` checkpoints each
transformer layer of a transformers model (its `GradientCheckpointingLayer`s: the vision tower's blocks
and the language model's decoder layers, in every judge family) in one of `npedit.ops.checkpoint`'s
modes: "full" keeps each layer's inputs and recomputes the layer in backward, "selective" also keeps its
attention outputs and LSE. Values and gradients are those of "none"; under no_grad (the reference
images' features) layers run plainly.

Why not transformers' own `gradient_checkpointing_enable`: it checkpoints only modules in training mode,
and the judge stays in eval mode (a training-mode switch would turn on whatever a family does only in
training). Like transformers, this checkpoints the layer's `forward` (set on the instance), not its
`__call__`: module hooks stay outside the checkpoint, and under ZeRO-3 the layer's submodules gather
their weights again in the recompute through their own hooks.
"""
from __future__ import annotations

import functools

from torch import nn

from npedit.ops.checkpoint import block_checkpoint_function, check_mode


def checkpoint_layers(model: nn.Module) -> list[nn.Module]:
    """The outermost `GradientCheckpointingLayer` modules of a transformers model, in module order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    found = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    inner = {id(sub) for layer in found for sub in list(layer.modules())[1:]}
    return [m for m in found if id(m) not in inner]


def set_layer_checkpointing(model: nn.Module, mode: str) -> int:
    """Checkpoint every transformer layer of `model` in `mode` (none | full | selective); -> layers set."""
    check_mode(mode)
    layers = checkpoint_layers(model)
    for layer in layers:
        layer.__dict__.pop("forward", None)                       # back to the class's forward
        if mode != "none":   # the class's forward, bound, run through the shared block checkpointing
            layer.forward = functools.partial(block_checkpoint_function(mode), layer.forward)
    return len(layers)
