"""What the `detect` commands share: their error types, the projector options (one declaration each, shown in
the "Projector" help panel; StyleGAN2 App. D) and :func:`projector_settings`, which turns them into
:class:`detector.projector.ProjectorSettings`."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from stylegan.util.cli_support import UsageError

PROJECTOR = "Projector"
LPIPS = "LPIPS"
OUTPUT = "Output"


def detector_errors() -> tuple:
    """Error types that are the user's input, for every `detect` command."""
    from detector.images import ImageInputError
    from detector.settings import SettingsError
    from stylegan.config import ConfigError
    from stylegan.data import DatasetError
    from stylegan.formats import ModelFormatError
    from stylegan.perceptual import LPIPSWeightsError

    return (ImageInputError, LPIPSWeightsError, ConfigError, DatasetError, ModelFormatError, SettingsError)


def case_errors() -> tuple:
    """:func:`detector_errors` and the case store's."""
    from cases.store import CaseError

    return detector_errors() + (CaseError,)


class LpipsNet(str, enum.Enum):
    """LPIPS backbones (stylegan.perceptual)."""

    vgg = "vgg"
    alex = "alex"
    squeeze = "squeeze"


class Method(str, enum.Enum):
    """Inversions (detector.settings.METHODS)."""

    appd = "appd"
    multistart = "multistart"


class Pyramid(str, enum.Enum):
    """Noise-regulariser pyramids (detector.projector.PYRAMIDS)."""

    paper = "paper"
    official = "official"


LpipsNetOption = Annotated[LpipsNet, typer.Option(
    "--lpips-net", metavar="NET", rich_help_panel=LPIPS, case_sensitive=False,
    help="LPIPS backbone: vgg (the paper's), alex or squeeze.")]
LpipsWeightsOption = Annotated[Optional[Path], typer.Option(
    "--lpips-weights", metavar="FILE", rich_help_panel=LPIPS,
    help="Backbone weights (torchvision checkpoint or features-only state dict); default: $DETECT_LPIPS_WEIGHTS, "
         "torchvision's cache or download, or `detect fetch-weights`.")]
MethodOption = Annotated[Optional[Method], typer.Option(
    "--method", metavar="NAME", rich_help_panel=PROJECTOR, case_sensitive=False,
    help="Inversion: appd (StyleGAN2 App. D as it is, lr 0.1) or multistart (the default projection from "
         "mu_w and from a sample of W, the closer kept; twice the steps). Default: the projector's.")]
StepsOption = Annotated[int, typer.Option(
    "--steps", metavar="N", rich_help_panel=PROJECTOR, help="Optimisation steps per image (App. D: 1000).")]
LrOption = Annotated[Optional[float], typer.Option(
    "--lr", metavar="X", rich_help_panel=PROJECTOR,
    help="Maximum learning rate (default 0.2 below 256 px, as measured at 32 px; App. D's 0.1 from 256 px).")]
AlphaOption = Annotated[Optional[float], typer.Option(
    "--alpha", metavar="X", rich_help_panel=PROJECTOR, help="Weight of the noise regulariser (App. D: 1e5).")]
AlphaMinResolutionOption = Annotated[Optional[int], typer.Option(
    "--alpha-min-resolution", metavar="RES", rich_help_panel=PROJECTOR,
    help="Smallest network resolution the noise regulariser is applied at; smaller networks are projected "
         "without it, as measured best at 32 px (default 256; 0: every resolution, as App. D).")]
PyramidOption = Annotated[Optional[Pyramid], typer.Option(
    "--pyramid", metavar="KIND", rich_help_panel=PROJECTOR,
    help="Noise-regulariser pyramid: paper (x2 per level) or official (plain averaging).")]
LpipsResolutionOption = Annotated[Optional[int], typer.Option(
    "--lpips-resolution", metavar="RES", rich_help_panel=PROJECTOR,
    help="Resolution LPIPS is evaluated at (default: the network's, down-sampled to 256 above 256 px).")]
ClampOutputOption = Annotated[Optional[bool], typer.Option(
    "--clamp-output/--no-clamp-output", rich_help_panel=PROJECTOR, show_default=False,
    help="Clamp the re-synthesis to [-1, 1] before LPIPS, as an image file would (default: the projector's; "
         "see docs/measurements.md).")]
EarlyStopOption = Annotated[bool, typer.Option(
    "--early-stop/--no-early-stop", rich_help_panel=PROJECTOR,
    help="Stop projecting an image where its verdict can no longer change, by bands measured on the network's "
         "calibration trajectories (every 25 steps; with several networks only images far from a network stop "
         "under it). The distance is the one at that point. Needs a calibration made by this version.")]
TrajectoryOption = Annotated[Optional[int], typer.Option(
    "--trajectory", metavar="N", rich_help_panel=PROJECTOR,
    help="Also record each image's clean distance every N steps from step N (for early-decision studies; the "
         "results do not change).")]
DEGRADED = "Degraded images"
ModelJpegOption = Annotated[Optional[bool], typer.Option(
    "--model-jpeg/--no-model-jpeg", rich_help_panel=DEGRADED,
    help="Compare a JPEG file at the network's size with the JPEG of the re-synthesis, under the file's own "
         "tables.")]
ModelResizeOption = Annotated[Optional[bool], typer.Option(
    "--model-resize/--no-model-resize", rich_help_panel=DEGRADED,
    help="Compare an image that had to be resized with the same resize (down and back) of the re-synthesis.")]
SourceSizeOption = Annotated[Optional[int], typer.Option(
    "--source-size", metavar="PX", rich_help_panel=DEGRADED,
    help="The images went through PX x PX (resized to it and back) before arriving at the network's size.")]
AlignOption = Annotated[Optional[int], typer.Option(
    "--align", metavar="PX", rich_help_panel=DEGRADED,
    help="Search each image's shift, up to PX pixels each way, by short projections at candidate shifts (up to "
         "41 for 8 px, each 300 steps; about 7x a plain check) and compare at the closest (0: off).")]
MarginOption = Annotated[float, typer.Option(
    "--margin", metavar="X", help="With several networks: attribute only when the runner-up's distance, in units "
                                  "of its own images' median distance, is at least X times the best's; else "
                                  "'ambiguous'.")]
SecondLookOption = Annotated[bool, typer.Option(
    "--second-look/--no-second-look",
    help="With several networks: project an image some network claims once more, from another start, under "
         "each network that could change its verdict, and count each network's closer run (one stalled "
         "projection no longer decides alone).")]
StrictOption = Annotated[bool, typer.Option(
    "--strict", help="Refuse images that would need cropping or resizing to the network's size (exit 2, one line "
                     "each) instead of changing them.")]
ThresholdOption = Annotated[Optional[float], typer.Option(
    "--threshold", metavar="X",
    help="Decision threshold on the LPIPS distance, for every network (default: each network's calibration; "
         "without one, no verdict).")]


def projector_settings(steps: int, *, lr: Optional[float] = None, alpha: Optional[float] = None,
                       alpha_min_resolution: Optional[int] = None,
                       pyramid: Optional[str] = None, lpips_resolution: Optional[int] = None,
                       clamp_output: Optional[bool] = None, wplus: bool = False, method: Optional[str] = None,
                       model_jpeg: Optional[bool] = None, model_resize: Optional[bool] = None,
                       source_size: Optional[int] = None, align: Optional[int] = None,
                       trajectory: Optional[int] = None):
    """ProjectorSettings from the shared command-line options (None: the projector's default); a bad value is a
    usage error."""
    from detector.settings import METHODS, ProjectorSettings

    if steps < 1:
        raise UsageError("--steps must be at least 1")
    if isinstance(pyramid, enum.Enum):
        pyramid = pyramid.value
    if isinstance(method, enum.Enum):
        method = method.value
    given: dict = dict(METHODS[method]) if method is not None else {}
    options = {"lr": lr, "alpha": alpha, "pyramid": pyramid, "lpips_resolution": lpips_resolution,
               "clamp_output": clamp_output, "model_jpeg": model_jpeg, "model_resize": model_resize,
               "source_size": source_size, "align": align}
    given.update({k: v for k, v in options.items() if v is not None})  # an option given wins over the method
    if alpha_min_resolution is not None:
        if alpha_min_resolution < 0:
            raise UsageError("--alpha-min-resolution must be a resolution, or 0 for every resolution")
        given["alpha_min_resolution"] = alpha_min_resolution or None
    if trajectory is not None:
        if not 1 <= trajectory < steps:
            raise UsageError(f"--trajectory must be between 1 and --steps - 1, got {trajectory}")
        given.update(clean_checkpoints=True, early_stop_start=trajectory / steps, early_stop_every=trajectory)
    try:
        return ProjectorSettings(steps=steps, wplus=wplus, **{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
