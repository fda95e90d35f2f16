"""`detect check` as a library function: read suspect images, project them (App. D), give verdicts.

Pipeline: file -> :func:`detector.images.load_image` (validation, RGB, centre crop, resize; every step noted) ->
:class:`detector.projector.Projector` (all good images in one batch; per-image results independent) ->
:func:`detector.attribution.verdict` per network, and :func:`detector.scoring.decide` among every candidate
network (:func:`check_networks`). Bad files are reported and the rest processed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from stylegan.formats import load_model
from stylegan.util.files import atomic_write_text

from .attribution import Threshold, threshold_for, verdict
from .calibration import calibration_for_lpips, calibration_mismatch, calibration_weakness
from .calibration_store import load_calibration
from .degradation import describe_spec, project_degraded, spec_for
from .early import DecisionBands, calibration_bands, early_unavailable
from .images import ImageInputError, LoadedImage, load_image, save_image
from .processing import Preprocessing, weaknesses
from .projector import Projector
from .results import ProjectionResult
from .scoring import DEFAULT_MARGIN, Decision, Reference, decide, far_factors
from .settings import ProjectorSettings


@dataclass
class CheckRecord:
    """One input's outcome: either an error (bad input) or a distance and verdict."""

    path: str
    error: Optional[str] = None
    sha256: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    distance: Optional[float] = None
    threshold: Optional[float] = None
    threshold_source: Optional[str] = None
    verdict: Optional[str] = None
    steps_run: Optional[int] = None
    result: Optional[ProjectionResult] = None
    target: Optional[torch.Tensor] = None
    preprocessing: Optional[Preprocessing] = None
    looks: Optional[List[Optional[float]]] = None  # second look: each run's distance (None: failed; one: not needed)

    def to_dict(self) -> Dict[str, Any]:
        d = {
            "path": self.path,
            "sha256": self.sha256,
            "notes": self.notes,
            "preprocessing": None if self.preprocessing is None else self.preprocessing.to_dict(),
            "weaknesses": [] if self.preprocessing is None else weaknesses(self.preprocessing),
            "distance": self.distance,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "verdict": self.verdict,
            "steps_run": self.steps_run,
        }
        if self.error is not None:
            d = {"path": self.path, "error": self.error}
        elif self.result is not None:
            d["projection"] = self.result.to_dict()
        return d


def load_targets(paths: Sequence[Path], resolution: int, channels: int, strict: bool = False) -> tuple:
    """(records for every path, loaded images for the good ones, index of each good image's record); ``strict``:
    images that would need cropping or resizing are bad inputs."""
    records: List[CheckRecord] = []
    loaded: List[LoadedImage] = []
    index: List[int] = []
    for p in paths:
        try:
            img = load_image(p, resolution, channels, strict=strict)
        except ImageInputError as exc:
            records.append(CheckRecord(path=str(p), error=str(exc)))
            continue
        records.append(CheckRecord(path=str(p), sha256=img.sha256, notes=list(img.notes),
                                   preprocessing=img.preprocessing))
        loaded.append(img)
        index.append(len(records) - 1)
    return records, loaded, index


def image_seed(seed: int, sha256: str) -> int:
    """The projection seed of one image: from the run's seed and the file's hash, so that an image gets the same
    result whatever else is checked with it and in whatever order."""
    return (seed * 1_000_003 + int(sha256[:8], 16)) % 2**32


def effective_settings(settings: Optional[ProjectorSettings], bands: Optional[DecisionBands] = None,
                       allow_under: bool = True) -> ProjectorSettings:
    """The projector settings a check runs with: ``settings`` (default App. D), with the early-decision
    schedule of ``bands`` (:mod:`detector.early`) when given."""
    settings = settings or ProjectorSettings()
    if bands is not None:
        settings = dataclasses.replace(settings, early_stop_schedule=bands.schedule(allow_under))
    return settings


def early_bands(calibration: Optional[dict], threshold: Optional[Threshold], settings: ProjectorSettings,
                far_factor: float = 1.0) -> Optional[DecisionBands]:
    """The early-decision bands of one network for a check: from its calibration's trajectories at the threshold
    in use, the far side at ``far_factor`` x threshold (1 for one candidate; with several,
    :func:`detector.scoring.far_factors`, which keeps every verdict; see :func:`detector.early.calibration_bands`);
    None without a threshold or usable trajectories."""
    if threshold is None:
        return None
    return calibration_bands(calibration, threshold.value, settings, factor=far_factor)


def no_early_decisions_warning(name: str, calibration: Optional[dict], threshold: Optional[float],
                               settings: ProjectorSettings) -> Optional[str]:
    """What `check` and `batch` say of a network that `--early-stop` cannot stop early (None when it can, or when
    the network has no threshold and so no verdict to decide)."""
    if threshold_for(calibration, threshold) is None:
        return None
    reason = early_unavailable(calibration, settings)
    if reason is None:
        return None
    return f"{name}: no early decisions, {reason}; its images run all {settings.steps} steps"


def check_images(G: torch.nn.Module, paths: Sequence[Path], distance: Callable, *,
                 settings: Optional[ProjectorSettings] = None, calibration: Optional[dict] = None,
                 threshold: Optional[float] = None, seed: int = 0, early_stop: bool = False, strict: bool = False,
                 candidates: int = 1, far_factor: float = 1.0,
                 progress: Optional[Callable[[int, int, np.ndarray], None]] = None) -> List[CheckRecord]:
    """Project every readable image in one batch and attach a verdict. Bad inputs become records with ``error``
    (with ``strict``, also images that would need cropping or resizing).

    ``early_stop``: stop an image where its verdict can no longer change, by the bands measured on the
    network's calibration trajectories (:mod:`detector.early`; none recorded: every image runs in full). Among
    ``candidates`` > 1 networks only the far side stops, at ``far_factor`` x threshold
    (:func:`detector.scoring.far_factors` of every candidate's reference), which keeps every verdict of
    :func:`detector.scoring.decide` at that margin or a smaller one."""
    th: Optional[Threshold] = threshold_for(calibration, threshold)
    settings = settings or ProjectorSettings()
    bands = early_bands(calibration, th, settings, far_factor) if early_stop else None
    settings = effective_settings(settings, bands, allow_under=candidates <= 1)
    records, loaded, index = load_targets(paths, G.img_resolution, G.img_channels, strict)
    if not loaded:
        return records
    device = G.mapping.w_avg.device
    targets = torch.cat([img.tensor for img in loaded]).to(device)
    projector = Projector(G, distance, settings)
    seeds = [image_seed(seed, img.sha256) for img in loaded]
    if settings.models_degradation:
        specs = [spec_for(img, settings, G.img_resolution) for img in loaded]
        results, specs = project_degraded(projector, targets, specs, seeds, progress)
        for k, spec in zip(index, specs):
            rec = records[k]
            if rec.preprocessing is not None and settings.align:
                rec.preprocessing = dataclasses.replace(rec.preprocessing, shift=tuple(spec.shift))
            rec.notes.append(f"compared through {describe_spec(spec)}")
    else:
        results = projector.project(targets, seeds=seeds, progress=progress)
    for j, (k, res) in enumerate(zip(index, results)):
        rec = records[k]
        rec.result = res
        rec.target = targets[j].detach().cpu()
        rec.distance = float(res.distance)
        rec.threshold = None if th is None else th.value
        rec.threshold_source = "none" if th is None else th.source
        rec.verdict = verdict(rec.distance, th)
        rec.steps_run = res.steps_run
    return records


def unique_names(paths: Sequence[Any], shas: Sequence[str]) -> List[str]:
    """Network names from file stems; two files of the same stem get their sha256's first 8 hex digits added."""
    names = [Path(p).stem for p in paths]
    return [f"{n}-{s[:8]}" if names.count(n) > 1 else n for n, s in zip(names, shas)]


def no_calibration_warning(name: str, path: Any) -> str:
    """What `check` and `batch` say of a network without a calibration (its distances get no verdict)."""
    return (f"{name} has no calibration: its distances are given without a verdict; "
            f"`detect calibrate --model {path}` compares with its own images (it projects 200 of them, about 200 "
            f"times one image's check), `--real DIR` adds real ones and measures the false-positive rate (about "
            f"400 times)")


@dataclass(frozen=True)
class Candidate:
    """One network an image is checked against: its name, generator and calibration record (or None)."""

    name: str
    G: torch.nn.Module
    calibration: Optional[dict] = None


@dataclass
class ImageCheck:
    """One input checked against every candidate: the per-network records and the decision among them
    (``decision`` is None for an input that could not be used; ``error`` says why)."""

    path: str
    records: Dict[str, CheckRecord]
    decision: Optional[Decision] = None
    error: Optional[str] = None

    @property
    def sha256(self) -> Optional[str]:
        return next((r.sha256 for r in self.records.values() if r.sha256), None)

    @property
    def notes(self) -> List[str]:
        return next((r.notes for r in self.records.values() if r.sha256), [])

    @property
    def preprocessing(self) -> Optional[Preprocessing]:
        return next((r.preprocessing for r in self.records.values() if r.preprocessing is not None), None)

    def to_dict(self) -> Dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        decision = self.decision.to_dict()
        pre = self.preprocessing
        d = {"path": self.path, "sha256": self.sha256, **decision, "notes": list(self.notes),
             "decision_notes": decision["notes"], "preprocessing": None if pre is None else pre.to_dict(),
             "weaknesses": [] if pre is None else weaknesses(pre)}
        for name, rec in self.records.items():
            entry = d["scores"][name]
            entry.update({"threshold_source": rec.threshold_source, "verdict": rec.verdict,
                          "steps_run": rec.steps_run})
            if rec.looks is not None:
                entry["looks"] = list(rec.looks)
            if rec.result is not None:
                entry["projection"] = rec.result.to_dict()
        d["candidates"] = d.pop("scores")
        return d


def progress_passes(n_networks: int, second_look: bool) -> int:
    """How many projection passes :func:`check_networks` reports through ``progress`` (k = 0 .. this - 1): one
    per network, and one more per network for a second look among several."""
    return n_networks * (2 if second_look and n_networks > 1 else 1)


def check_networks(candidates: Sequence[Candidate], paths: Sequence[Path], distance: Callable, *,
                   settings: Optional[ProjectorSettings] = None, threshold: Optional[float] = None, seed: int = 0,
                   early_stop: bool = False, margin: float = DEFAULT_MARGIN, strict: bool = False,
                   second_look: bool = True,
                   progress: Optional[Callable[[int, int, int, np.ndarray], None]] = None) -> List[ImageCheck]:
    """Check every image against every candidate network (:func:`check_images` per network, same per-image seeds)
    and decide among them with :func:`detector.scoring.decide`: each distance is judged against its own network's
    calibration (``threshold``, when given, replaces every network's). ``progress(k, step, steps, losses)``
    reports the k-th network's projection (k from ``len(candidates)`` on: its second look).

    ``second_look`` (several networks; the default since the three-network face case measured it, issue 24): an
    image some network claims (attributed or ambiguous) is projected again from another start (a sample of W,
    projection seed ``seed + 1``) under every compared network that could change its verdict, and each network's
    closer run counts (:func:`second_look_pass`): one projection that stalled under the true network no longer
    hands the image to a sibling alone. Images nobody claims are not projected again."""
    if not candidates:
        raise ValueError("check_networks needs at least one network")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"network names must be distinct: {names}")
    refs = {c.name: Reference.from_calibration(c.name, c.calibration, threshold) for c in candidates}
    factors = far_factors(refs, margin)
    per_network: Dict[str, List[CheckRecord]] = {}
    for k, c in enumerate(candidates):
        step_progress = None
        if progress is not None:
            def step_progress(step, total, losses, k=k):
                progress(k, step, total, losses)
        per_network[c.name] = check_images(c.G, paths, distance, settings=settings, calibration=c.calibration,
                                           threshold=threshold, seed=seed, early_stop=early_stop,
                                           strict=strict, candidates=len(candidates),
                                           far_factor=factors[c.name], progress=step_progress)
    if second_look and len(candidates) > 1:
        second_look_pass(candidates, paths, per_network, refs, distance, settings=settings, threshold=threshold,
                         seed=seed, margin=margin, strict=strict, progress=None if progress is None else (
                             lambda k, step, total, losses: progress(len(candidates) + k, step, total, losses)))
    out = []
    for i, p in enumerate(paths):
        records = {name: recs[i] for name, recs in per_network.items()}
        error = next((r.error for r in records.values() if r.error), None)
        if error is not None:
            out.append(ImageCheck(str(p), records, None, error))
            continue
        decision = decide({name: r.distance for name, r in records.items()}, refs, margin)
        early = [f"{name} at step {r.result.stopped_at_step}" for name, r in records.items()
                 if r.result is not None and r.result.stopped_at_step is not None]
        if early:
            decision = dataclasses.replace(decision, notes=decision.notes + (
                f"decided early ({', '.join(early)}): those distances, and any margin built on them, are the ones "
                f"at that step; the verdict is the one the full run would give (detector.early)",))
        out.append(ImageCheck(str(p), records, decision))
    return out


def second_look_pass(candidates: Sequence[Candidate], paths: Sequence[Path],
                     per_network: Dict[str, List[CheckRecord]], refs: Dict[str, Reference], distance: Callable, *,
                     settings: Optional[ProjectorSettings], threshold: Optional[float], seed: int, margin: float,
                     strict: bool, progress: Optional[Callable[[int, int, int, np.ndarray], None]] = None) -> None:
    """In place on ``per_network`` (name -> one record per path): every image whose decision names a network
    (attributed or ambiguous) is projected again from another start, a sample of W drawn from projection seed
    ``seed + 1`` (``ProjectorSettings.start_from = "sample"``), and each network's closer run replaces its record
    (:func:`second_look_records`). ``progress(k, ...)``: the k-th candidate's pass.

    An attributed image is projected again under the other networks only: a closer run under the network it went
    to can only widen its margin. Should the others' second looks change its decision, that network gets its
    second look too, so every verdict is the one a second look under every network gives. Used by
    :func:`check_networks`."""
    compared = [c for c in candidates if refs[c.name].threshold is not None]  # the others decide nothing
    # from another start: a sample of W (a run from mu_w that stalled tends to stall again from mu_w)
    look_settings = dataclasses.replace(settings or ProjectorSettings(), start_from="sample")

    def decision(i: int) -> Optional[Decision]:
        recs = {c.name: per_network[c.name][i] for c in candidates}
        if any(r.error for r in recs.values()):
            return None
        return decide({n: r.distance for n, r in recs.items()}, refs, margin)

    def look_again(k: int, c: Candidate, which: List[int], report: bool) -> None:
        if not which:
            return
        step_progress = None
        if progress is not None and report:
            def step_progress(step, total, losses):
                progress(k, step, total, losses)
        again = check_images(c.G, [paths[i] for i in which], distance, settings=look_settings,
                             calibration=c.calibration, threshold=threshold, seed=seed + 1, strict=strict,
                             progress=step_progress)
        for i, rec in zip(which, again):
            per_network[c.name][i] = second_look_records(per_network[c.name][i], rec)

    first = {i: d for i in range(len(paths))
             if (d := decision(i)) is not None and (d.network is not None or d.is_ambiguous)}
    for k, c in enumerate(compared):
        look_again(k, c, [i for i, d in first.items() if d.network != c.name], report=True)
    for k, c in enumerate(compared):  # rare: the others' second looks unsettled an attribution to c
        unsettled = [i for i, d in first.items()
                     if d.network == c.name and (decision(i).network != c.name)]
        look_again(k, c, unsettled, report=False)
    for c in compared:  # attributions that stood: the network they went to kept its one look
        for i, d in first.items():
            rec = per_network[c.name][i]
            if d.network == c.name and rec.looks is None:
                per_network[c.name][i] = dataclasses.replace(rec, looks=[rec.distance])


def second_look_records(first: CheckRecord, second: CheckRecord) -> CheckRecord:
    """The closer of two projections of one image under one network (first look, second look); ``looks`` keeps
    both distances. A failed second look, or one that read other content, keeps the first."""
    ok = second.error is None and second.distance is not None and second.sha256 == first.sha256
    closer = ok and second.distance < first.distance
    return dataclasses.replace(second if closer else first,
                               looks=[first.distance, second.distance if ok else None])


@dataclass
class CheckRun:
    """What :func:`check_files` did: the networks (name, path, sha256, threshold or None, why a calibration was
    not used or None), the settings, the LPIPS provenance, warnings about the networks, and one
    :class:`ImageCheck` per input."""

    models: List[Dict[str, Any]]
    images: List[ImageCheck]
    settings: ProjectorSettings
    lpips: Dict[str, Any]
    margin: float
    warnings: List[str] = field(default_factory=list)
    second_look: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return {"models": self.models, "lpips": self.lpips, "settings": self.settings.to_dict(),
                "margin": self.margin, "second_look": self.second_look, "warnings": list(self.warnings),
                "results": [i.to_dict() for i in self.images]}


def check_files(model_paths: Sequence[Path], paths: Sequence[Path], distance: Callable, *,
                settings: Optional[ProjectorSettings] = None, threshold: Optional[float] = None, seed: int = 0,
                early_stop: bool = False, margin: float = DEFAULT_MARGIN, device: str = "cpu", strict: bool = False,
                second_look: bool = True,
                progress: Optional[Callable[[int, int, int, np.ndarray], None]] = None) -> CheckRun:
    """`detect check`: load each model file and its calibration, warn about networks whose calibration is missing,
    weak or made with other projector settings, set aside (with a warning) a calibration measured with another
    LPIPS (:func:`detector.calibration.calibration_for_lpips`), and check every image against all of them
    (:func:`check_networks`)."""
    settings = settings or ProjectorSettings()
    loaded = [load_model(p, device=device) for p in model_paths]
    names = unique_names(model_paths, [m.file_sha256 for m in loaded])
    lpips = distance.provenance()
    calibrations = []
    models, warnings = [], []
    for name, path, m in zip(names, model_paths, loaded):
        cal, lpips_warning = calibration_for_lpips(name, load_calibration(path, m), lpips, threshold)
        not_used = lpips_warning if cal is None else None
        calibrations.append(cal)
        if lpips_warning:
            warnings.append(lpips_warning)
        th = threshold_for(cal, threshold)
        models.append({"name": name, "path": str(path), "sha256": m.file_sha256,
                       "threshold": None if th is None else th.to_dict(), "calibration_not_used": not_used})
        if th is None:
            if not not_used:
                warnings.append(no_calibration_warning(name, path))
            continue
        if th.source == "self":
            warnings.append(f"{name} is calibrated on its own images only: the false-positive rate of its "
                            f"verdicts is unknown")
        mismatch = calibration_mismatch(name, cal, settings, threshold, m.G_ema.img_resolution)
        if mismatch:
            warnings.append(mismatch)
        weak = th.source == "calibration" and calibration_weakness(cal.get("auc"), cal.get("tpr"))
        if weak:
            warnings.append(f"{name}: {weak}")
    if early_stop:
        warnings += [w for name, cal in zip(names, calibrations)
                     if (w := no_early_decisions_warning(name, cal, threshold, settings))]
    candidates = [Candidate(n, m.G_ema, cal) for n, m, cal in zip(names, loaded, calibrations)]
    images = check_networks(candidates, paths, distance, settings=settings, threshold=threshold, seed=seed,
                            early_stop=early_stop, margin=margin, strict=strict, second_look=second_look,
                            progress=progress)
    bands = None
    if early_stop and len(candidates) == 1:
        bands = early_bands(calibrations[0], threshold_for(calibrations[0], threshold), settings)
    return CheckRun(models, images, effective_settings(settings, bands), lpips, margin, warnings,
                    second_look and len(candidates) > 1)


def difference_image(target: torch.Tensor, resynth: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """|target - re-synthesis| amplified by ``gain``, mapped to [-1, 1] (black = identical)."""
    diff = (target - resynth.clamp(-1, 1)).abs().mul(gain / 2).clamp(0, 1)
    return diff * 2 - 1


def output_stem(record: CheckRecord) -> str:
    """The name ``--out`` files of a checked image start with: its file's stem and the first 8 hex digits of its
    content's sha256 (``x-1a2b3c4d``), so that ``a/x.png`` and ``b/x.png`` do not overwrite each other and a file
    keeps its names from one run to the next; two files of the same name and content share them."""
    return f"{Path(record.path).stem}-{(record.sha256 or '')[:8]}"


def save_check_outputs(record: CheckRecord, out_dir: Path) -> Dict[str, str]:
    """Write ``<stem>-<sha8>.resynth.png``, ``<stem>-<sha8>.diff.png`` and ``<stem>-<sha8>.json``
    (:func:`output_stem`) for one checked image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(record)
    files: Dict[str, str] = {}
    if record.result is not None:
        files["resynthesis"] = str(save_image(record.result.image.clamp(-1, 1), out_dir / f"{stem}.resynth.png"))
        files["difference"] = str(save_image(difference_image(record.target, record.result.image),
                                             out_dir / f"{stem}.diff.png"))
    doc = {**record.to_dict(), "files": files}
    files["record"] = str(atomic_write_text(out_dir / f"{stem}.json", json.dumps(doc, indent=2) + "\n"))
    return files


def save_run_outputs(images: Sequence[ImageCheck], out_dir: Path, per_network: bool = False) -> List[str]:
    """`check --out`: :func:`save_check_outputs` for every usable image (in ``out_dir/<network>`` when
    ``per_network``). An image of the same name and content as one before it is written once; the returned
    one-line notes say so."""
    first: Dict[str, str] = {}
    notes: List[str] = []
    for c in images:
        if c.error is not None:
            continue
        stem = output_stem(next(iter(c.records.values())))
        if stem in first:
            notes.append(f"{c.path}: same name and content as {first[stem]}: its --out files ({stem}.*) are "
                         f"written once")
            continue
        first[stem] = c.path
        for name, rec in c.records.items():
            save_check_outputs(rec, out_dir / name if per_network else out_dir)
    return notes
