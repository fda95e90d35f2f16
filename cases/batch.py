"""`detect batch` as a library function: project many images into one or several networks as a resumable case.

:func:`run_batch` expands files and folders (:func:`detector.images.iter_image_files`), hashes every input,
and projects the inputs that the case has no result for yet, ``batch_size`` at a time, with
:func:`detector.check.check_networks` (same loading, same per-image seeds ``image_seed(seed, sha256)``, so a
result does not depend on the batch it was in, the rank that made it or the order of the inputs). Each finished
batch becomes one result file of the case (:class:`cases.store.CaseStore`), so a crash loses at most the batch
in flight, and re-running the same command resumes.

* Inputs are identified by content: the same bytes under two paths are projected once.
* An input whose content changed since the case recorded it (same path, new sha256) is reported in the summary
  and the manifest (``changed``) and projected again; its result is stored under the new hash, the old one
  stays in the case and is marked stale in reports.
* An input that cannot be used (not an image, truncated ...) is recorded as an error result under its hash:
  it is reported, listed in the manifest's ``errors`` and not tried again (the same bytes would fail again).
  A file that cannot be read at all (no hash) is listed under ``unreadable`` and tried again at the next run.
* Several networks: every image is projected under every network; the case's verdict for an image comes from the
  calibrated rule (each distance in units of its own network's distance to its own images, within that network's
  threshold, a margin over the runner-up; :func:`cases.records.attribute_records`).
* One run at a time: rank 0 holds the case folder's lock for the whole run, moves damaged batch files aside
  (their images are projected again) and removes what a killed run left behind (:mod:`cases.store`).
* Scale-out: with ``world_size`` > 1 (torchrun), the distinct inputs, ordered by their first path, are split by
  position, rank r taking every world_size-th one; the split depends only on the inputs, not on what is done,
  so ranks never overlap even when resuming with other ranks done at different points. Each rank writes only
  its own batch files; rank 0 alone writes the manifest. When ``torch.distributed`` is initialised, rank 0
  sets the case up before the others start and gathers the bookkeeping once all are done.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from detector.calibration import calibration_for_lpips, calibration_mismatch, calibration_weakness
from detector.calibration_store import load_calibration
from detector.check import (
    Candidate,
    check_networks,
    no_calibration_warning,
    no_early_decisions_warning,
    progress_passes,
    unique_names,
)
from detector.images import iter_image_files
from detector.scoring import DEFAULT_MARGIN
from detector.settings import ProjectorSettings
from stylegan.formats import load_model
from stylegan.util.distributed import barrier, broadcast_object
from stylegan.util.files import remove_leftover_temporaries
from stylegan.util.locking import exclusive_lock

from .inputs import InputFile, describe_input
from .provenance import now_iso
from .records import ResultRecord
from .store import LOCK, CaseError, CaseStore

PathLike = Union[str, "os.PathLike[str]"]
BatchProgress = Callable[[float, int], None]


@dataclass
class BatchSummary:
    """What one call of :func:`run_batch` did (for this rank)."""

    case_dir: str
    rank: int
    world_size: int
    inputs: int  # files found
    distinct: int  # distinct contents among the readable ones
    assigned: int  # distinct contents this rank is responsible for
    already_done: int  # of those, finished by earlier runs
    processed: int  # projected now (including those that ended in an error)
    errors: List[Dict[str, Any]] = field(default_factory=list)  # bad inputs met in this run
    unreadable: List[Dict[str, Any]] = field(default_factory=list)
    changed: List[Dict[str, Any]] = field(default_factory=list)
    changed_during_run: List[str] = field(default_factory=list)
    quarantined: List[Dict[str, str]] = field(default_factory=list)  # damaged batch files moved aside now
    batch_files: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def model_entry(path: PathLike, model: Any, name: Optional[str] = None) -> Dict[str, Any]:
    """The manifest's description of one network: path, name, file and weights sha256, format, resolution,
    and a calibration summary (None without one; the threshold comes from a user override, else from it) with
    the calibration distances (for the report's histogram)."""
    G = model.G_ema
    cal = model.calibration
    return {
        "path": str(path),
        "name": name or Path(path).stem,
        "file_sha256": model.file_sha256,
        "weights_sha256": (model.metadata or {}).get("weights_sha256"),
        "format": model.source_format,
        "arch": model.arch,
        "img_resolution": int(G.img_resolution),
        "img_channels": int(G.img_channels),
        "calibration": calibration_summary(cal),
    }


def _distances(cal: dict, which: str) -> Optional[List[float]]:
    """Calibration distances of 'generated' or 'real' images, whatever the record's layout."""
    for container in (cal.get("distances"), cal):
        if isinstance(container, dict):
            for key in (which, f"{which}_distances", f"distances_{which}"):
                v = container.get(key)
                if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
                    return [float(x) for x in v]
    return None


def calibration_summary(cal: Optional[dict]) -> Optional[Dict[str, Any]]:
    """Threshold, target and achieved FPR, AUC, counts, settings hash and both distance lists of a calibration
    record (None without one). Unknown keys are ignored, missing ones are None."""
    if not cal:
        return None
    gen, real = _distances(cal, "generated"), _distances(cal, "real")
    out = {k: cal.get(k) for k in ("threshold", "target_fpr", "achieved_fpr", "fpr_ci", "tpr", "auc", "created")}
    out["n_generated"] = len(gen) if gen is not None else cal.get("n_generated")
    out["n_real"] = len(real) if real is not None else cal.get("n_real")
    out["generated_distances"] = gen
    out["real_distances"] = real
    return out


def _broadcast_error(msg: Optional[str], world_size: int) -> Optional[str]:
    """Rank 0's setup outcome to every rank (None = fine)."""
    return msg if world_size <= 1 else broadcast_object(msg, src=0)


def _barrier(world_size: int) -> None:
    if world_size > 1:
        barrier()


def _project_batch(models, entries, batch: Sequence[Tuple[str, str]], distance, settings, seed: int,
                   threshold: Optional[float], early_stop: bool, margin: float, strict: bool,
                   progress: Optional[Callable[[float], None]],
                   second_look: bool = False) -> Tuple[List[ResultRecord], List[str]]:
    """Project one batch of (sha256, path) under every model with :func:`detector.check.check_networks` (as
    `detect check` does, second look included). Returns (records, paths whose content changed since they were
    hashed)."""
    paths = [Path(p) for _, p in batch]
    candidates = [Candidate(e["name"], m.G_ema, m.calibration) for m, e in zip(models, entries)]
    passes = progress_passes(len(models), second_look)

    def model_progress(k, step, total, losses):
        progress((k + step / total) / passes)

    checks = check_networks(candidates, paths, distance, settings=settings, threshold=threshold, seed=seed,
                            early_stop=early_stop, margin=margin, strict=strict, second_look=second_look,
                            progress=None if progress is None else model_progress)
    per_network = {c.name: [ic.records[c.name] for ic in checks] for c in candidates}
    records: List[ResultRecord] = []
    moved: List[str] = []
    for c, entry in zip(candidates, entries):
        for (sha, path), rec in zip(batch, per_network[c.name]):
            if rec.error is None and rec.sha256 != sha:
                moved.append(path)  # rewritten between hashing and loading: next run picks the new content
                continue
            records.append(ResultRecord(
                input_sha256=sha, model_sha256=entry["file_sha256"], path=path, error=rec.error,
                distance=rec.distance, threshold=rec.threshold, threshold_source=rec.threshold_source,
                verdict=rec.verdict, notes=list(rec.notes), result=rec.result, target=rec.target,
                preprocessing=None if rec.preprocessing is None else rec.preprocessing.to_dict(), looks=rec.looks))
    bad_moved = set(moved)
    return [r for r in records if r.path not in bad_moved], sorted(bad_moved)


def run_batch(inputs: Union[PathLike, Sequence[PathLike]], model_paths: Union[PathLike, Sequence[PathLike]],
              case_dir: PathLike, settings=None, distance=None, *, batch_size: int = 16, seed: int = 0,
              threshold: Optional[float] = None, early_stop: bool = False, margin: float = DEFAULT_MARGIN,
              strict: bool = False, second_look: bool = True, progress: Optional[BatchProgress] = None, rank: int = 0,
              world_size: int = 1, device: Optional[str] = None,
              models: Optional[Sequence[Any]] = None) -> BatchSummary:
    """Project every input not yet in the case ``case_dir`` (created on the first call) under every model.

    ``inputs``: files and folders. ``model_paths``: one or several model files (any supported format).
    ``settings``: :class:`detector.settings.ProjectorSettings` (default App. D). ``distance``: the distance
    callable, e.g. :func:`stylegan.perceptual.load_lpips` (its ``provenance()`` is recorded when it has one).
    ``progress(images_done, images_total)`` (fractional within a batch) for this rank's share. ``models``:
    already-loaded :class:`stylegan.formats.LoadedModel` objects for ``model_paths`` (else they are loaded on
    ``device``). ``early_stop``: see :func:`detector.check.check_images` (each network's bands from its own
    calibration; with several networks at :func:`detector.scoring.far_factors`, so that the case's verdicts at
    ``margin`` or a smaller one are those of full runs); recorded with the settings, so a case is resumed with the
    same choice. ``margin``: the case's verdicts are made at it (:func:`cases.report.case_margin`; recorded with
    the settings when not the default).
    ``strict``: inputs that would need cropping or resizing are recorded as bad inputs (recorded with the
    settings too). ``second_look`` (several models; the default): inputs some network claims are projected once
    more under the networks that could change their verdict, each keeping its closer run
    (:func:`detector.check.second_look_pass`; recorded with the settings too).
    See the module docstring for resuming, changed and bad inputs, and ranks.
    """

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if isinstance(model_paths, (str, os.PathLike)):
        model_paths = [model_paths]
    model_paths = list(model_paths)
    if not model_paths:
        raise CaseError("give at least one model")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    if distance is None:
        raise TypeError("distance is required (e.g. stylegan.perceptual.load_lpips())")
    settings = settings if settings is not None else ProjectorSettings()
    case_dir = Path(case_dir)

    if models is None:
        models = [load_model(p, device=device or "cpu") for p in model_paths]

    dist_info = distance.provenance() if hasattr(distance, "provenance") else {"name": type(distance).__name__}
    warnings = []
    for p, m in zip(model_paths, models):  # a calibration beside the model (sidecar) counts too
        # a calibration measured with another LPIPS is not used (its distances belong to another distance)
        m.calibration, not_used = calibration_for_lpips(Path(p).name, load_calibration(p, m), dist_info, threshold)
        if not_used:
            warnings.append(not_used)
        elif threshold is None and not m.calibration:
            warnings.append(no_calibration_warning(Path(p).name, p))
        mismatch = calibration_mismatch(Path(p).name, m.calibration, settings, threshold, m.G_ema.img_resolution)
        if mismatch:
            warnings.append(mismatch)
        weak = threshold is None and calibration_weakness((m.calibration or {}).get("auc"),
                                                          (m.calibration or {}).get("tpr"))
        if weak:
            warnings.append(f"{Path(p).name}: {weak}")
    shas = [m.file_sha256 for m in models]
    if len(set(shas)) != len(shas):
        raise CaseError("the same model file was given twice")
    names = unique_names(model_paths, shas)
    entries = [model_entry(p, m, n) for p, m, n in zip(model_paths, models, names)]
    settings_dict = settings.to_dict()
    if early_stop:
        settings_dict["early_decisions"] = {"margin": float(margin)}
        warnings += [w for p, m in zip(model_paths, models)
                     if (w := no_early_decisions_warning(Path(p).name, m.calibration, threshold, settings))]
    if strict:  # which inputs are errors depends on it: recorded, so a case is resumed with the same choice
        settings_dict["strict"] = True
    if second_look and len(models) > 1:  # the distances depend on it: recorded as well
        settings_dict["second_look"] = True
    if margin != DEFAULT_MARGIN:  # the case's verdicts (and its second looks and early stops) are made at it
        settings_dict["margin"] = float(margin)

    files = iter_image_files(inputs)
    hashed: List[InputFile] = [describe_input(p) for p in files]
    summary = BatchSummary(case_dir=str(case_dir), rank=rank, world_size=world_size, inputs=len(files),
                           distinct=0, assigned=0, already_done=0, processed=0)
    summary.unreadable = [{"path": h.path, "error": h.error} for h in hashed if h.error]
    summary.warnings = warnings

    # Rank 0 holds the case's lock for the whole run (a second `detect batch` on the case is refused), creates or
    # checks the case, moves damaged batch files aside and records the inputs; the others wait for it.
    with contextlib.ExitStack() as held:
        err: Optional[str] = None
        store: Optional[CaseStore] = None
        if rank == 0:
            try:
                held.enter_context(exclusive_lock(case_dir / LOCK, f"case folder {case_dir}"))
                remove_leftover_temporaries(case_dir)  # a manifest write cut short (results/: per rank, below)
                if (case_dir / "manifest.json").exists():
                    store = CaseStore.open(case_dir)
                    store.check_compatible(settings=settings_dict, seed=seed, models=entries, threshold=threshold,
                                           distance=dist_info)
                else:
                    store = CaseStore.create(case_dir, settings=settings_dict, seed=seed, models=entries,
                                             threshold=threshold, distance=dist_info)
                _, _, changed = store.check_inputs(hashed)
                summary.changed = [{"path": i.path, "old_sha256": old, "new_sha256": i.sha256} for i, old in changed]
                store.record_inputs(hashed, changed)
                summary.quarantined = store.quarantine_damaged()
                store.sync_batches()
                store.manifest.setdefault("runs", []).append(
                    {"started": now_iso(), "finished": None, "world_size": world_size, "device": device,
                     "batch_size": batch_size})
                store.save_manifest()
            except Exception as exc:  # tell the other ranks, which would otherwise wait forever
                _broadcast_error(f"rank 0 could not set up the case: {exc}", world_size)
                raise
        err = _broadcast_error(err, world_size)
        if err is not None:
            raise CaseError(err)
        if store is None:
            store = CaseStore.open(case_dir)
        store.clean_temporary(rank)

        # Distinct contents ordered by first path; this rank's share by position.
        first_path: Dict[str, str] = {}
        for h in sorted((h for h in hashed if h.sha256), key=lambda h: h.path):
            first_path.setdefault(h.sha256, h.path)
        units = sorted(first_path.items(), key=lambda kv: (kv[1], kv[0]))
        summary.distinct = len(units)
        mine = units[rank::world_size]
        summary.assigned = len(mine)
        done = store.done_keys()
        todo = [(sha, p) for sha, p in mine if not all((sha, ms) in done for ms in shas)]
        summary.already_done = len(mine) - len(todo)

        total = len(todo)
        if progress is not None:
            progress(0.0, total)
        for b in range(0, total, batch_size):
            batch = todo[b:b + batch_size]

            def inner(frac, base=b, n=len(batch)):
                if progress is not None:
                    progress(base + n * frac, total)

            records, moved = _project_batch(models, entries, batch, distance, settings, seed, threshold, early_stop,
                                            margin, strict, inner, second_look)
            summary.changed_during_run.extend(moved)
            path = store.write_batch(records, rank)
            if path is not None:
                summary.batch_files.append(path.name)
                if rank == 0:
                    store.note_batch(path)
                    store.save_manifest()
            summary.processed += len({r.input_sha256 for r in records})
            bad = {}
            for r in records:
                if r.error is not None:
                    bad.setdefault(r.input_sha256, {"path": r.path, "sha256": r.input_sha256, "error": r.error})
            summary.errors.extend(bad.values())
            if progress is not None:
                progress(float(b + len(batch)), total)

        _barrier(world_size)
        if rank == 0:
            finish_bookkeeping(store)
            if store.manifest.get("runs"):
                store.manifest["runs"][-1]["finished"] = now_iso()
            store.save_manifest()
        return summary


def finish_bookkeeping(store: CaseStore) -> None:
    """Adopt batch files of other ranks (or of a crashed run) and list every recorded error in the manifest."""
    store.sync_batches()
    errors = {}
    for rec in store.results(load=False):
        if rec.error is not None:
            errors.setdefault(rec.input_sha256, {"path": rec.path, "sha256": rec.input_sha256, "error": rec.error})
    store.manifest["errors"] = [errors[k] for k in sorted(errors, key=lambda k: errors[k]["path"])]


__all__ = ["run_batch", "BatchSummary", "model_entry", "calibration_summary", "finish_bookkeeping"]
