"""JPEG consistency (issue 26): could the network have made an image this JPEG file was compressed from?

A JPEG file pins each DCT coefficient of the image it was made from to an interval: over its quantisation step the
coefficient lay within 1/2 of the stored integer. A network's own image, compressed, came from a re-synthesis
g(w, n) that satisfies every interval; a real photo's best re-synthesis need not. After the plain projection of the
file (the distance the verdict uses), :func:`refine_consistency` continues from its (w, n) for
``ConsistencySettings.steps`` Adam steps on ``LPIPS(JPEG(g), target) + weight * residual``, ``residual`` being
:func:`detector.jpeg.consistency_residual` of g's coefficients against the file's integers, and reports the residual
left. The integers are the file's own (:func:`detector.jpeg_coefficients.read_jpeg_coefficients`; the image a file
was made from is then within 2e-5 of its intervals) or, for a file that reader refuses, re-derived from the decoded
pixels, which puts 0.1-9 % of them one step off (residuals of the true image 1e-4 to 0.3; tests/detector/).

A measurement, not yet part of a verdict: the residual needs its own calibration at the file's quality
(``benchmarks/jpeg_consistency_pilot.py``, ``benchmarks/robustness.py --method consistency``, docs/measurements.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional

import torch

from .batching import _Frozen
from .jpeg import DifferentiableJpeg, consistency_residual
from .jpeg_coefficients import JpegCoefficients
from .results import ProjectionResult

__all__ = ["ConsistencySettings", "ConsistencyResult", "refine_consistency"]


@dataclass(frozen=True)
class ConsistencySettings:
    """The refinement after projection: ``steps`` of Adam at ``lr`` on (w, noise), the residual weighted by
    ``weight`` against LPIPS through the JPEG model (the pilot's 300 steps, lr 0.01, weight 10)."""

    steps: int = 300
    lr: float = 0.01
    weight: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.weight < 0:
            raise ValueError(f"invalid consistency settings {self}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ConsistencyResult:
    """residual_before / residual: how far the projection's re-synthesis, and the refined one, fall outside the
    file's intervals; distance_before / distance: LPIPS between the JPEG of each and the file; intervals: where the
    stored integers came from ("file", or "decoded pixels")."""

    residual_before: float
    residual: float
    distance_before: float
    distance: float
    settings: Dict[str, Any]
    intervals: str = "file"  # or "decoded pixels"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def refine_consistency(G: torch.nn.Module, result: ProjectionResult, target: torch.Tensor, jpeg: DifferentiableJpeg,
                       distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       settings: ConsistencySettings = ConsistencySettings(),
                       stored: Optional[JpegCoefficients] = None) -> ConsistencyResult:
    """Refine one projection (``result`` of ``target`` [1, C, R, R], the decoded JPEG file in [-1, 1]) towards
    consistency with the file, modelled by ``jpeg`` (its own tables and subsampling), whose integers are ``stored``
    (None: re-derived from ``target``). W stays one w for all layers, as the projection's; the generator's weights
    are not touched."""
    if target.dim() != 4 or target.shape[0] != 1 or target.shape[-1] != G.img_resolution:
        raise ValueError(f"expected one image [1, C, {G.img_resolution}, {G.img_resolution}], got "
                         f"{tuple(target.shape)}")
    device = G.mapping.w_avg.device
    target = target.to(device)
    jpeg = jpeg.to(device)
    ws, noise = result.synthesis_inputs(device)
    with _Frozen(G, distance):  # the generator's and the distance's weights are not optimised
        with torch.no_grad():
            derived = jpeg.coefficients(target)
        if stored is None:
            k, mask, intervals = derived.round(), None, "decoded pixels"
        else:
            k, mask, intervals = stored.flat().to(device), stored.mask().to(device), "file"
            if k.shape != derived.shape:
                raise ValueError(f"the file's coefficients {tuple(k.shape)} do not fit the JPEG model's "
                                 f"{tuple(derived.shape)} (another size or subsampling)")
        w = ws[:, :1].clone().requires_grad_(True)
        maps = [m.clone().requires_grad_(True) for m in noise]

        def measure():
            with torch.no_grad():
                g = G.synthesis(w.expand(-1, ws.shape[1], -1), noise=maps)
                return (float(consistency_residual(jpeg.coefficients(g), k, mask)),
                        float(distance(jpeg(g), target)))

        residual_before, distance_before = measure()
        opt = torch.optim.Adam([w] + maps, lr=settings.lr)
        for _ in range(settings.steps):
            g = G.synthesis(w.expand(-1, ws.shape[1], -1), noise=maps)
            loss = distance(jpeg(g), target).sum() + settings.weight * consistency_residual(
                jpeg.coefficients(g), k, mask).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        residual, dist = measure()
    return ConsistencyResult(residual_before=residual_before, residual=residual, distance_before=distance_before,
                             distance=dist, settings=settings.to_dict(), intervals=intervals)
