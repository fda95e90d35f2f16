"""Pilot (issue 26): a JPEG-consistency refinement after plain projection.

A JPEG file pins each of its DCT coefficients to an interval: the original coefficient over its quantisation step
lay within half a step of the stored integer k. A network's own image, JPEG-compressed, has a re-synthesis whose
coefficients fall inside every interval (the true (w, n)); a real photo need not. After the projector's plain
projection of the JPEG file, this refines (w, noise) for ``--refine-steps`` with Adam (lr 0.01) on
``LPIPS(JPEG(g), target) + lambda * hinge``, ``hinge`` = mean over coefficients of ``relu(|c / q - k| - 1/2)^2``
(``c``: the re-synthesis' coefficients, :meth:`detector.jpeg.DifferentiableJpeg.coefficients`; ``k``: the target
file's, re-derived from its decoded pixels; :func:`detector.jpeg.consistency_residual`; the product's form of the
refinement is :func:`detector.jpeg_consistency.refine_consistency`). Reported per image: the plain
distance, the plain re-synthesis through the JPEG model, the hinge before and after, and the distance through the
JPEG model after refinement, for each ``--lam``; and, for the generated images, the hinge of the image itself
before JPEG (the floor: the intervals are re-derived from the decoded pixels, which puts some one step off).
Both populations (the network's images, seeds ``--seed-offset`` on, and ``--real`` faces) are saved as JPEG at
``--quality`` by Pillow. Resumable (``--state``); prints JSON.

    python benchmarks/jpeg_consistency_pilot.py --model F.pt --real real_dev40 --n 3 --quality 75 --state s.jsonl
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector.images import load_image  # noqa: E402
from detector.jpeg import DifferentiableJpeg, consistency_residual  # noqa: E402
from detector.projector import Projector  # noqa: E402
from detector.settings import ProjectorSettings  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.generator import generate_seeded  # noqa: E402
from stylegan.perceptual import load_lpips  # noqa: E402


def coefficients(jp: DifferentiableJpeg, x: torch.Tensor) -> torch.Tensor:
    return jp.coefficients(x)


def hinge(c: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return consistency_residual(c, k).mean()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--real", required=True, type=Path, help="folder of real images at the network's size")
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--quality", type=int, default=75)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--refine-steps", type=int, default=300)
    p.add_argument("--lam", type=float, action="append", help="hinge weights (default 1 and 10)")
    p.add_argument("--seed-offset", type=int, default=3_000_000)
    p.add_argument("--state", required=True, type=Path)
    a = p.parse_args(argv)
    lams = a.lam or [1.0, 10.0]
    torch.set_flush_denormal(True)
    G = load_model(a.model).G_ema.eval()
    distance = load_lpips("vgg")
    done = {}
    if a.state.exists():
        done = {r["name"]: r for r in map(json.loads, a.state.read_text().splitlines()) if r}
    sources = [("generated", f"seed{a.seed_offset + i}", None) for i in range(a.n)]
    sources += [("real", f.name, f) for f in sorted(a.real.glob("*.png"))[:a.n]]
    tmp = Path(tempfile.mkdtemp())

    def suspect(name: str, path) -> tuple:
        """(the image before JPEG [1, C, R, R], the JPEG file as loaded, its JPEG model)."""
        if path is None:
            img = generate_seeded(G, int(name[4:]))[0]
            arr = ((img.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
        else:
            arr = np.asarray(Image.open(path).convert("RGB"))
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=a.quality)
        (tmp / f"{name}.jpg").write_bytes(buf.getvalue())
        loaded = load_image(tmp / f"{name}.jpg", G.img_resolution)
        before = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1
        return before, loaded.tensor, DifferentiableJpeg(loaded.jpeg)

    for kind, name, path in sources:
        if name in done:
            continue
        _, target, jp = suspect(name, path)
        t0 = time.time()
        res = Projector(G, distance, ProjectorSettings(steps=a.steps)).project(target, seeds=[0])[0]
        ws, noise = res.synthesis_inputs()
        with torch.no_grad():
            k = coefficients(jp, target).round()
            g = G.synthesis(ws, noise=noise)
            row = {"kind": kind, "name": name, "quality": a.quality, "plain": float(distance(g, target)),
                   "plain_through_jpeg": float(distance(jp(g), target)), "hinge_plain": float(hinge(
                       coefficients(jp, g), k))}
        for lam in lams:
            w = ws[:, :1].clone().requires_grad_(True)
            maps = [m.clone().requires_grad_(True) for m in noise]
            opt = torch.optim.Adam([w] + maps, lr=0.01)
            for _ in range(a.refine_steps):
                g = G.synthesis(w.expand(-1, ws.shape[1], -1), noise=maps)
                loss = distance(jp(g), target).sum() + lam * hinge(coefficients(jp, g), k)
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                g = G.synthesis(w.expand(-1, ws.shape[1], -1), noise=maps)
                row[f"refined_lam{lam:g}"] = float(distance(jp(g), target))
                row[f"refined_lam{lam:g}_plain"] = float(distance(g, target))
                row[f"hinge_lam{lam:g}"] = float(hinge(coefficients(jp, g), k))
        row["seconds"] = time.time() - t0
        with a.state.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[name] = row
        print(f"{kind} {name}: done", file=sys.stderr, flush=True)
    rows = list(done.values())
    # the floor: the generated image itself (before JPEG) against the intervals re-derived from the decoded file
    # (not the file's own coefficients: decoding rounds samples and upsamples chroma, so some come out one off)
    floor = []
    for kind, name, path in sources:
        if kind == "generated":
            before, target, jp = suspect(name, path)
            with torch.no_grad():
                k, c = coefficients(jp, target).round(), coefficients(jp, before)
            floor.append({"name": name, "hinge_true_image": float(hinge(c, k)),
                          "indices_off": float((c.round() != k).float().mean())})
    summary = {}
    shared = set.intersection(*(set(r) for r in rows)) - {"kind", "name", "quality", "seconds"}
    for key in [k for k in rows[0] if k in shared]:  # rows of earlier runs may have had other --lam
        gen = [r[key] for r in rows if r["kind"] == "generated"]
        real = [r[key] for r in rows if r["kind"] == "real"]
        summary[key] = {"generated_max": max(gen), "real_min": min(real),
                        "min_real_over_max_generated": min(real) / max(gen) if max(gen) > 0 else None}
    out = {"benchmark": "jpeg consistency pilot", "model": str(a.model), "quality": a.quality, "n": a.n,
           "steps": a.steps, "refine_steps": a.refine_steps, "lams": lams, "summary": summary,
           "true_image_floor": floor, "rows": rows}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
