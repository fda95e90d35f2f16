"""Early decisions measured on a finished case (issue 27): how many steps they would save and whether any verdict
would change, from the per-image trajectories of full runs (`detect batch --trajectory 25`).

Nothing is projected: every image of the case ran all its steps with its clean distance recorded every 25 steps,
and :func:`detector.early.stop_point` is exact for a projector with the same schedule (an image's checkpoints
before it stops do not depend on whether it stops). Two sources of bands, side by side:

* ``leave-one-out``: for each image, each network's bands from the case's *other* images (so the image never
  sets the bands it is judged by); the honest out-of-sample figure on the case itself;
* ``--bands-from NAME=CAL.json`` (repeatable): the bands a network's calibration record gives
  (:func:`detector.early.calibration_bands`, as `--early-stop` uses them); a record of another network (a sibling
  of the same recipe) tests how well bands carry over.

Verdicts are :func:`detector.scoring.decide`'s, under references from ``--calibration NAME=CAL.json`` (the
thresholds the case was judged by), with the far side at ``--margin`` when the case has several networks. The
trajectories themselves are written to ``--trajectories`` (JSON lines) for the record.

    python benchmarks/early_decisions.py --case CASE --calibration celeba32-f=cal-f.json \\
        --bands-from celeba32-f=cal-f1.json --trajectories traj.jsonl > record.json

Without a case, ``--loo-calibration CAL.json`` tests a calibration record's bands on its own projections, each
left out in turn (:func:`detector.early.leave_one_out`): one network (both sides, at the threshold) and one of
several (far side only, at the margin).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cases.store import CaseStore  # noqa: E402
from detector import early  # noqa: E402
from detector.scoring import DEFAULT_MARGIN, Reference, decide, far_factors  # noqa: E402
from detector.settings import ProjectorSettings  # noqa: E402


def named_files(items: List[str], what: str) -> Dict[str, dict]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            sys.exit(f"{what} wants NAME=FILE, got {item!r}")
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        out[name] = doc.get("record", doc)  # a sidecar document or a bare record
    return out


def case_runs(case: Path) -> tuple:
    """(names, steps, {input sha256: {"path": ..., name: (trajectory, final)}}) of a case's records."""
    store = CaseStore.open(case)
    by_sha = {m["file_sha256"]: m["name"] for m in store.manifest["models"]}
    steps = int(store.manifest["settings"]["steps"])
    images: Dict[str, dict] = {}
    for rec in store.results(load=True, include_stale=False):
        if rec.error is not None or rec.result is None:
            continue
        trace = [(int(s), float(d)) for s, d in rec.result.clean_trace]
        if not trace:
            sys.exit(f"{case}: {rec.path} has no trajectory (run the case with `detect batch --trajectory N`)")
        if rec.result.steps_run != steps:
            sys.exit(f"{case}: {rec.path} stopped early; the figures need full runs")
        images.setdefault(rec.input_sha256, {"path": rec.path})[by_sha[rec.model_sha256]] = (trace, rec.distance)
    names = [m["name"] for m in store.manifest["models"]]
    return names, steps, {k: v for k, v in images.items() if all(n in v for n in names)}


def replay(images: Dict[str, dict], names: List[str], refs: Dict[str, Reference], margin: float, bands_for) -> dict:
    """Stop points and verdicts of every image with ``bands_for(sha, name)`` bands."""
    single = len(names) == 1
    steps_all, changed, per_image = [], [], []
    for sha, runs in images.items():
        early_d, full, steps = {}, {}, {}
        for n in names:
            traj, final = runs[n]
            n_run, d, _ = early.stop_point(traj, final, bands_for(sha, n), allow_under=single)
            early_d[n], full[n], steps[n] = d, final, n_run
            steps_all.append(n_run)
        v_full, v_early = decide(full, refs, margin).verdict, decide(early_d, refs, margin).verdict
        if v_full != v_early:
            changed.append({"path": runs["path"], "verdict": v_full, "early_verdict": v_early})
        per_image.append({"path": runs["path"], "steps": steps, "verdict": v_full})
    return {"mean_steps": statistics.fmean(steps_all), "median_steps": statistics.median(steps_all),
            "verdicts_changed": len(changed), "changed": changed, "images": per_image}


def calibration_loo(record: dict, margin: float, slack: float) -> dict:
    """Leave-one-out of a calibration record's bands on its own projections: one network and one of several."""
    _, steps, trajs, finals = early.calibration_runs(record)
    if not trajs:
        sys.exit("the calibration record holds no trajectories")
    th = float(record["threshold"])
    n_gen = sum(1 for t in (record.get("trajectories") or {}).get("generated") or [] if t)
    out = {"threshold": th, "steps": steps, "n": len(trajs), "n_generated": n_gen, "n_real": len(trajs) - n_gen,
           "slack": slack, "margin": margin}
    for key, factor, under in (("one_network", 1.0, True), ("several_networks", margin, False)):
        r = early.leave_one_out(trajs, finals, th, steps, factor, slack, allow_under=under)
        gen_steps, real_steps = r["steps"][:n_gen], r["steps"][n_gen:]
        out[key] = {"wrong": r["wrong"], "closest": r["closest"] if math.isfinite(r["closest"]) else None,
                    "mean_steps": r["mean_steps"],
                    "mean_steps_generated": statistics.fmean(gen_steps) if gen_steps else None,
                    "mean_steps_real": statistics.fmean(real_steps) if real_steps else None}
    return out


def main(argv: Optional[List[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", type=Path)
    ap.add_argument("--calibration", action="append", default=[], metavar="NAME=FILE",
                    help="each network's calibration record (its threshold and reference)")
    ap.add_argument("--loo-calibration", type=Path, metavar="FILE",
                    help="instead of a case: leave-one-out on this calibration record's own trajectories")
    ap.add_argument("--bands-from", action="append", default=[], metavar="NAME=FILE",
                    help="also replay with the bands of this calibration record's trajectories for NAME")
    ap.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    ap.add_argument("--slack", type=float, default=early.DEFAULT_SLACK)
    ap.add_argument("--min-trajectories", type=int, default=early.MIN_TRAJECTORIES,
                    help="fewest trajectories a side of --bands-from bands rests on (as --early-stop)")
    ap.add_argument("--trajectories", type=Path, help="write every run's trajectory here (JSON lines)")
    a = ap.parse_args(argv)
    if a.loo_calibration is not None:
        doc = calibration_loo(named_files([f"cal={a.loo_calibration}"], "--loo-calibration")["cal"], a.margin,
                              a.slack)
        print(json.dumps(dict(doc, calibration=str(a.loo_calibration)), indent=1))
        return doc
    if a.case is None or not a.calibration:
        sys.exit("give --case and --calibration, or --loo-calibration")

    names, steps, images = case_runs(a.case)
    cals = named_files(a.calibration, "--calibration")
    missing = [n for n in names if n not in cals]
    if missing:
        sys.exit(f"no --calibration for {missing}")
    refs = {n: Reference.from_calibration(n, cals[n]) for n in names}
    factors = far_factors(refs, a.margin)  # as detect check / batch stop them

    def loo(sha: str, name: str):
        others = [(r[name][0], r[name][1]) for k, r in images.items() if k != sha]
        return early.decision_bands([t for t, _ in others], [f for _, f in others], refs[name].threshold, steps,
                                    factors[name], a.slack)

    doc = {"case": str(a.case), "networks": names, "steps": steps, "images": len(images), "margin": a.margin,
           "slack": a.slack, "thresholds": {n: refs[n].threshold for n in names},
           "leave_one_out": replay(images, names, refs, a.margin, loo)}
    sources = named_files(a.bands_from, "--bands-from")
    if sources:
        settings = ProjectorSettings(steps=steps)
        fixed = {}
        for n in names:
            b = early.calibration_bands(sources.get(n), refs[n].threshold, settings, factors[n], a.slack,
                                        a.min_trajectories)
            if b is None:
                sys.exit(f"--bands-from gives no usable trajectories for {n}")
            fixed[n] = b
        doc["calibration_bands"] = {"from": a.bands_from, **replay(images, names, refs, a.margin,
                                                                    lambda sha, n: fixed[n])}
    if a.trajectories is not None:
        with open(a.trajectories, "w", encoding="utf-8") as f:
            for sha, runs in images.items():
                for n in names:
                    traj, final = runs[n]
                    f.write(json.dumps({"path": runs["path"], "sha256": sha, "network": n, "distance": final,
                                        "trajectory": traj}) + "\n")
    print(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
