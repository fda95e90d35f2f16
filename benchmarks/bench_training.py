"""Training speed: img/s, seconds per iteration and peak RSS at 32 px, channel_max 128, batch 8, with and without
the lazy regularisers (path length every 4 G steps, R1 every 16 D steps). Prints JSON.

NVIDIA's stylegan2-ada-pytorch on this machine kind: 0.78 s per batch-8 iteration at 32 px / 128 channels
(about 37 kimg/h) and 2.5 s at 64 px.

    python benchmarks/bench_training.py [--iterations 32] [--res 32 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, peak_rss_mb  # noqa: E402

from stylegan.config import DiscriminatorConfig, GeneratorConfig  # noqa: E402
from stylegan.data import build_dataset  # noqa: E402
from stylegan.training import Trainer  # noqa: E402
from stylegan.training_config import TrainingConfig  # noqa: E402

NVIDIA_S_PER_ITER = {32: 0.78, 64: 2.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=32, help="timed iterations (a multiple of 16)")
    parser.add_argument("--res", type=int, nargs="+", default=[32])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    from PIL import Image

    out = {"benchmark": "training", "machine": machine_info(args.device), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for res in args.res:
            src = Path(tmp) / f"img{res}"
            src.mkdir()
            rng = np.random.RandomState(0)
            for i in range(64):
                Image.fromarray(rng.randint(0, 255, (res, res, 3), dtype=np.uint8)).save(src / f"{i}.png")
            data = Path(tmp) / f"d{res}.h5"
            build_dataset(src, data, res)
            for lazy in (True, False):
                cfg = TrainingConfig(
                    G=GeneratorConfig(img_resolution=res, channel_base=16384, channel_max=128),
                    D=DiscriminatorConfig(img_resolution=res, channel_base=16384, channel_max=128),
                    data=str(data), batch_size=args.batch, total_kimg=1e6,
                    r1_gamma=1.0 if lazy else 0.0, pl_weight=2.0 if lazy else 0.0)
                trainer = Trainer(cfg, Path(tmp) / f"run{res}{lazy}", device=args.device)
                for _ in range(16):  # warm-up, including one of each lazy phase
                    trainer.train_step()
                t0 = time.perf_counter()
                for _ in range(args.iterations):
                    trainer.train_step()
                if args.device != "cpu":
                    torch.cuda.synchronize()
                dt = (time.perf_counter() - t0) / args.iterations
                row = {"img_resolution": res, "channel_max": 128, "batch": args.batch, "lazy_regularisers": lazy,
                       "s_per_iteration": round(dt, 4), "img_per_s": round(args.batch / dt, 2),
                       "kimg_per_hour": round(args.batch / dt * 3.6, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
                if lazy and args.batch == 8 and args.device == "cpu" and res in NVIDIA_S_PER_ITER:
                    row["nvidia_s_per_iteration"] = NVIDIA_S_PER_ITER[res]
                    row["speedup_vs_nvidia"] = round(NVIDIA_S_PER_ITER[res] / dt, 2)
                out["results"].append(row)
                print(json.dumps(row), file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
