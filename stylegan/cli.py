"""`stylegan`: generate images, inspect and convert model files, build datasets, train.

A thin layer: each command parses its options, calls one library function and prints. Bad input ends in a
one-line error on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer

from .util.cli_support import UsageError, default_device, interrupt_on_termination, parse_seeds, setup_torch
from .util.cli_support import user_errors as _user_errors
from .util.distributed import init_distributed

def _stylegan_errors() -> tuple:
    from .config import ConfigError
    from .data import DatasetError
    from .formats import ModelFormatError
    from .training import TrainingError

    return (ConfigError, DatasetError, ModelFormatError, TrainingError)


def user_errors(extra: tuple = ()):
    """The one-line error convention, for stylegan's own error types (and any ``extra``)."""
    return _user_errors(_stylegan_errors() + tuple(extra))


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="StyleGAN2 networks: generate, inspect, convert, build datasets and train.")


# ----------------------------------------------------------------------------------------------------------------


@app.command()
def generate(
    model: Path = typer.Option(..., "--model", "-m", help="Model file: our .pt, NVIDIA .pkl or rosinality .pt."),
    seeds: str = typer.Option("0-15", help="Seeds, e.g. 0-15 or 1,5,9-12. Seed N uses z = RandomState(N).randn(1, z_dim), as NVIDIA's generate.py."),
    trunc: float = typer.Option(1.0, "--trunc", help="Truncation psi (1 = none)."),
    trunc_cutoff: Optional[int] = typer.Option(None, "--trunc-cutoff", help="Truncate only the first N layers."),
    noise_mode: str = typer.Option("const", "--noise-mode", help="const | random | none; random noise is drawn by "
                                   "the seed's RandomState after z, so it too is reproducible."),
    outdir: Path = typer.Option(..., "--outdir", "-o", help="Folder for seedNNNN.png and grid.png."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
) -> None:
    """Write one PNG per seed and a grid of them."""
    setup_torch()
    with user_errors():
        import torch

        from .formats import load_generator
        from .generator import NOISE_MODES, generate_seeded
        from .imageio import save_grid, save_png

        if noise_mode not in NOISE_MODES:
            raise UsageError(f"--noise-mode must be one of {', '.join(NOISE_MODES)}")
        seed_list = parse_seeds(seeds)
        device = device or default_device()
        G = load_generator(model, device=device)
        outdir.mkdir(parents=True, exist_ok=True)
        images = []
        for seed in seed_list:
            img = generate_seeded(G, seed, truncation_psi=trunc, truncation_cutoff=trunc_cutoff, noise_mode=noise_mode)
            save_png(img[0], outdir / f"seed{seed:04d}.png")
            images.append(img.cpu())
        save_grid(torch.cat(images), outdir / "grid.png")
        typer.echo(f"wrote {len(seed_list)} images and grid.png to {outdir}")


@app.command()
def info(
    model: Path = typer.Argument(..., help="Model file: our .pt, NVIDIA .pkl or rosinality .pt."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Architecture, parameter count and metadata of a model file."""
    with user_errors():
        from .formats import load_model

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


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Any supported model file."),
    dst: Path = typer.Argument(..., help="Output .pt in our format."),
) -> None:
    """Convert an NVIDIA .pkl, rosinality .pt (or our own) file to our .pt format. Nothing in the source runs."""
    with user_errors():
        from .formats import convert as convert_file

        path = convert_file(src, dst)
        typer.echo(f"wrote {path}")


@app.command()
def init(
    out: Path = typer.Argument(..., help="Output .pt in our format."),
    preset: str = typer.Option("cpu-tiny", help="paper-f | paper-e | cifar | celeba32 | cpu-tiny | config-a | config-a-tiny | stylegan1."),
    res: Optional[int] = typer.Option(None, help="Override the preset's resolution."),
    seed: int = typer.Option(0, help="Seed of the random initialisation."),
) -> None:
    """Write a randomly initialised (untrained) network: to try the tools, or to test a pipeline end to end."""
    with user_errors():
        import torch

        from .formats import save_network
        from .formats.ours import get_arch
        from .training_config import training_config_for

        net = training_config_for(preset, res)
        spec = get_arch(net.arch)
        torch.manual_seed(seed)
        G = spec.generator(net.G)
        D = spec.discriminator(net.D)
        path = save_network(out, G, D=D, metadata={"source": {"producer": "stylegan init", "preset": preset,
                                                               "seed": seed, "trained": False}})
        typer.echo(f"wrote untrained {preset} network ({net.G.img_resolution} px) to {path}")


@app.command()
def dataset(
    src: Path = typer.Argument(..., help="Image folder, .zip of images, or an HDF5 dataset to re-crop."),
    out: Path = typer.Argument(..., help="Output: a .h5 file (training set), or a folder, which gets one PNG per "
                                         "image (e.g. held-out real images for `detect calibrate`)."),
    res: int = typer.Option(..., "--res", help="Resolution (power of two)."),
    crop: str = typer.Option("center", help="center | celeba | none."),
    channels: int = typer.Option(3, help="3 (RGB) or 1 (greyscale)."),
    skip: int = typer.Option(0, "--skip", help="Leave out the first K images (sorted by name), e.g. the training "
                                               "images when exporting a held-out set."),
    max_images: Optional[int] = typer.Option(None, help="Use only the first N images (sorted by name, after --skip)."),
) -> None:
    """Build an HDF5 training set (uint8 NCHW), or a folder of PNGs cropped and resized the same way, listing
    every file that could not be read and why."""
    with user_errors():
        from .data import build_dataset, export_images

        as_h5 = out.suffix.lower() in (".h5", ".hdf5")
        build = build_dataset if as_h5 else export_images
        with _progress("building dataset" if as_h5 else "exporting images") as update:
            report = build(src, out, res, crop=crop, channels=channels, max_images=max_images,
                           progress=lambda done, total: update(done, total), skip_images=skip)
        typer.echo(report.summary())
        for item in report.failed:
            typer.echo(f"  could not read {item['file']}: {item['reason']}", err=True)


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Callable[[float, float], None]]:
    """A rich progress bar (on stderr); yields update(done, total)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False, disable=not console.is_terminal) as p:
        task = p.add_task(description, total=None)

        def update(done: float, total: float) -> None:
            p.update(task, completed=done, total=total)

        yield update


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, help="HDF5 dataset from `stylegan dataset`."),
    outdir: Path = typer.Option(Path("runs"), help="Parent folder of run folders."),
    run_name: Optional[str] = typer.Option(None, "--run", help="Run folder name (default: <preset>-<res>-NNNNN)."),
    preset: str = typer.Option("paper-f", help="paper-f | paper-e | cifar | celeba32 | cpu-tiny (StyleGAN2), "
                               "stylegan1 | config-a | config-a-tiny (original StyleGAN, config A)."),
    arch: Optional[str] = typer.Option(None, help="stylegan2 | stylegan1 (default: the preset's; stylegan1 with a "
                                       "StyleGAN2 preset trains config A with that preset's sizes)."),
    progressive: Optional[bool] = typer.Option(None, "--progressive/--no-progressive",
                                               help="Progressive growing (stylegan1 only; default: the preset's)."),
    lod_kimg: Optional[float] = typer.Option(None, "--lod-kimg", help="Progressive growing: kimg per resolution "
                                             "for both stabilisation and fade-in."),
    res: Optional[int] = typer.Option(None, help="Resolution (default: the dataset's)."),
    kimg: Optional[float] = typer.Option(None, help="Total training length in thousands of images."),
    batch: Optional[int] = typer.Option(None, help="Total batch size over all ranks."),
    gamma: Optional[float] = typer.Option(None, help="R1 weight gamma."),
    pl_weight: Optional[float] = typer.Option(None, "--pl-weight", help="Path-length weight (0 disables)."),
    style_mixing: Optional[float] = typer.Option(None, "--style-mixing", help="Style-mixing probability."),
    glr: Optional[float] = typer.Option(None, help="G learning rate."),
    dlr: Optional[float] = typer.Option(None, help="D learning rate."),
    ema_kimg: Optional[float] = typer.Option(None, "--ema-kimg", help="G EMA half-life in kimg."),
    ema_rampup: Optional[float] = typer.Option(None, "--ema-rampup", help="EMA ramp-up (e.g. 0.05)."),
    mirror: Optional[bool] = typer.Option(None, "--mirror/--no-mirror", help="x-flip augmentation."),
    cbase: Optional[int] = typer.Option(None, help="channel_base."),
    cmax: Optional[int] = typer.Option(None, help="channel_max."),
    map_layers: Optional[int] = typer.Option(None, "--map", help="Mapping network depth."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    tick: Optional[float] = typer.Option(None, help="kimg per log tick."),
    snap: Optional[int] = typer.Option(None, help="Ticks between snapshots."),
    keep: Optional[int] = typer.Option(None, help="Snapshots to keep."),
    resume: Optional[Path] = typer.Option(None, help="Continue this run folder exactly where it stopped."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: cuda if available; LOCAL_RANK under torchrun)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop (with a snapshot) after this long; continue with --resume."),
) -> None:
    """Train a StyleGAN2 (App. B objective: lazy R1, path length, style mixing, EMA).

    Runs under torchrun too (gloo on CPU, NCCL on GPU): each rank reads its own shard, gradients are averaged,
    rank 0 alone writes.
    """
    setup_torch()
    with user_errors():
        import dataclasses
        import os
        import time

        from .training import Trainer, TrainingError
        from .training_config import training_config_for

        rank = init_distributed()
        if device is None:
            device = default_device()
            if device == "cuda" and "LOCAL_RANK" in os.environ:
                device = f"cuda:{os.environ['LOCAL_RANK']}"
        bar = _TrainProgress() if rank == 0 else None
        try:
            if resume is not None:
                trainer = Trainer.resume(resume, device=device, total_kimg=kimg, progress=bar)
                typer.echo(f"resuming {resume} at {trainer.cur_nimg / 1000:.1f} kimg", err=True)
            else:
                if data is None:
                    raise UsageError("--data is required (or --resume RUN_DIR)")
                from .data import open_dataset

                with open_dataset(data) as ds:
                    data_res = ds.resolution
                if res is not None and res != data_res:
                    raise TrainingError(f"--res {res} does not match the dataset's resolution {data_res}")
                cfg = training_config_for(
                    preset, data_res, data=str(data), total_kimg=kimg, batch_size=batch, r1_gamma=gamma,
                    pl_weight=pl_weight, style_mixing_prob=style_mixing, g_lr=glr, d_lr=dlr, ema_kimg=ema_kimg,
                    ema_rampup=ema_rampup, xflip=mirror, seed=seed, tick_kimg=tick, snapshot_ticks=snap,
                    keep_snapshots=keep, arch=arch, progressive=progressive, lod_training_kimg=lod_kimg,
                    lod_transition_kimg=lod_kimg)
                net = {k: v for k, v in dict(channel_base=cbase, channel_max=cmax, mapping_layers=map_layers).items()
                       if v is not None}
                if net:
                    d_net = {k: v for k, v in net.items() if k != "mapping_layers"}
                    cfg = cfg.replace(G=dataclasses.replace(cfg.G, **net), D=dataclasses.replace(cfg.D, **d_net))
                run_dir = outdir / (run_name or _next_run_name(outdir, f"{preset}-{data_res}"))
                trainer = Trainer(cfg, run_dir, device=device, progress=bar)
                trainer.start()
                typer.echo(f"training into {run_dir}", err=True)
            max_iterations = None
            if max_minutes is not None:
                trainer.deadline = time.time() + max_minutes * 60
            with bar or contextlib.nullcontext(), interrupt_on_termination():
                final = trainer.run(max_iterations=max_iterations)
        except KeyboardInterrupt:
            typer.echo("interrupted: snapshot written; continue with --resume", err=True)
            raise typer.Exit(130)
        if rank == 0:
            if final is not None:
                typer.echo(f"done: {final}")
            else:
                typer.echo(f"stopped at {trainer.cur_nimg / 1000:.1f} kimg; continue with --resume {trainer.run_dir}")


metrics_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Network metrics.")
app.add_typer(metrics_app, name="metrics")


@metrics_app.command("ppl")
def ppl(
    model: Path = typer.Option(..., "--model", "-m", help="Model file: our .pt, NVIDIA .pkl or rosinality .pt."),
    space: str = typer.Option("w", help="w (lerp between mapped latents) or z (slerp between normalised z)."),
    sampling: str = typer.Option("end", help="end (t = 0, StyleGAN2) or full (t ~ U(0, 1), StyleGAN)."),
    samples: int = typer.Option(50000, help="Number of latent pairs."),
    epsilon: float = typer.Option(1e-4, help="Step along the path; distances are divided by epsilon^2."),
    crop: bool = typer.Option(False, "--crop/--no-crop", help="Crop to the central face region first (FFHQ-like faces)."),
    batch: int = typer.Option(16, help="Pairs per forward pass."),
    seed: int = typer.Option(0, help="Seed of the latent draws."),
    lpips_weights: Optional[Path] = typer.Option(None, "--lpips-weights", help="VGG16 trunk weights for LPIPS (see `detect check --help`)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda ... (default: cuda if available)."),
) -> None:
    """Perceptual path length (StyleGAN §4.1, StyleGAN2 §3) with LPIPS-VGG; prints JSON."""
    setup_torch()
    from stylegan.perceptual import LPIPSWeightsError

    with user_errors((LPIPSWeightsError,)):
        from stylegan.perceptual import load_lpips

        from .formats import load_generator
        from .metrics import perceptual_path_length

        if space not in ("w", "z") or sampling not in ("end", "full"):
            raise UsageError("--space must be w or z and --sampling end or full")
        if samples < 1 or epsilon <= 0:
            raise UsageError("--samples must be >= 1 and --epsilon > 0")
        device = device or default_device()
        G = load_generator(model, device=device)
        distance = load_lpips("vgg", lpips_weights, device=device)
        with _progress("PPL") as update:
            res = perceptual_path_length(G, distance, num_samples=samples, space=space, sampling=sampling,
                                         epsilon=epsilon, crop=crop, batch_size=batch, seed=seed, device=device,
                                         progress=lambda done, total: update(done, total))
        typer.echo(json.dumps({"model": str(model), **res.to_dict(), "lpips": distance.provenance()}, indent=2))


def _next_run_name(outdir: Path, stem: str) -> str:
    existing = [int(m.group(1)) for p in (outdir.glob("*") if outdir.exists() else [])
                if (m := re.match(r"(\d{5})-", p.name))]
    return f"{(max(existing) + 1) if existing else 0:05d}-{stem}"


class _TrainProgress:
    """Progress bar for training: kimg done of total, kimg/s and ETA; prints each tick's losses."""

    def __enter__(self) -> "_TrainProgress":
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.p = Progress(TextColumn("kimg {task.completed:.1f}/{task.total:.0f}"), BarColumn(),
                          TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=self.console)
        self.task = self.p.add_task("train", total=1, rate="")
        self.p.__enter__()
        self.last = None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.p.__exit__(*exc)

    def __call__(self, info: dict) -> None:
        rate = ""
        if "sec_per_kimg" in info and info["sec_per_kimg"] > 0:
            rate = f"{3600 / info['sec_per_kimg']:.1f} kimg/h"
            losses = {k: v for k, v in info.items() if k.startswith(("loss/", "pl/"))}
            self.p.console.print(f"tick {info['tick']} kimg {info['kimg']:.1f} " +
                                 " ".join(f"{k}={v:.3f}" for k, v in losses.items()) +
                                 f" {info['sec_per_kimg']:.1f} s/kimg")
            self.p.update(self.task, rate=rate)
        self.p.update(self.task, completed=info["kimg"], total=info["total_kimg"])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
