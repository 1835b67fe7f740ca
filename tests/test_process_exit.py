"""How a training process ends: engines released, process groups destroyed, then an exit that skips
the interpreter's teardown only after a clean finish (see npedit.engine.process_exit)."""
import json
import sys

from helpers import run

# a marker printed by an atexit handler: present when the interpreter's own teardown ran
EXIT_SCRIPT = """
import atexit, sys
from npedit.engine.distributed import init_distributed, shutdown_distributed
from npedit.engine.process_exit import exit_process
atexit.register(lambda: print("teardown ran", flush=True))
init_distributed()
if sys.argv[1] == "clean":
    shutdown_distributed()
print("last words", end="")   # unflushed: exit_process must flush it
exit_process(int(sys.argv[2]))
"""


def exit_of(how: str, code: int):
    return run([sys.executable, "-c", EXIT_SCRIPT, how, str(code)], check=False)


def test_a_clean_finish_exits_0_without_the_interpreter_teardown_and_keeps_its_output():
    proc = exit_of("clean", 0)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("last words")           # DeepSpeed may print before it


def test_errors_and_unfinished_runs_exit_through_the_normal_teardown():
    failed = exit_of("clean", 2)
    assert failed.returncode == 2 and failed.stdout.endswith("last wordsteardown ran\n")
    unfinished = exit_of("no-shutdown", 0)
    assert unfinished.returncode == 0 and unfinished.stdout.endswith("last wordsteardown ran\n")


CLOSE_SCRIPT = """
import json, sys
from npedit.config import apply_overrides
from npedit.presets import get_preset
from npedit.trainer import Trainer

trainer = Trainer(apply_overrides(get_preset("shapes_tiny"), ["train.max_steps=1"]), sys.argv[1])
trainer.run()
nets = {"student": trainer.engines.student.module, "fake": trainer.engines.fake.module,
        "real": trainer.engines.real}
# hooks below the root (the engine's own pair sits on the root and stays with the module)
hooks = lambda m: sum(len(x._forward_pre_hooks) + len(x._forward_hooks) for x in list(m.modules())[1:])
before = {name: hooks(m) for name, m in nets.items()}
trainer.close()
print(json.dumps({"before": before, "after": {name: hooks(m) for name, m in nets.items()},
                  "frozen_left": len(trainer.engines.frozen)}))
"""


def test_close_releases_the_zero3_hooks_of_every_engine(tmp_path):
    """ZeRO-3 puts gather hooks on every sub-module; after Trainer.close none of them is left, so
    nothing that holds communication buffers outlives the process groups."""
    proc = run([sys.executable, "-c", CLOSE_SCRIPT, str(tmp_path / "run")])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, count in result["before"].items():
        assert count > 10, (name, count)                # a pre- and a post-hook per sub-module
        assert result["after"][name] == 0, (name, result["after"][name])
    assert result["frozen_left"] == 0


def test_the_npedit_command_trains_and_exits_0(tmp_path):
    run([sys.executable, "-m", "npedit", "train", "--preset", "shapes_tiny", "--output_dir", str(tmp_path),
         "--max_steps", "1"])
    assert (tmp_path / "checkpoints" / "step_1" / "trainer_state.json").is_file()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
