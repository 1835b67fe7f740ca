"""DeepSpeed engines, process set-up and checkpoints."""
