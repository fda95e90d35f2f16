"""Progressive growing (Karras et al. 2018, PGGAN §3): the level-of-detail schedule and the real-image pipeline.

The level of detail ``lod`` is ``log2(R) - log2(r)`` for a network currently producing r x r images of an R x R
network; a fractional lod is a fade-in, with ``alpha = 1 - frac(lod)`` the weight of the new layers. The networks
that grow this way are in :mod:`stylegan.stylegan1`; the trainer sets their lod from :func:`pg_schedule` and feeds
them reals through :func:`pg_process_reals`.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from .config import _check_resolution


def lod_to_stage(lod: float, img_resolution: int) -> Tuple[int, float]:
    """(r, alpha): the resolution being trained at ``lod`` and the fade-in weight of its new layers
    (1 = fully faded in)."""
    max_lod = int(math.log2(img_resolution)) - 2
    lod = float(lod)
    if not 0 <= lod <= max_lod:
        raise ValueError(f"lod must be in [0, {max_lod}] for {img_resolution} px, got {lod}")
    k = math.floor(lod)
    return img_resolution >> k, 1.0 - (lod - k)


def stage_to_lod(resolution: int, alpha: float, img_resolution: int) -> float:
    """Inverse of :func:`lod_to_stage`: the lod at which ``resolution`` is faded in by ``alpha`` in (0, 1]."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    lod = math.log2(img_resolution) - math.log2(resolution) + (1.0 - alpha)
    lod_to_stage(lod, img_resolution)  # range check
    return lod


def pg_schedule(cur_nimg: int, lod_training_kimg: float = 600, lod_transition_kimg: float = 600, *,
                img_resolution: int, initial_resolution: int = 4) -> Tuple[float, float]:
    """PGGAN's schedule: (lod, alpha) after ``cur_nimg`` real images shown.

    Training starts at ``initial_resolution`` and alternates ``lod_training_kimg`` thousand images of
    stabilisation with ``lod_transition_kimg`` of fade-in to the next resolution, until lod reaches 0.
    ``alpha`` = 1 - frac(lod) (1 outside transitions). ``lod_transition_kimg = 0`` switches instantly.
    """
    _check_resolution(img_resolution)
    _check_resolution(initial_resolution)
    if initial_resolution > img_resolution:
        raise ValueError(f"initial_resolution {initial_resolution} exceeds img_resolution {img_resolution}")
    if lod_training_kimg < 0 or lod_transition_kimg < 0 or lod_training_kimg + lod_transition_kimg <= 0:
        raise ValueError("lod_training_kimg and lod_transition_kimg must be >= 0, not both 0")
    kimg = max(cur_nimg, 0) / 1000.0
    phase = lod_training_kimg + lod_transition_kimg
    phase_idx = math.floor(kimg / phase)
    phase_kimg = kimg - phase_idx * phase
    lod = math.log2(img_resolution) - math.log2(initial_resolution) - phase_idx
    if lod_transition_kimg > 0:
        lod -= max(phase_kimg - lod_training_kimg, 0.0) / lod_transition_kimg
    lod = max(lod, 0.0)
    return lod, 1.0 - (lod - math.floor(lod))


def _nearest_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return x if factor == 1 else x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def _box_down(x: torch.Tensor, factor: int) -> torch.Tensor:
    return x if factor == 1 else F.avg_pool2d(x, factor)


def pg_process_reals(x: torch.Tensor, lod: float) -> torch.Tensor:
    """Real images [N, C, R, R] as the network sees them at ``lod`` (PGGAN's real-image pipeline): box-filtered
    to r x r, faded against the r/2 version during a transition (lerp(up(down(x_r)), x_r, alpha)), then
    nearest-up-sampled back to R x R. Identity at lod 0."""
    R = x.shape[-1]
    r, alpha = lod_to_stage(lod, R)
    x_r = _box_down(x, R // r)
    if alpha < 1:
        x_r = torch.lerp(_nearest_up(_box_down(x_r, 2), 2), x_r, alpha)
    return _nearest_up(x_r, R // r)
