"""What lets the projector optimise many images at once, each with its one-by-one objective (StyleGAN2 App. D per
image): per-image seeds, chunked passes, a row-wise Adam whose rows can be dropped when an image is frozen, and the
distance evaluated at its resolution (with the targets' features computed once when the distance offers them)."""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .settings import LPIPS_MAX_RESOLUTION

DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def image_seeds(seed: int, n: int) -> List[int]:
    """Per-image seeds for an integer call seed: image k of a call gets a seed derived from (seed, k). To repeat
    image k alone, pass ``seeds=[image_seeds(seed, n)[k]]``."""
    out = []
    for k in range(n):
        state = np.random.SeedSequence([int(seed), k]).generate_state(2, dtype=np.uint32)
        out.append(int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1))
    return out


def _resize(x: torch.Tensor, res: Optional[int]) -> torch.Tensor:
    if res is None or (x.shape[-1] == res and x.shape[-2] == res):  # None: as it is
        return x
    if res < x.shape[-1]:
        return F.interpolate(x, size=(res, res), mode="area")
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)


def distance_resolution(img_resolution: int, lpips_resolution: Optional[int]) -> int:
    """The resolution the distance is evaluated at (see ``ProjectorSettings.lpips_resolution``)."""
    if lpips_resolution is not None:
        return int(lpips_resolution)
    return min(img_resolution, LPIPS_MAX_RESOLUTION)


#: Synthesis activations (conv outputs, summed over layers) one forward/backward pass may hold: what 32 images of
#: the 32 px, 128-channel networks hold (346,112 each), the largest pass not slower per image on CPU there and
#: at 64 px (8 images; docs/measurements.md).
ACTIVATION_BUDGET = 32 * 346_112
MAX_CHUNK = 64


def synthesis_activations(G: Any) -> Optional[int]:
    """Values one image's synthesis layers output (sum of out_channels x resolution^2 over the 3x3 layers), or
    None for a generator without such layers."""
    total = 0
    for m in G.modules():
        out, res = getattr(m, "out_channels", None), getattr(m, "resolution", None)
        if out is not None and res is not None and hasattr(m, "noise_strength"):
            total += int(out) * int(res) ** 2
    return total or None


def auto_chunk_size(img_resolution: int, activations: Optional[int] = None) -> int:
    """Images per forward/backward pass when ``chunk_size`` is None. With the generator's
    :func:`synthesis_activations`: :data:`ACTIVATION_BUDGET` / activations, rounded, 1 to :data:`MAX_CHUNK` (so
    the pass adapts to channel counts as well as resolution); without: 32768 / R^2. Both give 32 at 32 px and 8
    at 64 px for 128 channels, and 1 at 256 px and above for NVIDIA's usual channel counts."""
    if activations:
        return int(min(MAX_CHUNK, max(1, round(ACTIVATION_BUDGET / activations))))
    return max(1, 32768 // (img_resolution * img_resolution))


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def _rows(x: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return x if (a == 0 and b == x.shape[0]) else x[a:b]


class _Distance:
    """Calls the user's distance and checks its output; uses cached target features when the distance offers
    ``target_features`` / ``distance_to_features``."""

    def __init__(self, fn: DistanceFn, res: Optional[int]):
        self.fn = fn
        self.res = res
        self.cached = hasattr(fn, "target_features") and hasattr(fn, "distance_to_features")

    def prepare(self, targets: torch.Tensor):
        t = _resize(targets, self.res)
        if self.cached:
            with torch.no_grad():
                return ("features", [f.detach() for f in self.fn.target_features(t)])
        return ("images", t)

    @staticmethod
    def select(prepared, idx: torch.Tensor):
        kind, value = prepared
        if kind == "features":
            return kind, [f.index_select(0, idx) for f in value]
        return kind, value.index_select(0, idx)

    @staticmethod
    def rows(prepared, a: int, b: int):
        kind, value = prepared
        if kind == "features":
            return kind, [_rows(f, a, b) for f in value]
        return kind, _rows(value, a, b)

    def __call__(self, images: torch.Tensor, prepared) -> torch.Tensor:
        kind, value = prepared
        a = _resize(images, self.res)
        d = self.fn.distance_to_features(a, value) if kind == "features" else self.fn(a, value)
        n = images.shape[0]
        if d.numel() != n:
            raise ValueError(f"distance must return one value per image ([{n}]), got shape {list(d.shape)}")
        return d.reshape(n).to(torch.float32)


class _RowAdam:
    """Adam (Kingma & Ba 2015) over tensors whose first dimension indexes images, with the arithmetic of
    torch.optim.Adam (no weight decay, no AMSGrad). ``keep(idx)`` drops the rows of frozen images from the
    parameters and the moment estimates, so the remaining images continue exactly as before."""

    def __init__(self, params: List[torch.Tensor], betas: Tuple[float, float], eps: float):
        self.params = params
        self.betas = betas
        self.eps = eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1 - b1**self.t
        bc2_sqrt = math.sqrt(1 - b2**self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / bc1)

    def keep(self, idx: torch.Tensor) -> None:
        self.params = [p.detach().index_select(0, idx).requires_grad_(True) for p in self.params]
        self.m = [m.index_select(0, idx) for m in self.m]
        self.v = [v.index_select(0, idx) for v in self.v]


class _Frozen:
    """Sets a module to eval mode with requires_grad False for the duration, then restores both."""

    def __init__(self, *modules):
        self.modules = [m for m in modules if isinstance(m, torch.nn.Module)]

    def __enter__(self):
        self.saved = [(m, m.training, [(p, p.requires_grad) for p in m.parameters()]) for m in self.modules]
        for m in self.modules:
            m.eval()
            m.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        for m, training, flags in self.saved:
            m.train(training)
            for p, rg in flags:
                p.requires_grad_(rg)
        return False
