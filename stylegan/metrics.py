"""Perceptual path length (StyleGAN §4.1 Eq. 2-3; StyleGAN2 §3).

For a pair of latents and t in [0, 1], the images at t and t + eps along the interpolation path are compared
with a perceptual distance d; the sample is ``d(g(path(t)), g(path(t + eps))) / eps**2``:

* ``space='z'``: spherical interpolation (slerp) between the two z's normalised to unit length (Eq. 2),
  then the mapping network;
* ``space='w'``: linear interpolation (lerp) between the two mapped w's (Eq. 3), no truncation;
* ``sampling='full'``: t ~ U(0, 1); ``'end'``: t = 0 (the path's end points only).

Both images of a pair share one set of noise maps (``noise_mode='random'`` draws fresh maps per pair).
Images larger than 256 px are box-filtered down to 256 px before the distance (the resolution LPIPS was
calibrated at). ``crop=True`` keeps the central face region of an aligned face image, as StyleGAN's evaluation
on FFHQ did: with c = H / 8, rows [3c, 7c) and columns [2c, 6c), i.e. a window of half the image side,
centred horizontally and starting 3/8 down (eyes to chin of an FFHQ-aligned face); applied before the
down-sampling. Finally the samples below the 1st and above the 99th percentile are dropped (numpy percentiles,
'lower' for the 1st and 'higher' for the 99th, as the official evaluation does) and the mean of the rest is the PPL.

The distance is any callable ``distance(a, b) -> [N]`` on NCHW images in [-1, 1]; the CLI uses LPIPS-VGG
(:func:`stylegan.perceptual.load_lpips`, imported by the caller: ``stylegan`` does not import ``detector``).
Everything random comes from one seed (:func:`ppl_latents`), so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PPLResult", "perceptual_path_length", "ppl_latents", "slerp", "face_crop", "percentile_filter",
           "PPL_SPACES", "PPL_SAMPLINGS"]

PPL_SPACES = ("w", "z")
PPL_SAMPLINGS = ("full", "end")
MAX_DISTANCE_RESOLUTION = 256

DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PPLResult:
    """mean / std of the samples kept by the percentile filter; ``num_samples`` drawn, ``filtered_count`` of them
    dropped by the filter; ``values`` all samples in drawing order (not in ``to_dict``)."""

    mean: float
    std: float
    num_samples: int
    filtered_count: int
    settings: Dict[str, Any]
    values: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))

    @property
    def num_kept(self) -> int:
        return self.num_samples - self.filtered_count

    def to_dict(self) -> Dict[str, Any]:
        return {"metric": "ppl", "mean": float(self.mean), "std": float(self.std),
                "num_samples": int(self.num_samples), "filtered_count": int(self.filtered_count),
                "num_kept": int(self.num_kept), "settings": dict(self.settings)}


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the unit-normalised rows of a and b [N, D] at t [N]; a unit vector."""
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    cos = (a * b).sum(dim=1, keepdim=True).clamp(-1, 1)
    theta = torch.acos(cos) * t.reshape(-1, 1)
    c = b - cos * a
    c = c / c.norm(dim=1, keepdim=True).clamp_min(torch.finfo(c.dtype).tiny)
    d = a * torch.cos(theta) + c * torch.sin(theta)
    return d / d.norm(dim=1, keepdim=True)


def face_crop(img: torch.Tensor) -> torch.Tensor:
    """The central face region of an aligned face [N, C, H, W]: rows [3H/8, 7H/8), columns [W/4, 3W/4)."""
    H, W = img.shape[2], img.shape[3]
    ch, cw = H // 8, W // 8
    return img[:, :, 3 * ch: 7 * ch, 2 * cw: 6 * cw]


def percentile_filter(values: np.ndarray, lo: float = 1, hi: float = 99) -> np.ndarray:
    """Boolean mask of the values within [percentile(lo, 'lower'), percentile(hi, 'higher')]."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return np.zeros(0, dtype=bool)
    lo_v = np.percentile(values, lo, method="lower")
    hi_v = np.percentile(values, hi, method="higher")
    return (values >= lo_v) & (values <= hi_v)


def ppl_latents(num_samples: int, z_dim: int, seed: int = 0, sampling: str = "full"
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The draws of :func:`perceptual_path_length`: (z0 [N, z_dim], z1 [N, z_dim], t [N]), float64, CPU.

    One ``torch.Generator`` seeded with ``seed``: z0, then z1, then t (zeros for ``sampling='end'``)."""
    if sampling not in PPL_SAMPLINGS:
        raise ValueError(f"sampling must be one of {PPL_SAMPLINGS}, got {sampling!r}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    z0 = torch.randn([num_samples, z_dim], generator=g, dtype=torch.float64)
    z1 = torch.randn([num_samples, z_dim], generator=g, dtype=torch.float64)
    t = torch.rand([num_samples], generator=g, dtype=torch.float64)
    if sampling == "end":
        t = torch.zeros_like(t)
    return z0, z1, t


def _noise_for_pairs(synthesis, n: int, gen: torch.Generator, device, dtype):
    """Explicit noise maps: one per pair, repeated for its two images ([2n, 1, r, r] each)."""
    maps = []
    for shape in synthesis.noise_shapes:
        m = torch.randn([n, *shape], generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
        maps.append(m.repeat_interleave(2, dim=0))
    return maps


def _prepare(img: torch.Tensor, crop: bool) -> torch.Tensor:
    if crop:
        img = face_crop(img)
    H = img.shape[2]
    if H > MAX_DISTANCE_RESOLUTION:
        factor = H // MAX_DISTANCE_RESOLUTION
        img = F.avg_pool2d(img, factor)
    return img


def perceptual_path_length(G, distance: DistanceFn, num_samples: int = 50000, space: str = "w",
                           sampling: str = "end", epsilon: float = 1e-4, crop: bool = False,
                           batch_size: int = 16, seed: int = 0, device: Union[str, torch.device, None] = None,
                           noise_mode: str = "random", progress: Optional[Callable[[int, int], None]] = None
                           ) -> PPLResult:
    """PPL of generator ``G`` (anything with ``mapping``, ``synthesis``, ``z_dim``) under ``distance``.

    StyleGAN2 reports PPL in W with ``sampling='end'``, 50k samples of LPIPS-VGG, crop for FFHQ; StyleGAN
    reports both spaces and both samplings (100k samples). ``device`` defaults to G's; G and the distance are
    used in eval mode without gradients. ``noise_mode``: 'random' (fresh maps per pair, shared by its two
    images), 'const' or 'none'.
    """
    if space not in PPL_SPACES:
        raise ValueError(f"space must be one of {PPL_SPACES}, got {space!r}")
    if sampling not in PPL_SAMPLINGS:
        raise ValueError(f"sampling must be one of {PPL_SAMPLINGS}, got {sampling!r}")
    if noise_mode not in ("random", "const", "none"):
        raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
    if num_samples < 1 or batch_size < 1:
        raise ValueError("num_samples and batch_size must be positive")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if distance is None or not callable(distance):
        raise TypeError("distance must be a callable (a, b) -> [N] on images in [-1, 1]")
    ref = G.mapping.w_avg
    device = torch.device(device) if device is not None else ref.device
    dtype = ref.dtype
    z0_all, z1_all, t_all = ppl_latents(num_samples, G.z_dim, seed, sampling)
    noise_gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1)
    values = np.empty(num_samples, dtype=np.float64)
    was_training = G.training
    G.eval()
    dist_training = isinstance(distance, torch.nn.Module) and distance.training
    if isinstance(distance, torch.nn.Module):
        distance.eval()
    try:
        with torch.no_grad():
            for a in range(0, num_samples, batch_size):
                b = min(a + batch_size, num_samples)
                n = b - a
                z0, z1, t = z0_all[a:b], z1_all[a:b], t_all[a:b]
                t_pair = torch.stack([t, t + epsilon], dim=1).reshape(-1)  # [2n]: t, t+eps, t, t+eps ...
                z0r = z0.repeat_interleave(2, dim=0)
                z1r = z1.repeat_interleave(2, dim=0)
                if space == "z":
                    z = slerp(z0r, z1r, t_pair).to(device=device, dtype=dtype)
                    ws = G.mapping(z)
                else:
                    w0 = G.mapping(z0r.to(device=device, dtype=dtype))
                    w1 = G.mapping(z1r.to(device=device, dtype=dtype))
                    ws = torch.lerp(w0, w1, t_pair.to(device=device, dtype=w0.dtype).reshape(-1, 1, 1))
                if noise_mode == "random":
                    noise = _noise_for_pairs(G.synthesis, n, noise_gen, device, ws.dtype)
                    img = G.synthesis(ws, noise=noise)
                else:
                    img = G.synthesis(ws, noise_mode=noise_mode)
                img = _prepare(img, crop)
                d = distance(img[0::2], img[1::2])
                d = torch.as_tensor(d).reshape(-1)
                if d.shape[0] != n:
                    raise ValueError(f"distance must return one value per image pair ([{n}]), got {list(d.shape)}")
                values[a:b] = d.detach().double().cpu().numpy() / (epsilon ** 2)
                if progress is not None:
                    progress(b, num_samples)
    finally:
        G.train(was_training)
        if dist_training:
            distance.train(True)
    keep = percentile_filter(values)
    kept = values[keep]
    settings = {"space": space, "sampling": sampling, "epsilon": float(epsilon), "crop": bool(crop),
                "num_samples": int(num_samples), "batch_size": int(batch_size), "seed": int(seed),
                "noise_mode": noise_mode, "distance": getattr(distance, "__name__", type(distance).__name__),
                "img_resolution": int(getattr(G, "img_resolution", 0) or 0),
                "percentiles": [1, 99]}
    return PPLResult(mean=float(kept.mean()), std=float(kept.std()), num_samples=int(num_samples),
                     filtered_count=int(num_samples - keep.sum()), settings=settings, values=values)
