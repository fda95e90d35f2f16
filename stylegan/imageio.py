"""Writing generated images: 8-bit PNGs and grids, converted exactly as NVIDIA's tools do (x*127.5 + 128,
clamp to [0, 255], truncate), written atomically."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .generator import to_uint8
from .util.files import atomic_write_bytes


def png_bytes(arr: np.ndarray) -> bytes:
    """An 8-bit PNG of a uint8 [H, W, C] array (C = 1 gives a greyscale PNG)."""
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def save_png(img: torch.Tensor, path: os.PathLike) -> Path:
    """One image [C, H, W] (or [1, C, H, W]) in [-1, 1] to an 8-bit PNG."""
    if img.ndim == 3:
        img = img.unsqueeze(0)
    return atomic_write_bytes(path, png_bytes(to_uint8(img)[0]))


def grid_array(imgs: torch.Tensor, cols: Optional[int] = None) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [rows*H, cols*W, C], row-major, empty cells black."""
    arr = to_uint8(imgs)
    n, h, w, c = arr.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = arr[i]
    return grid


def save_grid(imgs: torch.Tensor, path: os.PathLike, cols: Optional[int] = None) -> Path:
    return atomic_write_bytes(path, png_bytes(grid_array(imgs, cols)))
