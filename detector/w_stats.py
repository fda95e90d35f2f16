"""mu_w and sigma_w of StyleGAN2 App. D: the mean of f(z), z ~ N(0, I), and the scalar
``sigma_w^2 = E ||f(z) - mu_w||^2``, cached per generator."""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import Dict

import numpy as np
import torch

from .settings import DEFAULT_W_STATS_SEED


@dataclass(frozen=True)
class WStats:
    """mu_w [w_dim] (on the generator's device) and the scalar sigma_w = sqrt(E ||f(z) - mu_w||^2)."""

    w_avg: torch.Tensor
    w_std: float
    num_samples: int
    seed: int


@torch.no_grad()
def compute_w_stats(G, num_samples: int = 10000, seed: int = DEFAULT_W_STATS_SEED, chunk_size: int = 1000) -> WStats:
    """mu_w and sigma_w of App. D from ``num_samples`` z ~ N(0, I) (numpy RandomState(seed), drawn in chunks of
    ``chunk_size``, which gives the same z as one draw) through the mapping network, without truncation.
    Sums are accumulated in float64."""
    device = G.mapping.w_avg.device
    rs = np.random.RandomState(seed)
    total = torch.zeros([G.w_dim], dtype=torch.float64, device=device)
    total_sq = torch.zeros([], dtype=torch.float64, device=device)
    done = 0
    while done < num_samples:
        n = min(chunk_size, num_samples - done)
        z = torch.from_numpy(rs.randn(n, G.z_dim)).to(device=device, dtype=torch.float32)
        w = G.mapping(z, truncation_psi=1.0)[:, 0].to(torch.float64)
        total += w.sum(dim=0)
        total_sq += w.square().sum()
        done += n
    mean = total / num_samples
    var = (total_sq / num_samples - mean.square().sum()).clamp(min=0)
    return WStats(w_avg=mean.to(torch.float32), w_std=float(var.sqrt()), num_samples=num_samples, seed=seed)


_W_STATS_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, Dict[tuple, WStats]]" = weakref.WeakKeyDictionary()


def _mapping_fingerprint(G) -> str:
    h = hashlib.sha1()
    for name, t in sorted(G.mapping.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_w_stats(G, num_samples: int = 10000, seed: int = DEFAULT_W_STATS_SEED) -> WStats:
    """:func:`compute_w_stats`, computed once per generator object, mapping weights, device and sampling."""
    key = (_mapping_fingerprint(G), str(G.mapping.w_avg.device), num_samples, seed)
    per_g = _W_STATS_CACHE.setdefault(G, {})
    if key not in per_g:
        per_g.clear()  # the weights changed: older entries are stale
        per_g[key] = compute_w_stats(G, num_samples, seed)
    return per_g[key]
