"""`detect batch` and `detect report`: resumable cases (:mod:`cases.batch`) and their reports (:mod:`cases.report`).

Registered on :data:`detector.cli.app` when imported (``detector/cli.py`` imports this module).
Under torchrun (WORLD_SIZE > 1) `detect batch` joins the process group (gloo on CPU, NCCL on GPU) and each
rank projects its share of the inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from stylegan.util.cli_support import UsageError, default_device, setup_torch, user_errors
from stylegan.util.distributed import init_distributed

from . import (ALPHA_HELP, ALPHA_MIN_RESOLUTION_HELP, CLAMP_HELP, EARLY_STOP_HELP, LPIPS_NET_HELP,
                  LPIPS_RESOLUTION_HELP, LPIPS_WEIGHTS_HELP, LR_HELP, PYRAMID_HELP, _detector_errors, app,
                  projector_settings)


def _case_errors() -> tuple:
    from cases.store import CaseError
    from stylegan.formats import ModelFormatError

    return _detector_errors() + (CaseError, ModelFormatError)


class _ImageProgress:
    """A rich progress bar over images (stderr, only on a terminal)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = Console(stderr=True)
        self.p = Progress(TextColumn("images"), BarColumn(), TextColumn("{task.fields[count]}"), TimeElapsedColumn(),
                          TimeRemainingColumn(), console=console, disable=not (self.enabled and console.is_terminal))
        self.p.__enter__()
        self.task = self.p.add_task("batch", total=1, count="")
        return self

    def __call__(self, done: float, total: int) -> None:
        self.p.update(self.task, completed=done, total=max(total, 1), count=f"{int(done)}/{total}")

    def __exit__(self, *exc) -> None:
        self.p.__exit__(*exc)


@app.command()
def batch(
    inputs: List[Path] = typer.Argument(..., help="Suspect images and folders of images (searched recursively)."),
    model: List[Path] = typer.Option(..., "--model", "-m", help="Model file; repeat for several networks."),
    case: Path = typer.Option(..., "--case", help="Case folder (created, or resumed when it exists)."),
    steps: int = typer.Option(1000, help="Optimisation steps (App. D uses 1000)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per batch (a crash loses at most one batch)."),
    seed: int = typer.Option(0, help="Seed of the projection's random draws (per image: from this and its hash)."),
    threshold: Optional[float] = typer.Option(None, help="Decision threshold for every network (default: each network's calibration, else the documented default)."),
    early_stop: bool = typer.Option(False, "--early-stop/--no-early-stop", help=EARLY_STOP_HELP),
    lr: Optional[float] = typer.Option(None, help=LR_HELP),
    alpha: Optional[float] = typer.Option(None, help=ALPHA_HELP),
    alpha_min_resolution: Optional[int] = typer.Option(None, help=ALPHA_MIN_RESOLUTION_HELP),
    pyramid: Optional[str] = typer.Option(None, help=PYRAMID_HELP),
    lpips_resolution: Optional[int] = typer.Option(None, "--lpips-resolution", help=LPIPS_RESOLUTION_HELP),
    clamp_output: Optional[bool] = typer.Option(None, "--clamp-output/--no-clamp-output", help=CLAMP_HELP),
    lpips_net: str = typer.Option("vgg", "--lpips-net", help=LPIPS_NET_HELP),
    lpips_weights: Optional[Path] = typer.Option(None, "--lpips-weights", help=LPIPS_WEIGHTS_HELP),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: cuda if available)."),
) -> None:
    """Project many images into one or several networks as a resumable case folder: finished images are
    skipped on a re-run, changed inputs are reported, bad inputs recorded. Works under torchrun."""
    setup_torch()
    with user_errors(_case_errors()):
        from cases.batch import run_batch
        from cases.store import CaseError

        from stylegan.perceptual import load_lpips

        settings = projector_settings(steps, lr=lr, alpha=alpha, alpha_min_resolution=alpha_min_resolution,
                                      pyramid=pyramid, lpips_resolution=lpips_resolution,
                                      clamp_output=clamp_output)
        if batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        rank = init_distributed()
        world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if device is None:
            device = default_device()
            if device == "cuda" and "LOCAL_RANK" in os.environ:
                device = f"cuda:{os.environ['LOCAL_RANK']}"
        distance = load_lpips(lpips_net, lpips_weights, device=device)
        with _ImageProgress(rank == 0) as progress:
            try:
                summary = run_batch(inputs, model, case, settings, distance, batch_size=batch_size, seed=seed,
                                    threshold=threshold, early_stop=early_stop, progress=progress, rank=rank,
                                    world_size=world_size, device=device)
            except ValueError as exc:
                raise CaseError(str(exc)) from None
        for w in summary.warnings:
            typer.echo(f"warning: {w}", err=True)
        for c in summary.changed:
            typer.echo(f"changed: {c['path']}: content differs from the recorded one "
                       f"(sha256 {c['old_sha256'][:12]}... -> {c['new_sha256'][:12]}...); projected again", err=True)
        for p in summary.changed_during_run:
            typer.echo(f"changed: {p} was rewritten during the run; it will be projected at the next run", err=True)
        for e in summary.errors + summary.unreadable:
            typer.echo(f"error: {e['error']}", err=True)
        prefix = f"rank {rank}: " if world_size > 1 else ""
        typer.echo(f"{prefix}{case}: {summary.processed} projected now, {summary.already_done} already done, "
                   f"{len(summary.errors)} bad, {len(summary.unreadable)} unreadable "
                   f"({summary.assigned} of {summary.distinct} distinct inputs on this rank)")


@app.command()
def report(
    case: Path = typer.Argument(..., help="Case folder written by `detect batch`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for report.html and report.json (default: CASE/report)."),
) -> None:
    """Write a self-contained HTML report (images embedded) and a JSON report of a case."""
    with user_errors(_case_errors()):
        from cases.report import write_report

        html_path, json_path = write_report(case, out)
        typer.echo(f"wrote {html_path}")
        typer.echo(f"wrote {json_path}")
