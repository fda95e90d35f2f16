"""`stylegan`: generate images, inspect and convert model files, build datasets, train, measure.

A thin layer: each command parses its options, calls one library function and prints. Bad input ends in a
one-line error on stderr and exit code 2; progress goes to stderr, results (text, or JSON with --json) to stdout.
"""

from __future__ import annotations

import enum
import json
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from .util.cli_support import (DeviceOption, JsonOption, ModelOption, UsageError, command, default_device,
                               deprecated_alias, interrupt_on_termination, new_app, parse_seeds, setup_torch,
                               sub_app)
from .util.cli_support import user_errors as _user_errors
from .util.distributed import init_distributed
from .util.progress import Progress


def _stylegan_errors() -> tuple:
    from .config import ConfigError
    from .data import DatasetError
    from .formats import ModelFormatError
    from .training import TrainingError

    return (ConfigError, DatasetError, ModelFormatError, TrainingError)


def user_errors(extra: tuple = ()):
    """The one-line error convention, for stylegan's own error types (and any ``extra``)."""
    return _user_errors(_stylegan_errors() + tuple(extra))


app = new_app("StyleGAN2 networks: generate, inspect, convert, build datasets, train and measure.", prog="stylegan")

# Help panels of `stylegan train`.
OBJECTIVE = "Objective (App. B)"
NETWORK = "Network"
GROWING = "Progressive growing (config A)"
SCHEDULE = "Schedule"


class NoiseMode(str, enum.Enum):
    """stylegan.generator.NOISE_MODES."""

    const = "const"
    random = "random"
    none = "none"


class Preset(str, enum.Enum):
    """The training presets (stylegan.training.TRAINING_PRESETS)."""

    paper_f = "paper-f"
    paper_e = "paper-e"
    cifar = "cifar"
    celeba32 = "celeba32"
    cpu_tiny = "cpu-tiny"
    stylegan1 = "stylegan1"
    config_a = "config-a"
    config_a_tiny = "config-a-tiny"


class Arch(str, enum.Enum):
    """stylegan.training.TRAINABLE_ARCHS."""

    stylegan2 = "stylegan2"
    stylegan1 = "stylegan1"


class Crop(str, enum.Enum):
    """stylegan.images.CROPS."""

    center = "center"
    celeba = "celeba"
    none = "none"


class Space(str, enum.Enum):
    w = "w"
    z = "z"


class Sampling(str, enum.Enum):
    end = "end"
    full = "full"


PRESET_HELP = ("paper-f, paper-e, cifar, celeba32, cpu-tiny (StyleGAN2); stylegan1, config-a, config-a-tiny (the "
               "original StyleGAN, config A).")


# ----------------------------------------------------------------------------------------------------------------


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

        from .formats import load_generator
        from .generator import generate_seeded
        from .imageio import save_grid, save_png

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


@command(app)
def convert(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="Any supported model file.")],
    dst: Annotated[Path, typer.Argument(metavar="DST", help="Output .pt in our format.")],
    as_json: JsonOption = False,
) -> None:
    """Convert an NVIDIA .pkl or rosinality .pt file to our .pt.

    Nothing in the source file runs.
    """
    with user_errors():
        from .formats import convert as convert_file

        path = convert_file(src, dst)
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

        from .formats import save_network
        from .formats.ours import get_arch
        from .training_config import training_config_for

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
        from .data import build_dataset, export_images

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


@command(app)
def train(
    data: Annotated[Optional[Path], typer.Option("--data", metavar="FILE",
                                                 help="HDF5 dataset from `stylegan dataset`.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR",
                                      help="Parent folder of run folders.")] = Path("runs"),
    run_name: Annotated[Optional[str], typer.Option(
        "--run", metavar="NAME", help="Run folder name (default: NNNNN-<preset>-<res>, NNNNN one more than the "
                                      "highest number in --out).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", metavar="DIR", help="Continue this run folder exactly where it stopped.")] = None,
    preset: Annotated[Preset, typer.Option("--preset", metavar="NAME", help=PRESET_HELP)] = Preset.paper_f,
    arch: Annotated[Optional[Arch], typer.Option(
        "--arch", metavar="ARCH", help="stylegan2 or stylegan1 (default: the preset's; stylegan1 with a StyleGAN2 "
                                       "preset trains config A with that preset's sizes).")] = None,
    res: Annotated[Optional[int], typer.Option("--res", metavar="RES",
                                               help="Resolution (default: the dataset's).")] = None,
    kimg: Annotated[Optional[float], typer.Option(
        "--kimg", metavar="KIMG", help="Total training length in thousands of images.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(
        "--max-minutes", metavar="MIN", help="Stop (with a snapshot) after this long; continue with "
                                             "--resume.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", metavar="N", help="Random seed.")] = None,
    device: Annotated[Optional[str], typer.Option(
        "--device", metavar="DEVICE", help="cpu, cuda ... (default: cuda if available; cuda:LOCAL_RANK under "
                                           "torchrun).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print where the run ended as JSON.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", metavar="N", rich_help_panel=OBJECTIVE, help="Total batch size over all ranks.")] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", metavar="X", rich_help_panel=OBJECTIVE,
                                                   help="R1 weight gamma.")] = None,
    pl_weight: Annotated[Optional[float], typer.Option(
        "--pl-weight", metavar="X", rich_help_panel=OBJECTIVE, help="Path-length weight (0 disables).")] = None,
    style_mixing: Annotated[Optional[float], typer.Option(
        "--style-mixing", metavar="P", rich_help_panel=OBJECTIVE, help="Style-mixing probability.")] = None,
    glr: Annotated[Optional[float], typer.Option("--glr", metavar="X", rich_help_panel=OBJECTIVE,
                                                 help="G learning rate.")] = None,
    dlr: Annotated[Optional[float], typer.Option("--dlr", metavar="X", rich_help_panel=OBJECTIVE,
                                                 help="D learning rate.")] = None,
    ema_kimg: Annotated[Optional[float], typer.Option(
        "--ema-kimg", metavar="KIMG", rich_help_panel=OBJECTIVE, help="G EMA half-life in kimg.")] = None,
    ema_rampup: Annotated[Optional[float], typer.Option(
        "--ema-rampup", metavar="X", rich_help_panel=OBJECTIVE, help="EMA ramp-up (e.g. 0.05).")] = None,
    mirror: Annotated[Optional[bool], typer.Option("--mirror/--no-mirror", rich_help_panel=OBJECTIVE,
                                                   show_default=False,
                                                   help="x-flip augmentation (default: the preset's).")] = None,
    cbase: Annotated[Optional[int], typer.Option("--cbase", metavar="N", rich_help_panel=NETWORK,
                                                 help="channel_base.")] = None,
    cmax: Annotated[Optional[int], typer.Option("--cmax", metavar="N", rich_help_panel=NETWORK,
                                                help="channel_max.")] = None,
    map_layers: Annotated[Optional[int], typer.Option("--map", metavar="N", rich_help_panel=NETWORK,
                                                      help="Mapping network depth.")] = None,
    progressive: Annotated[Optional[bool], typer.Option(
        "--progressive/--no-progressive", rich_help_panel=GROWING, show_default=False,
        help="Progressive growing (stylegan1 only; default: the preset's).")] = None,
    lod_kimg: Annotated[Optional[float], typer.Option(
        "--lod-kimg", metavar="KIMG", rich_help_panel=GROWING,
        help="kimg per resolution for both stabilisation and fade-in.")] = None,
    tick: Annotated[Optional[float], typer.Option("--tick", metavar="KIMG", rich_help_panel=SCHEDULE,
                                                  help="kimg per log tick.")] = None,
    snap: Annotated[Optional[int], typer.Option("--snap", metavar="N", rich_help_panel=SCHEDULE,
                                                help="Ticks between snapshots.")] = None,
    keep: Annotated[Optional[int], typer.Option("--keep", metavar="N", rich_help_panel=SCHEDULE,
                                                help="Snapshots to keep.")] = None,
    outdir: Annotated[Optional[Path], typer.Option("--outdir", hidden=True)] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", hidden=True)] = None,
) -> None:
    """Train a StyleGAN2, or the original StyleGAN (config A).

    The App. B objective: non-saturating loss, lazy R1, path-length regularisation, style mixing, G EMA. Runs
    under torchrun too (gloo on CPU, NCCL on GPU): each rank reads its own shard, gradients are averaged, rank 0
    alone writes.
    """
    setup_torch()
    with user_errors():
        import dataclasses
        import os
        import time

        from .training import Trainer, TrainingError
        from .training_config import training_config_for

        out = deprecated_alias("--outdir", "--out", outdir, out, Path("runs"))
        batch_size = deprecated_alias("--batch", "--batch-size", batch, batch_size)
        rank = init_distributed()
        if device is None:
            device = default_device()
            if device == "cuda" and "LOCAL_RANK" in os.environ:
                device = f"cuda:{os.environ['LOCAL_RANK']}"
        bar = _TrainProgress(enabled=rank == 0)
        try:
            if resume is not None:
                trainer = Trainer.resume(resume, device=device, total_kimg=kimg, progress=bar if rank == 0 else None)
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
                    preset.value, data_res, data=str(data), total_kimg=kimg, batch_size=batch_size, r1_gamma=gamma,
                    pl_weight=pl_weight, style_mixing_prob=style_mixing, g_lr=glr, d_lr=dlr, ema_kimg=ema_kimg,
                    ema_rampup=ema_rampup, xflip=mirror, seed=seed, tick_kimg=tick, snapshot_ticks=snap,
                    keep_snapshots=keep, arch=None if arch is None else arch.value, progressive=progressive,
                    lod_training_kimg=lod_kimg, lod_transition_kimg=lod_kimg)
                net = {k: v for k, v in dict(channel_base=cbase, channel_max=cmax, mapping_layers=map_layers).items()
                       if v is not None}
                if net:
                    d_net = {k: v for k, v in net.items() if k != "mapping_layers"}
                    cfg = cfg.replace(G=dataclasses.replace(cfg.G, **net), D=dataclasses.replace(cfg.D, **d_net))
                run_dir = out / (run_name or _next_run_name(out, f"{preset.value}-{data_res}"))
                trainer = Trainer(cfg, run_dir, device=device, progress=bar if rank == 0 else None)
                trainer.start()
                typer.echo(f"training into {run_dir}", err=True)
            max_iterations = None
            if max_minutes is not None:
                trainer.deadline = time.time() + max_minutes * 60
            with bar, interrupt_on_termination():
                final = trainer.run(max_iterations=max_iterations)
        except KeyboardInterrupt:
            typer.echo("interrupted: snapshot written; continue with --resume", err=True)
            raise typer.Exit(130)
        if rank == 0:
            if as_json:
                typer.echo(json.dumps({"run_dir": str(trainer.run_dir), "finished": final is not None,
                                       "network": None if final is None else str(final),
                                       "kimg": trainer.cur_nimg / 1000}, indent=2))
            elif final is not None:
                typer.echo(f"done: {final}")
            else:
                typer.echo(f"stopped at {trainer.cur_nimg / 1000:.1f} kimg; continue with --resume {trainer.run_dir}")


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

        from .formats import load_generator
        from .metrics import perceptual_path_length

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


def _next_run_name(outdir: Path, stem: str) -> str:
    existing = [int(m.group(1)) for p in (outdir.glob("*") if outdir.exists() else [])
                if (m := re.match(r"(\d{5})-", p.name))]
    return f"{(max(existing) + 1) if existing else 0:05d}-{stem}"


class _TrainProgress(Progress):
    """Training progress in kimg (a bar, or plain lines off a terminal), and one line per tick with its losses."""

    def __init__(self, enabled: bool = True):
        super().__init__("training", unit="kimg", enabled=enabled)

    def __call__(self, info: dict) -> None:  # type: ignore[override]  (the Trainer's progress callback)
        note = None
        if "sec_per_kimg" in info and info["sec_per_kimg"] > 0:
            note = f"{3600 / info['sec_per_kimg']:.1f} kimg/h"
            losses = {k: v for k, v in info.items() if k.startswith(("loss/", "pl/"))}
            self.print(f"tick {info['tick']} kimg {info['kimg']:.1f} " +
                       " ".join(f"{k}={v:.3f}" for k, v in losses.items()) + f" {info['sec_per_kimg']:.1f} s/kimg")
        self.update(info["kimg"], info["total_kimg"], note=note)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
