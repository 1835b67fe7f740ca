"""PIL image helpers: load as RGB, centre-crop to a square, resize, convert to / from tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps


def check_image(path: str | Path) -> str | None:
    """None when the file opens and fully decodes with PIL, else a short reason."""
    try:
        with Image.open(path) as im:
            im.load()
    except FileNotFoundError:
        return "file not found"
    except IsADirectoryError:
        return "is a directory, not an image"
    except Exception as e:   # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return f"cannot read image ({type(e).__name__}: {e})"
    return None


def center_crop_square(im: Image.Image) -> Image.Image:
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side))


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """[3, H, W] float32 in [0, 1] from an RGB PIL image."""
    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """RGB PIL image from [3, H, W] in [0, 1] (clamped)."""
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def load_image(path: str | Path, image_size: int) -> torch.Tensor:
    """[3, S, S] float32 in [0, 1]: EXIF-oriented, RGB, centre-cropped square, PIL-bicubic resized."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im = im.convert("RGB")
        im = center_crop_square(im)
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return pil_to_tensor(im).clamp_(0, 1)
