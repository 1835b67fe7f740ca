"""Evaluation: the shapes world's oracle report (`npedit eval --world shapes --checkpoint DIR`)."""
