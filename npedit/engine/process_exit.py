"""How a training process leaves. Torch-free, so an entry point can call it whatever command ran.

Once a run has finished cleanly (`shutdown_distributed` marks it: engines destroyed, files closed,
process groups gone), nothing is left to write, yet the interpreter's teardown still destroys
torch's and gloo's C++ objects; even after all that, a 2-rank CPU run aborted there once in CI
(rank 1: "terminate called without an active exception", after its last step, log and checkpoint),
and the launcher then reports a finished run as failed and kills its peers. So a clean finish leaves
with os._exit; every other exit (errors included) goes through the normal `sys.exit`.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

_finished_cleanly = False


def mark_finished_cleanly() -> None:
    """Called by shutdown_distributed once everything is written and the process groups are gone."""
    global _finished_cleanly
    _finished_cleanly = True


def exit_process(code: int) -> NoReturn:
    """Leave the process with `code`; after a clean finish, skip the interpreter's teardown."""
    if code == 0 and _finished_cleanly:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(code)
