"""The options of the projector (StyleGAN2 App. D) and their defaults.

:class:`ProjectorSettings` holds every option; the defaults are App. D's, except that networks below 256 px are
projected without the noise regulariser (``alpha_min_resolution``) and at lr 0.2 (``lr`` None). Why each default
is what it is: see docs/measurements.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

PYRAMIDS = ("paper", "official")
STARTS = ("mean", "sample")

# Default noise-regulariser pyramid: 'paper' follows the App. D text (each 2x2 down-sampling step is followed by a
# multiplication by 2, keeping white noise at unit variance); 'official' is NVIDIA's code (plain 2x2 averaging).
DEFAULT_PYRAMID = "paper"

# Resolution the distance is evaluated at for networks below 256 px: None = native. Networks above 256 px are
# always area-down-sampled to 256 (as in NVIDIA's projector).
DEFAULT_LPIPS_RESOLUTION: Optional[int] = None
LPIPS_MAX_RESOLUTION = 256

# Smallest network resolution the noise regulariser is applied at (ProjectorSettings.alpha_min_resolution): 256,
# the smallest resolution the paper projected at with alpha = 1e5; below it it is off.
DEFAULT_ALPHA_MIN_RESOLUTION: Optional[int] = 256

# Whether the synthesised image is clamped to [-1, 1] before the distance (ProjectorSettings.clamp_output).
DEFAULT_CLAMP_OUTPUT = False

DEFAULT_W_STATS_SEED = 123

# Maximum learning rate (ProjectorSettings.lr) when none is given: App. D's 0.1 from LR_APPD_MIN_RESOLUTION on,
# DEFAULT_LR_SMALL below it, measured at 32 px to bring a network's own images back closer and without App. D's
# occasional stuck projections (docs/measurements.md).
APPD_LR = 0.1
DEFAULT_LR_SMALL = 0.2
LR_APPD_MIN_RESOLUTION = 256

# The inversions `--method` names, as ProjectorSettings fields over the defaults: 'appd' is StyleGAN2 App. D as it
# is (lr 0.1 at every resolution); 'multistart' runs the default projection from mu_w and from a sample of W and
# keeps the closer (twice the steps; measured: docs/measurements.md).
METHODS: Dict[str, Dict[str, Any]] = {
    "appd": {"lr": APPD_LR, "starts": 1, "refine_steps": 0},
    "multistart": {"starts": 2, "keep_starts": 2},
}


class SettingsError(ValueError):
    """Settings that do not fit the network they are used on (e.g. a shift search wider than its images allow)."""


@dataclass(frozen=True)
class ProjectorSettings:
    """Every option of the projector; the defaults are StyleGAN2 App. D's, but for the two departures below 256 px.

    steps            optimisation steps per image (1000)
    lr               maximum (initial, after the ramp-up) learning rate; None: App. D's 0.1 from 256 px on, 0.2
                     below (:meth:`effective_lr`)
    lr_rampdown      fraction of the run over which lr ramps down to 0 with a cosine (0.25)
    lr_rampup        fraction of the run over which lr ramps up linearly from 0 (0.05)
    w_noise_scale    std of the noise added to w, in units of sigma_w, at t = 0 (0.05)
    noise_ramp       fraction of the run after which the w noise is 0 (quadratic ramp-down) (0.75)
    alpha            weight of the noise regulariser (1e5), as App. D states it
    alpha_min_resolution
                     None, or the smallest network resolution alpha is applied at; smaller networks are
                     projected with alpha = 0 (:meth:`effective_alpha`). Default 256, the smallest resolution
                     App. D projected at with alpha = 1e5; None applies alpha at every resolution, as App. D
                     does. See docs/measurements.md.
    pyramid          'paper' (x2 per level) or 'official' (plain averaging) noise-regulariser pyramid
    wplus            optimise one w per layer (W+). Not for attribution: W+ can fit almost any image, so
                     distances no longer separate generated from real images.
    lpips_resolution resolution the distance is evaluated at: None = native (area-down-sampled to 256 above
                     256 px); an int resizes both images to it (bilinear up / area down)
    clamp_output     clamp the synthesised image to [-1, 1] before the distance, as writing it to an 8-bit file
                     would (a generator's raw output overshoots [-1, 1]). Not in App. D (NVIDIA's projector
                     compares the raw output); off by default. See docs/measurements.md.
    w_avg_samples    samples of f(z) for mu_w and sigma_w (10,000); w_stats_seed: their numpy seed
    betas, eps       Adam parameters
    fused_modconv    passed to the synthesis network (None: its own default)
    chunk_size       images per forward/backward pass within a step (None:
                     :func:`detector.batching.auto_chunk_size`). Per-image objectives make chunking exact: it
                     changes speed and memory, not results.
    trace_every      record the loss trace every this many steps (0: no trace; the last step is always kept)
    device           None: the generator's device
    starts           starts per image (1: App. D, the start at mu_w only). With K > 1, image k is projected from
                     mu_w and from K - 1 samples ``mu_w + start_psi (f(z) - mu_w)`` (z from the image's own seed),
                     all on App. D's schedule; after ``start_steps`` the clean distances are compared and the
                     ``keep_starts`` closest continue (:meth:`image_steps` gives the cost).
    start_fraction   the fraction of ``steps`` after which the closest start is kept: ``start_steps`` =
                     round(start_fraction * steps), at least 1 and at most steps - 1
    keep_starts      how many of the closest starts continue after ``start_steps`` (all of them when >= starts);
                     the result is the closest of those at the end
    start_psi        truncation of the sampled starts towards mu_w (1: samples of W as they are)
    start_from       "mean": the (first) start is mu_w, as App. D; "sample": it is a sample of W too,
                     ``mu_w + start_psi (f(z) - mu_w)`` with z from the image's own seed (the second look's start:
                     a run from mu_w that stalled in a wrong basin tends to stall there again from mu_w)
    refine_steps     steps of refinement after App. D's schedule: w and noise at ``refine_lr``, ramped down to 0
                     with a half cosine, no w noise (0: none)
    refine_lr        the refinement's initial learning rate
    refine_mse       weight of a pixel mean-squared-error term added to the distance during the refinement (0: the
                     distance alone). The image that made a generated image matches it pixel for pixel, which
                     LPIPS at low resolution hardly asks for; the reported distance is the distance alone.
    early_stop       None, or a band (low, high) of undecided distances. From t >= early_stop_start on, the clean
                     distance of each active image is evaluated every early_stop_every steps. An image is frozen
                     (its result is taken then and its parameters stop changing) once its last
                     early_stop_patience clean distances all lie below low - early_stop_margin (or all above
                     high + early_stop_margin) *and* the straight line through the first and last of them,
                     extrapolated to the final step, stays on the same side. Convergence slows down over a
                     run, so the linear extrapolation overestimates the remaining change: an image frozen this
                     way would have ended on the same side of the band.
    model_jpeg       compare a JPEG file at the network's size with the JPEG of the re-synthesis under the file's
                     own tables (:mod:`detector.degradation`; issue 26)
    model_resize     compare an image that was resized to the network's size with the same resize (down and
                     back) of the re-synthesis; ``source_size``: the size a file at the network's size went
                     through (resized to it and back), when known
    degrade_from     the fraction of ``steps`` from which the modelled JPEG and resize enter the loss (0: from the
                     start; 1: only the reported distance, the optimisation itself compares the plain
                     re-synthesis); a shift's crop always applies
    align            the largest shift (px, each way) searched for (0: none): short projections of
                     ``align_steps`` steps at candidate shifts, compared on squares of one size (at most 41 per image
                     for 8 px, each round's in one batch; :func:`detector.degradation.search_shifts`); the image is
                     then compared at the closest. 300 steps: at 100 the true shift of 1 of 4 images moved by 8 px
                     ranked 12th of the first 25 candidates, at 300 first for all 4 (docs/measurements.md)
    early_stop_schedule None, or ((step, under, far), ...): at each of these steps the clean distance of each active
                     image is evaluated, and the image is frozen when it is below ``under`` or above ``far``
                     (inf: never). The bands come from measured trajectories (:mod:`detector.early`), so no
                     patience or extrapolation is involved.
    clean_checkpoints evaluate the clean distance at the early-stopping checkpoints (start, every) even
                     without early stopping, and return them as ``ProjectionResult.clean_trace``: one full run
                     then tells what any early-stopping band would have saved
                     (:func:`detector.analysis.simulate_early_stop`).
    """

    steps: int = 1000
    lr: Optional[float] = None
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
    early_stop_schedule: Optional[Tuple[Tuple[int, float, float], ...]] = None
    clean_checkpoints: bool = False
    starts: int = 1
    start_fraction: float = 0.2
    keep_starts: int = 1
    start_psi: float = 1.0
    start_from: str = "mean"
    refine_steps: int = 0
    refine_lr: float = 0.01
    refine_mse: float = 0.0
    model_jpeg: bool = False
    model_resize: bool = False
    source_size: Optional[int] = None
    degrade_from: float = 0.0
    align: int = 0
    align_steps: int = 300

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"ProjectorSettings: {msg}")

        if int(self.steps) != self.steps or self.steps < 1:
            bad(f"steps must be a positive integer, got {self.steps!r}")
        if self.lr is not None and not self.lr > 0:
            bad(f"lr must be None or > 0, got {self.lr}")
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
        if self.early_stop_schedule is not None:
            try:
                sched = tuple((int(a), float(b), math.inf if c is None else float(c))
                              for a, b, c in self.early_stop_schedule)
            except (TypeError, ValueError):
                sched = None
            if (not sched or [a for a, _, _ in sched] != sorted({a for a, _, _ in sched})
                    or any(not 0 < a < self.steps or not b >= 0 or not c > 0 for a, b, c in sched)):
                bad("early_stop_schedule must be None or ((step, under, far), ...) with steps rising strictly "
                    f"within (0, steps), under >= 0 and far > 0, got {self.early_stop_schedule!r}")
            object.__setattr__(self, "early_stop_schedule", sched)
        if not 0 <= self.early_stop_start <= 1:
            bad(f"early_stop_start must be in [0, 1], got {self.early_stop_start}")
        if self.early_stop_every < 1 or self.early_stop_patience < 1:
            bad("early_stop_every and early_stop_patience must be >= 1")
        for name in ("starts", "keep_starts", "refine_steps"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 0:
                bad(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if self.starts < 1 or self.keep_starts < 1:
            bad(f"starts and keep_starts must be >= 1, got {self.starts}, {self.keep_starts}")
        if (self.early_stop is not None or self.early_stop_schedule) and min(self.starts, self.keep_starts) > 1:
            bad("early stopping needs one start per image after the selection (keep_starts 1)")
        if not 0 < self.start_fraction < 1:
            bad(f"start_fraction must be in (0, 1), got {self.start_fraction}")
        if self.starts > 1 and self.steps < 2:
            bad("several starts need at least 2 steps")
        if not 0 <= self.start_psi <= 1:
            bad(f"start_psi must be in [0, 1], got {self.start_psi}")
        if self.start_from not in STARTS:
            bad(f"start_from must be one of {STARTS}, got {self.start_from!r}")
        if not self.refine_lr >= 0 or not self.refine_mse >= 0:
            bad(f"refine_lr and refine_mse must be >= 0, got {self.refine_lr}, {self.refine_mse}")
        if self.wplus and self.starts > 1:
            bad("several starts are for W; W+ is not for attribution")
        if self.source_size is not None and (int(self.source_size) != self.source_size or self.source_size < 2):
            bad(f"source_size must be None or an integer >= 2, got {self.source_size!r}")
        if not 0 <= self.degrade_from <= 1:
            bad(f"degrade_from must be in [0, 1], got {self.degrade_from}")
        if int(self.align) != self.align or self.align < 0 or int(self.align_steps) != self.align_steps \
                or self.align_steps < 1:
            bad(f"align must be >= 0 and align_steps >= 1, got {self.align}, {self.align_steps}")

    @property
    def models_degradation(self) -> bool:
        """Whether any degradation is modelled (JPEG, resize, a source size or alignment)."""
        return bool(self.model_jpeg or self.model_resize or self.source_size is not None or self.align)

    @property
    def start_steps(self) -> int:
        """Steps after which the closest of several starts is kept (``start_fraction`` of ``steps``)."""
        return min(int(self.steps) - 1, max(1, round(self.start_fraction * self.steps)))

    def check_network(self, img_resolution: int) -> None:
        """Raise :class:`SettingsError` when these settings cannot run on a network of ``img_resolution``."""
        room = int(img_resolution) - int(self.align)
        if self.align and room < 8:
            raise SettingsError(f"--align {self.align} leaves {room} px to compare at {img_resolution} px; "
                                f"at most {max(0, int(img_resolution) - 8)} there")

    def image_steps(self) -> int:
        """Optimisation steps one image costs (each a synthesis forward/backward and a distance): the
        multi-start's ``starts * start_steps + keep_starts * (steps - start_steps + refine_steps)``."""
        kept = min(self.starts, self.keep_starts)
        if kept == self.starts:
            return int(self.starts * (self.steps + self.refine_steps))
        return int(self.starts * self.start_steps + kept * (self.steps - self.start_steps + self.refine_steps))

    def effective_lr(self, img_resolution: int) -> float:
        """The maximum learning rate used for a network of ``img_resolution``: ``lr`` when given, else App. D's
        0.1 from :data:`LR_APPD_MIN_RESOLUTION` on and :data:`DEFAULT_LR_SMALL` below."""
        if self.lr is not None:
            return float(self.lr)
        return APPD_LR if img_resolution >= LR_APPD_MIN_RESOLUTION else DEFAULT_LR_SMALL

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
        if self.early_stop_schedule is not None:  # JSON has no infinity: None stands for "never"
            d["early_stop_schedule"] = [[a, b, c if math.isfinite(c) else None] for a, b, c in self.early_stop_schedule]
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


# Fields added after records were first written, with the values that reproduce what came before them.
_INACTIVE = ((("starts", 1), ("keep_starts", "start_fraction", "start_psi")),
             (("refine_steps", 0), ("refine_lr", "refine_mse")),
             (("model_jpeg", False), ()), (("model_resize", False), ()), (("source_size", None), ()),
             (("align", 0), ("align_steps",)), (("early_stop_schedule", None), ()),
             (("degrade_from", 0.0), ()), (("start_from", "mean"), ()))


def settings_identity(d: Dict[str, Any]) -> Dict[str, Any]:
    """A settings dict (:meth:`ProjectorSettings.to_dict`) without the fields that are idle at the others' values
    (one start: no start fields; every start kept: no selection point; no refinement: no refinement fields; no
    degradation modelled: none of its fields), so
    that progress files and cases written before those fields existed still name the same projection and idle
    values never count as a difference."""
    out = dict(d)
    for (key, idle), dependents in _INACTIVE:
        if out.get(key, idle) == idle:
            for k in (key,) + dependents:
                out.pop(k, None)
    if d.get("start_from", "mean") != "mean" and "start_psi" in d:  # one start, but sampled: its truncation acts
        out["start_psi"] = d["start_psi"]
    if "starts" in out and out.get("keep_starts", 1) >= out["starts"]:  # every start runs to the end
        out.pop("start_fraction", None)
        out["keep_starts"] = out["starts"]
    return out
