"""Attribution accuracy (StyleGAN2 §5, Fig. 9): project N images a network generated and N real images it was not
trained on, and report both LPIPS distance distributions and the ROC AUC. Prints JSON.

Generated images go through 8 bits (x*127.5+128, clamp, truncate) as a suspect file would; their noise is random
(seeded per image), so the projector cannot simply read back stored noise. Real images are the held-out tail of a
zip or folder (e.g. the CelebA images after the first 8,934 used for training), cropped and resized as the
training set was.

Resumable: each projected batch is appended to ``--state`` (JSONL); a re-run skips what is there.

    python benchmarks/eval_attribution.py --model runs/celeba32-f/network-final.pt \\
        --real ../shared/data/celeba_subset/celeba_89x109_9934.zip --real-skip 8934 --crop celeba \\
        --n 100 --steps 1000 --state eval-celeba32.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

from detector.lpips import load_lpips  # noqa: E402
from detector.projector import Projector, ProjectorSettings  # noqa: E402
from stylegan.dataset import iter_source_images, prepare_image  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.generator import seed_to_z  # noqa: E402


def roc_auc(gen: np.ndarray, real: np.ndarray) -> float:
    """P(d_generated < d_real) + 0.5 P(tie): generated images should come back closer."""
    gen = np.asarray(gen)[:, None]
    real = np.asarray(real)[None, :]
    return float(((gen < real).sum() + 0.5 * (gen == real).sum()) / (gen.size * real.size))


def summary(d: list) -> dict:
    a = np.asarray(d, dtype=np.float64)
    return {"n": int(a.size), "median": float(np.median(a)), "p5": float(np.percentile(a, 5)),
            "p95": float(np.percentile(a, 95)), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def generated_targets(G, seeds, device) -> torch.Tensor:
    imgs = []
    for s in seeds:
        torch.manual_seed(s)
        with torch.no_grad():
            img = G(seed_to_z(s, G.z_dim).to(device), noise_mode="random")
        u8 = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        imgs.append(u8.float() / 127.5 - 1)
    return torch.cat(imgs)


def real_targets(src: str, skip: int, n: int, res: int, channels: int, crop: str) -> list:
    out = []
    for i, (name, im) in enumerate(iter_source_images(src)):
        if i < skip or isinstance(im, Exception):
            continue
        arr = prepare_image(im, res, crop=crop, channels=channels)
        out.append((name, torch.from_numpy(arr).float()[None] / 127.5 - 1))
        if len(out) == n:
            break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--real", required=True, help="zip or folder of real images")
    p.add_argument("--real-skip", type=int, default=0, help="skip the first K (the training images)")
    p.add_argument("--crop", default="center")
    p.add_argument("--n", type=int, default=100, help="images per population")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pyramid", default=None)
    p.add_argument("--lpips-resolution", type=int, default=None)
    p.add_argument("--lpips-weights", default=None)
    p.add_argument("--seed-offset", type=int, default=1_000_000, help="generated images use seeds offset+i")
    p.add_argument("--state", required=True, help="JSONL of finished distances (resume)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_flush_denormal(True)

    model = load_model(args.model, device=args.device)
    G = model.G_ema
    kw = {"steps": args.steps, "lpips_resolution": args.lpips_resolution}
    if args.pyramid:
        kw["pyramid"] = args.pyramid
    settings = ProjectorSettings(**kw)
    projector = Projector(G, load_lpips("vgg", args.lpips_weights, device=args.device), settings)

    state = Path(args.state)
    done = {}
    if state.exists():
        for line in state.read_text().splitlines():
            rec = json.loads(line)
            done[rec["key"]] = rec
    seeds = [args.seed_offset + i for i in range(args.n)]
    items = [(f"gen:{s}", "generated", None, s) for s in seeds]
    items += [(f"real:{name}", "real", t, None)
              for name, t in real_targets(args.real, args.real_skip, args.n, G.img_resolution, G.img_channels, args.crop)]
    todo = [it for it in items if it[0] not in done]
    t0 = time.perf_counter()
    for b in range(0, len(todo), args.batch):
        chunk = todo[b:b + args.batch]
        gen_seeds = [it[3] for it in chunk if it[1] == "generated"]
        gen = generated_targets(G, gen_seeds, args.device) if gen_seeds else None
        targets, gi = [], 0
        for it in chunk:
            if it[1] == "generated":
                targets.append(gen[gi:gi + 1])
                gi += 1
            else:
                targets.append(it[2].to(args.device))
        results = projector.project(torch.cat(targets), seeds=[int(hashlib.sha256(it[0].encode()).hexdigest()[:8], 16) for it in chunk])
        with open(state, "a") as f:
            for it, res in zip(chunk, results):
                rec = {"key": it[0], "population": it[1], "distance": res.distance}
                done[it[0]] = rec
                f.write(json.dumps(rec) + "\n")
        print(f"{len(done)}/{len(items)} projected", file=sys.stderr)
    gen_d = [done[it[0]]["distance"] for it in items if it[1] == "generated"]
    real_d = [done[it[0]]["distance"] for it in items if it[1] == "real"]
    out = {"benchmark": "eval_attribution", "model": args.model, "model_sha256": model.file_sha256,
           "settings": settings.to_dict(), "generated": summary(gen_d), "real": summary(real_d),
           "auc": roc_auc(np.array(gen_d), np.array(real_d)), "seconds_this_run": round(time.perf_counter() - t0, 1),
           "machine": machine_info(args.device)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
