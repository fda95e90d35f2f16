"""Pilot (issue 26): can a suspect image's shift be found against the network's mean image g(mu_w) (constant
noise) rather than against a first projection (which follows the moved face)? For the network's own images
(seeds ``--seed-offset`` on) and real faces (``--real``), each moved by k px down and right (edges replicated),
:func:`detector.resampling.estimate_shift` against g(mu_w): how many estimates are within 1 px of the applied
shift, and how many equal the unmoved image's own estimate plus k (the method is consistent even where the face
itself sits off the mean). Prints JSON.

    python benchmarks/align_reference_pilot.py --model F.pt --real real_dev40 --n 30
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector.resampling import estimate_shift, shift  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.generator import generate_seeded  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--real", required=True, type=Path)
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--seed-offset", type=int, default=3_000_000)
    a = p.parse_args(argv)
    G = load_model(a.model).G_ema.eval()
    with torch.no_grad():
        mean_img = G.synthesis(G.mapping.w_avg.reshape(1, 1, -1).expand(1, G.num_ws, -1), noise_mode="const")
        gens = torch.cat([generate_seeded(G, a.seed_offset + i) for i in range(a.n)])
    reals = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1
                         for f in sorted(a.real.glob("*.png"))[:a.n]])
    out = {"benchmark": "align against g(mu_w)", "model": str(a.model), "n": a.n, "populations": {}}
    for name, imgs in (("generated", gens), ("real", reals)):
        base = [e.shift for e in estimate_shift(imgs, mean_img, None)]
        rows = {"unmoved_estimates_max_abs": max(max(abs(b[0]), abs(b[1])) for b in base)}
        for k in (1, 2, 4, 8):
            est = [e.shift for e in estimate_shift(shift(imgs, k, k), mean_img, None)]
            rows[f"shift{k}"] = {
                "within_1px": sum(max(abs(e[0] - k), abs(e[1] - k)) <= 1 for e in est),
                "unmoved_estimate_plus_k": sum(e == (b[0] + k, b[1] + k) for e, b in zip(est, base))}
        out["populations"][name] = rows
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
