"""Can the trainer cover known modes? A check of `stylegan.training.Trainer` on a data set with exactly eight
modes: 16 px grey images of a 6 x 6 white square at one of eight positions on black (1,000 images, 125 of each).
The cpu-tiny networks (1 channel, 32 channels, z/w 64, mapping depth 2) train on it; every other tick the
generator (G) and its moving average (G_ema) draw 1,000 images (fixed z, constant noise), each is assigned to the
nearest of the eight squares (L2), and the shares per mode are printed as JSON lines, with the number of modes
holding at least 5 % and the discriminator's real-minus-fake score gap. A trainer whose generator ignores z stays
at one mode; GAN training typically hops between a few modes first (issue 28: the MNIST demo networks collapse
early), and a working one reaches all eight.

    python benchmarks/mode_coverage_toy.py --work /tmp/toy --minutes 15 [--batch 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylegan.config import DiscriminatorConfig, GeneratorConfig
from stylegan.data import build_dataset
from stylegan.training import Trainer
from stylegan.training_config import training_config_for

#: Top-left corners of the eight 6 x 6 squares in the 16 x 16 image.
CORNERS = ((1, 1), (1, 9), (9, 1), (9, 9), (5, 1), (1, 5), (9, 5), (5, 9))


def templates() -> np.ndarray:
    """The eight modes, [8, 16, 16] uint8."""
    t = np.zeros((len(CORNERS), 16, 16), np.uint8)
    for k, (y, x) in enumerate(CORNERS):
        t[k, y:y + 6, x:x + 6] = 255
    return t


@torch.no_grad()
def coverage(G: torch.nn.Module, modes: torch.Tensor, n: int = 1000) -> dict:
    """Shares of ``n`` images of G (z from seed 0, constant noise) per nearest mode; modes with >= 5 %."""
    was_training = G.training
    G.eval()
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(0))
    img = G(z, noise_mode="const").reshape(n, -1)
    G.train(was_training)
    shares = np.bincount(torch.cdist(img, modes).argmin(1).numpy(), minlength=len(modes)) / n
    return {"modes_5pct": int((shares >= 0.05).sum()), "shares": [round(float(v), 3) for v in shares]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the data set and the run")
    ap.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)

    t = templates()
    data = args.work / "toy.h5"
    if not data.exists():
        png = args.work / "png"
        png.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            Image.fromarray(t[i % len(t)], mode="L").save(png / f"t{i:04d}.png")
        print(build_dataset(png, data, resolution=16, crop="none", channels=1).summary(), file=sys.stderr)
    G = GeneratorConfig(img_resolution=16, img_channels=1, z_dim=64, w_dim=64, mapping_layers=2, channel_base=256,
                        channel_max=32)
    D = DiscriminatorConfig(img_resolution=16, img_channels=1, channel_base=256, channel_max=32)
    cfg = training_config_for("cpu-tiny", img_resolution=16, data=str(data), batch_size=args.batch,
                              total_kimg=1000, tick_kimg=0.5, snapshot_ticks=10, image_ticks=10,
                              seed=args.seed).replace(G=G, D=D)
    trainer = Trainer(cfg, args.work / f"run-seed{args.seed}")
    trainer.start()
    trainer.deadline = time.time() + args.minutes * 60
    modes = torch.from_numpy(t).float().div(127.5).sub(1).reshape(len(t), -1)

    def progress(e):
        if "tick" in e and e["tick"] % 2 == 1:
            print(json.dumps({"kimg": e["kimg"], "G": coverage(trainer.G, modes),
                              "G_ema": coverage(trainer.G_ema, modes),
                              "score_gap": round(e.get("scores/real", 0.0) - e.get("scores/fake", 0.0), 3)}),
                  flush=True)

    trainer.progress = progress
    trainer.run()


if __name__ == "__main__":
    main()
