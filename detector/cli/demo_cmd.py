"""`detect demo`: the whole pipeline (generate, batch-project, report) on the network and digits the package ships.

Registered on :data:`detector.cli.app` when imported (``detector/cli.py`` imports this module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stylegan.util.cli_support import UsageError, default_device, setup_torch, user_errors

from . import app
from .demo import DEFAULT_N_GENERATED, DEFAULT_STEPS


def _demo_errors() -> tuple:
    from .cases import _case_errors  # local: cli_cases and cli_demo are both imported by detector.cli
    from .demo import DemoError

    return tuple(_case_errors()) + (DemoError,)


@app.command()
def demo(
    out: Path = typer.Option(Path("detect-demo"), "--out", help="Folder for the demo's inputs, case and report."),
    steps: int = typer.Option(DEFAULT_STEPS, help="Optimisation steps (the shipped calibration was made at this number)."),
    n_generated: int = typer.Option(DEFAULT_N_GENERATED, "--n-generated", help="Fresh digits the demo network generates."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: cuda if available)."),
) -> None:
    """Run the whole pipeline on the small MNIST network and the real digits this package ships: generate a few
    digits, project them and the real ones as a case, and write the case's HTML + JSON report (a few minutes on
    a CPU). Obtains the LPIPS weights itself (as `detect check`, falling back to `detect fetch-weights`)."""
    setup_torch()
    with user_errors(_demo_errors()):
        from .cases import _ImageProgress
        from .demo import run_demo

        if steps < 1:
            raise UsageError("--steps must be at least 1")
        if n_generated < 0:
            raise UsageError("--n-generated must be >= 0")
        with _ImageProgress(True) as progress:
            result = run_demo(out, steps=steps, n_generated=n_generated, device=device or default_device(),
                              progress=progress, log=lambda s: typer.echo(s, err=True))
        for img in result.images:
            d = "n/a" if img["distance"] is None else f"{img['distance']:.4f}"
            typer.echo(f"{img['kind']:9s} {Path(img['path']).name if img['path'] else '?'}: distance {d}: "
                       f"{img['verdict']}")
        typer.echo(result.summary())
        typer.echo(f"case:   {result.case_dir}")
        typer.echo(f"report: {result.report_html}")
        typer.echo(f"        {result.report_json}")
