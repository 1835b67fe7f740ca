"""`npedit` command line: train, edit."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn


def edit_main(argv) -> int:
    p = argparse.ArgumentParser(prog="npedit edit", description="Edit an image with a trained student (4 steps).")
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoints/step_<N> or its export/")
    p.add_argument("--image", required=True, help="input image (any size; centre-cropped and resized)")
    p.add_argument("--instruction", required=True)
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="fewstep", help="fewstep (default) or euler<N>")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    args = p.parse_args(argv)
    from npedit.data.images import check_image, load_image
    from npedit.inference import Editor
    from npedit.method.unroll import euler_steps
    from npedit.outputs import save_image

    try:
        euler_steps(args.sampler)
        problem = check_image(args.image)
        if problem:
            raise ValueError(f"--image {args.image}: {problem}")
        editor = Editor.from_checkpoint(args.checkpoint, args.device)
        image = load_image(args.image, editor.image_size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"npedit edit: error: {exc}", file=sys.stderr)
        return 2
    out = editor.edit(image[None], [args.instruction], seed=args.seed, sampler=args.sampler)[0]
    save_image(out, args.out)
    print(f"wrote {args.out}")
    return 0


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def eval_main(argv) -> int:
    from npedit.eval.cli import main
    return main(argv)


def pretrain_main(argv) -> int:
    from npedit.pretrain.cli import main
    return main(argv)


def plan_main(argv) -> int:
    from npedit.plan.cli import main
    return main(argv)


COMMANDS = {"edit": edit_main, "eval": eval_main, "pretrain": pretrain_main, "plan": plan_main}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: npedit {train,edit,eval,pretrain,plan} ...\n"
              "  train     train NP-Edit (same flags as npedit/train.py)\n"
              "  edit      edit one image with a trained checkpoint\n"
              "  eval      oracle evaluation of a checkpoint on the shapes world\n"
              "  pretrain  train the shapes world's toy teacher or toy judge\n"
              "  plan      predict per-GPU memory of a run, plain stack vs npedit")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from npedit.train import main as train_main
        return train_main(rest)
    if command not in COMMANDS:
        print(f"npedit: unknown command {command!r}; choose from train, {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[command](rest)


def entry_point() -> NoReturn:
    """The `npedit` command: a finished training run leaves through exit_process (see there)."""
    from npedit.engine.process_exit import exit_process

    exit_process(main())


if __name__ == "__main__":
    entry_point()
