"""Issue 26 pilot: how far can alignment take a shifted image, and can short projections find the shift?

The images of the robustness benchmark's shift conditions (moved k px down and right, edges replicated) are
projected and compared through a shift of the re-synthesis, both cropped to the pixels that shift did not invent:

* ``oracle`` - the *known* shift (k, k), at the default settings: an upper bound for any shift search;
* ``--trials`` - each candidate shift of a small set, ``--trial-steps`` steps each: whether the shortest distance
  picks the true shift (a trial search's premise);
* ``--grid A`` - the shift search's first grid at ``--align A`` (:func:`detector.degradation.search_grid`), each
  candidate compared on its R - A window as the search does, ``--trial-steps`` steps each: where the true shift
  ranks among the 25 (whether keeping the best few, or longer trials, would recover it).

Prints JSON lines (condition, method, kind, name, distance; candidate and steps for trials); resumable through
``--state``, then a summary per condition.

    python benchmarks/align_pilot.py --model F.pt --real real_eval100 --n 8 --shift 4 --shift 8 --state a.jsonl
    python benchmarks/align_pilot.py --model F.pt --real real_eval100 --n 8 --shift 4 --trials --state t.jsonl
    python benchmarks/align_pilot.py --model F.pt --real real_eval100 --n 4 --shift 8 --grid 8 --trial-steps 300 \
        --state g.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from robustness import _shifted, sources  # noqa: E402

from detector.degradation import DegradationSpec, search_grid  # noqa: E402
from detector.projector import Projector  # noqa: E402
from detector.settings import ProjectorSettings  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.perceptual import load_lpips  # noqa: E402
from stylegan.util.cli_support import setup_torch  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--real", required=True, type=Path)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--shift", type=int, action="append", required=True)
    p.add_argument("--seed-offset", type=int, default=2_000_000)
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("--trials", action="store_true", help="short projections at candidate shifts instead")
    p.add_argument("--grid", type=int, default=0, metavar="A", help="the search's 5 x 5 first grid at --align A")
    p.add_argument("--trial-steps", type=int, default=100)
    p.add_argument("--projection-seed", type=int, default=0, help="image i is projected with seed S + i")
    p.add_argument("--kind", choices=["both", "generated", "real"], default="both", help="which images to project")
    a = p.parse_args(argv)
    setup_torch()
    G = load_model(a.model).G_ema.eval()
    distance = load_lpips("vgg")
    R = G.img_resolution
    rows = [json.loads(x) for x in a.state.read_text().splitlines() if x.strip()] if a.state.exists() else []
    src = sources(G, a.real, a.n, a.seed_offset)
    trials = a.trials or a.grid > 0
    method = f"grid{a.grid}-{a.trial_steps}" if a.grid else "trials" if a.trials else "oracle"
    method += f"-seed{a.projection_seed}" if a.projection_seed else ""
    done = {(r["condition"], r["method"], tuple(r.get("candidate") or ()), r["kind"], r["name"]) for r in rows}
    projector = Projector(G, distance, ProjectorSettings(steps=a.trial_steps) if trials else ProjectorSettings())
    window = R - a.grid if a.grid else 0
    for k in a.shift:
        cands = [(k, k)]
        if a.trials:  # the diagonal, one axis, the opposite direction, and the true shift's odd neighbours
            cands = list(dict.fromkeys([(0, 0), (2, 2), (4, 4), (6, 6), (8, 8), (4, 0), (0, 4), (-4, -4),
                                        (k - 1, k), (k, k - 1), (k + 1, k + 1)]))
        if a.grid:
            values = search_grid(a.grid)[0]
            cands = [(dy, dx) for dy in values for dx in values]
        for kind, items in src.items():
            if a.kind not in ("both", kind):
                continue
            x = torch.stack([torch.from_numpy(_shifted(arr, k)).permute(2, 0, 1).float() / 127.5 - 1
                             for _, arr in items])
            for c in cands:
                todo = [i for i, (name, _) in enumerate(items) if (f"shift{k}", method, c if trials else (),
                                                                   kind, name) not in done]
                if not todo:
                    continue
                res = projector.project(x[todo], seeds=[a.projection_seed + i for i in todo],
                                        degradation=DegradationSpec(shift=c, window=window).build(R))
                with a.state.open("a") as fh:
                    for i, r in zip(todo, res):
                        row = {"condition": f"shift{k}", "method": method, "kind": kind, "name": items[i][0],
                               "distance": float(r.distance)}
                        if trials:
                            row.update(candidate=list(c), steps=a.trial_steps, window=window)
                        fh.write(json.dumps(row) + "\n")
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    for k in a.shift:
        sel = [r for r in rows if r["condition"] == f"shift{k}" and r["method"] == method]
        if trials:  # per image: the candidates by distance, and where the one nearest the true shift ranks
            per: dict = {}
            for r in sel:
                per.setdefault((r["kind"], r["name"]), []).append(r)
            near = min((tuple(r["candidate"]) for r in sel),
                       key=lambda c: (max(abs(c[0] - k), abs(c[1] - k)), c), default=(k, k))
            for kind in ("generated", "real"):
                ranked = [sorted(v, key=lambda r: r["distance"]) for (kd, _), v in sorted(per.items()) if kd == kind]
                ranks = [next((j + 1 for j, r in enumerate(v) if tuple(r["candidate"]) == near), None)
                         for v in ranked]  # None: not projected yet (a run cut short)
                print(json.dumps({"condition": f"shift{k}", "method": method, "kind": kind, "true": [k, k],
                                  "nearest_candidate": list(near), "picked_nearest": sum(x == 1 for x in ranks),
                                  "n": len(ranked), "ranks_of_nearest": ranks,
                                  "picks": [v[0]["candidate"] for v in ranked]}))
            continue
        g = [r["distance"] for r in sel if r["kind"] == "generated"]
        r_ = [r["distance"] for r in sel if r["kind"] == "real"]
        print(json.dumps({"condition": f"shift{k}", "generated_median": float(np.median(g)), "generated_max": max(g),
                          "real_median": float(np.median(r_)), "real_min": min(r_)}))


if __name__ == "__main__":
    main()
