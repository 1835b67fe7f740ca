"""npedit: a kernel-optimised training engine for NP-Edit (instruction editing without edit pairs)."""
__version__ = "0.1.0"
