"""`detect batch` and `detect report`: resumable cases (:mod:`cases.batch`) and their reports (:mod:`cases.report`).

Registered on :data:`detector.cli.app` when imported.
Under torchrun (WORLD_SIZE > 1) `detect batch` joins the process group (gloo on CPU, NCCL on GPU) and each
rank projects its share of the inputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from detector.scoring import DEFAULT_MARGIN
from stylegan.util.cli_support import DeviceOption, UsageError, command, default_device, setup_torch, user_errors
from stylegan.util.distributed import init_distributed
from stylegan.util.progress import Progress

from . import app
from .options import (
    AlignOption,
    AlphaMinResolutionOption,
    AlphaOption,
    ClampOutputOption,
    EarlyStopOption,
    LpipsNet,
    LpipsNetOption,
    LpipsResolutionOption,
    LpipsWeightsOption,
    LrOption,
    MarginOption,
    MethodOption,
    ModelJpegOption,
    ModelResizeOption,
    PyramidOption,
    SecondLookOption,
    SourceSizeOption,
    StepsOption,
    StrictOption,
    TrajectoryOption,
    case_errors,
    projector_settings,
)

CaseArgument = Annotated[Path, typer.Argument(metavar="CASE", help="Case folder written by `detect batch`.")]


@command(app)
def batch(
    inputs: Annotated[List[Path], typer.Argument(
        metavar="PATH", help="Suspect images and folders of images (searched recursively).")],
    model: Annotated[List[Path], typer.Option(
        "--model", "-m", metavar="FILE", help="Model file; repeat for several networks.")],
    case: Annotated[Path, typer.Option("--case", metavar="DIR", help="Case folder (created, or resumed when it "
                                                                     "exists).")],
    batch_size: Annotated[int, typer.Option(
        "--batch-size", metavar="N", help="Images per batch (a crash loses at most one batch).")] = 16,
    seed: Annotated[int, typer.Option(
        "--seed", metavar="N", help="Seed of the projection's random draws (per image: from this and its "
                                    "hash).")] = 0,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", metavar="X", help="Decision threshold for every network (default: each network's "
                                         "calibration; without one, no verdict).")] = None,
    margin: MarginOption = DEFAULT_MARGIN,
    second_look: SecondLookOption = True,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what this run did as JSON instead of a "
                                                         "line.")] = False,
    method: MethodOption = None,
    steps: StepsOption = 1000,
    lr: LrOption = None,
    alpha: AlphaOption = None,
    alpha_min_resolution: AlphaMinResolutionOption = None,
    pyramid: PyramidOption = None,
    lpips_resolution: LpipsResolutionOption = None,
    clamp_output: ClampOutputOption = None,
    early_stop: EarlyStopOption = False,
    strict: StrictOption = False,
    model_jpeg: ModelJpegOption = None,
    model_resize: ModelResizeOption = None,
    source_size: SourceSizeOption = None,
    align: AlignOption = None,
    trajectory: TrajectoryOption = None,
    lpips_net: LpipsNetOption = LpipsNet.vgg,
    lpips_weights: LpipsWeightsOption = None,
) -> None:
    """Project many images into networks as a resumable case.

    Finished images are skipped on a re-run, changed inputs are reported, bad inputs recorded. Runs under
    torchrun: each rank projects its share of the inputs.
    """
    setup_torch()
    with user_errors(case_errors()):
        from cases.batch import run_batch
        from cases.store import CaseError
        from stylegan.perceptual import load_lpips

        settings = projector_settings(steps, method=method, lr=lr, alpha=alpha,
                                      alpha_min_resolution=alpha_min_resolution,
                                      pyramid=pyramid, lpips_resolution=lpips_resolution,
                                      clamp_output=clamp_output, model_jpeg=model_jpeg,
                                      model_resize=model_resize, source_size=source_size, align=align,
                                      trajectory=trajectory)
        if batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if margin < 1:
            raise UsageError("--margin must be at least 1")
        rank = init_distributed()
        world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if device is None:
            device = default_device()
            if device == "cuda" and "LOCAL_RANK" in os.environ:
                device = f"cuda:{os.environ['LOCAL_RANK']}"
        distance = load_lpips(lpips_net.value, lpips_weights, device=device)
        with Progress("projecting", unit="images", enabled=rank == 0) as progress:
            try:
                summary = run_batch(inputs, model, case, settings, distance, batch_size=batch_size, seed=seed,
                                    threshold=threshold, early_stop=early_stop, margin=margin, strict=strict,
                                    second_look=second_look, progress=progress,
                                    rank=rank, world_size=world_size, device=device)
            except ValueError as exc:
                raise CaseError(str(exc)) from None
        for w in summary.warnings:
            typer.echo(f"warning: {w}", err=True)
        for c in summary.changed:
            typer.echo(f"changed: {c['path']}: content differs from the recorded one "
                       f"(sha256 {c['old_sha256'][:12]}... -> {c['new_sha256'][:12]}...); projected again", err=True)
        for q in summary.quarantined:
            typer.echo(f"warning: {q['file']} was damaged ({q['error']}); moved to {q['moved_to']}, its images "
                       f"projected again", err=True)
        for p in summary.changed_during_run:
            typer.echo(f"changed: {p} was rewritten during the run; it will be projected at the next run", err=True)
        for e in summary.errors + summary.unreadable:
            typer.echo(f"error: {e['error']}", err=True)
        if as_json:
            typer.echo(json.dumps(summary.to_dict(), indent=2))
            return
        prefix = f"rank {rank}: " if world_size > 1 else ""
        typer.echo(f"{prefix}{case}: {summary.processed} projected now, {summary.already_done} already done, "
                   f"{len(summary.errors)} bad, {len(summary.unreadable)} unreadable "
                   f"({summary.assigned} of {summary.distinct} distinct inputs on this rank)")


@command(app)
def report(
    case: CaseArgument,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", metavar="DIR", help="Folder for report.html and report.json (default: CASE/report).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report's summary and file names as "
                                                         "JSON.")] = False,
    truth: Annotated[Optional[List[str]], typer.Option(
        "--truth", metavar="FOLDER=LABEL",
        help="Where inputs came from, when known (as `detect score`): every input under a folder FOLDER is "
             "from network LABEL, or 'none' for real images. Adds the confusion table (and, for two networks, "
             "the scatter of distances) to the report's opening.")] = None,
) -> None:
    """Write a case's HTML and JSON reports.

    The HTML report is self-contained (images embedded).
    """
    with user_errors(case_errors()):
        from cases.metrics import parse_truth
        from cases.report import write_report

        html_path, json_path = write_report(case, out, truth=parse_truth(truth or []))
        doc = json.loads(Path(json_path).read_text(encoding="utf-8"))
        for d in doc["provenance"]["damaged_batches"]:
            typer.echo(f"warning: {d['file']} is damaged ({d['error']}): skipped, its images count as pending; "
                       f"run detect batch on the case to project them again", err=True)
        if as_json:
            typer.echo(json.dumps({"html": str(html_path), "json": str(json_path), "summary": doc.get("summary")},
                                  indent=2))
            return
        typer.echo(f"wrote {html_path}")
        typer.echo(f"wrote {json_path}")
