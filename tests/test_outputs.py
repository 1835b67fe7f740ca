"""Sample grids: one cell per image, headers kept over their own column."""
import numpy as np
import torch

from npedit.outputs import image_grid

CELL, PAD = 64, 4


def header_ink(grid, column: int) -> int:
    """Dark pixels in the header band above `column`'s cell (headers sit above the first row)."""
    a = np.asarray(grid.convert("L"))
    left = PAD + column * (CELL + PAD)
    band = a[:14, left:left + CELL + PAD]
    return int((band < 128).sum())


def test_long_header_wraps_inside_its_column():
    images = [torch.zeros(2, 3, 8, 8) for _ in range(3)]
    long = "reference-copy warm-up only"  # ~160 px in the default font, 2.5 cells of 64 px
    grid = image_grid(images, ["a", "b"], [long, "", ""], cell=CELL)
    assert header_ink(grid, 0) > 0
    assert header_ink(grid, 1) == 0 and header_ink(grid, 2) == 0, "the header ran into the next columns"
    short = image_grid(images, ["a", "b"], ["ref", "", ""], cell=CELL)
    assert grid.height > short.height  # a second header line, so the first row starts lower


def test_grid_size_and_tiles():
    images = [torch.ones(3, 3, 8, 8), -torch.ones(3, 3, 8, 8)]  # white and black tiles in [-1, 1]
    grid = image_grid(images, ["x"] * 3, ["a", "b"], cell=CELL)
    assert grid.width == 2 * (CELL + PAD) + PAD
    a = np.asarray(grid.convert("L"))
    y = a.shape[0] - PAD - 28 - CELL // 2  # middle of the last row's tiles
    assert a[y, PAD + CELL // 2] > 200 and a[y, 2 * PAD + CELL + CELL // 2] < 50
