"""Degradation-aware comparison (issue 26): what happened to a suspect image on its way to us, applied to the
re-synthesis before the distance, so that the projector compares like with like.

StyleGAN2 §5 compares the suspect image x with g(w, n). A JPEG copy, a resized copy or a shifted crop of an image
the network made is not g(w, n) for any (w, n), so its distance rises and it looks "real". Here the projector
compares x with D(g(w, n)), D the same processing x went through, known from the file itself:

* **resize** - a file that is not at the network's size R (side s after the centre crop) was resized by us to R
  (Lanczos, :func:`stylegan.images.prepare`); with ``--source-size S`` a file at R is taken to have been resized
  to S and back. D resizes R -> s (or S) and back to R with Pillow's own filters, 8-bit steps included
  (:func:`detector.resampling.resize`).
* **JPEG** - a JPEG file at the network's size is compared with the JPEG of the re-synthesis under the file's own
  quantisation tables and chroma subsampling (:class:`detector.jpeg.DifferentiableJpeg`). Not modelled for a JPEG
  that was cropped or resized afterwards (its 8x8 blocks no longer sit on the network's grid).
* **shift** - the framing may be off by a few pixels: D translates the re-synthesis by (dy, dx), and both images
  are cropped to the pixels the shift did not invent (:meth:`Degradation.target` crops the suspect image the same
  way). The shift is searched with short projections at candidate shifts, each compared on a square of one size
  (:func:`search_shifts`).

:class:`DegradationSpec` is the hashable description (images with the same one are projected together; batch
results stay those of one-by-one runs), :meth:`DegradationSpec.build` the module the projector applies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from stylegan.images import REDUCING_GAP

from .jpeg import DifferentiableJpeg, JpegQuality
from .resampling import resize, shift, shift_valid_box


@dataclass(frozen=True)
class DegradationSpec:
    """What to apply to the re-synthesis: ``via_size`` (resize to it and back to R; None: no resize), ``jpeg``
    (the file's tables as a key: (subsampling, luma tuple, chroma tuple); None: no JPEG) and ``shift`` (dy, dx)."""

    via_size: Optional[int] = None
    jpeg: Optional[Tuple[str, Tuple[int, ...], Optional[Tuple[int, ...]]]] = None
    shift: Tuple[int, int] = (0, 0)
    jpeg_quality: Optional[int] = None  # for the record only (the tables decide)
    window: int = 0  # > 0: compare a window x window square centred in the shift's own box, not the whole box

    @property
    def is_identity(self) -> bool:
        return self.via_size is None and self.jpeg is None and self.shift == (0, 0) and not self.window

    @staticmethod
    def jpeg_key(q: JpegQuality) -> Tuple[str, Tuple[int, ...], Optional[Tuple[int, ...]]]:
        chroma = None if q.chroma_table is None else tuple(int(v) for v in np.asarray(q.chroma_table).ravel())
        return (q.subsampling, tuple(int(v) for v in np.asarray(q.luma_table).ravel()), chroma)

    def with_shift(self, dy: int, dx: int, window: int = 0) -> "DegradationSpec":
        return dataclasses.replace(self, shift=(int(dy), int(dx)), window=int(window))

    def to_dict(self) -> Dict[str, Any]:
        d = {"via_size": self.via_size, "jpeg_quality": self.jpeg_quality,
             "jpeg_subsampling": None if self.jpeg is None else self.jpeg[0], "shift": list(self.shift)}
        if self.window:
            d["window"] = self.window
        return d

    def build(self, resolution: int) -> "Degradation":
        return Degradation(self, int(resolution))


class Degradation(torch.nn.Module):
    """``forward(img)``: the spec's processing of re-syntheses [N, C, R, R] in [-1, 1] (differentiable), cropped to
    the shift's valid box; :meth:`target` crops suspect images [N, C, R, R] to the same box."""

    def __init__(self, spec: DegradationSpec, resolution: int):
        super().__init__()
        self.spec = spec
        self.resolution = resolution
        self.jpeg = None
        if spec.jpeg is not None:
            sub, luma, chroma = spec.jpeg
            q = JpegQuality(quality=int(spec.jpeg_quality or 0), exact=False, table_error=0.0, subsampling=sub,
                            luma_table=np.asarray(luma, dtype=np.int64).reshape(8, 8),
                            chroma_table=None if chroma is None else np.asarray(chroma, dtype=np.int64).reshape(8, 8))
            self.jpeg = DifferentiableJpeg(q)
        dy, dx = spec.shift
        self.box = shift_valid_box(resolution, resolution, dy, dx)
        if spec.window:  # a square of one size in every candidate of a search, centred in the shift's box
            W = int(spec.window)
            top, bottom, left, right = self.box
            if W > bottom - top or W > right - left:
                raise ValueError(f"a {W} px window does not fit the pixels of shift {spec.shift} at {resolution} px")
            top, left = top + (bottom - top - W) // 2, left + (right - left - W) // 2
            self.box = (top, top + W, left, left + W)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = self.box
        return x[..., top:bottom, left:right]

    def image_spec(self, k: int) -> DegradationSpec:
        """The spec of image k (every image's, here)."""
        return self.spec

    def forward(self, img: torch.Tensor, photometric: bool = True, images: Optional[List[int]] = None
                ) -> torch.Tensor:
        """``photometric`` False: the shift's crop only (no resize, no JPEG), for the steps before
        ``ProjectorSettings.degrade_from``. ``images`` (which image each row is) is for a
        :class:`DegradationBank`; one degradation applies to every row."""
        s, R = self.spec, self.resolution
        x = img
        if photometric and s.via_size is not None:
            # the 8-bit path of Pillow (what a file on disk went through), on the 0..255 scale
            v = (x.clamp(-1, 1) + 1) * 127.5
            v = resize(v, s.via_size, "lanczos3", reducing_gap=REDUCING_GAP, quantize=True)
            v = resize(v, R, "lanczos3", reducing_gap=REDUCING_GAP, quantize=True)
            x = v / 127.5 - 1
        if photometric and self.jpeg is not None:
            x = self.jpeg(x)
        if s.shift != (0, 0) or s.window:
            x = self._crop(shift(x, s.shift[0], s.shift[1]))
        return x

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return self._crop(x) if self.spec.shift != (0, 0) or self.spec.window else x


class DegradationBank(torch.nn.Module):
    """One degradation per image of a projection, e.g. one image at many candidate shifts in one batch (the shift
    search): ``forward(img, photometric, images)`` applies image ``images[j]``'s to row j. Every spec must crop to
    one size (equal windows), so that the rows stack."""

    def __init__(self, specs: List[DegradationSpec], resolution: int):
        super().__init__()
        self.specs = list(specs)
        if not self.specs:
            raise ValueError("a degradation bank needs at least one spec")
        distinct = list(dict.fromkeys(self.specs))
        self.mods = torch.nn.ModuleList([spec.build(resolution) for spec in distinct])
        self.which = [distinct.index(spec) for spec in self.specs]
        sides = {(m.box[1] - m.box[0], m.box[3] - m.box[2]) for m in self.mods}
        if len(sides) != 1:
            raise ValueError(f"the specs of a bank must crop to one size, got {sorted(sides)}")

    def image_spec(self, k: int) -> DegradationSpec:
        return self.specs[k]

    def forward(self, img: torch.Tensor, photometric: bool = True, images: Optional[List[int]] = None
                ) -> torch.Tensor:
        images = list(range(img.shape[0])) if images is None else list(images)
        if len(images) != img.shape[0]:
            raise ValueError(f"{img.shape[0]} rows but {len(images)} image indices")
        return torch.cat([self.mods[self.which[k]](img[j:j + 1], photometric) for j, k in enumerate(images)])

    def target(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.specs):
            raise ValueError(f"{x.shape[0]} targets for a bank of {len(self.specs)} specs")
        return torch.cat([self.mods[self.which[k]].target(x[k:k + 1]) for k in range(x.shape[0])])


def describe_spec(spec: DegradationSpec) -> str:
    """'the re-synthesis as is' or e.g. 'the re-synthesis resized to 16 and back, JPEG q75 (4:2:0), shifted +1,-2'."""
    parts = []
    if spec.via_size is not None:
        parts.append(f"resized to {spec.via_size} and back")
    if spec.jpeg is not None:
        parts.append(f"JPEG q{spec.jpeg_quality} ({spec.jpeg[0]}, the file's tables)")
    if spec.shift != (0, 0):
        parts.append(f"shifted {spec.shift[0]:+d},{spec.shift[1]:+d} px (dy,dx)")
    return "the re-synthesis " + (", ".join(parts) if parts else "as is")


def spec_for(image: Any, settings: Any, resolution: int) -> DegradationSpec:
    """The degradation to model for one loaded suspect image (:class:`detector.images.LoadedImage`) under
    ``settings`` (:class:`detector.settings.ProjectorSettings` ``model_jpeg``, ``model_resize``, ``source_size``);
    the shift is found later (:func:`project_degraded`)."""
    pre = image.preprocessing
    via = None
    if settings.model_resize and pre is not None and pre.resized_from is not None:
        via = int(pre.resized_from)
    elif settings.source_size is not None and (pre is None or pre.resized_from is None) \
            and int(settings.source_size) != resolution:
        via = int(settings.source_size)
    jpeg, quality = None, None
    if settings.model_jpeg and image.jpeg is not None and pre is not None and not pre.changed_geometry:
        jpeg, quality = DegradationSpec.jpeg_key(image.jpeg), int(image.jpeg.quality)
    return DegradationSpec(via, jpeg, (0, 0), quality)


def search_grid(max_shift: int) -> Tuple[List[int], List[int]]:
    """The values per axis of :func:`search_shifts`' first grid (five, rounded from -max_shift to max_shift: 0, +-4,
    +-8 for 8) and the spacings it then refines at (halving the widest gap down to 1: 2, 1 for 8)."""
    A = int(max_shift)
    values = sorted({int(round(v)) for v in np.linspace(-A, A, 5)})
    gap = max([b - a for a, b in zip(values, values[1:])] or [1])
    spacings = []
    while gap > 1:
        gap = (gap + 1) // 2
        spacings.append(gap)
    return values, spacings


def search_shifts(projector: Any, targets: torch.Tensor, specs: List[DegradationSpec],
                  project: Callable[[Any, List[int], List[DegradationSpec]], list]) -> List[DegradationSpec]:
    """Each image's shift (at most ``settings.align`` px each way), by short projections (``align_steps``) at
    candidate shifts: a 5 x 5 grid (:func:`search_grid`), then the 8 neighbours of the closest at half the spacing,
    down to 1 px. Every candidate is compared on a square of one size, R - ``align`` (centred in the pixels it
    does not invent), since LPIPS on crops of different sizes is not comparable (docs/measurements.md, the align
    pilot; a central crop common to all candidates, 16 px at 32, let a wrong shift fit as well as the right one).
    One round's candidates of all images are projected as one batch (:class:`DegradationBank`; a candidate's
    result is the one it gets alone, with its image's seed). ``project(proj, images, specs)`` projects row j as
    image ``images[j]`` compared through ``specs[j]`` and returns the results in order. Returns the specs with the
    closest shift (compared on its own crop from then on)."""
    from .projector import Projector  # here: the projector module does not depend on this one

    s = projector.settings
    A = int(s.align)
    s.check_network(projector.G.img_resolution)
    W = int(projector.G.img_resolution) - A
    short = dataclasses.replace(s, steps=s.align_steps, early_stop=None, early_stop_schedule=None,
                                clean_checkpoints=False, starts=1, keep_starts=1, refine_steps=0, align=0,
                                trace_every=0)
    proj = Projector(projector.G, projector.distance, short)
    values, spacings = search_grid(A)
    N = targets.shape[0]
    tried: List[Dict[Tuple[int, int], float]] = [{} for _ in range(N)]

    def evaluate(cands: List[List[Tuple[int, int]]]) -> None:
        rows = [(k, c) for k in range(N) for c in cands[k]]
        if not rows:
            return
        res = project(proj, [k for k, _ in rows], [specs[k].with_shift(*c, window=W) for k, c in rows])
        for (k, c), r in zip(rows, res):
            tried[k][c] = float(r.distance)

    evaluate([[(dy, dx) for dy in values for dx in values]] * N)
    best = [min(t, key=t.get) for t in tried]
    for step in spacings:
        cands = []
        for k in range(N):
            y, x = best[k]
            cands.append([(y + a, x + b) for a in (-step, 0, step) for b in (-step, 0, step)
                          if abs(y + a) <= A and abs(x + b) <= A and (y + a, x + b) not in tried[k]])
        evaluate(cands)
        best = [min(t, key=t.get) for t in tried]
    return [spec.with_shift(*b) for spec, b in zip(specs, best)]


def search_cost(max_shift: int) -> int:
    """Short projections :func:`search_shifts` runs per image at most: 25 + 8 per refinement."""
    values, spacings = search_grid(max_shift)
    return len(values) ** 2 + 8 * len(spacings)


def project_degraded(projector: Any, targets: torch.Tensor, specs: List[DegradationSpec], seeds: List[int],
                     progress: Optional[Callable[[float, float, np.ndarray], None]] = None
                     ) -> Tuple[list, List[DegradationSpec]]:
    """Project targets [N, C, R, R] with a :class:`detector.projector.Projector`, each compared through its own
    degradation. With ``settings.align`` > 0 each image's shift is searched first (:func:`search_shifts`) and the
    projection proper compares at it. Images of one spec are projected together (results stay those of one-by-one
    runs). Returns (results in order, the specs used). ``progress(done, total, losses)`` counts steps per image
    over the search and the projection."""
    s = projector.settings
    R = int(projector.G.img_resolution)
    specs = list(specs)
    N = targets.shape[0]
    search_steps = s.align_steps * search_cost(s.align) if s.align else 0
    total = float(search_steps + s.image_steps())
    done = [0.0]

    def step_progress(steps_each: float, share: float):
        base = done[0]

        def report(step, steps, losses):
            if progress is not None:
                progress(min(total, base + steps_each * share * step / steps), total, losses)
        return report

    def rows(proj, images: List[int], row_specs: List[DegradationSpec]) -> list:
        """One batch of the search: row j is image images[j] through row_specs[j] (each row counts as 1/N image
        in the progress)."""
        report = step_progress(float(s.align_steps), len(images) / N)
        res = proj.project(targets[images], seeds=[seeds[k] for k in images], progress=report,
                           degradation=DegradationBank(row_specs, R))
        done[0] = min(total, done[0] + float(s.align_steps) * len(images) / N)
        return res

    if s.align:
        specs = search_shifts(projector, targets, specs, rows)
        done[0] = float(search_steps)  # the search's budget is its most; what it did not need is skipped
    out: Dict[int, Any] = {}
    groups: Dict[DegradationSpec, List[int]] = {}
    for k, spec in enumerate(specs):  # the projection proper: images of one spec together
        groups.setdefault(spec, []).append(k)
    for spec, idx in groups.items():
        report = step_progress(float(s.image_steps()), len(idx) / N)
        res = projector.project(targets[idx], seeds=[seeds[k] for k in idx], progress=report,
                                degradation=None if spec.is_identity else spec.build(R))
        done[0] = min(total, done[0] + float(s.image_steps()) * len(idx) / N)
        out.update(zip(idx, res))
    return [out[k] for k in range(N)], specs


__all__ = ["DegradationSpec", "Degradation", "DegradationBank", "describe_spec", "spec_for", "search_grid",
           "search_shifts", "search_cost", "project_degraded"]
