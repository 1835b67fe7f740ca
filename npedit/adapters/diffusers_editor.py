"""What the diffusers editors (`SD3Editor`, `FluxEditor`) share: the wrapped transformer, its config,
and activation checkpointing of its blocks in the run's mode."""
from __future__ import annotations

from torch import nn

from npedit.ops.checkpoint import block_checkpoint_function, check_mode


class DiffusersEditor(nn.Module):
    """A diffusers transformer as an NP-Edit student or score network; subclasses define forward."""

    family: str

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    @property
    def config(self):
        return self.transformer.config

    def set_checkpointing(self, mode: str) -> None:
        """none | full | selective, per transformer block (diffusers' own block loop): "full" recomputes
        each block in backward, "selective" too but keeps its attention outputs and LSE, so backward
        never re-runs an attention forward (`npedit.ops.checkpoint`; the attention must run through
        npedit's processors or SDPA, see `npedit.adapters.diffusers_attention`)."""
        check_mode(mode)
        if mode == "none":
            self.transformer.disable_gradient_checkpointing()
        else:
            self.transformer.enable_gradient_checkpointing(block_checkpoint_function(mode))
