"""Attribution accuracy (StyleGAN2 §5, Fig. 9): project N images a network generated and N real images it was not
trained on, and report both LPIPS distance distributions and the ROC AUC. Prints JSON.

Generated images go through 8 bits (x*127.5+128, clamp, truncate) as a suspect file would; their noise is random,
drawn from the image's seed (:func:`detector.calibration.generate_images`, as ``detect calibrate``), so the projector cannot simply read
back stored noise. Real images are the held-out tail of a
zip or folder (e.g. the CelebA images after the first 8,934 used for training), cropped and resized as the
training set was.

Resumable: each projected batch is appended to ``--state`` (JSONL); a re-run skips what is there.

Early stopping is measured from the same run: every image is projected in full with the clean distance recorded
at the early-stopping checkpoints (``clean_checkpoints``), and :func:`detector.projector.simulate_early_stop`
then gives, for the band at the decision threshold, the steps each image would have run and its verdict. The
threshold is ``--threshold``, else the model's calibration, else the one at 1 % FPR on these real images.

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
from detector.calibration import generate_images, load_calibration, threshold_at_fpr  # noqa: E402
from detector.projector import Projector, ProjectorSettings, simulate_early_stop  # noqa: E402
from stylegan.dataset import iter_source_images, prepare_image  # noqa: E402
from stylegan.formats import load_model  # noqa: E402


def roc_auc(gen: np.ndarray, real: np.ndarray) -> float:
    """P(d_generated < d_real) + 0.5 P(tie): generated images should come back closer."""
    gen = np.asarray(gen)[:, None]
    real = np.asarray(real)[None, :]
    return float(((gen < real).sum() + 0.5 * (gen == real).sum()) / (gen.size * real.size))


def summary(d: list) -> dict:
    a = np.asarray(d, dtype=np.float64)
    return {"n": int(a.size), "median": float(np.median(a)), "p5": float(np.percentile(a, 5)),
            "p95": float(np.percentile(a, 95)), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


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


def separation(gen, real) -> float:
    """d' of the log distances: (mean log d_real - mean log d_generated) / pooled std. AUC saturates at 1 once
    the populations no longer overlap in a small sample; d' still tells how far apart they are, which is what
    choosing between projector variants needs."""
    g, r = np.log(np.asarray(gen, np.float64)), np.log(np.asarray(real, np.float64))
    return float((r.mean() - g.mean()) / np.sqrt(0.5 * (g.var(ddof=1) + r.var(ddof=1))))


def early_stopping_figures(items, done, settings, gen_d, real_d, threshold, calibration) -> dict:
    """What early stopping with the band at the threshold would have saved on these projections, and whether
    any verdict would have changed (it must not)."""
    if threshold is not None:
        th, source = float(threshold), "--threshold"
    elif calibration and calibration.get("threshold") is not None:
        th, source = float(calibration["threshold"]), "calibration"
    else:
        th, source = threshold_at_fpr(real_d, 0.01), "1% FPR on these real images"
    steps_full = steps_early = changed = 0
    per_pop = {"generated": [], "real": []}
    for key, pop, _, _ in items:
        rec = done[key]
        if not rec.get("clean_trace"):
            return {"threshold": th, "threshold_source": source, "note": "state has no clean checkpoints"}
        n, d = simulate_early_stop([(int(a), float(b)) for a, b in rec["clean_trace"]], rec["distance"], (th, th),
                                   settings)
        steps_full += settings.steps
        steps_early += n
        per_pop[pop].append(n)
        changed += (d <= th) != (rec["distance"] <= th)
    return {"threshold": th, "threshold_source": source, "band": [th, th], "margin": settings.early_stop_margin,
            "verdicts_changed": int(changed), "steps_saved_fraction": 1 - steps_early / max(steps_full, 1),
            "mean_steps_generated": float(np.mean(per_pop["generated"])) if per_pop["generated"] else None,
            "mean_steps_real": float(np.mean(per_pop["real"])) if per_pop["real"] else None}


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
    p.add_argument("--threshold", type=float, default=None, help="decision threshold for the early-stopping figures")
    p.add_argument("--seed-offset", type=int, default=1_000_000, help="generated images use seeds offset+i")
    p.add_argument("--state", required=True, help="JSONL of finished distances (resume)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_flush_denormal(True)

    model = load_model(args.model, device=args.device)
    G = model.G_ema
    kw = {"steps": args.steps, "lpips_resolution": args.lpips_resolution, "clean_checkpoints": True}
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
        gen = generate_images(G, gen_seeds).to(args.device) if gen_seeds else None
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
                rec = {"key": it[0], "population": it[1], "distance": res.distance, "steps_run": res.steps_run,
                       "clean_trace": [list(c) for c in res.clean_trace]}
                done[it[0]] = rec
                f.write(json.dumps(rec) + "\n")
        print(f"{len(done)}/{len(items)} projected", file=sys.stderr)
    gen_d = [done[it[0]]["distance"] for it in items if it[1] == "generated"]
    real_d = [done[it[0]]["distance"] for it in items if it[1] == "real"]
    out = {"benchmark": "eval_attribution", "model": args.model, "model_sha256": model.file_sha256,
           "settings": settings.to_dict(), "generated": summary(gen_d), "real": summary(real_d),
           "auc": roc_auc(np.array(gen_d), np.array(real_d)), "separation_dprime_log": separation(gen_d, real_d),
           "early_stopping": early_stopping_figures(items, done, settings, gen_d, real_d, args.threshold,
                                                    load_calibration(args.model, model)),
           "seconds_this_run": round(time.perf_counter() - t0, 1), "machine": machine_info(args.device)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
