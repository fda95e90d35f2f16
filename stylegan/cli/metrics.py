"""`stylegan metrics ppl`: perceptual path length (StyleGAN §4.1, StyleGAN2 §3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..util.cli_support import (
    DeviceOption,
    JsonOption,
    ModelOption,
    UsageError,
    command,
    default_device,
    deprecated_alias,
    setup_torch,
    sub_app,
)
from ..util.progress import Progress
from . import app
from .options import Sampling, Space, user_errors

metrics_app = sub_app("Measure networks (perceptual path length).")
app.add_typer(metrics_app, name="metrics")


@command(metrics_app, "ppl")
def ppl(
    model: ModelOption,
    space: Annotated[Space, typer.Option(
        "--space", metavar="SPACE", help="w (lerp between mapped latents) or z (slerp between normalised "
                                         "z).")] = Space.w,
    sampling: Annotated[Sampling, typer.Option(
        "--sampling", metavar="KIND", help="end (t = 0, StyleGAN2) or full (t ~ U(0, 1), StyleGAN).")] = Sampling.end,
    n_samples: Annotated[int, typer.Option("--n-samples", metavar="N", help="Number of latent pairs.")] = 50000,
    epsilon: Annotated[float, typer.Option(
        "--epsilon", metavar="X", help="Step along the path; distances are divided by epsilon^2.")] = 1e-4,
    crop: Annotated[bool, typer.Option("--crop/--no-crop", help="Crop to the central face region first "
                                                                "(FFHQ-like faces).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="Pairs per forward pass.")] = 16,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the latent draws.")] = 0,
    lpips_weights: Annotated[Optional[Path], typer.Option(
        "--lpips-weights", metavar="FILE", help="VGG16 trunk weights for LPIPS (see `detect check "
                                                "--help`).")] = None,
    device: DeviceOption = None,
    as_json: JsonOption = False,
    samples: Annotated[Optional[int], typer.Option("--samples", hidden=True)] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", hidden=True)] = None,
) -> None:
    """Measure perceptual path length with LPIPS-VGG.

    StyleGAN §4.1 (full paths, Z or W) and StyleGAN2 §3 (path end points in W). Text by default; --json prints the
    whole result.
    """
    setup_torch()
    from stylegan.perceptual import LPIPSWeightsError

    with user_errors((LPIPSWeightsError,)):
        from stylegan.perceptual import load_lpips

        from ..formats import load_generator
        from ..metrics import perceptual_path_length

        n_samples = deprecated_alias("--samples", "--n-samples", samples, n_samples, 50000)
        batch_size = deprecated_alias("--batch", "--batch-size", batch, batch_size, 16)
        if n_samples < 1 or epsilon <= 0:
            raise UsageError("--n-samples must be >= 1 and --epsilon > 0")
        device = device or default_device()
        G = load_generator(model, device=device)
        distance = load_lpips("vgg", lpips_weights, device=device)
        with Progress("PPL", unit="pairs") as bar:
            res = perceptual_path_length(G, distance, num_samples=n_samples, space=space.value,
                                         sampling=sampling.value, epsilon=epsilon, crop=crop, batch_size=batch_size,
                                         seed=seed, device=device, progress=bar)
        if as_json:
            typer.echo(json.dumps({"model": str(model), **res.to_dict(), "lpips": distance.provenance()}, indent=2))
        else:
            typer.echo(f"{model}: PPL {res.mean:.2f} (std {res.std:.2f}; {res.num_kept} of {res.num_samples} pairs "
                       f"kept by the percentile filter; space {space.value}, sampling {sampling.value}, epsilon "
                       f"{epsilon:g})")
