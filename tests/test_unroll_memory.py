"""Bytes saved for backward by one NP-Edit student step (counted, not timed): selective checkpointing
through the unroll keeps far less than no checkpointing, and a second unrolled pass adds little."""
import pytest
from test_gradient_flow import _setup

from npedit.method.schedule import sample_unroll_depth
from npedit.method.step import npedit_student_loss
from npedit.ops.memory import saved_tensor_bytes

BUILTIN_DEFAULT = ["student.dim=128", "student.depth=4", "student.heads=4", "data.image_size=32", "text.dim=64",
                   "vlm.dim=128", "vlm.depth=3", "vlm.vision_dim=64", "vlm.vision_depth=2"]


@pytest.mark.parametrize("sizes", [[], BUILTIN_DEFAULT], ids=["tiny", "builtin-default"])
def test_selective_checkpointing_of_the_unroll(sizes):
    cfg, models, nets, batch = _setup(sizes)
    step_for_depth = {sample_unroll_depth(cfg.train.seed, s, 4): s for s in range(30)}
    saved = {}
    for mode in ("none", "selective"):
        models.student.checkpointing = mode
        for k in (1, 2):
            step = step_for_depth[k]
            saved[mode, k] = saved_tensor_bytes(lambda step=step: npedit_student_loss(nets, batch, step, cfg, 0)[0])
    assert saved["none", 2] >= 3 * saved["selective", 2], saved
    assert saved["selective", 2] < 1.3 * saved["selective", 1], saved
