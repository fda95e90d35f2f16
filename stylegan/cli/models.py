"""`stylegan generate`, `info`, `convert` and `init`: images from a network, and model files."""

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
    parse_seeds,
    setup_torch,
)
from . import app
from .options import PRESET_HELP, NoiseMode, Preset, user_errors


@command(app)
def generate(
    model: ModelOption,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", metavar="DIR", help="Folder for seedNNNN.png and grid.png.")] = None,
    seeds: Annotated[str, typer.Option(
        "--seeds", metavar="LIST", help="Seeds, e.g. 0-15 or 1,5,9-12. Seed N uses z = RandomState(N).randn(1, "
                                        "z_dim), as NVIDIA's generate.py.")] = "0-15",
    trunc: Annotated[float, typer.Option("--trunc", metavar="PSI", help="Truncation psi (1 = none).")] = 1.0,
    trunc_cutoff: Annotated[Optional[int], typer.Option(
        "--trunc-cutoff", metavar="N", help="Truncate only the first N layers.")] = None,
    noise_mode: Annotated[NoiseMode, typer.Option(
        "--noise-mode", metavar="MODE", help="const, random or none; random noise is drawn by the seed's "
                                             "RandomState after z, so it too is reproducible.")] = NoiseMode.const,
    device: DeviceOption = None,
    as_json: JsonOption = False,
    outdir: Annotated[Optional[Path], typer.Option("--outdir", hidden=True)] = None,
) -> None:
    """Write one PNG per seed and a grid of them."""
    setup_torch()
    with user_errors():
        import torch

        from ..formats import load_generator
        from ..generator import generate_seeded
        from ..imageio import save_grid, save_png

        out = deprecated_alias("--outdir", "--out", outdir, out)
        if out is None:
            raise UsageError("give the output folder with --out DIR")
        seed_list = parse_seeds(seeds)
        device = device or default_device()
        G = load_generator(model, device=device)
        out.mkdir(parents=True, exist_ok=True)
        images, files = [], []
        for seed in seed_list:
            img = generate_seeded(G, seed, truncation_psi=trunc, truncation_cutoff=trunc_cutoff,
                                  noise_mode=noise_mode.value)
            files.append(out / f"seed{seed:04d}.png")
            save_png(img[0], files[-1])
            images.append(img.cpu())
        save_grid(torch.cat(images), out / "grid.png")
        if as_json:
            typer.echo(json.dumps({"model": str(model), "out": str(out), "seeds": seed_list,
                                   "images": [str(f) for f in files], "grid": str(out / "grid.png")}, indent=2))
        else:
            typer.echo(f"wrote {len(seed_list)} images and grid.png to {out}")


@command(app)
def info(
    model: Annotated[Path, typer.Argument(metavar="FILE", help="Model file: our .pt, NVIDIA .pkl or rosinality "
                                                               ".pt.")],
    as_json: JsonOption = False,
) -> None:
    """Show a model file's architecture, size and metadata.

    With --json: the whole description as one JSON document.
    """
    with user_errors():
        from ..formats import load_model

        m = load_model(model, with_training=True)
        G = m.G_ema
        cfg = G.config
        out = {
            "file": str(model),
            "format": m.source_format,
            "arch": m.arch,
            "file_sha256": m.file_sha256,
            "config": cfg.to_dict(),
            "num_ws": G.num_ws,
            "noise_inputs": len(G.synthesis.noise_layers()),
            "parameters": {"G_ema": sum(p.numel() for p in G.parameters()),
                           "D": sum(p.numel() for p in m.D.parameters()) if m.D is not None else None},
            "has_training_state": m.training_state is not None,
            "calibration": _calibration_summary(m.calibration),
            "metadata": m.metadata,
        }
        if as_json:
            typer.echo(json.dumps(out, indent=2, default=str))
            return
        typer.echo(f"{model}  ({m.source_format}, {m.arch})")
        typer.echo(f"  resolution {cfg.img_resolution}x{cfg.img_resolution}x{cfg.img_channels}, z_dim {cfg.z_dim}, "
                   f"w_dim {cfg.w_dim}, num_ws {G.num_ws}, mapping layers {cfg.mapping_layers}")
        typer.echo("  channels: " + ", ".join(f"{r}:{cfg.channels(r)}" for r in cfg.block_resolutions)
                   + (f"  architecture {cfg.architecture}, conv_clamp {cfg.conv_clamp}"
                      if hasattr(cfg, "architecture") else ""))
        typer.echo(f"  parameters: G_ema {out['parameters']['G_ema']:,}"
                   + (f", D {out['parameters']['D']:,}" if m.D is not None else ""))
        meta = m.metadata
        typer.echo(f"  created {meta.get('created')}, weights sha256 {str(meta.get('weights_sha256'))[:16]}...")
        if meta.get("training"):
            typer.echo(f"  training: {json.dumps(meta['training'], default=str)}")
        if meta.get("source"):
            typer.echo(f"  source: {json.dumps(meta['source'], default=str)}")
        if out["calibration"]:
            typer.echo(f"  calibration: {json.dumps(out['calibration'])}")


def _calibration_summary(cal: Optional[dict]) -> Optional[dict]:
    if not cal:
        return None
    return {k: cal[k] for k in ("threshold", "target_fpr", "achieved_fpr", "auc", "n_generated", "n_real") if k in cal}


@command(app)
def convert(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="Any supported model file.")],
    dst: Annotated[Path, typer.Argument(metavar="DST", help="Output .pt in our format.")],
    g_ema_only: Annotated[bool, typer.Option(
        "--g-ema-only", help="Keep only G_ema (and the calibration): no training networks or state, a file to "
                             "share or archive.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Convert an NVIDIA .pkl or rosinality .pt file to our .pt.

    Nothing in the source file runs.
    """
    with user_errors():
        from ..formats import convert as convert_file

        path = convert_file(src, dst, g_ema_only=g_ema_only)
        if as_json:
            typer.echo(json.dumps({"source": str(src), "written": str(path)}, indent=2))
        else:
            typer.echo(f"wrote {path}")


@command(app)
def init(
    out: Annotated[Path, typer.Argument(metavar="FILE", help="Output .pt in our format.")],
    preset: Annotated[Preset, typer.Option("--preset", metavar="NAME", help=PRESET_HELP)] = Preset.cpu_tiny,
    res: Annotated[Optional[int], typer.Option("--res", metavar="RES",
                                               help="Override the preset's resolution.")] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the random initialisation.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Write a randomly initialised (untrained) network.

    To try the tools, or to test a pipeline end to end.
    """
    with user_errors():
        import torch

        from ..formats import save_network
        from ..formats.ours import get_arch
        from ..training_config import training_config_for

        net = training_config_for(preset.value, res)
        spec = get_arch(net.arch)
        torch.manual_seed(seed)
        G = spec.generator(net.G)
        D = spec.discriminator(net.D)
        path = save_network(out, G, D=D, metadata={"source": {"producer": "stylegan init", "preset": preset.value,
                                                               "seed": seed, "trained": False}})
        if as_json:
            typer.echo(json.dumps({"written": str(path), "preset": preset.value, "arch": net.arch,
                                   "img_resolution": net.G.img_resolution, "seed": seed}, indent=2))
        else:
            typer.echo(f"wrote untrained {preset.value} network ({net.G.img_resolution} px) to {path}")
