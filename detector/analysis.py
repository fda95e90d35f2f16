"""After-the-fact looks at projections: what early stopping would have saved (:func:`simulate_early_stop`) and
whether the optimised noise maps copied the image (StyleGAN2 Fig. 18, :func:`noise_structure_correlation`)."""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .batching import _resize
from .projector import _settled
from .results import ProjectionResult
from .settings import ProjectorSettings

# ----------------------------------------------------------------------------------------------------------------
# Early stopping, simulated on a full run


def simulate_early_stop(clean_trace: Sequence[Tuple[int, float]], final_distance: float,
                        band: Tuple[float, float], settings: ProjectorSettings) -> Tuple[int, float]:
    """(steps run, reported distance) that early stopping with ``band`` would have given an image that was
    projected in full (``settings.steps`` steps, ending at ``final_distance``) with ``clean_checkpoints``: the
    rule of :class:`ProjectorSettings` applied to its ``clean_trace``. Exact, because the images of a batch are
    independent: freezing one changes nothing for the others, and an image's checkpoints before its freeze do
    not depend on whether it is frozen later."""
    if not clean_trace:
        raise ValueError("simulate_early_stop needs the clean_trace of a run with clean_checkpoints (or early_stop)")
    hist: List[Tuple[int, float]] = []
    for step, d in clean_trace:
        hist.append((int(step), float(d)))
        if _settled(hist[-settings.early_stop_patience:], settings.early_stop_patience, tuple(band),
                    settings.early_stop_margin, int(settings.steps)):
            return int(step), float(d)
    return int(settings.steps), float(final_distance)


def _luminance(img: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, 1, H, W]: Rec. 601 luma for 3 channels, the channel mean otherwise."""
    if img.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype, device=img.device).reshape(1, 3, 1, 1)
        return (img * weights).sum(dim=1, keepdim=True)
    return img.mean(dim=1, keepdim=True)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.flatten().double()
    b = b.flatten().double()
    a = a - a.mean()
    b = b - b.mean()
    denom = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def noise_structure_correlation(result: ProjectionResult, target: torch.Tensor, min_resolution: int = 8,
                                per_map: bool = False) -> Union[float, List[float]]:
    """How much the optimised noise maps copy the target's structure (StyleGAN2 Fig. 18: without the noise
    regulariser, the maps of a projected real image show the image).

    For each map of resolution r >= ``min_resolution``: |Pearson correlation| between the map, bilinearly
    resized to the image size, and the target's high-pass luminance at the map's scale, i.e. the band of the
    luminance that a map of resolution r can carry: ``up(area(Y, r)) - up(area(Y, r / 2))`` (for the full-
    resolution map: the luminance minus its half-resolution low-pass). Returns the mean over maps (or the
    list with ``per_map=True``).
    """
    if target.ndim == 3:
        target = target[None]
    target = target.detach().to("cpu", torch.float32)
    R = target.shape[-1]
    Y = _luminance(target)

    def up(x):
        return x if x.shape[-1] == R else F.interpolate(x, size=(R, R), mode="bilinear", align_corners=False)

    values = []
    for n in result.noise:
        r = n.shape[-1]
        if r < min_resolution:
            continue
        band = up(_resize(Y, r)) - up(_resize(Y, max(r // 2, 1)))
        values.append(abs(_pearson(up(n[None].to(torch.float32)), band)))
    if per_map:
        return values
    return float(np.mean(values)) if values else float("nan")
