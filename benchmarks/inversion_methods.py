"""Which inversion separates best, and at what cost (issue 24, part 4)? Projects the same images under each
projector variant ("method") and each network, and reports per method:

* under the network that made the generated images (``--model``): the distances of its generated images and of
  real images, the ROC AUC and the gap ``min(real) / max(generated)``;
* under each other network (``--sibling``): the margin of every generated image, its distance under the sibling
  over its distance under its own network (attribution needs it well above 1), and the real images' distances;
* the cost: image-steps per image (``ProjectorSettings.image_steps``) and seconds per image, each batch's seconds
  also in units of the machine reference (the 3x3 128-channel conv, measured once per run), so that methods
  measured in different runs compare.

A method is ``NAME`` or ``NAME:key=value,...`` with ProjectorSettings fields (``appd`` is App. D as it is), e.g.
``--method appd --method ms4:starts=4,start_fraction=0.2 --method refine:refine_steps=300``. Generated images are
8-bit with random noise from seeds ``--seed-offset + i`` (:func:`detector.calibration_run.generate_images`).
Resumable: every projected batch is appended to ``--state`` (JSONL); a re-run skips what is there, and
``--report-only`` summarises without projecting. Prints JSON.

    python benchmarks/inversion_methods.py --model F.pt --sibling F1.pt --real real_dev --n-gen 8 --n-real 8 \\
        --method appd --method ms4:starts=4,start_fraction=0.2 --state inversion.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, summary  # noqa: E402

from detector.calibration_run import generate_images  # noqa: E402
from detector.projector import Projector  # noqa: E402
from detector.settings import ProjectorSettings  # noqa: E402
from detector.statistics import roc_auc  # noqa: E402
from stylegan.data import iter_source_images, prepare_image  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.perceptual import load_lpips  # noqa: E402


def parse_method(text: str) -> tuple:
    """``NAME[:key=value,...]`` -> (name, ProjectorSettings overrides)."""
    name, _, rest = text.partition(":")
    fields = {f for f in ProjectorSettings.__dataclass_fields__}
    over: Dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown ProjectorSettings field {key!r} in --method {text!r}")
        over[key] = json.loads(value)
    return name, over


def real_images(src: str, n: int, resolution: int, channels: int = 3) -> torch.Tensor:
    out: list = []
    for _, im in iter_source_images(src) if n > 0 else ():
        if isinstance(im, Exception):
            continue
        out.append(torch.from_numpy(prepare_image(im, resolution, crop="none", channels=channels)))
        if len(out) == n:
            break
    if len(out) < n:
        raise SystemExit(f"{src}: only {len(out)} images, {n} asked for")
    return torch.stack(out).to(torch.float32) / 127.5 - 1.0 if out else torch.zeros(0)


def report(records: List[dict], model: str, reference: Dict[str, float]) -> dict:
    out: Dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        d = {(r["network"], r["kind"], r["index"]): r for r in rows}
        own_gen = [d[k]["distance"] for k in sorted(d) if k[0] == model and k[1] == "generated"]
        own_real = [d[k]["distance"] for k in sorted(d) if k[0] == model and k[1] == "real"]
        m: Dict[str, object] = {"image_steps": rows[0]["image_steps"], "settings": rows[0]["overrides"]}
        if own_gen and own_real:
            m.update(generated=summary(own_gen), real=summary(own_real),
                     auc=roc_auc(own_gen, own_real),
                     gap_min_real_over_max_generated=min(own_real) / max(own_gen))
        siblings = sorted({k[0] for k in d if k[0] != model})
        for sib in siblings:
            margins = [d[k]["distance"] / d[(model, "generated", k[2])]["distance"] for k in sorted(d)
                       if k[0] == sib and k[1] == "generated" and (model, "generated", k[2]) in d]
            real = [d[k]["distance"] for k in sorted(d) if k[0] == sib and k[1] == "real"]
            m[f"under {sib}"] = {"margin_generated": summary(margins) if margins else None,
                                 "real": summary(real) if real else None}
        secs = [r["seconds_per_image"] for r in rows]
        work = [r["seconds_per_image"] * r["reference_gflops"] for r in rows]
        m["seconds_per_image"] = float(np.mean(secs))
        m["reference_gflop_per_image"] = float(np.mean(work))
        starts = [r["start"] for r in rows if r.get("start") is not None]
        if starts:
            m["kept_start_counts"] = {str(s): starts.count(s) for s in sorted(set(starts))}
        out[method] = m
    base = out.get("appd", {}).get("reference_gflop_per_image")
    if base:
        for m in out.values():
            m["cost_vs_appd"] = m["reference_gflop_per_image"] / base
    return {"methods": out, "reference": reference}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the network that made the generated images")
    p.add_argument("--sibling", action="append", default=[], help="another network to project under (repeat)")
    p.add_argument("--real", required=True, help="folder or zip of real images at the network's resolution")
    p.add_argument("--n-gen", type=int, default=8)
    p.add_argument("--n-real", type=int, default=8)
    p.add_argument("--method", action="append", required=True, help="NAME[:key=value,...] (repeat)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed-offset", type=int, default=3_000_000)
    p.add_argument("--state", required=True)
    p.add_argument("--lpips-weights", default=os.environ.get("DETECT_LPIPS_WEIGHTS"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_flush_denormal(True)

    state = Path(args.state)
    records = [json.loads(line) for line in state.read_text().splitlines() if line.strip()] if state.exists() else []
    done = {(r["method"], r["network"], r["kind"], r["index"]) for r in records}
    # Each record carries the reference measured by its own run; a report-only call measures nothing.
    info = machine_info(args.device) if not args.report_only else {"report_only": True}
    if not args.report_only:
        distance = load_lpips("vgg", args.lpips_weights, device=args.device)
        G_model = load_model(args.model, device=args.device).G_ema.eval()
        gen = generate_images(G_model, [args.seed_offset + i for i in range(args.n_gen)])
        real = real_images(args.real, args.n_real, G_model.img_resolution, G_model.img_channels)
        for spec in args.method:
            name, over = parse_method(spec)
            settings = ProjectorSettings(**{"steps": args.steps, **over})
            for net in [args.model] + args.sibling:
                G = G_model if net == args.model else load_model(net, device=args.device).G_ema.eval()
                projector = Projector(G, distance, settings)
                for kind, images in (("generated", gen), ("real", real)):
                    todo = [i for i in range(len(images)) if (name, net, kind, i) not in done]
                    for a in range(0, len(todo), args.batch):
                        idx = todo[a:a + args.batch]
                        t0 = time.perf_counter()
                        res = projector.project(images[idx].to(args.device), seeds=[1000 + i for i in idx])
                        sec = (time.perf_counter() - t0) / len(idx)
                        with state.open("a") as f:
                            for i, r in zip(idx, res):
                                rec = {"method": name, "overrides": over, "network": net, "kind": kind, "index": i,
                                       "distance": r.distance, "start": r.settings.get("start"),
                                       "image_steps": settings.image_steps(), "seconds_per_image": sec,
                                       "reference_gflops": info["reference_conv3x3_128ch_gflops"]}
                                f.write(json.dumps(rec) + "\n")
                                records.append(rec)
                            f.flush()
                            os.fsync(f.fileno())
                        print(f"{name} {Path(net).name} {kind} {idx[0]}..{idx[-1]}: {sec:.1f} s/image",
                              file=sys.stderr)
    out = {"benchmark": "inversion_methods", "model": args.model, "siblings": args.sibling, "steps": args.steps,
           **report(records, args.model, info)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
