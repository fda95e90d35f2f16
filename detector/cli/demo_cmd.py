"""`detect demo`: the whole pipeline (generate, batch-project, report) on the network and digits the package ships.

Registered on :data:`detector.cli.app` when imported; the demo itself is :mod:`detector.cli.demo`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stylegan.util.cli_support import (
    DeviceOption,
    JsonOption,
    UsageError,
    command,
    default_device,
    setup_torch,
    user_errors,
)
from stylegan.util.progress import Progress

from . import app
from .demo import DEFAULT_N_GENERATED, DEFAULT_STEPS
from .options import case_errors


@command(app)
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Folder for the demo's inputs, case and "
                                                                   "report.")] = Path("detect-demo"),
    steps: Annotated[int, typer.Option(
        "--steps", metavar="N", help="Optimisation steps (the shipped calibration was made at this "
                                     "number).")] = DEFAULT_STEPS,
    n_generated: Annotated[int, typer.Option(
        "--n-generated", metavar="N", help="Fresh digits the demo network generates.")] = DEFAULT_N_GENERATED,
    device: DeviceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the whole pipeline on the bundled MNIST network.

    Generates a few digits, projects them and the bundled real ones as a case and writes the case's HTML and JSON
    report (a few minutes on a CPU). Obtains the LPIPS weights itself (as `detect check`, falling back to
    `detect fetch-weights`).
    """
    setup_torch()
    from .demo import DemoError

    with user_errors(case_errors() + (DemoError,)):
        from .demo import run_demo

        if steps < 1:
            raise UsageError("--steps must be at least 1")
        if n_generated < 0:
            raise UsageError("--n-generated must be >= 0")
        with Progress("projecting", unit="images") as progress:
            result = run_demo(out, steps=steps, n_generated=n_generated, device=device or default_device(),
                              progress=progress, log=lambda s: typer.echo(s, err=True))
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
            return
        for img in result.images:
            d = "n/a" if img["distance"] is None else f"{img['distance']:.4f}"
            typer.echo(f"{img['kind']:9s} {Path(img['path']).name if img['path'] else '?'}: distance {d}: "
                       f"{img['verdict']}")
        typer.echo(result.summary())
        typer.echo(f"case:   {result.case_dir}")
        typer.echo(f"report: {result.report_html}")
        typer.echo(f"        {result.report_json}")
