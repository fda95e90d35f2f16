"""Why do generated images not come back exactly? Splits the distance a generated image projects to into its
parts. For K images a network generated (8 bits, random noise from the seed, as in ``eval_attribution.py``):

* ``true_w_true_noise``: the distance at the w and noise that made the image, raw and clamped to [-1, 1] (what
  is left is the 8-bit quantisation; the raw one also carries the generator's overshoot beyond [-1, 1], which the
  image file clamped away; ``overshoot_fraction``: the share of pixels beyond +-1);
* ``true_w_fresh_noise``: at the true w with other random noise maps (what the noise maps carry);
* ``from_mu_w``: App. D projection (start at mu_w), its distance, ||w - w_true|| / sigma_w and how far its w
  lies from the mean, ||w - mu_w|| / sigma_w (about 1 for samples of W);
* ``from_true_w``: the same schedule started at the true w (``Projector.project(w_init=...)``).

If ``from_true_w`` ends far below ``from_mu_w``, the projector finds a worse optimum than the one that exists:
the landscape, not the network's reach, limits how well generated images come back. Prints JSON.

    python benchmarks/projection_floor.py --model runs/celeba32-f/network-final.pt --k 8 --steps 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

from detector.calibration_run import generate_images  # noqa: E402
from detector.projector import Projector  # noqa: E402
from detector.settings import ProjectorSettings  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.perceptual import load_lpips  # noqa: E402


@torch.no_grad()
def latents_of(G, seed: int):
    """(w [w_dim], noise maps) that made the image of ``seed`` (the draws of generate_seeded)."""
    rnd = np.random.RandomState(seed)
    device = G.mapping.w_avg.device
    z = torch.from_numpy(rnd.randn(1, G.z_dim)).float().to(device)
    w = G.mapping(z, truncation_psi=1.0)[0, 0]
    noise = [torch.from_numpy(rnd.randn(*shape)[None]).float().to(device) for shape in G.synthesis.noise_shapes]
    return w, noise


def stats(values) -> dict:
    a = np.asarray(values, np.float64)
    return {"median": float(np.median(a)), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--k", type=int, default=8, help="generated images")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed-offset", type=int, default=5_000_000)
    p.add_argument("--lpips-weights", default=None)
    p.add_argument("--clamp-output", action="store_true", help="ProjectorSettings.clamp_output for the projections")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_flush_denormal(True)

    G = load_model(args.model, device=args.device).G_ema.eval()
    distance = load_lpips("vgg", args.lpips_weights, device=args.device)
    seeds = [args.seed_offset + i for i in range(args.k)]
    targets = generate_images(G, seeds).to(args.device)
    truth = [latents_of(G, s) for s in seeds]
    w_true = torch.stack([w for w, _ in truth])
    projector = Projector(G, distance, ProjectorSettings(steps=args.steps, clamp_output=args.clamp_output))
    sigma_w, w_avg = projector.w_stats.w_std, projector.w_stats.w_avg

    def synth(w, noise):
        with torch.no_grad():
            return G.synthesis(w[None, None].expand(1, G.num_ws, -1), noise=noise)

    def at(img, k):
        with torch.no_grad():
            return float(distance(img, targets[k:k + 1]))

    out = {"benchmark": "projection_floor", "model": args.model, "k": args.k, "steps": args.steps,
           "settings": projector.settings.to_dict(),
           "sigma_w": sigma_w, "noise_strengths": [float(layer.noise_strength) for layer in G.synthesis.noise_layers()]}
    rows = {"true_w_true_noise": [], "true_w_true_noise_clamped": [], "overshoot_fraction": [],
            "true_w_fresh_noise": [], "true_w_from_mean_over_sigma_w": []}
    gen = torch.Generator().manual_seed(0)
    for k, (w, noise) in enumerate(truth):
        img = synth(w, noise)
        rows["true_w_true_noise"].append(at(img, k))
        rows["true_w_true_noise_clamped"].append(at(img.clamp(-1, 1), k))
        rows["overshoot_fraction"].append(float((img.abs() > 1).float().mean()))
        rows["true_w_from_mean_over_sigma_w"].append(float((w - w_avg).norm()) / sigma_w)
        fresh = synth(w, [torch.randn(n.shape, generator=gen).to(n.device) for n in noise])
        rows["true_w_fresh_noise"].append(at(fresh.clamp(-1, 1) if args.clamp_output else fresh, k))
    seconds = {}
    for name, w_init in (("from_mu_w", None), ("from_true_w", w_true)):
        t0 = time.perf_counter()
        res = projector.project(targets, seeds=seeds, w_init=w_init)
        seconds[name] = round(time.perf_counter() - t0, 1)
        rows[name] = [r.distance for r in res]
        rows[name + "_w_error_over_sigma_w"] = [float((r.w[0].to(w_true.device) - w_true[i]).norm()) / sigma_w
                                                for i, r in enumerate(res)]
        rows[name + "_w_from_mean_over_sigma_w"] = [float((r.w[0].to(w_avg.device) - w_avg).norm()) / sigma_w
                                                    for r in res]
    out["summary"] = {name: stats(v) for name, v in rows.items()}
    out["per_image"] = rows
    out["seconds"] = seconds
    out["machine"] = machine_info(args.device)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
