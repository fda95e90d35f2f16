"""`detect score`: how well a finished case did, given the truth about its inputs (:mod:`cases.metrics`).
Registered on :data:`detector.cli.app` when imported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from stylegan.util.cli_support import JsonOption, command, user_errors

from . import app
from .options import case_errors


@command(app)
def score(
    case: Annotated[Path, typer.Argument(metavar="CASE", help="Case folder (its report/report.json is read; "
                                                              "`detect report` writes it).")],
    truth: Annotated[List[str], typer.Option(
        "--truth", metavar="FOLDER=LABEL",
        help="Inputs with a path component FOLDER are LABEL: a network of the case (as the report names it) or "
             "none (real images); repeat for each folder.")],
    confidence: Annotated[float, typer.Option(
        "--confidence", metavar="X", help="Confidence level of the FPR intervals (Clopper-Pearson).")] = 0.95,
    scatter_png: Annotated[Optional[Path], typer.Option(
        "--scatter", metavar="FILE", help="Also draw each image's distance under one network against another's "
                                          "(one panel per pair of networks) into this PNG.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Score a finished case against the true sources of its inputs.

    Per network: ROC AUC, TPR and achieved FPR at its threshold; over all networks: the confusion table and the
    margins between networks.
    """
    with user_errors(case_errors()):
        from cases.metrics import case_metrics, format_case_metrics, load_case_report, parse_truth, scatter

        report = load_case_report(case)
        labels = parse_truth(truth)
        metrics = case_metrics(report, labels, confidence)
        if scatter_png is not None:
            scatter(report, labels, scatter_png)
        typer.echo(json.dumps(metrics, indent=2) if as_json else format_case_metrics(metrics))
