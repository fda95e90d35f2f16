"""`stylegan dataset`: an HDF5 training set, or a folder of PNGs cropped the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..util.cli_support import (
    JsonOption,
    command,
)
from ..util.progress import Progress
from . import app
from .options import Crop, user_errors


@command(app)
def dataset(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="Image folder, .zip of images, or an HDF5 dataset to "
                                                            "re-crop.")],
    out: Annotated[Path, typer.Argument(
        metavar="OUT", help="A .h5 file (training set), or a folder, which gets one PNG per image (e.g. held-out "
                            "real images for `detect calibrate`).")],
    res: Annotated[int, typer.Option("--res", metavar="RES", help="Resolution (power of two).")],
    crop: Annotated[Crop, typer.Option("--crop", metavar="KIND", help="center, celeba or none.")] = Crop.center,
    channels: Annotated[int, typer.Option("--channels", metavar="N", help="3 (RGB) or 1 (greyscale).")] = 3,
    skip: Annotated[int, typer.Option(
        "--skip", metavar="N", help="Leave out the first N images (sorted by name), e.g. the training images when "
                                    "exporting a held-out set.")] = 0,
    max_images: Annotated[Optional[int], typer.Option(
        "--max-images", metavar="N", help="Use only the first N images (sorted by name, after --skip).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Build an HDF5 training set or a folder of cropped PNGs.

    The training set holds uint8 NCHW images; every file that could not be read is listed with the reason.
    """
    with user_errors():
        from ..data import build_dataset, export_images

        as_h5 = out.suffix.lower() in (".h5", ".hdf5")
        build = build_dataset if as_h5 else export_images
        with Progress("building dataset" if as_h5 else "exporting images", unit="images") as bar:
            report = build(src, out, res, crop=crop.value, channels=channels, max_images=max_images,
                           progress=bar, skip_images=skip)
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
        else:
            typer.echo(report.summary())
            for item in report.failed:
                typer.echo(f"  could not read {item['file']}: {item['reason']}", err=True)
