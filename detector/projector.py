"""Projection of images into the latent space of a StyleGAN2 generator (Karras et al. 2020, §5 and App. D).

Given target images x in [-1, 1], find for each a latent w in W (one w broadcast to all layers, *not* W+) and
per-layer noise maps n_i such that g(w, n) is perceptually close to x. The distance at the optimum is the
attribution signal: images made by the network project much closer than images that were not (§5, Fig. 9/10).

App. D, as implemented here:

* mu_w and sigma_w from 10,000 samples f(z), z ~ N(0, I): ``sigma_w^2 = E ||f(z) - mu_w||^2`` (one scalar).
* Start at w = mu_w and n_i ~ N(0, I); optimise w and every n_i with Adam (beta 0.9, 0.999, eps 1e-8).
* Learning rate at t = step / steps: ``lr_max * (0.5 - 0.5 cos(pi * min(1, (1 - t) / 0.25))) * min(1, t / 0.05)``,
  lr_max = 0.1.
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
  with its own seed, so a batch follows the same per-image objective as one-by-one runs with the same seeds. The
  arithmetic is not bit-identical: batch-size-dependent conv algorithms round differently (~1e-7), and on a
  trained network 1000 steps amplify that to ~20 % of a final distance (docs/measurements.md, "chaotic in its
  rounding"); the same batch on the same machine is bit-identical.
* Optional early stopping for images whose verdict is already certain (see
  :class:`detector.settings.ProjectorSettings`).
* Networks below 256 px are projected without the noise regulariser (``alpha_min_resolution``) and with lr_max
  0.2 (``ProjectorSettings.lr`` None); from 256 px on both are App. D's (alpha = 1e5, lr_max 0.1).
  ``alpha_min_resolution=None`` applies alpha at every resolution, ``lr=0.1`` App. D's rate (why:
  docs/measurements.md).
* Optionally several starts (mu_w and samples of W; the closest kept) and a low-lr refinement after the
  schedule (:class:`detector.settings.ProjectorSettings`).

The distance is any callable ``distance(a, b) -> [N]`` on NCHW images in [-1, 1] (LPIPS-VGG in the CLI). A
distance may optionally offer ``target_features(b) -> list of tensors [N, ...]`` and
``distance_to_features(a, features) -> [N]``; the projector then computes the (constant) target features once
instead of at every step, which saves about a third of the LPIPS cost.

The options are :class:`detector.settings.ProjectorSettings`; mu_w / sigma_w come from :mod:`detector.w_stats`,
the per-image batching machinery from :mod:`detector.batching`, the result type from :mod:`detector.results`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .batching import (
    DistanceFn,
    _chunks,
    _Distance,
    _Frozen,
    _RowAdam,
    _rows,
    auto_chunk_size,
    distance_resolution,
    image_seeds,
    synthesis_activations,
)
from .results import TRACE_DTYPE, ProjectionResult
from .settings import DEFAULT_PYRAMID, PYRAMIDS, ProjectorSettings
from .w_stats import WStats, cached_w_stats

ProgressFn = Callable[[int, int, np.ndarray], None]

#: The smallest side a shifted crop is compared at as it is (LPIPS-VGG pools four times: below 16 px it cannot
#: run); a smaller crop is resized back to the distance's resolution.
MIN_NATIVE_DISTANCE_SIDE = 16


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
                progress: Optional[ProgressFn] = None, w_init: Optional[torch.Tensor] = None,
                degradation: Optional[torch.nn.Module] = None) -> List[ProjectionResult]:
        """Project targets [N, C, R, R] in [-1, 1]; returns one :class:`ProjectionResult` per image, in order.

        ``seeds``: an int (image k uses ``image_seeds(seed, N)[k]``) or one seed per image. ``progress(step,
        steps, losses)`` is called after every step with the number of steps done and the latest total loss
        of every image ([N] numpy; frozen images keep their last value). ``w_init`` [N, w_dim]: start each image
        at this w instead of mu_w (App. D starts at mu_w; a warm start is for diagnostics, e.g. starting a
        generated image at the w that made it, or for continuing an earlier projection). ``degradation``: a
        :class:`detector.degradation.Degradation` applied to every re-synthesis before the distance (its
        ``target`` to the targets), so that a JPEG, resized or shifted suspect image is compared with the same
        processing of g(w, n), or a :class:`detector.degradation.DegradationBank` (one per image, all cropping
        to one size); the result's ``image`` stays g(w, n) itself.
        """
        self.check_targets(targets)
        N = targets.shape[0]
        if isinstance(seeds, (int, np.integer)):
            seeds = image_seeds(int(seeds), N)
        seeds = [int(s) for s in seeds]
        if len(seeds) != N:
            raise ValueError(f"got {len(seeds)} seeds for {N} targets")
        if w_init is not None and self.settings.start_from != "mean":
            raise ValueError(f"w_init is a start of its own: not with start_from={self.settings.start_from!r}")
        if w_init is not None and (not isinstance(w_init, torch.Tensor) or tuple(w_init.shape) != (N, self.G.w_dim)):
            got = list(w_init.shape) if isinstance(w_init, torch.Tensor) else type(w_init).__name__
            raise ValueError(f"w_init must be a tensor [N, w_dim] = [{N}, {self.G.w_dim}], got {got}")
        if degradation is not None:
            degradation = degradation.to(self.device)
        with _Frozen(self.G, self.distance):
            return self._project(targets, seeds, progress, w_init, degradation)

    def _project(self, targets: torch.Tensor, seeds: List[int], progress: Optional[ProgressFn],
                 w_init: Optional[torch.Tensor] = None, degrade: Optional[torch.nn.Module] = None):
        s = self.settings
        G = self.G
        synthesis = G.synthesis
        device = self.device
        stats = self.w_stats
        N = targets.shape[0]
        K = int(s.starts)  # rows: start j of image k is row k * K + j; start 0 is App. D's (mu_w, the image's seed)
        kept = min(K, int(s.keep_starts))
        num_ws, w_dim = G.num_ws, G.w_dim
        chunk = (s.chunk_size if s.chunk_size is not None
                 else auto_chunk_size(G.img_resolution, synthesis_activations(G)))
        dist_res = distance_resolution(G.img_resolution, s.lpips_resolution)
        targets = targets.detach().to(device=device, dtype=torch.float32)
        compared = targets
        if degrade is not None:
            compared = degrade.target(targets)
            if s.lpips_resolution is None and max(compared.shape[-2:]) <= dist_res \
                    and min(compared.shape[-2:]) >= MIN_NATIVE_DISTANCE_SIDE:
                dist_res = None  # a crop (shift) is compared at its own size, not stretched back
        dist = _Distance(self.distance, dist_res)

        # the step from which the modelled JPEG / resize enters the loss (the reported distance always has it)
        degrade_from_step = math.ceil(s.degrade_from * s.steps - 1e-9)

        def observed(img: torch.Tensor, a: int, b: int, step: Optional[int] = None) -> torch.Tensor:
            """What the distance compares, for the rows a..b of ``active_list`` (a bank of degradations applies
            each image's own)."""
            if degrade is None:
                return img
            return degrade(img, photometric=step is None or step >= degrade_from_step,
                           images=[active_list[r] // K for r in range(a, b)])

        prepared_all = dist.prepare(compared)
        if K > 1:
            prepared_all = _Distance.select(prepared_all, torch.arange(N, device=device).repeat_interleave(K))
        all_targets = compared.repeat_interleave(K, dim=0) if K > 1 else compared
        row_targets = all_targets

        # Per-row random streams: a row draws its noise maps, then (sampled starts) its z, then one w-noise sample
        # per step of App. D's schedule.
        row_seeds = [seed for k in range(N) for seed in [seeds[k]] + image_seeds(seeds[k], K)[1:]]
        gens = [torch.Generator(device="cpu").manual_seed(seed) for seed in row_seeds]
        noise_shapes = [tuple(shape) for shape in synthesis.noise_shapes]
        noise = [torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device) for shape in noise_shapes]
        w_rows = num_ws if s.wplus else 1
        start = stats.w_avg.reshape(1, w_dim).expand(N, -1) if w_init is None else w_init
        start = start.detach().to(device=device, dtype=torch.float32)
        if K > 1 or s.start_from == "sample":
            start = start_points(G, stats, start, gens, K, s.start_psi, sample_first=s.start_from == "sample")
        w_opt = start.reshape(N * K, 1, w_dim).repeat(1, w_rows, 1)
        opt = _RowAdam([w_opt.requires_grad_(True)] + [n.requires_grad_(True) for n in noise], s.betas, s.eps)

        active = torch.arange(N * K, device=device)  # the rows still optimised
        active_list = list(range(N * K))
        prepared = prepared_all
        traces: List[List[tuple]] = [[] for _ in range(N * K)]
        last_loss = np.full(N, np.nan)
        history: List[List[Tuple[int, float]]] = [[] for _ in range(N * K)]
        results: List[Optional[ProjectionResult]] = [None] * N
        start_info: List[dict] = [{} for _ in range(N)]
        alpha = s.effective_alpha(G.img_resolution)
        lr_max = s.effective_lr(G.img_resolution)
        base_settings = dict(s.to_dict(), w_std=stats.w_std, effective_alpha=alpha, effective_lr=lr_max,
                             distance=_name(self.distance))

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
                    ds.append(dist(observed(img, a, b), _Distance.rows(prepared, a, b)))
            return ws, torch.cat(imgs), torch.cat(ds)

        def finish(rows: List[int], ws, img, d, steps_run: int, stopped: Optional[int]):
            """Results of the images of ``rows`` (positions in active_list): per image its closest row."""
            w, maps = params()
            d_np = d.detach().cpu().numpy()
            closest: dict = {}
            for r in rows:
                k = active_list[r] // K
                if k not in closest or d_np[r] < d_np[closest[k]]:
                    closest[k] = r
            for k, r in closest.items():
                row = active_list[r]
                if K > 1:
                    start_info[k]["start"] = row % K
                results[k] = ProjectionResult(
                    w=ws[r].detach().to("cpu", torch.float32).clone(),
                    noise=tuple(m[r].detach().to("cpu", torch.float32).clone() for m in maps),
                    distance=float(d_np[r]),
                    loss_trace=np.array(traces[row], dtype=TRACE_DTYPE),
                    image=img[r].detach().to("cpu", torch.float32).clone(),
                    steps_run=steps_run,
                    stopped_at_step=stopped,
                    settings=dict(base_settings, seed=seeds[k], **start_info[k], **(
                        {} if degrade is None else {"degradation": degrade.image_spec(k).to_dict()})),
                    clean_trace=tuple(history[row]),
                )

        def keep_rows(keep: List[int]) -> None:
            nonlocal active_list, active, prepared, row_targets
            keep_t = torch.tensor(keep, device=device)
            opt.keep(keep_t)
            active_list = [active_list[r] for r in keep]
            active = active.index_select(0, keep_t)
            prepared = _Distance.select(prepared_all, active)
            row_targets = all_targets.index_select(0, active)

        steps = int(s.steps)
        total = steps + int(s.refine_steps)
        schedule = {a: (b, c) for a, b, c in (s.early_stop_schedule or ())}
        # e.g. start 7/25 of 25 steps: 7 / 25 * 25 is 7.000000000000001 in floating point, and its ceil 8
        first_checkpoint = math.ceil(s.early_stop_start * steps - 1e-9)
        for step in range(total):
            if step < steps:  # App. D's schedule
                t = step / steps
                lr = learning_rate(t, lr_max, s.lr_rampdown, s.lr_rampup)
                std = w_noise_std(t, stats.w_std, s.w_noise_scale, s.noise_ramp)
            else:  # refinement: half-cosine ramp-down from refine_lr, no w noise
                lr = s.refine_lr * (0.5 + 0.5 * math.cos(math.pi * (step - steps) / s.refine_steps))
                std = 0.0
            w, maps = params()
            w_noise = None
            if step < steps:
                w_noise = torch.stack([torch.randn([w_rows, w_dim], generator=gens[row]) for row in active_list])
                w_noise = w_noise.to(device) * std
            opt.zero_grad()
            parts = []
            for a, b in _chunks(len(active_list), chunk):
                w_tilde = _rows(w, a, b) if w_noise is None else _rows(w, a, b) + _rows(w_noise, a, b)
                ws = w_tilde.expand(-1, num_ws, -1) if not s.wplus else w_tilde
                chunk_maps = [_rows(m, a, b) for m in maps]
                img = synthesis(ws, noise=chunk_maps, fused_modconv=s.fused_modconv)
                if s.clamp_output:
                    img = img.clamp(-1, 1)
                img = observed(img, a, b, step)
                d = dist(img, _Distance.rows(prepared, a, b))
                if alpha:
                    reg = noise_regularization(chunk_maps, s.pyramid)
                    loss = d + alpha * reg
                else:  # still traced (Fig. 18: how far the maps are from white noise), not differentiated
                    with torch.no_grad():
                        reg = noise_regularization(chunk_maps, s.pyramid)
                    loss = d
                if step >= steps and s.refine_mse:
                    loss = loss + s.refine_mse * (img - _rows(row_targets, a, b)).square().mean(dim=(1, 2, 3))
                loss.sum().backward()  # per-image terms: each image's gradient is its own
                parts.append(torch.stack([loss.detach(), d.detach(), reg.detach()], dim=1))
            opt.step(lr)
            normalize_noise_(opt.params[1:])

            vals = torch.cat(parts).cpu().numpy().astype(np.float64)
            record = s.trace_every > 0 and (step % s.trace_every == 0 or step == total - 1)
            seen = set()
            for r, row in enumerate(active_list):
                k = row // K
                last_loss[k] = vals[r, 0] if k not in seen else min(last_loss[k], vals[r, 0])
                seen.add(k)
                if record:
                    traces[row].append((step, vals[r, 0], vals[r, 1], vals[r, 2], lr))
            if progress is not None:
                progress(step + 1, total, last_loss.copy())

            done = step + 1
            if K > kept and done == s.start_steps:  # keep each image's `keep_starts` closest starts
                _, _, d_c = clean_eval()
                d_np = d_c.cpu().numpy()
                by_image: dict = {}
                for r, row in enumerate(active_list):
                    k = row // K
                    start_info[k].setdefault("start_distances", []).append(float(d_np[r]))
                    by_image.setdefault(k, []).append(r)
                keep_rows(sorted(r for rs in by_image.values() for r in sorted(rs, key=lambda r: d_np[r])[:kept]))
            selected = K == kept or done >= s.start_steps
            on_cadence = ((s.early_stop is not None or s.clean_checkpoints) and done >= first_checkpoint
                          and (done - first_checkpoint) % s.early_stop_every == 0)
            if selected and done < steps and (on_cadence or done in schedule):
                ws_c, img_c, d_c = clean_eval()
                d_np = d_c.cpu().numpy()
                freeze = []
                band = schedule.get(done)
                for r, row in enumerate(active_list):
                    d_r = float(d_np[r])
                    history[row].append((done, d_r))
                    if band is not None and (d_r < band[0] or d_r > band[1]):
                        freeze.append(r)  # outside the measured undecided band (detector.early)
                    elif on_cadence and s.early_stop is not None and _settled(
                            history[row][-s.early_stop_patience:], s.early_stop_patience, s.early_stop,
                            s.early_stop_margin, steps):
                        freeze.append(r)
                if freeze:
                    finish(freeze, ws_c, img_c, d_c, done, done)
                    keep = [r for r in range(len(active_list)) if r not in set(freeze)]
                    if not keep:
                        active_list = []
                        break
                    keep_rows(keep)

        if active_list:
            ws_c, img_c, d_c = clean_eval()
            finish(list(range(len(active_list))), ws_c, img_c, d_c, total, None)
        return results  # type: ignore[return-value]


@torch.no_grad()
def start_points(G, stats: WStats, w0: torch.Tensor, gens: Sequence[torch.Generator], starts: int,
                 psi: float = 1.0, sample_first: bool = False) -> torch.Tensor:
    """The starts of a multi-start projection: [N * starts, w_dim], row k * starts + j for image k's start j.
    Start 0 is ``w0[k]`` (mu_w in App. D), or with ``sample_first`` a sample as the others; start j > 0 is
    ``mu_w + psi (f(z) - mu_w)`` with z ~ N(0, I) drawn from ``gens[k * starts + j]`` (one generator per row)."""
    N = w0.shape[0]
    if len(gens) != N * starts:
        raise ValueError(f"need one generator per start: {N} x {starts}, got {len(gens)}")
    out = w0.repeat_interleave(starts, dim=0).clone()
    sampled = [r for r in range(N * starts) if r % starts or sample_first]
    if sampled:
        z = torch.stack([torch.randn([G.z_dim], generator=gens[r]) for r in sampled]).to(out.device)
        w = G.mapping(z, truncation_psi=1.0)[:, 0]
        out[sampled] = stats.w_avg + psi * (w - stats.w_avg)
    return out


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
