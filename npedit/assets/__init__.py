"""Weights that ship with the package (the shapes world's toy teacher, text encoder and judge).

`npedit pretrain teacher|judge --world shapes --out npedit/assets/shapes` reproduces them.
"""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent


def asset_path(name: str) -> Path:
    """Folder of a shipped model, e.g. asset_path("shapes/teacher"); FileNotFoundError if it is missing."""
    path = ASSETS / name
    if not (path / "config.json").is_file():
        available = sorted(str(p.parent.relative_to(ASSETS)) for p in ASSETS.glob("**/config.json"))
        raise FileNotFoundError(f"no shipped model at {path} (needs config.json); available: {available}")
    return path
