"""Projection of images into the latent space of a StyleGAN2 generator (Karras et al. 2020, §5 and App. D).

Given target images x in [-1, 1], find for each a latent w in W (one w broadcast to all layers, *not* W+) and
per-layer noise maps n_i such that g(w, n) is perceptually close to x. The distance at the optimum is the
attribution signal: images made by the network project much closer than images that were not (§5, Fig. 9/10).

App. D, as implemented here:

* mu_w and sigma_w from 10,000 samples f(z), z ~ N(0, I): ``sigma_w^2 = E ||f(z) - mu_w||^2`` (one scalar).
* Start at w = mu_w and n_i ~ N(0, I); optimise w and every n_i with Adam (beta 0.9, 0.999, eps 1e-8).
* Learning rate at t = step / steps: ``lr_max * (0.5 - 0.5 cos(pi * min(1, (1 - t) / 0.25))) * min(1, t / 0.05)``.
* Ramped-down noise added to w each step: ``w~ = w + N(0, (0.05 sigma_w max(0, 1 - t / 0.75)^2)^2)``.
* Loss ``LPIPS(x, g(w~, n)) + alpha * sum_ij L_ij``, alpha = 1e5, ``L_ij`` the squared 1-pixel autocorrelations
  (both axes, wrap-around) of noise map i at pyramid level j, down to 8x8 (:func:`noise_regularization`).
* After every step each noise map is renormalised to zero mean and unit variance (:func:`normalize_noise_`).

Differences from NVIDIA's PyTorch projector, on purpose:

* The result keeps the optimised noise maps, and the reported distance and re-synthesis are computed at the
  *clean* w (no ramped noise) *with those maps*. (NVIDIA's script keeps only w.)
* Many images are projected together. The objective is the *sum* of the per-image objectives; every term of
  it depends on one image's parameters only, and Adam is element-wise, so each image follows exactly the
  trajectory it would follow alone. All random draws of image k come from its own ``torch.Generator`` seeded
  with its own seed, so a batch gives the same per-image results as one-by-one runs with the same seeds (up to
  the rounding differences that batch-size-dependent conv algorithms introduce, ~1e-6).
* Optional early stopping for images whose verdict is already certain (see :class:`ProjectorSettings`).
* Networks below 256 px are projected without the noise regulariser (``alpha_min_resolution``); from 256 px on
  it is App. D's alpha = 1e5. Measured on our 32 px CelebA network, where the regulariser kept the noise maps
  from fitting anything (see :class:`ProjectorSettings`). ``alpha_min_resolution=None`` applies alpha at every
  resolution, as App. D does.

The distance is any callable ``distance(a, b) -> [N]`` on NCHW images in [-1, 1] (LPIPS-VGG in the CLI). A
distance may optionally offer ``target_features(b) -> list of tensors [N, ...]`` and
``distance_to_features(a, features) -> [N]``; the projector then computes the (constant) target features once
instead of at every step, which saves about a third of the LPIPS cost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

PYRAMIDS = ("paper", "official")

# Which noise-regulariser pyramid is the default. 'paper' follows the App. D text (each 2x2 down-sampling step is
# followed by a multiplication by 2, keeping white noise at unit variance); 'official' is NVIDIA's code (plain
# 2x2 averaging). Measured with the regulariser on, on a 32 px CelebA network: AUC 0.65 (paper) vs 0.69 (official),
# within the noise of 12-16 real images; 'paper' kept as the text of App. D (README, "Measured accuracy").
DEFAULT_PYRAMID = "paper"

# Resolution the distance is evaluated at for networks below 256 px: None = native. Networks above 256 px are
# always area-down-sampled to 256 (as in NVIDIA's projector). Native: LPIPS at 64/128/256 px on the re-syntheses of
# a 32 px network gave AUC 0.76/0.76/0.69 against 0.74 native, no clear gain for 2-8x the LPIPS cost (README).
DEFAULT_LPIPS_RESOLUTION: Optional[int] = None
LPIPS_MAX_RESOLUTION = 256

# Smallest network resolution the noise regulariser is applied at (ProjectorSettings.alpha_min_resolution): 256,
# the smallest resolution the paper projected at with alpha = 1e5 (LSUN 256 px networks); below it it is off, as
# measured at 32 px. 64 and 128 px networks have not been measured.
DEFAULT_ALPHA_MIN_RESOLUTION: Optional[int] = 256

# Whether the synthesised image is clamped to [-1, 1] before the distance (ProjectorSettings.clamp_output).
DEFAULT_CLAMP_OUTPUT = False

DEFAULT_W_STATS_SEED = 123

TRACE_DTYPE = np.dtype([("step", "<i4"), ("loss", "<f8"), ("distance", "<f8"), ("reg", "<f8"), ("lr", "<f8")])

DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int, np.ndarray], None]


# ----------------------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class ProjectorSettings:
    """Every option of the projector; the defaults are StyleGAN2 App. D.

    steps            optimisation steps per image (1000)
    lr               maximum (initial, after the ramp-up) learning rate (0.1)
    lr_rampdown      fraction of the run over which lr ramps down to 0 with a cosine (0.25)
    lr_rampup        fraction of the run over which lr ramps up linearly from 0 (0.05)
    w_noise_scale    std of the noise added to w, in units of sigma_w, at t = 0 (0.05)
    noise_ramp       fraction of the run after which the w noise is 0 (quadratic ramp-down) (0.75)
    alpha            weight of the noise regulariser (1e5), as App. D states it
    alpha_min_resolution
                     None, or the smallest network resolution alpha is applied at; smaller networks are
                     projected with alpha = 0 (:meth:`effective_alpha`). Default 256. Why: on our 32 px
                     CelebA network (45 kimg, 8 generated + 8 held-out real faces, 1000 steps) the
                     regulariser held the 16 px and 32 px noise maps, the only ones that matter there, at
                     white noise, and the projection could not fit even the images the network made: ROC AUC
                     0.70 at alpha 1e5 * (32/1024)^2 = 98, 0.98 at 3.05, 1.0 at 0 (generated median LPIPS
                     0.033 -> 0.0016, real 0.045 -> 0.018). Noise-only optimisation at the true w of a 92 kimg
                     network: LPIPS 0.10 and no correlation with the true maps at 1e5, against 0.0002 and
                     correlations 0.93 / 0.78 at 0. The price is Fig. 18's: without the regulariser the noise
                     maps pick up image structure (median correlation 0.19 on 100 real faces, against 0.07
                     at 98 on 8), which makes real faces project closer too, but far less so than generated
                     ones. All of this was measured on config F. On a 32 px config A network (noise at
                     every conv, per-channel strengths) the same default brings real faces back *closer*
                     than generated ones (AUC 0.24, 100 + 100): calibrate, and mind its AUC warning.
                     README, "Measured accuracy".
    pyramid          'paper' (x2 per level) or 'official' (plain averaging) noise-regulariser pyramid
    wplus            optimise one w per layer (W+). Not for attribution: W+ can fit almost any image, so
                     distances no longer separate generated from real images.
    lpips_resolution resolution the distance is evaluated at: None = native (area-down-sampled to 256 above
                     256 px); an int resizes both images to it (bilinear up / area down)
    clamp_output     clamp the synthesised image to [-1, 1] before the distance, as writing it to an 8-bit file
                     would. A suspect image has been through that clamp; a generator's raw output overshoots
                     [-1, 1] (saturated backgrounds, highlights), so without the clamp even the w and noise that
                     made an image do not reproduce its file exactly. Not in App. D (NVIDIA's projector compares
                     the raw output); off by default, since on the 32 px CelebA network it removed that floor but
                     did not change the projected distances (benchmarks/projection_floor.py, README).
    w_avg_samples    samples of f(z) for mu_w and sigma_w (10,000); w_stats_seed: their numpy seed
    betas, eps       Adam parameters
    fused_modconv    passed to the synthesis network (None: its own default)
    chunk_size       images per forward/backward pass within a step (None: :func:`auto_chunk_size`). Per-image
                     objectives make chunking exact: it changes speed and memory, not results.
    trace_every      record the loss trace every this many steps (0: no trace; the last step is always kept)
    device           None: the generator's device
    early_stop       None, or a band (low, high) of undecided distances. From t >= early_stop_start on, the clean
                     distance of each active image is evaluated every early_stop_every steps. An image is frozen
                     (its result is taken then and its parameters stop changing) once its last
                     early_stop_patience clean distances all lie below low - early_stop_margin (or all above
                     high + early_stop_margin) *and* the straight line through the first and last of them,
                     extrapolated to the final step, stays on the same side. Convergence slows down over a
                     run, so the linear extrapolation overestimates the remaining change: an image frozen this
                     way would have ended on the same side of the band.
    clean_checkpoints evaluate the clean distance at the early-stopping checkpoints (start, every) even
                     without early stopping, and return them as ``ProjectionResult.clean_trace``: one full run
                     then tells what any early-stopping band would have saved (:func:`simulate_early_stop`).
    """

    steps: int = 1000
    lr: float = 0.1
    lr_rampdown: float = 0.25
    lr_rampup: float = 0.05
    w_noise_scale: float = 0.05
    noise_ramp: float = 0.75
    alpha: float = 1e5
    alpha_min_resolution: Optional[int] = DEFAULT_ALPHA_MIN_RESOLUTION
    pyramid: str = DEFAULT_PYRAMID
    wplus: bool = False
    lpips_resolution: Optional[int] = DEFAULT_LPIPS_RESOLUTION
    clamp_output: bool = DEFAULT_CLAMP_OUTPUT
    w_avg_samples: int = 10000
    w_stats_seed: int = DEFAULT_W_STATS_SEED
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    fused_modconv: Optional[bool] = None
    chunk_size: Optional[int] = None
    trace_every: int = 1
    device: Optional[str] = None
    early_stop: Optional[Tuple[float, float]] = None
    early_stop_start: float = 0.5
    early_stop_every: int = 50
    early_stop_patience: int = 3
    early_stop_margin: float = 0.01
    clean_checkpoints: bool = False

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"ProjectorSettings: {msg}")

        if int(self.steps) != self.steps or self.steps < 1:
            bad(f"steps must be a positive integer, got {self.steps!r}")
        if not self.lr > 0:
            bad(f"lr must be > 0, got {self.lr}")
        for name in ("lr_rampdown", "lr_rampup", "noise_ramp", "w_noise_scale", "alpha", "early_stop_margin"):
            if not getattr(self, name) >= 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.pyramid not in PYRAMIDS:
            bad(f"pyramid must be one of {PYRAMIDS}, got {self.pyramid!r}")
        if self.lpips_resolution is not None and (int(self.lpips_resolution) != self.lpips_resolution
                                                  or self.lpips_resolution < 1):
            bad(f"lpips_resolution must be None or a positive integer, got {self.lpips_resolution!r}")
        r = self.alpha_min_resolution
        if r is not None and (int(r) != r or r < 1):
            bad(f"alpha_min_resolution must be None or a positive integer, got {r!r}")
        if self.w_avg_samples < 2:
            bad(f"w_avg_samples must be >= 2, got {self.w_avg_samples}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.chunk_size is not None and (int(self.chunk_size) != self.chunk_size or self.chunk_size < 1):
            bad(f"chunk_size must be None or a positive integer, got {self.chunk_size!r}")
        if self.trace_every < 0:
            bad(f"trace_every must be >= 0, got {self.trace_every}")
        if self.early_stop is not None:
            if len(self.early_stop) != 2 or not self.early_stop[0] <= self.early_stop[1]:
                bad(f"early_stop must be None or (low, high) with low <= high, got {self.early_stop!r}")
            object.__setattr__(self, "early_stop", tuple(float(v) for v in self.early_stop))
        if not 0 <= self.early_stop_start <= 1:
            bad(f"early_stop_start must be in [0, 1], got {self.early_stop_start}")
        if self.early_stop_every < 1 or self.early_stop_patience < 1:
            bad("early_stop_every and early_stop_patience must be >= 1")

    def effective_alpha(self, img_resolution: int) -> float:
        """The regulariser weight used for a network of ``img_resolution``: ``alpha``, or 0 below
        ``alpha_min_resolution``."""
        r = self.alpha_min_resolution
        return float(self.alpha) if r is None or img_resolution >= r else 0.0

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ProjectorSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ProjectorSettings fields: {sorted(unknown)}")
        d = dict(d)
        for k in ("betas", "early_stop"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------------
# Schedules and the noise regulariser (App. D)


def learning_rate(t: float, lr_max: float = 0.1, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """lr at t = step / steps: cosine ramp-down over the last ``rampdown`` of the run, linear ramp-up over the
    first ``rampup``: ``lr_max * (0.5 - 0.5 cos(pi * min(1, (1 - t) / rampdown))) * min(1, t / rampup)``."""
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else (1.0 if t < 1 else 0.0)
    ramp = 0.5 - 0.5 * math.cos(math.pi * ramp)
    ramp *= min(1.0, t / rampup) if rampup > 0 else 1.0
    return lr_max * ramp


def w_noise_std(t: float, sigma_w: float, scale: float = 0.05, noise_ramp: float = 0.75) -> float:
    """Std of the per-component noise added to w at t: ``scale * sigma_w * max(0, 1 - t / noise_ramp)^2``."""
    if noise_ramp <= 0:
        return 0.0
    return scale * sigma_w * max(0.0, 1.0 - t / noise_ramp) ** 2


def noise_regularization(noise_maps: Sequence[torch.Tensor], pyramid: str = DEFAULT_PYRAMID) -> torch.Tensor:
    """Sum over maps i and pyramid levels j of L_ij (App. D), per image: returns [N].

    ``L_ij = mean(n * roll_x(n))^2 + mean(n * roll_y(n))^2`` (1-pixel shifts with wrap-around, means over the
    map's pixels). Each map [N, 1, r, r] contributes level r, then r/2, ... down to 8x8 (2x2 average pooling
    between levels); maps of 8x8 or less contribute their own level only. ``pyramid='paper'`` multiplies each
    down-sampled level by 2 (App. D text: white noise keeps unit variance), ``'official'`` does not (NVIDIA's code).
    """
    if pyramid not in PYRAMIDS:
        raise ValueError(f"pyramid must be one of {PYRAMIDS}, got {pyramid!r}")
    if len(noise_maps) == 0:
        raise ValueError("noise_regularization needs at least one noise map")
    reg = None
    for n in noise_maps:
        if n.ndim != 4 or n.shape[1] != 1 or n.shape[2] != n.shape[3]:
            raise ValueError(f"noise maps must be [N, 1, r, r], got {list(n.shape)}")
        level = n
        while True:
            ax = (level * level.roll(shifts=1, dims=3)).mean(dim=(1, 2, 3))
            ay = (level * level.roll(shifts=1, dims=2)).mean(dim=(1, 2, 3))
            term = ax.square() + ay.square()
            reg = term if reg is None else reg + term
            if level.shape[2] <= 8:
                break
            level = F.avg_pool2d(level, kernel_size=2)
            if pyramid == "paper":
                level = level * 2
    return reg


@torch.no_grad()
def normalize_noise_(noise_maps: Sequence[torch.Tensor]) -> None:
    """In place: each map of each image to zero mean and unit variance over its pixels. The variance is the
    population one (mean of squares after centring, divisor r*r, not r*r - 1), as in NVIDIA's code."""
    for n in noise_maps:
        mean = n.mean(dim=(1, 2, 3), keepdim=True)
        n.sub_(mean)
        n.mul_(n.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt())


# ----------------------------------------------------------------------------------------------------------------
# W statistics


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


# ----------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, eq=False)
class ProjectionResult:
    """The projection of one image.

    w               [num_ws, w_dim] float32 cpu: the optimised w (W mode: one w broadcast to all layers)
    noise           the optimised noise maps, each [1, res, res] float32 cpu, in ``noise_layers()`` order
    distance        the distance between the target and ``image`` (clean w, optimised noise)
    loss_trace      structured array with fields step, loss, distance, reg (the noise regulariser, before
                    alpha), lr; one row per recorded step (``trace_every``); distance and loss at the noisy w~
    image           [C, R, R] float32 cpu: the re-synthesis g(w, noise), clamped to [-1, 1] when
                    ``clamp_output`` is set, else with the generator's own overshoot: ``distance`` was computed on
                    exactly this tensor
    steps_run       optimisation steps this image ran
    stopped_at_step None, or the step count at which early stopping froze the image (== steps_run)
    settings        the ProjectorSettings as a dict, plus seed, w_std, effective_alpha (the regulariser weight
                    used, :meth:`ProjectorSettings.effective_alpha`) and the distance's name
    clean_trace     ((step, clean distance), ...) at the early-stopping checkpoints, when early stopping or
                    ``clean_checkpoints`` is on; else empty
    """

    w: torch.Tensor
    noise: Tuple[torch.Tensor, ...]
    distance: float
    loss_trace: np.ndarray
    image: torch.Tensor
    steps_run: int
    stopped_at_step: Optional[int] = None
    settings: Dict[str, Any] = field(default_factory=dict)
    clean_trace: Tuple[Tuple[int, float], ...] = ()

    def synthesis_inputs(self, device: Union[str, torch.device, None] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(ws [1, num_ws, w_dim], noise list of [1, 1, res, res]) for ``G.synthesis(ws, noise=noise)``."""
        return self.w[None].to(device), [n[None].to(device) for n in self.noise]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able summary (no big arrays)."""
        last = self.loss_trace[-1] if len(self.loss_trace) else None
        return {
            "distance": float(self.distance),
            "steps_run": int(self.steps_run),
            "stopped_at_step": None if self.stopped_at_step is None else int(self.stopped_at_step),
            "num_ws": int(self.w.shape[0]),
            "w_dim": int(self.w.shape[1]),
            "noise_resolutions": [int(n.shape[-1]) for n in self.noise],
            "image_shape": [int(s) for s in self.image.shape],
            "final_loss": None if last is None else float(last["loss"]),
            "final_reg": None if last is None else float(last["reg"]),
            "settings": _jsonable(self.settings),
        }

    def save_hdf5(self, group) -> None:
        """Write into an h5py group: datasets w, noise_{i}, image, loss_trace; attrs distance, steps_run,
        stopped_at_step (-1 for None), num_noise, settings (JSON)."""
        group.create_dataset("w", data=self.w.numpy())
        for i, n in enumerate(self.noise):
            group.create_dataset(f"noise_{i}", data=n.numpy())
        group.create_dataset("image", data=self.image.numpy())
        group.create_dataset("loss_trace", data=np.asarray(self.loss_trace, dtype=TRACE_DTYPE))
        group.attrs["distance"] = float(self.distance)
        group.attrs["steps_run"] = int(self.steps_run)
        group.attrs["stopped_at_step"] = -1 if self.stopped_at_step is None else int(self.stopped_at_step)
        group.attrs["num_noise"] = len(self.noise)
        group.attrs["settings"] = json.dumps(_jsonable(self.settings), sort_keys=True)
        if self.clean_trace:
            group.create_dataset("clean_trace", data=np.asarray(self.clean_trace, dtype=np.float64))

    @classmethod
    def load_hdf5(cls, group) -> "ProjectionResult":
        num_noise = int(group.attrs["num_noise"])
        stopped = int(group.attrs["stopped_at_step"])
        return cls(
            w=torch.from_numpy(np.array(group["w"])),
            noise=tuple(torch.from_numpy(np.array(group[f"noise_{i}"])) for i in range(num_noise)),
            distance=float(group.attrs["distance"]),
            loss_trace=np.array(group["loss_trace"], dtype=TRACE_DTYPE),
            image=torch.from_numpy(np.array(group["image"])),
            steps_run=int(group.attrs["steps_run"]),
            stopped_at_step=None if stopped < 0 else stopped,
            settings=json.loads(group.attrs["settings"]),
            clean_trace=tuple((int(a), float(b)) for a, b in np.array(group["clean_trace"]))
            if "clean_trace" in group else (),
        )


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def image_seeds(seed: int, n: int) -> List[int]:
    """Per-image seeds for an integer call seed: image k of a call gets a seed derived from (seed, k). To repeat
    image k alone, pass ``seeds=[image_seeds(seed, n)[k]]``."""
    out = []
    for k in range(n):
        state = np.random.SeedSequence([int(seed), k]).generate_state(2, dtype=np.uint32)
        out.append(int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1))
    return out


def _resize(x: torch.Tensor, res: int) -> torch.Tensor:
    if x.shape[-1] == res and x.shape[-2] == res:
        return x
    if res < x.shape[-1]:
        return F.interpolate(x, size=(res, res), mode="area")
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)


def distance_resolution(img_resolution: int, lpips_resolution: Optional[int]) -> int:
    """The resolution the distance is evaluated at (see ``ProjectorSettings.lpips_resolution``)."""
    if lpips_resolution is not None:
        return int(lpips_resolution)
    return min(img_resolution, LPIPS_MAX_RESOLUTION)


def auto_chunk_size(img_resolution: int) -> int:
    """Images per forward/backward pass when ``chunk_size`` is None: 32768 / R^2 (8 at 64 px, 32 at 32 px, 1 from
    256 px on). Measured on CPU: beyond that the activations no longer fit the caches, and tensors above glibc's
    32 MB mmap threshold are mapped and faulted in afresh at every allocation, so larger passes get slower per
    image (64 px, channel_max 128: 73 ms/image at 8, 135 ms at 16)."""
    return max(1, 32768 // (img_resolution * img_resolution))


def _chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def _rows(x: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return x if (a == 0 and b == x.shape[0]) else x[a:b]


class _Distance:
    """Calls the user's distance and checks its output; uses cached target features when the distance offers
    ``target_features`` / ``distance_to_features``."""

    def __init__(self, fn: DistanceFn, res: int):
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


# ----------------------------------------------------------------------------------------------------------------
# The projector


class Projector:
    """Holds a generator, a distance and settings; mu_w / sigma_w are computed once (and cached per generator).

    ``Projector(G, distance, settings).project(targets, seeds)``; ``settings.device`` (if set) moves G and the
    distance module there.
    """

    def __init__(self, G, distance: DistanceFn, settings: Optional[ProjectorSettings] = None):
        if distance is None or not callable(distance):
            raise TypeError("distance must be a callable (a, b) -> [N] on images in [-1, 1]")
        self.settings = settings if settings is not None else ProjectorSettings()
        self.G = G
        self.distance = distance
        if self.settings.device is not None:
            self.G.to(self.settings.device)
            if isinstance(distance, torch.nn.Module):
                distance.to(self.settings.device)
        self._w_stats: Optional[WStats] = None

    @property
    def device(self) -> torch.device:
        return self.G.mapping.w_avg.device

    @property
    def w_stats(self) -> WStats:
        s = self.settings
        if self._w_stats is None or self._w_stats.w_avg.device != self.device:
            self._w_stats = cached_w_stats(self.G, s.w_avg_samples, s.w_stats_seed)
        return self._w_stats

    def check_targets(self, targets: torch.Tensor) -> None:
        G = self.G
        shape = (G.img_channels, G.img_resolution, G.img_resolution)
        if not isinstance(targets, torch.Tensor) or targets.ndim != 4 or tuple(targets.shape[1:]) != shape:
            got = list(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise ValueError(f"targets must be a tensor [N, {shape[0]}, {shape[1]}, {shape[2]}] matching the "
                             f"generator (img_channels={shape[0]}, img_resolution={shape[1]}), got {got}")
        if targets.shape[0] == 0:
            raise ValueError("targets is empty")
        if not targets.is_floating_point():
            raise ValueError(f"targets must be floating point in [-1, 1], got {targets.dtype}")
        if not bool(torch.isfinite(targets).all()):
            raise ValueError("targets contain NaN or infinite values")
        if float(targets.abs().max()) > 1.5:
            raise ValueError("targets must be in [-1, 1] (got values beyond +-1.5; 0..255 pixels?)")

    def project(self, targets: torch.Tensor, seeds: Union[int, Sequence[int]] = 0,
                progress: Optional[ProgressFn] = None, w_init: Optional[torch.Tensor] = None
                ) -> List[ProjectionResult]:
        """Project targets [N, C, R, R] in [-1, 1]; returns one :class:`ProjectionResult` per image, in order.

        ``seeds``: an int (image k uses ``image_seeds(seed, N)[k]``) or one seed per image. ``progress(step,
        steps, losses)`` is called after every step with the number of steps done and the latest total loss
        of every image ([N] numpy; frozen images keep their last value). ``w_init`` [N, w_dim]: start each image
        at this w instead of mu_w (App. D starts at mu_w; a warm start is for diagnostics, e.g. starting a
        generated image at the w that made it, or for continuing an earlier projection).
        """
        self.check_targets(targets)
        N = targets.shape[0]
        if isinstance(seeds, (int, np.integer)):
            seeds = image_seeds(int(seeds), N)
        seeds = [int(s) for s in seeds]
        if len(seeds) != N:
            raise ValueError(f"got {len(seeds)} seeds for {N} targets")
        if w_init is not None and (not isinstance(w_init, torch.Tensor) or tuple(w_init.shape) != (N, self.G.w_dim)):
            got = list(w_init.shape) if isinstance(w_init, torch.Tensor) else type(w_init).__name__
            raise ValueError(f"w_init must be a tensor [N, w_dim] = [{N}, {self.G.w_dim}], got {got}")
        with _Frozen(self.G, self.distance):
            return self._project(targets, seeds, progress, w_init)

    def _project(self, targets: torch.Tensor, seeds: List[int], progress: Optional[ProgressFn],
                 w_init: Optional[torch.Tensor] = None):
        s = self.settings
        G = self.G
        synthesis = G.synthesis
        device = self.device
        stats = self.w_stats
        N = targets.shape[0]
        num_ws, w_dim = G.num_ws, G.w_dim
        chunk = s.chunk_size if s.chunk_size is not None else auto_chunk_size(G.img_resolution)
        dist = _Distance(self.distance, distance_resolution(G.img_resolution, s.lpips_resolution))
        targets = targets.detach().to(device=device, dtype=torch.float32)
        prepared_all = dist.prepare(targets)

        # Per-image random streams: image k draws its noise maps, then one w-noise sample per step.
        gens = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        noise_shapes = [tuple(shape) for shape in synthesis.noise_shapes]
        noise = [torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device) for shape in noise_shapes]
        w_rows = num_ws if s.wplus else 1
        start = stats.w_avg.reshape(1, w_dim).expand(N, -1) if w_init is None else w_init
        w_opt = start.detach().to(device=device, dtype=torch.float32).reshape(N, 1, w_dim).repeat(1, w_rows, 1)
        opt = _RowAdam([w_opt.requires_grad_(True)] + [n.requires_grad_(True) for n in noise], s.betas, s.eps)

        active = torch.arange(N, device=device)  # original indices of the images still optimised
        active_list = list(range(N))
        prepared = prepared_all
        traces: List[List[tuple]] = [[] for _ in range(N)]
        last_loss = np.full(N, np.nan)
        history: List[List[Tuple[int, float]]] = [[] for _ in range(N)]
        results: List[Optional[ProjectionResult]] = [None] * N
        alpha = s.effective_alpha(G.img_resolution)
        base_settings = dict(s.to_dict(), w_std=stats.w_std, effective_alpha=alpha, distance=_name(self.distance))

        def params():
            return opt.params[0], opt.params[1:]

        def clean_eval():
            w, maps = params()
            ws = (w.expand(-1, num_ws, -1) if not s.wplus else w).detach()
            imgs, ds = [], []
            with torch.no_grad():
                for a, b in _chunks(len(active_list), chunk):
                    img = synthesis(_rows(ws, a, b), noise=[_rows(m.detach(), a, b) for m in maps],
                                    fused_modconv=s.fused_modconv)
                    if s.clamp_output:
                        img = img.clamp(-1, 1)
                    imgs.append(img)
                    ds.append(dist(img, _Distance.rows(prepared, a, b)))
            return ws, torch.cat(imgs), torch.cat(ds)

        def finish(rows: List[int], ws, img, d, steps_run: int, stopped: Optional[int]):
            w, maps = params()
            d_np = d.detach().cpu().numpy()
            for r in rows:
                k = active_list[r]
                results[k] = ProjectionResult(
                    w=ws[r].detach().to("cpu", torch.float32).clone(),
                    noise=tuple(m[r].detach().to("cpu", torch.float32).clone() for m in maps),
                    distance=float(d_np[r]),
                    loss_trace=np.array(traces[k], dtype=TRACE_DTYPE),
                    image=img[r].detach().to("cpu", torch.float32).clone(),
                    steps_run=steps_run,
                    stopped_at_step=stopped,
                    settings=dict(base_settings, seed=seeds[k]),
                    clean_trace=tuple(history[k]),
                )

        steps = int(s.steps)
        for step in range(steps):
            t = step / steps
            lr = learning_rate(t, s.lr, s.lr_rampdown, s.lr_rampup)
            std = w_noise_std(t, stats.w_std, s.w_noise_scale, s.noise_ramp)
            w, maps = params()
            w_noise = torch.stack([torch.randn([w_rows, w_dim], generator=gens[k]) for k in active_list])
            w_noise = w_noise.to(device) * std
            opt.zero_grad()
            parts = []
            for a, b in _chunks(len(active_list), chunk):
                w_tilde = _rows(w, a, b) + _rows(w_noise, a, b)
                ws = w_tilde.expand(-1, num_ws, -1) if not s.wplus else w_tilde
                chunk_maps = [_rows(m, a, b) for m in maps]
                img = synthesis(ws, noise=chunk_maps, fused_modconv=s.fused_modconv)
                if s.clamp_output:
                    img = img.clamp(-1, 1)
                d = dist(img, _Distance.rows(prepared, a, b))
                if alpha:
                    reg = noise_regularization(chunk_maps, s.pyramid)
                    loss = d + alpha * reg
                else:  # still traced (Fig. 18: how far the maps are from white noise), not differentiated
                    with torch.no_grad():
                        reg = noise_regularization(chunk_maps, s.pyramid)
                    loss = d
                loss.sum().backward()  # per-image terms: each image's gradient is its own
                parts.append(torch.stack([loss.detach(), d.detach(), reg.detach()], dim=1))
            opt.step(lr)
            normalize_noise_(opt.params[1:])

            vals = torch.cat(parts).cpu().numpy().astype(np.float64)
            record = s.trace_every > 0 and (step % s.trace_every == 0 or step == steps - 1)
            for r, k in enumerate(active_list):
                last_loss[k] = vals[r, 0]
                if record:
                    traces[k].append((step, vals[r, 0], vals[r, 1], vals[r, 2], lr))
            if progress is not None:
                progress(step + 1, steps, last_loss.copy())

            done = step + 1
            if ((s.early_stop is not None or s.clean_checkpoints) and done < steps
                    and done / steps >= s.early_stop_start
                    and (done - math.ceil(s.early_stop_start * steps)) % s.early_stop_every == 0):
                ws_c, img_c, d_c = clean_eval()
                d_np = d_c.cpu().numpy()
                freeze = []
                for r, k in enumerate(active_list):
                    history[k].append((done, float(d_np[r])))
                    if s.early_stop is not None and _settled(history[k][-s.early_stop_patience:],
                                                             s.early_stop_patience, s.early_stop,
                                                             s.early_stop_margin, steps):
                        freeze.append(r)
                if freeze:
                    finish(freeze, ws_c, img_c, d_c, done, done)
                    keep = [r for r in range(len(active_list)) if r not in set(freeze)]
                    if not keep:
                        active_list = []
                        break
                    keep_t = torch.tensor(keep, device=device)
                    opt.keep(keep_t)
                    active_list = [active_list[r] for r in keep]
                    active = active.index_select(0, keep_t)
                    prepared = _Distance.select(prepared_all, active)

        if active_list:
            ws_c, img_c, d_c = clean_eval()
            finish(list(range(len(active_list))), ws_c, img_c, d_c, steps, None)
        return results  # type: ignore[return-value]


def _settled(hist: List[Tuple[int, float]], patience: int, band: Tuple[float, float], margin: float,
             steps: int) -> bool:
    """Early-stopping rule of :class:`ProjectorSettings` on the last ``patience`` (step, clean distance) pairs."""
    if len(hist) < patience:
        return False
    low, high = band
    ds = [d for _, d in hist]
    (s0, d0), (s1, d1) = hist[0], hist[-1]
    slope = (d1 - d0) / (s1 - s0) if s1 > s0 else 0.0
    projected = d1 + slope * (steps - s1)
    if all(d < low - margin for d in ds) and projected < low - margin:
        return True
    if all(d > high + margin for d in ds) and projected > high + margin:
        return True
    return False


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


def _name(fn: Any) -> str:
    return type(fn).__name__ if not hasattr(fn, "__name__") else fn.__name__


def project(G, targets: torch.Tensor, settings: Optional[ProjectorSettings] = None, *, distance: DistanceFn,
            seed: Union[int, Sequence[int]] = 0, seeds: Optional[Sequence[int]] = None,
            progress: Optional[ProgressFn] = None, w_init: Optional[torch.Tensor] = None) -> List[ProjectionResult]:
    """Project targets [N, C, R, R] in [-1, 1] into G's W space (App. D); see :class:`Projector`.
    ``seed`` is one int for the call (image k uses ``image_seeds(seed, N)[k]``) or a list; ``seeds`` is an alias
    for a per-image list."""
    projector = Projector(G, distance, settings)
    return projector.project(targets, seeds if seeds is not None else seed, progress, w_init)


# ----------------------------------------------------------------------------------------------------------------
# StyleGAN2 Fig. 18: do the noise maps pick up image structure?


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
