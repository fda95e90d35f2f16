"""`detect calibrate`: a threshold with a stated false-positive rate for one network (registered on
:data:`detector.cli.app` when this module is imported)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from stylegan.util.cli_support import (
    DeviceOption,
    ModelOption,
    UsageError,
    command,
    default_device,
    setup_torch,
    user_errors,
)
from stylegan.util.progress import Progress

from . import app
from .options import (
    OUTPUT,
    AlignOption,
    AlphaMinResolutionOption,
    AlphaOption,
    ClampOutputOption,
    LpipsNet,
    LpipsNetOption,
    LpipsResolutionOption,
    LpipsWeightsOption,
    LrOption,
    MethodOption,
    ModelJpegOption,
    ModelResizeOption,
    PyramidOption,
    SourceSizeOption,
    StepsOption,
    detector_errors,
    projector_settings,
)


@command(app)
def calibrate(
    model: ModelOption,
    real: Annotated[Optional[List[Path]], typer.Option(
        "--real", metavar="PATH", help="Real images (files or folders, searched recursively); repeat the option "
                                       "for several. Without: a self-calibration on the network's own images "
                                       "(verdicts 'consistent with its own images', false-positive rate "
                                       "unknown).")] = None,
    n_generated: Annotated[int, typer.Option(
        "--n-generated", metavar="N", help="Fresh images the network generates and projects.")] = 200,
    fpr: Annotated[float, typer.Option("--fpr", metavar="X", help="Target false-positive rate on the real "
                                                                  "images.")] = 0.01,
    confidence: Annotated[float, typer.Option(
        "--confidence", metavar="X", help="Confidence level of the achieved-FPR interval "
                                          "(Clopper-Pearson).")] = 0.95,
    seed: Annotated[int, typer.Option(
        "--seed", metavar="N", help="Seed of the generated images (z and noise) and of the projections.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="Images projected together.")] = 16,
    device: DeviceOption = None,
    store: Annotated[bool, typer.Option(
        "--store/--no-store", rich_help_panel=OUTPUT,
        help="Keep the record with the model: inside our .pt (rewritten, weights unchanged), else "
             "MODEL.calibration.json beside it.")] = True,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", metavar="FILE", rich_help_panel=OUTPUT, help="Also write the record as JSON here.")] = None,
    progress_file: Annotated[Optional[Path], typer.Option(
        "--progress-file", metavar="FILE", rich_help_panel=OUTPUT,
        help="Where finished projections are kept while calibrating (default: MODEL.calibrating.jsonl); an "
             "interrupted run started again continues from it. Removed at the end.")] = None,
    record_file: Annotated[Optional[Path], typer.Option(
        "--record", metavar="FILE", rich_help_panel=OUTPUT,
        help="Store a record made earlier (an --out JSON or a sidecar file, e.g. from a GPU machine or a copy of "
             "the same weights) with this model instead of projecting; refused if made on other weights.")] = None,
    as_json: Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT,
                                          help="Print the record as JSON instead of a summary.")] = False,
    method: MethodOption = None,
    steps: StepsOption = 1000,
    lr: LrOption = None,
    alpha: AlphaOption = None,
    alpha_min_resolution: AlphaMinResolutionOption = None,
    pyramid: PyramidOption = None,
    lpips_resolution: LpipsResolutionOption = None,
    clamp_output: ClampOutputOption = None,
    model_jpeg: ModelJpegOption = None,
    model_resize: ModelResizeOption = None,
    source_size: SourceSizeOption = None,
    align: AlignOption = None,
    lpips_net: LpipsNetOption = LpipsNet.vgg,
    lpips_weights: LpipsWeightsOption = None,
) -> None:
    """Find a network's threshold at a target false-positive rate.

    Projects fresh generated images and the given real ones, picks the threshold at the target false-positive
    rate on the reals (with a confidence interval), computes ROC AUC and stores the calibration record that
    `detect check` and `detect batch` then use. Without --real: a self-calibration on the generated images alone.
    With --record: store a record made earlier.
    """
    setup_torch()
    from detector.calibration import CalibrationError

    with user_errors(detector_errors() + (CalibrationError,)):
        from detector.calibration_run import calibrate as run_calibration
        from detector.images import iter_image_files
        from stylegan.formats import load_model
        from stylegan.perceptual import load_lpips
        settings = projector_settings(steps, method=method, lr=lr, alpha=alpha,
                                      alpha_min_resolution=alpha_min_resolution,
                                      pyramid=pyramid, lpips_resolution=lpips_resolution,
                                      clamp_output=clamp_output, model_jpeg=model_jpeg,
                                      model_resize=model_resize, source_size=source_size, align=align)
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
        device = device or default_device()
        m = load_model(model, device=device)
        paths = iter_image_files(real) if real else []
        if real and not paths:
            raise CalibrationError(f"no image files found in {', '.join(map(str, real))}")
        if not real:
            typer.echo(f"no --real images: a self-calibration on {n_generated} of the network's own images (its "
                       f"verdicts will carry no false-positive rate)", err=True)
        distance = load_lpips(lpips_net.value, lpips_weights, device=device)
        progress_file = progress_file or model.with_name(model.name + ".calibrating.jsonl")
        if progress_file.exists():
            typer.echo(f"continuing the calibration recorded in {progress_file}", err=True)
        with Progress("calibrating", unit="images") as bar:  # the library counts image-steps
            record = run_calibration(m, paths, n_generated=n_generated, target_fpr=fpr, settings=settings,
                                     distance=distance, seed=seed, batch_size=batch_size, confidence=confidence,
                                     progress=lambda done, total: bar.update(done / steps, total / steps),
                                     progress_file=progress_file,
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
    from detector.calibration_store import store_calibration
    from stylegan.util.files import atomic_write_text

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
