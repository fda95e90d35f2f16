"""`detect calibrate`: a threshold with a stated false-positive rate for one network (registered on
:data:`detector.cli.app` when this module is imported)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import List, Optional

import typer

from stylegan.util.cli_support import UsageError, default_device, setup_torch, user_errors

from . import (ALPHA_HELP, ALPHA_MIN_RESOLUTION_HELP, CLAMP_HELP, LPIPS_NET_HELP, LPIPS_RESOLUTION_HELP,
                  LPIPS_WEIGHTS_HELP, LR_HELP, PYRAMID_HELP, _detector_errors, _StepProgress, app, projector_settings)


class _ImageStepProgress(_StepProgress):
    """The projection progress bar, counted in image-steps over the whole calibration."""

    def __call__(self, done, total) -> None:
        self.p.update(self.task, completed=done, total=total, loss="")


@app.command()
def calibrate(
    model: Path = typer.Option(..., "--model", "-m", help="Model file: our .pt, NVIDIA .pkl or rosinality .pt."),
    real: Optional[List[Path]] = typer.Option(None, "--real", help="Real images (files or folders, searched "
                                                                  "recursively); repeat the option for several."),
    n_generated: int = typer.Option(200, "--n-generated", help="Fresh images the network generates and projects."),
    fpr: float = typer.Option(0.01, "--fpr", help="Target false-positive rate on the real images."),
    steps: int = typer.Option(1000, help="Optimisation steps per image (App. D uses 1000)."),
    seed: int = typer.Option(0, help="Seed of the generated images (z and noise) and of the projections."),
    confidence: float = typer.Option(0.95, help="Confidence level of the achieved-FPR interval (Clopper-Pearson)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images projected together."),
    lpips_net: str = typer.Option("vgg", "--lpips-net", help=LPIPS_NET_HELP),
    lpips_weights: Optional[Path] = typer.Option(None, "--lpips-weights", help=LPIPS_WEIGHTS_HELP),
    lr: Optional[float] = typer.Option(None, help=LR_HELP),
    alpha: Optional[float] = typer.Option(None, help=ALPHA_HELP),
    alpha_min_resolution: Optional[int] = typer.Option(None, help=ALPHA_MIN_RESOLUTION_HELP),
    pyramid: Optional[str] = typer.Option(None, help=PYRAMID_HELP),
    lpips_resolution: Optional[int] = typer.Option(None, "--lpips-resolution", help=LPIPS_RESOLUTION_HELP),
    clamp_output: Optional[bool] = typer.Option(None, "--clamp-output/--no-clamp-output", help=CLAMP_HELP),
    store: bool = typer.Option(True, "--store/--no-store", help="Keep the record with the model: inside our .pt "
                                                               "(rewritten, weights unchanged), else MODEL.calibration.json beside it."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the record as JSON here."),
    progress_file: Optional[Path] = typer.Option(None, "--progress-file", help="Where finished projections are "
                                                 "kept while calibrating (default: MODEL.calibrating.jsonl); an "
                                                 "interrupted run started again continues from it. Removed at the end."),
    record_file: Optional[Path] = typer.Option(None, "--record", help="Store a record made earlier (an --out "
                                               "JSON or a sidecar file, e.g. from a GPU machine or a copy of the "
                                               "same weights) with this model instead of projecting; refused if "
                                               "it was made on other weights."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON instead of a summary."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: cuda if available)."),
) -> None:
    """Project fresh generated images and the given real ones, pick the threshold at the target false-positive
    rate on the reals (with a confidence interval), compute ROC AUC and store the calibration record that
    `detect check` and `detect batch` then use (with --record: store a record made earlier)."""
    setup_torch()
    from detector.calibration import CalibrationError

    with user_errors(_detector_errors() + (CalibrationError,)):
        from stylegan.formats import load_model

        from detector.calibration_run import calibrate as run_calibration
        from detector.images import iter_image_files
        from stylegan.perceptual import load_lpips
        settings = projector_settings(steps, lr=lr, alpha=alpha, alpha_min_resolution=alpha_min_resolution,
                                      pyramid=pyramid, lpips_resolution=lpips_resolution,
                                      clamp_output=clamp_output)
        if n_generated < 1:
            raise UsageError("--n-generated must be at least 1")
        if batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if not 0 <= fpr < 1:
            raise UsageError(f"--fpr must be in [0, 1), got {fpr}")
        if not 0 < confidence < 1:
            raise UsageError(f"--confidence must be in (0, 1), got {confidence}")
        if record_file is not None:
            if real:
                raise UsageError("--record stores a finished record: give it without --real")
            record = _read_record(record_file)
            m = load_model(model, device="cpu")
            weights = m.metadata.get("weights_sha256")
            if record.weights_sha256 is not None and weights is not None and record.weights_sha256 != weights:
                raise CalibrationError(f"{record_file} was made on other weights (weights sha256 "
                                       f"{record.weights_sha256[:16]}..., {model.name} has {weights[:16]}...)")
            _finish(record, model, store, out, as_json)
            return
        if not real:
            raise UsageError("give the real images with --real (or a finished record with --record)")
        device = device or default_device()
        m = load_model(model, device=device)
        paths = iter_image_files(real)
        if not paths:
            raise CalibrationError(f"no image files found in {', '.join(map(str, real))}")
        distance = load_lpips(lpips_net, lpips_weights, device=device)
        progress_file = progress_file or model.with_name(model.name + ".calibrating.jsonl")
        if progress_file.exists():
            typer.echo(f"continuing the calibration recorded in {progress_file}", err=True)
        with _ImageStepProgress(steps, not as_json) as progress:
            record = run_calibration(m, paths, n_generated=n_generated, target_fpr=fpr, settings=settings,
                                     distance=distance, seed=seed, batch_size=batch_size, confidence=confidence,
                                     progress=progress, progress_file=progress_file,
                                     on_skip=lambda msg: typer.echo(f"warning: {msg}", err=True))
        record = dataclasses.replace(record, hashes={**record.hashes, "model_file": str(model)})
        _finish(record, model, store, out, as_json)
        progress_file.unlink(missing_ok=True)  # the record is safe now


def _read_record(path: Path):
    """A calibration record from a JSON file: a bare record (``--out``) or a sidecar document holding one."""
    from detector.calibration import RECORD_FORMAT, CalibrationError, CalibrationRecord

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: not a calibration record ({' '.join(str(exc).split())})") from None
    if isinstance(doc, dict) and doc.get("format") == RECORD_FORMAT + "-sidecar":
        doc = doc.get("record")
    try:
        return CalibrationRecord.from_dict(doc)
    except CalibrationError as exc:
        raise CalibrationError(f"{path}: {exc}") from None


def _finish(record, model: Path, store: bool, out: Optional[Path], as_json: bool) -> None:
    """Store the record with the model (unless --no-store), write --out, and print the record or its summary
    with any weakness warning and a note when too few reals bound the achieved FPR."""
    from stylegan.util.files import atomic_write_text

    from detector.calibration_store import store_calibration

    stored = store_calibration(record, model) if store else None
    if out is not None:
        atomic_write_text(out, json.dumps(record.to_dict(), indent=2) + "\n")
    weakness = record.weakness()
    if weakness:
        typer.echo(f"warning: {weakness}", err=True)
    loose = record.looseness()
    if loose:
        typer.echo(f"note: {loose}", err=True)
    if as_json:
        typer.echo(json.dumps({"stored": None if stored is None else str(stored), "warning": weakness,
                               "note": loose, "record": record.to_dict()}, indent=2))
    else:
        typer.echo(f"{model}: {record.n_generated} generated, {record.n_real} real images "
                   f"({len(record.skipped)} skipped)")
        typer.echo(record.summary())
        if stored is not None:
            typer.echo(f"calibration stored in {stored}")
