"""Kept for old command lines: ``python benchmarks/case_metrics.py CASE --truth FOLDER=LABEL ... [--scatter PNG]``
is ``detect score CASE --truth FOLDER=LABEL ... --json [--scatter PNG]`` (the library part is
:mod:`cases.metrics`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: Optional[List[str]] = None) -> None:
    from detector.cli import app

    args = list(sys.argv[1:] if argv is None else argv)
    app(["score", *args, "--json"], prog_name="detect")


if __name__ == "__main__":
    main()
