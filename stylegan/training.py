"""The StyleGAN2 training loop (Karras et al. 2020, App. B), with exact resume and torch.distributed scale-out.

One iteration runs the phases of NVIDIA's implementation, each on its own draw of z:

1. ``G main``: non-saturating loss on a full batch (style mixing, random noise).
2. ``G reg`` every ``pl_interval`` iterations: path-length penalty on ``batch / pl_batch_shrink`` samples,
   times ``pl_weight * pl_interval``.
3. ``D main``: logistic loss on fakes (w_avg is tracked here) and the real batch.
4. ``D reg`` every ``r1_interval`` iterations: R1 on the real batch, times ``r1_gamma / 2 * r1_interval``.

Each network has one Adam optimiser whose lr and betas are corrected for lazy regularisation (§3.1). After the
phases G_ema follows G with a half-life of ``ema_kimg`` thousand images.

A run lives in one folder: ``config.json``, ``log.jsonl`` (one line per tick), ``network-snapshot-KKKKKK.pt``
(our format, holding G, D, G_ema and every piece of training state: optimisers, pl mean, RNG states of every
rank, data position), ``fakes-KKKKKK.png`` grids of fixed seeds and ``network-final.pt``. ``resume`` restores all
of it, so a run stopped and resumed computes the same weights as one that never stopped (on CPU).

The same loop trains the original StyleGAN (config A, :mod:`stylegan.stylegan1`) with ``arch='stylegan1'``:
non-saturating loss with R1 and style mixing, no path-length term (``pl_weight`` must be 0). ``progressive=True``
(config A only) adds PGGAN's progressive growing: before every iteration the level of detail is
``pg_schedule(cur_nimg, lod_training_kimg, lod_transition_kimg, initial_resolution=...)``; it is set on G, G_ema
and D (a persistent buffer of each, so snapshots carry it) and the real images go through ``pg_process_reals``
before D and R1. As in StyleGAN's ``reset_opt_for_new_lod`` the Adam states are cleared whenever floor(lod) or
ceil(lod) changes (``pg_reset_opt``). Deviations from StyleGAN's schedule: no per-resolution minibatch or
learning-rate dictionaries (one batch size and lr for the whole run), and R1 is lazy (``r1_interval``) as in
StyleGAN2.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from .data import BatchStream, DatasetError, InfiniteSampler, open_dataset
from .formats.ours import build_networks, get_arch, read_network_file, save_network
from .generator import seed_to_z
from .imageio import save_grid as write_grid_png
from .loss import (
    d_logistic_loss,
    ema_beta,
    g_nonsaturating_loss,
    lazy_adam_hyperparameters,
    path_length_penalty,
    path_lengths,
    r1_penalty,
    style_mix,
    update_ema,
    update_pl_mean,
)
from .progressive import pg_process_reals, pg_schedule
from .training_config import TrainingConfig
from .util.distributed import average_grads, gather, mean_over_ranks, process_group, rank_and_world_size, sync_params
from .util.files import atomic_write_text, remove_leftover_temporaries
from .util.locking import LockedError, exclusive_lock

__all__ = ["Trainer", "TrainingError", "TickStats", "latest_snapshot"]

SNAPSHOT_RE = re.compile(r"network-snapshot-(\d+)\.pt$")


class TrainingError(ValueError):
    """Bad training input (dataset, config, resume folder): reported as a one-line error."""


# ----------------------------------------------------------------------------------------------------------------
# Trainer


@dataclass
class TickStats:
    """Running sums of the logged terms over one tick."""

    sums: Dict[str, float] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)

    def add(self, name: str, value: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value.detach().float().mean())
        self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> Dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}


class Trainer:
    """Library API of ``stylegan train``: ``Trainer(config, run_dir).run()`` or ``Trainer.resume(run_dir).run()``."""

    def __init__(self, config: TrainingConfig, run_dir: os.PathLike, device: str = "cpu",
                 progress: Optional[Callable[[Dict[str, Any]], None]] = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.progress = progress
        self.rank, self.world_size = rank_and_world_size()
        if config.batch_size % self.world_size:
            raise TrainingError(f"batch_size {config.batch_size} is not divisible by {self.world_size} ranks")
        self.batch_gpu = config.batch_size // self.world_size
        group = config.D.mbstd_group_size
        if group is not None and self.batch_gpu % min(group, self.batch_gpu):
            raise TrainingError(f"per-rank batch {self.batch_gpu} is not divisible by the minibatch-std group {group}")

        try:
            self.dataset = open_dataset(config.data, xflip=config.xflip)
        except DatasetError as exc:
            raise TrainingError(str(exc)) from None
        if self.dataset.resolution != config.G.img_resolution:
            raise TrainingError(f"dataset resolution {self.dataset.resolution} does not match the network's "
                                f"img_resolution {config.G.img_resolution}")
        if self.dataset.channels != config.G.img_channels:
            raise TrainingError(f"dataset has {self.dataset.channels} channels, the network "
                                f"{config.G.img_channels}")
        if len(self.dataset) < self.world_size:
            raise TrainingError("dataset has fewer images than ranks")

        torch.manual_seed(config.seed * self.world_size + self.rank)
        spec = get_arch(config.arch)
        self.G = spec.generator(config.G).to(self.device).train()
        self.D = spec.discriminator(config.D).to(self.device).train()
        sync_params(self.G)
        sync_params(self.D)
        self.G_ema = spec.generator(config.G).to(self.device).eval()
        self.G_ema.load_state_dict(self.G.state_dict())
        for p in self.G_ema.parameters():
            p.requires_grad_(False)

        g_interval = config.pl_interval if config.pl_weight > 0 else 0
        d_interval = config.r1_interval if config.r1_gamma > 0 else 0
        g_lr, g_betas = lazy_adam_hyperparameters(config.g_lr, config.betas, g_interval)
        d_lr, d_betas = lazy_adam_hyperparameters(config.d_lr, config.betas, d_interval)
        self.G_opt = torch.optim.Adam(self.G.parameters(), lr=g_lr, betas=g_betas, eps=config.adam_eps)
        self.D_opt = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=d_betas, eps=config.adam_eps)
        self.pl_mean = torch.zeros([], device=self.device)
        sampler = InfiniteSampler(len(self.dataset), rank=self.rank, world_size=self.world_size, seed=config.seed)
        self.stream = BatchStream(self.dataset, self.batch_gpu, sampler=sampler, device=self.device)
        self.cur_nimg = 0
        self.iteration = 0
        self.tick = 0
        self.tick_start_nimg = 0
        self.elapsed = 0.0
        self.stats = TickStats()
        self.deadline: Optional[float] = None  # wall-clock time (time.time()) at which run() stops with a snapshot
        self.should_stop: Optional[Callable[[], bool]] = None  # polled after every iteration (see run)
        self.stopped: Optional[str] = None  # why the last run() stopped early: max_iterations, deadline, signal
        self.grid_z = torch.cat([seed_to_z(s, config.G.z_dim) for s in range(config.grid_size)]).to(self.device)
        if config.progressive:
            self._set_lod(self.scheduled_lod())

    # -- progressive growing ------------------------------------------------------------------------------------

    def scheduled_lod(self, cur_nimg: Optional[int] = None) -> float:
        """The level of detail the schedule gives after ``cur_nimg`` images (default: now); 0 without growing."""
        cfg = self.config
        if not cfg.progressive:
            return 0.0
        lod, _ = pg_schedule(self.cur_nimg if cur_nimg is None else cur_nimg, cfg.lod_training_kimg,
                             cfg.lod_transition_kimg, img_resolution=cfg.G.img_resolution,
                             initial_resolution=cfg.initial_resolution)
        return lod

    @property
    def lod(self) -> float:
        """The level of detail the networks are at (the discriminator's buffer; 0 for StyleGAN2)."""
        lod = getattr(self.D, "lod", None)
        return float(lod) if isinstance(lod, torch.Tensor) else 0.0

    def _set_lod(self, lod: float) -> None:
        for net in (self.G, self.G_ema, self.D):
            net.set_lod(lod)

    # -- set-up of a run folder ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the run folder (refusing to overwrite another run) and write config.json."""
        if self.rank != 0:
            return
        if self.run_dir.exists() and any(self.run_dir.glob("network-*.pt")):
            raise TrainingError(f"{self.run_dir} already holds a run; use --resume {self.run_dir} to continue it")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.json", json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def resume(cls, run_dir: os.PathLike, device: str = "cpu", total_kimg: Optional[float] = None,
               progress: Optional[Callable[[Dict[str, Any]], None]] = None,
               expect: Optional[TrainingConfig] = None) -> "Trainer":
        """Continue a run from its latest snapshot. ``total_kimg`` may extend the run; ``expect`` (the config the
        caller asked for) must otherwise match the run's own config."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise TrainingError(f"resume folder {run_dir} does not exist")
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise TrainingError(f"{run_dir} is not a training run (no config.json)")
        try:
            config = TrainingConfig.from_dict(json.loads(cfg_path.read_text()))
        except (ValueError, TypeError, KeyError) as exc:
            raise TrainingError(f"{cfg_path}: unreadable config ({exc})") from None
        if expect is not None:
            diff = [k for k, v in expect.to_dict().items() if k != "total_kimg" and config.to_dict().get(k) != v]
            if diff:
                raise TrainingError(f"{run_dir} was trained with another config (differs in {', '.join(diff)})")
        if total_kimg is not None:
            config = config.replace(total_kimg=total_kimg)
        snapshot = latest_snapshot(run_dir)
        if snapshot is None:
            raise TrainingError(f"{run_dir} has no snapshot to resume from")
        trainer = cls(config, run_dir, device=device, progress=progress)
        trainer.load_snapshot(snapshot)
        return trainer

    # -- snapshots ----------------------------------------------------------------------------------------------

    def _training_state(self) -> Dict[str, Any]:
        rng = gather(torch.get_rng_state())
        streams = gather(self.stream.state_dict())
        return {
            "G_opt": self.G_opt.state_dict(),
            "D_opt": self.D_opt.state_dict(),
            "pl_mean": self.pl_mean.detach().cpu(),
            "cur_nimg": self.cur_nimg,
            "iteration": self.iteration,
            "tick": self.tick,
            "tick_start_nimg": self.tick_start_nimg,
            "elapsed": self.elapsed,
            "world_size": self.world_size,
            "rng_states": rng,
            "cuda_rng_states": gather(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else None,
            "data_states": streams,
            "config": self.config.to_dict(),
        }

    def save_snapshot(self, final: bool = False) -> Optional[Path]:
        state = self._training_state()  # collective: every rank takes part
        if self.rank != 0:
            return None
        kimg = self.cur_nimg / 1000
        name = "network-final.pt" if final else f"network-snapshot-{self.cur_nimg // 1000:06d}.pt"
        metadata = {
            "training": {"kimg": kimg, "iteration": self.iteration, "total_kimg": self.config.total_kimg,
                         "preset": self.config.preset, "seed": self.config.seed, "arch": self.config.arch,
                         **({"lod": self.lod} if self.config.progressive else {})},
            "dataset_fingerprint": self.dataset.fingerprint,
            "source": {"format": "ours", "producer": "stylegan train", "run_dir": str(self.run_dir)},
        }
        path = save_network(self.run_dir / name, self.G_ema, G=self.G, D=self.D, training_state=state,
                            metadata=metadata, arch=self.config.arch)
        if not final:
            snaps = sorted(self.run_dir.glob("network-snapshot-*.pt"), key=_snapshot_nimg_key)
            for old in snaps[:-self.config.keep_snapshots] if self.config.keep_snapshots > 0 else []:
                old.unlink(missing_ok=True)
        return path

    def load_snapshot(self, path: os.PathLike) -> None:
        obj = read_network_file(path)
        state = obj.get("training_state")
        if not state or obj.get("G") is None or obj.get("D") is None:
            raise TrainingError(f"{path} is not a training snapshot (no G, D and training state)")
        if obj.get("arch") != self.config.arch:
            raise TrainingError(f"{path} holds a {obj.get('arch')!r} network, the run is {self.config.arch!r}")
        if state.get("world_size", 1) != self.world_size:
            raise TrainingError(f"{path} was written by {state.get('world_size')} ranks; resume with the same number")
        if (self.dataset.fingerprint
                and obj["metadata"].get("dataset_fingerprint") not in (None, self.dataset.fingerprint)):
            raise TrainingError(f"{path} was trained on another dataset (fingerprint differs)")
        G_ema, G, D = build_networks(obj, with_training=True, what=str(path))
        self.G.load_state_dict(G.state_dict())
        self.D.load_state_dict(D.state_dict())
        self.G_ema.load_state_dict(G_ema.state_dict())
        self.G_opt.load_state_dict(state["G_opt"])
        self.D_opt.load_state_dict(state["D_opt"])
        self.pl_mean = state["pl_mean"].to(self.device)
        self.cur_nimg = int(state["cur_nimg"])
        self.iteration = int(state["iteration"])
        self.tick = int(state["tick"])
        self.tick_start_nimg = int(state["tick_start_nimg"])
        self.elapsed = float(state["elapsed"])
        torch.set_rng_state(state["rng_states"][self.rank])
        if self.device.type == "cuda" and state.get("cuda_rng_states"):
            torch.cuda.set_rng_state(state["cuda_rng_states"][self.rank], self.device)
        try:
            self.stream.load_state_dict(state["data_states"][self.rank])
        except (ValueError, DatasetError) as exc:
            raise TrainingError(f"cannot resume the data stream: {exc}") from None

    # -- one iteration ------------------------------------------------------------------------------------------

    def _generate(self, batch: int, update_emas: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        z = torch.randn([batch, cfg.G.z_dim], device=self.device)
        ws = self.G.mapping(z, update_emas=update_emas)
        if cfg.style_mixing_prob > 0:
            ws2 = self.G.mapping(torch.randn_like(z))
            ws = style_mix(ws, ws2, cfg.style_mixing_prob)
        img = self.G.synthesis(ws, noise_mode="random")
        return img, ws

    def _step(self, opt: torch.optim.Optimizer, module: torch.nn.Module, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in module.parameters() if p.requires_grad]
        average_grads(params)
        for p in params:
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        opt.step()

    def train_step(self) -> None:
        cfg = self.config
        real = next(self.stream)
        it = self.iteration

        # Progressive growing: the level of detail of this iteration, on every network and the reals.
        if cfg.progressive:
            prev, lod = self.lod, self.scheduled_lod()
            if cfg.pg_reset_opt and (math.floor(lod) != math.floor(prev) or math.ceil(lod) != math.ceil(prev)):
                self.G_opt.state.clear()
                self.D_opt.state.clear()
            self._set_lod(lod)
            real = pg_process_reals(real, lod)
            self.stats.add("progress/lod", torch.tensor(lod))

        # G main: non-saturating logistic loss.
        self.D.requires_grad_(False)
        img, _ = self._generate(self.batch_gpu)
        loss_g = g_nonsaturating_loss(self.D(img))
        self.stats.add("loss/G", loss_g)
        self._step(self.G_opt, self.G, loss_g.mean())

        # G reg: lazy path-length regularisation.
        if cfg.pl_weight > 0 and it % cfg.pl_interval == 0:
            img, ws = self._generate(max(self.batch_gpu // cfg.pl_batch_shrink, 1))
            lengths = path_lengths(img, ws)
            self.pl_mean = update_pl_mean(self.pl_mean, mean_over_ranks(lengths.detach().mean()), cfg.pl_decay)
            penalty = path_length_penalty(lengths, self.pl_mean)
            self.stats.add("pl/lengths", lengths)
            self.stats.add("pl/mean", self.pl_mean)
            self.stats.add("loss/pl_penalty", penalty)
            self._step(self.G_opt, self.G, penalty.mean() * (cfg.pl_weight * cfg.pl_interval))

        # D main: logistic loss on fakes (tracking w_avg) and reals.
        self.D.requires_grad_(True)
        with torch.no_grad():
            fake, _ = self._generate(self.batch_gpu, update_emas=True)
            # w_avg moved by lerp towards this rank's batch mean; the mean over ranks is the lerp towards the
            # global batch mean, so every rank keeps the same w_avg.
            self.G.mapping.w_avg.copy_(mean_over_ranks(self.G.mapping.w_avg))
        fake_logits = self.D(fake)
        real_logits = self.D(real)
        loss_d = d_logistic_loss(real_logits, fake_logits)
        self.stats.add("loss/D", loss_d)
        self.stats.add("scores/real", real_logits)
        self.stats.add("scores/fake", fake_logits)
        self._step(self.D_opt, self.D, loss_d.mean())

        # D reg: lazy R1.
        if cfg.r1_gamma > 0 and it % cfg.r1_interval == 0:
            real_r = real.detach().requires_grad_(True)
            r1 = r1_penalty(real_r, self.D(real_r))
            self.stats.add("loss/r1_penalty", r1)
            self._step(self.D_opt, self.D, r1.mean() * (cfg.r1_gamma / 2 * cfg.r1_interval))

        # G_ema.
        self.cur_nimg += cfg.batch_size
        update_ema(self.G_ema, self.G, ema_beta(cfg.batch_size, cfg.ema_kimg, self.cur_nimg, cfg.ema_rampup))
        self.iteration += 1

    # -- the loop -----------------------------------------------------------------------------------------------

    def save_grid(self) -> Optional[Path]:
        if self.rank != 0:
            return None
        with torch.no_grad():
            imgs = self.G_ema(self.grid_z, noise_mode="const")
        return write_grid_png(imgs, self.run_dir / f"fakes-{self.cur_nimg // 1000:06d}.png")

    def _log_tick(self, sec_per_kimg: float) -> Dict[str, Any]:
        entry = {
            "tick": self.tick,
            "kimg": round(self.cur_nimg / 1000, 3),
            "iteration": self.iteration,
            **{k: round(v, 6) for k, v in self.stats.means().items()},
            "lr/G": self.G_opt.param_groups[0]["lr"],
            "lr/D": self.D_opt.param_groups[0]["lr"],
            "sec_per_kimg": round(sec_per_kimg, 3),
            "elapsed_s": round(self.elapsed, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if self.device.type == "cuda":
            entry["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        if self.rank == 0:
            with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        self.stats = TickStats()
        return entry

    def run(self, max_iterations: Optional[int] = None) -> Optional[Path]:
        """Train until ``total_kimg`` (or ``max_iterations`` more iterations, for tests and time-boxed sessions).

        Snapshots every ``snapshot_ticks`` ticks. Stops with a snapshot between iterations, so that ``resume``
        continues bit for bit, after ``max_iterations``, past ``deadline``, or when ``should_stop()`` (e.g. a
        :class:`stylegan.util.cli_support.StopRequest` set by SIGINT/SIGTERM) turns true; every rank agrees on the
        iteration it stops after. A KeyboardInterrupt inside an iteration is a hard stop: the half-updated state
        is discarded (no snapshot; the last one stands). Returns the path of network-final.pt when the run
        completed, else None (``stopped`` tells why).

        Rank 0 holds the run folder's lock (``.lock``) meanwhile, so a second process on the same run is refused,
        and first removes the temporary files a killed process left behind.
        """
        with contextlib.ExitStack() as held:
            failed: Optional[Exception] = None
            if self.rank == 0:
                try:
                    held.enter_context(exclusive_lock(self.run_dir / ".lock", f"run folder {self.run_dir}"))
                    remove_leftover_temporaries(self.run_dir)
                except LockedError as exc:
                    failed = exc
            if self._agreed(failed is not None):
                if failed is not None:
                    raise failed
                raise TrainingError(f"rank 0 could not lock the run folder {self.run_dir}")
            return self._run(max_iterations)

    def _run(self, max_iterations: Optional[int]) -> Optional[Path]:
        cfg = self.config
        total_nimg = int(cfg.total_kimg * 1000)
        tick_nimg = max(int(cfg.tick_kimg * 1000), 1)
        iterations_left = max_iterations
        t_last = time.perf_counter()
        tick_t0 = t_last
        self.stopped = None
        inside = False
        try:
            while self.cur_nimg < total_nimg:
                if iterations_left is not None:
                    if iterations_left <= 0:
                        self.save_snapshot()
                        self.stopped = "max_iterations"
                        return None
                    iterations_left -= 1
                inside = True
                self.train_step()
                inside = False
                now = time.perf_counter()
                self.elapsed += now - t_last
                t_last = now
                done = self.cur_nimg >= total_nimg
                if self.cur_nimg >= self.tick_start_nimg + tick_nimg or done:
                    kimg_done = (self.cur_nimg - self.tick_start_nimg) / 1000
                    entry = self._log_tick((now - tick_t0) / max(kimg_done, 1e-9))
                    self.tick += 1
                    self.tick_start_nimg = self.cur_nimg
                    tick_t0 = now
                    if self.tick % cfg.image_ticks == 0 or done:
                        self.save_grid()
                    if self.tick % cfg.snapshot_ticks == 0 and not done:
                        self.save_snapshot()
                    if self.progress:
                        self.progress({**entry, "total_kimg": cfg.total_kimg})
                    if not done and self._agreed(self.deadline is not None and time.time() >= self.deadline):
                        self.save_snapshot()
                        self.stopped = "deadline"
                        return None
                    t_last = time.perf_counter()
                elif self.progress:
                    self.progress({"kimg": self.cur_nimg / 1000, "total_kimg": cfg.total_kimg})
                if not done and self._agreed(self.should_stop is not None and self.should_stop()):
                    self.save_snapshot()
                    self.stopped = "signal"
                    return None
        except KeyboardInterrupt:
            if not inside and self.world_size == 1:  # between iterations the state is whole: keep it
                self.save_snapshot()
            raise
        return self.save_snapshot(final=True)

    def _agreed(self, flag: bool) -> bool:
        """``flag`` agreed by every rank (true when it is true on any), so that all stop after one iteration."""
        d = process_group()
        if not d:
            return bool(flag)
        t = torch.tensor(float(flag))
        d.all_reduce(t, op=d.ReduceOp.MAX)
        return bool(t.item())


def _snapshot_nimg_key(path: Path) -> int:
    m = SNAPSHOT_RE.search(path.name)
    return int(m.group(1)) if m else -1


def latest_snapshot(run_dir: os.PathLike) -> Optional[Path]:
    """The snapshot to resume from: the newest by training progress (ties: the most recently written)."""
    snaps = list(Path(run_dir).glob("network-snapshot-*.pt"))
    if not snaps:
        return None
    return max(snaps, key=lambda p: (_snapshot_nimg_key(p), p.stat().st_mtime_ns))
