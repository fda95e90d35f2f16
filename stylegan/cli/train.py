"""`stylegan train`: StyleGAN2 (App. B) or config A training, resumable, under torchrun too."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..util.cli_support import (
    UsageError,
    command,
    default_device,
    deprecated_alias,
    setup_torch,
    stop_on_signals,
)
from ..util.distributed import init_distributed
from ..util.progress import Progress
from . import app
from .options import GROWING, NETWORK, OBJECTIVE, PRESET_HELP, SCHEDULE, Arch, Preset, user_errors


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

        from ..training import Trainer, TrainingError
        from ..training_config import training_config_for

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
                from ..data import open_dataset

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
            with bar, stop_on_signals(announce=rank == 0) as stop:
                trainer.should_stop = stop
                final = trainer.run(max_iterations=max_iterations)
        except KeyboardInterrupt:
            typer.echo("interrupted inside an iteration: nothing written; continue from the last snapshot with "
                       "--resume", err=True)
            raise typer.Exit(130) from None
        if trainer.stopped == "signal":
            if rank == 0:
                typer.echo(f"stopped at {trainer.cur_nimg / 1000:.1f} kimg after a whole iteration, snapshot "
                           f"written; continue with --resume {trainer.run_dir}", err=True)
            raise typer.Exit(stop.exit_code)
        if rank == 0:
            if as_json:
                typer.echo(json.dumps({"run_dir": str(trainer.run_dir), "finished": final is not None,
                                       "network": None if final is None else str(final),
                                       "kimg": trainer.cur_nimg / 1000}, indent=2))
            elif final is not None:
                typer.echo(f"done: {final}")
            else:
                typer.echo(f"stopped at {trainer.cur_nimg / 1000:.1f} kimg; continue with --resume {trainer.run_dir}")


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
