"""Making a calibration (StyleGAN2 §5, Fig. 9): generate fresh images from seeds, project them and the real
images, and turn the two samples of distances into a :class:`detector.calibration.CalibrationRecord`.

:func:`calibrate` is resumable: with a :class:`CalibrationProgress` file an interrupted run continues from the
images it finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from stylegan.formats import LoadedModel, load_model
from stylegan.generator import generate_seeded
from stylegan.perceptual import load_lpips
from stylegan.util.files import atomic_write_text
from stylegan.util.locking import exclusive_lock

from .calibration import CalibrationError, CalibrationRecord, _plain, record_from_distances
from .check import image_seed, load_targets
from .degradation import DegradationSpec, project_degraded, spec_for
from .images import to_uint8
from .processing import CLEAN
from .projector import Projector
from .settings import ProjectorSettings, settings_identity
from .statistics import allowed_false_positives, clopper_pearson

log = logging.getLogger(__name__)

# Generated images for calibration use z seeds GENERATION_SEED_BASE + seed * GENERATION_SEED_STRIDE + i, far from
# the small seeds people use for `stylegan generate`, so calibration images are not the ones shown around.
GENERATION_SEED_BASE = 10_000_000
GENERATION_SEED_STRIDE = 100_000


def generation_seeds(seed: int, n: int) -> List[int]:
    """z seeds of the calibration's generated images: ``10_000_000 + seed * 100_000 + i`` for i < n."""
    if n > GENERATION_SEED_STRIDE:
        raise CalibrationError(f"at most {GENERATION_SEED_STRIDE} generated images per calibration seed")
    if seed < 0 or GENERATION_SEED_BASE + seed * GENERATION_SEED_STRIDE + n > 2**32 - 1:
        raise CalibrationError(f"calibration seed must be between 0 and 42000, got {seed}")
    return [GENERATION_SEED_BASE + seed * GENERATION_SEED_STRIDE + i for i in range(n)]


def generate_images(G, seeds: Sequence[int], truncation_psi: float = 1.0) -> torch.Tensor:
    """Images [N, C, R, R] in [-1, 1] as StyleGAN2's ``project_generated_images`` makes them: one
    ``numpy.random.RandomState(seed)`` per image draws z (the first ``z_dim`` numbers, as
    :func:`stylegan.generator.seed_to_z`), then every noise map in layer order. Random noise as in the paper's
    experiment (not the network's stored ``noise_const``, which the projector, starting from fresh random noise,
    could not recover either way), yet reproducible from the seed. Generated one at a time, so an image does not
    depend on the batch it was made in (:func:`stylegan.generator.generate_seeded`, the rule of
    ``stylegan generate --noise-mode random``). Quantised to 8 bits, exactly as a PNG written
    by :func:`detector.images.save_image` and read back by ``load_image``, so generated and real images reach
    the projector the same way."""
    out = [to_uint8(generate_seeded(G, s, truncation_psi).cpu()).to(torch.float32) / 127.5 - 1.0 for s in seeds]
    return torch.cat(out)


def _tensor_sha256(x: torch.Tensor) -> str:
    return hashlib.sha256(to_uint8(x).numpy().tobytes()).hexdigest()


class CalibrationProgress:
    """The finished projections of a calibration in progress, so that an interrupted ``detect calibrate``
    continues where it stopped instead of starting over.

    A JSON-lines file: a header line naming what is being calibrated (the network, projector settings, seed, the
    distance's provenance), then one line per projected image ``{"kind": "generated"|"real", "key": z seed or
    file sha256, "distance": d, "trajectory": [...]}`` (the trajectory where one was recorded), appended and
    fsync'ed after every batch. A line cut short by a crash is ignored (that image is projected again); a file
    whose header names another calibration is refused, never silently mixed in. The network is named by its
    weights' sha256 where the file records one (our ``.pt``), else by the file's sha256, and LPIPS by its
    weights' hashes, not their paths: a network re-trained bit for bit (same data, seed and thread count) on
    another machine, or re-saved with other metadata, continues the same calibration. ``legacy_header`` is
    also accepted (files written before that)."""

    def __init__(self, path: Union[str, Path], header: Dict[str, Any],
                 legacy_header: Optional[Dict[str, Any]] = None):
        self.path = Path(path)
        self.header = json.loads(json.dumps(_plain(header), sort_keys=True))
        accepted = [{"calibration_progress": self.header}]
        if legacy_header is not None:
            accepted.append({"calibration_progress": json.loads(json.dumps(_plain(legacy_header), sort_keys=True))})
        self.done: Dict[Tuple[str, str], float] = {}
        self.trajectories: Dict[Tuple[str, str], List[float]] = {}
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"calibration_progress": self.header}, sort_keys=True) + "\n")
            return
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = text.splitlines()
        try:
            old = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            old = None
        if old not in accepted:
            raise CalibrationError(f"{self.path} holds the progress of another calibration (other model, "
                                   "settings or seed); delete it or choose another progress file")
        clean = True
        for line in lines[1:]:
            try:
                rec = json.loads(line)
                k = (str(rec["kind"]), str(rec["key"]))
                d = float(rec["distance"])
                traj = rec.get("trajectory")
                traj = None if traj is None else [float(v) for v in traj]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                clean = False  # the last line of a run killed while writing it
                continue
            self.done[k] = d
            if traj is not None:
                self.trajectories[k] = traj
        if not (clean and text.endswith("\n")):  # rewrite without it before appending
            atomic_write_text(self.path, "\n".join([lines[0]] + [self._line(k, key, d) for (k, key), d in
                                                                  self.done.items()]) + "\n")

    def _line(self, kind: str, key: str, distance: float) -> str:
        rec: Dict[str, Any] = {"kind": kind, "key": key, "distance": float(distance)}
        if (kind, key) in self.trajectories:
            rec["trajectory"] = self.trajectories[(kind, key)]
        return json.dumps(rec)

    def get(self, kind: str, key: Any) -> Optional[float]:
        return self.done.get((kind, str(key)))

    def trajectory(self, kind: str, key: Any) -> Optional[List[float]]:
        return self.trajectories.get((kind, str(key)))

    def add(self, kind: str, keys: Sequence[Any], distances: Sequence[float],
            trajectories: Optional[Sequence[Optional[List[float]]]] = None) -> None:
        lines = []
        for j, (key, d) in enumerate(zip(keys, distances)):
            self.done[(kind, str(key))] = float(d)
            if trajectories is not None and trajectories[j] is not None:
                self.trajectories[(kind, str(key))] = [float(v) for v in trajectories[j]]
            lines.append(self._line(kind, str(key), d) + "\n")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())


class _StepCount:
    """Image-steps done by a calibration, for ``progress(done, total)``: those resumed from its progress file are
    reported once, before anything is projected, so that a progress bar's rate and time left count only the
    work of this run (two separate jumps, one per kind, would read as work done in no time)."""

    def __init__(self, progress: Optional[Callable[[int, int], None]], total: int, resumed: int):
        self.progress, self.total, self.done = progress, total, resumed
        if progress is not None and resumed > 0:
            progress(resumed, total)

    def step_callback(self, n_images: int, steps: int) -> Optional[Callable[[int, int, Any], None]]:
        """The projector's per-step callback for a batch of ``n_images`` starting now."""
        if self.progress is None:
            return None
        start = self.done
        return lambda step, of, _losses: self.progress(start + round(step / of * steps) * n_images, self.total)


#: Checkpoints per run at which a calibration records each projection's clean distance (detector.early).
TRAJECTORY_POINTS = 40


def trajectory_every(steps: int) -> int:
    """Steps between a calibration's trajectory checkpoints: about :data:`TRAJECTORY_POINTS` per run (25 of
    1000 steps); checkpoints at every, 2 every, ... below ``steps``."""
    return max(1, int(steps) // TRAJECTORY_POINTS)


def _project_missing(projector, kind: str, keys: List[Any], make_targets: Callable[[List[int]], torch.Tensor],
                     seeds: List[int], batch_size: int, count: _StepCount, state: Optional[CalibrationProgress],
                     specs: Optional[Callable[[List[int]], List[Any]]] = None
                     ) -> Tuple[List[float], List[Optional[List[float]]]]:
    """Distances for ``keys`` (in order): those ``state`` already holds, the rest projected ``batch_size`` at a
    time (``make_targets(indices)`` builds their targets) and recorded in ``state`` after each batch; ``count``
    advances with them. When the settings model a degradation, each image is compared through its own
    (``specs(indices)``: :func:`detector.degradation.spec_for`), as `detect check` compares it
    (:func:`detector.degradation.project_degraded`). Also returns each image's trajectory (its clean distances
    at the projector's checkpoints; None where it was resumed without one)."""
    steps = projector.settings.steps
    out: List[Optional[float]] = [None if state is None else state.get(kind, k) for k in keys]
    trajs: List[Optional[List[float]]] = [None if state is None else state.trajectory(kind, k) for k in keys]
    todo = [i for i, d in enumerate(out) if d is None]
    for a in range(0, len(todo), batch_size):
        idx = todo[a:a + batch_size]
        cb = count.step_callback(len(idx), steps)
        if specs is not None and projector.settings.models_degradation:
            results, _ = project_degraded(projector, make_targets(idx), specs(idx), [seeds[i] for i in idx], cb)
        else:
            results = projector.project(make_targets(idx), seeds=[seeds[i] for i in idx], progress=cb)
        ds = [float(r.distance) for r in results]
        ts = [[float(f"{d:.6g}") for _, d in r.clean_trace] or None for r in results]
        count.done += len(idx) * steps
        for i, d, t in zip(idx, ds, ts):
            out[i], trajs[i] = d, t
        if state is not None:
            state.add(kind, [keys[i] for i in idx], ds, ts)
    return [float(d) for d in out], trajs  # type: ignore[misc]


def calibrate(model: Any, real_paths: Sequence[Union[str, Path]], n_generated: int = 200,
              target_fpr: float = 0.01, settings: Any = None, distance: Optional[Callable] = None, seed: int = 0,
              batch_size: int = 16, confidence: float = 0.95, truncation_psi: float = 1.0, device: Any = "cpu",
              progress: Optional[Callable[[int, int], None]] = None,
              on_skip: Optional[Callable[[str], None]] = None,
              progress_file: Optional[Union[str, Path]] = None) -> CalibrationRecord:
    """Calibrate a network: project ``n_generated`` fresh images (:func:`generate_images`, z seeds from
    :func:`generation_seeds`) and the real images at ``real_paths``, then :func:`record_from_distances`. No real
    paths: a self-calibration on the generated images alone (no false-positive rate).

    ``model``: a model file (any supported format, loaded onto ``device``) or a
    :class:`stylegan.formats.LoadedModel`. ``distance``: the projector's distance (default: LPIPS-VGG from
    :func:`stylegan.perceptual.load_lpips`). Real images go through :func:`detector.check.load_targets` (validation,
    crop, resize); unreadable ones are listed in ``record.skipped`` and reported as they are found (``on_skip(
    message)``, default: a logging warning), and none readable is a
    :class:`CalibrationError`. Each real image is projected with the seed ``detect check`` would use
    (:func:`detector.check.image_seed`), so its calibration distance is the one ``detect check`` reports.
    Images are projected ``batch_size`` at a time; ``progress(image_steps_done, image_steps_total)``.
    ``progress_file``: a :class:`CalibrationProgress` file; with it an interrupted calibration resumes, taking
    the distances of the images it finished (the caller removes the file once the record is stored). One
    process at a time uses a progress file: it is locked (``.NAME.lock`` beside it) and a second process is
    refused with the holder's name.
    """
    if progress_file is None:
        return _calibrate(model, real_paths, n_generated, target_fpr, settings, distance, seed, batch_size,
                          confidence, truncation_psi, device, progress, on_skip, None)
    progress_file = Path(progress_file)
    with exclusive_lock(progress_file.parent / f".{progress_file.name}.lock",
                        f"calibration progress file {progress_file}"):
        return _calibrate(model, real_paths, n_generated, target_fpr, settings, distance, seed, batch_size,
                          confidence, truncation_psi, device, progress, on_skip, progress_file)


def _calibrate(model, real_paths, n_generated, target_fpr, settings, distance, seed, batch_size, confidence,
               truncation_psi, device, progress, on_skip, progress_file) -> CalibrationRecord:
    settings = settings if settings is not None else ProjectorSettings()
    if int(n_generated) != n_generated or n_generated < 1:
        raise CalibrationError(f"n_generated must be a positive integer, got {n_generated}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise CalibrationError(f"batch_size must be a positive integer, got {batch_size}")
    try:
        allowed_false_positives(1, target_fpr)
        clopper_pearson(0, 1, confidence)
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None
    model_path = None
    if not isinstance(model, LoadedModel):
        model_path = Path(model)
        model = load_model(model_path, device=device)
    G = model.G_ema
    if distance is None:
        distance = load_lpips("vgg", device=G.mapping.w_avg.device)

    records, loaded, _ = load_targets([Path(p) for p in real_paths], G.img_resolution, G.img_channels)
    skipped = [{"path": r.path, "error": r.error} for r in records if r.error]
    for s in skipped:
        (on_skip or log.warning)(f"skipping real image: {s['error']}")
    if real_paths and not loaded:
        first = f" ({skipped[0]['error']})" if skipped else ""
        raise CalibrationError(f"no readable real images among {len(records)} given{first}")

    z_seeds = generation_seeds(seed, int(n_generated))
    if settings.early_stop is not None or settings.early_stop_schedule:
        raise CalibrationError("a calibration projects every image in full: no early stopping")
    every = trajectory_every(settings.steps)
    # The trajectories for detector.early: clean distances every `every` steps, which change no result (the
    # checkpoints only read the parameters), so the settings recorded and checked are the caller's.
    projector = Projector(G, distance, dataclasses.replace(settings, clean_checkpoints=True,
                                                           early_stop_start=every / settings.steps,
                                                           early_stop_every=every))
    device = G.mapping.w_avg.device
    steps = settings.steps
    total = (len(z_seeds) + len(loaded)) * steps

    provenance = distance.provenance() if hasattr(distance, "provenance") else {"name": _name(distance)}
    state = None
    if progress_file is not None:
        common = {"projector": settings_identity(settings.to_dict()), "seed": int(seed),
                  "truncation_psi": float(truncation_psi)}
        # What the distance is, not where its files lie: another machine's paths continue the same calibration.
        lpips_identity = {k: v for k, v in provenance.items() if k not in ("weights_path", "weights_source")}
        weights = model.metadata.get("weights_sha256")
        network = {"weights_sha256": weights} if weights else {"file_sha256": model.file_sha256}
        state = CalibrationProgress(progress_file, dict(common, network=network, lpips=lpips_identity),
                                    legacy_header=dict(common, model_file_sha256=model.file_sha256,
                                                       lpips=provenance))

    # Generated images are made from their z seeds alone, one at a time, whenever needed (cheap next to 1000
    # projection steps, and nothing large is held): once for their projection seeds, again for projecting.
    gen_proj_seeds = [image_seed(seed, _tensor_sha256(generate_images(G, [z], truncation_psi)[0])) for z in z_seeds]
    resumed = 0 if state is None else (sum(state.get("generated", z) is not None for z in z_seeds)
                                       + sum(state.get("real", img.sha256) is not None for img in loaded))
    count = _StepCount(progress, total, resumed * steps)
    gen_d, gen_t = _project_missing(projector, "generated", z_seeds,
                             lambda idx: generate_images(G, [z_seeds[i] for i in idx], truncation_psi).to(device),
                             gen_proj_seeds, batch_size, count, state,
                             lambda idx: [DegradationSpec() for _ in idx])  # rendered clean: only a shift is sought
    real_proj_seeds = [image_seed(seed, img.sha256) for img in loaded]
    real_d, real_t = _project_missing(projector, "real", [img.sha256 for img in loaded],
                              lambda idx: torch.cat([loaded[i].tensor for i in idx]).to(device), real_proj_seeds,
                              batch_size, count, state,
                              lambda idx: [spec_for(loaded[i], settings, G.img_resolution) for i in idx])

    hashes = {
        "model_file_sha256": model.file_sha256,
        "model_file": None if model_path is None else str(model_path),
        "model_format": model.source_format,
        "weights_sha256": model.metadata.get("weights_sha256"),
        "real_images": [{"path": str(img.path), "sha256": img.sha256} for img in loaded],
    }
    return record_from_distances(
        gen_d, real_d, target_fpr, confidence,
        settings={"projector": settings.to_dict(), "lpips": provenance,
                  "generation": {"truncation_psi": float(truncation_psi), "noise": "random (seeded per image)",
                                 "quantised": "uint8", "seed_rule": "10_000_000 + seed * 100_000 + i"},
                  "processing": {"generated": dict(CLEAN), "real": real_processing(loaded)}},
        seeds={"seed": int(seed), "generated_z_seeds": z_seeds, "generated_projection_seeds": gen_proj_seeds,
               "real_projection_seeds": real_proj_seeds},
        hashes=hashes, skipped=skipped,
        trajectories={"every": every, "steps": int(settings.steps), "generated": gen_t, "real": real_t})


def real_processing(loaded: Sequence[Any]) -> Dict[str, Any]:
    """What the calibration's real images went through (issue 26), as counts: how many there are, how many were
    JPEG files (and their estimated qualities), resized or cropped on loading. The generated ones are always
    rendered at the network's size and quantised to 8 bits (:data:`detector.processing.CLEAN`)."""
    pres = [img.preprocessing for img in loaded if getattr(img, "preprocessing", None) is not None]
    qualities = sorted(int(p.jpeg["quality"]) for p in pres if p.jpeg)
    return {"n": len(loaded), "jpeg": len(qualities), "jpeg_qualities": sorted(set(qualities)),
            "resized": sum(p.resized_from is not None for p in pres), "cropped": sum(p.crop is not None for p in pres)}


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)
