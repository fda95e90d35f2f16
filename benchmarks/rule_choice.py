"""The rule between networks, chosen on dev images (issue 24): every network's generated images projected under
every candidate (``benchmarks/inversion_methods.py --model A --sibling B --sibling C ...``, one state file per
source network, concatenated with a ``source`` and ``under`` name per row), scored three ways:

* ``raw``: the runner-up's distance over the own network's (the issue's "margin");
* ``relative``: each distance over the median distance of that network's own calibration images, then the
  runner-up's over the own (:func:`detector.scoring.decide`'s rule);
* ``threshold``: each distance over that network's calibrated threshold, then the same ratio (the first rule).

For each source and rule: the median and smallest margin against every other network, and the verdicts at
``--margin`` (own, wrong, ambiguous, not attributed) where every candidate's threshold is known, also under
``lowest``, the rule before issue 24 (:func:`detector.attribution.attribute`: the lowest raw distance among the
networks whose threshold it clears).
A calibration is a record (``.json``), a calibrated model file, or a progress file (``.jsonl``, ``detect
calibrate --progress-file``: its generated rows give the own median; no threshold). A finished case can stand in
for the cross rows (``--case``, with ``--truth FOLDER=NAME`` as ``detect score`` takes it; ``none`` for real
images, whose verdicts are counted too); ``--second-look STATE`` scores the distances after the case's second look
(``benchmarks/second_look_case.py``'s state) instead, and ``--same-images OTHER_CASE`` keeps only the images (by
content) that another case holds, so that two cases of different sizes are compared on the same images. Prints JSON.

    python benchmarks/rule_choice.py --cross benchmarks/results/celeba32-three-networks-dev-cross.jsonl \\
        --calibration F=cal-celeba32-f.json --calibration F1=cal-celeba32-f-t1.jsonl --calibration F2=...
    python benchmarks/rule_choice.py --case CASE --truth gen_f=F --truth real=none --calibration F=... ...
    python benchmarks/rule_choice.py --case CASE --second-look STATE.jsonl --same-images SMALLER_CASE ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cases.metrics import load_case_report, parse_truth, true_label  # noqa: E402
from detector.attribution import attribute  # noqa: E402
from detector.scoring import CALIBRATION, DEFAULT_MARGIN, RATIO, Reference, decide  # noqa: E402


def load_calibration(path: Path) -> Tuple[List[float], Optional[float]]:
    """(own generated distances, threshold or None) of a calibration record, progress file or calibrated model."""
    if path.suffix in (".pt", ".pkl"):
        from detector.calibration_store import load_calibration

        rec = load_calibration(path)
        if rec is None:
            raise SystemExit(f"{path}: no calibration stored with this network")
        return list(rec["generated_distances"]), float(rec["threshold"])
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r["distance"] for r in rows if r.get("kind") == "generated"], None
    rec = json.loads(path.read_text())
    return list(rec["generated_distances"]), float(rec["threshold"])


def case_rows(case: Path, truth: List[str], second_look: Optional[Path] = None,
              same_images: Optional[Path] = None) -> Dict[Tuple[str, int], Dict[str, float]]:
    """(source, index) -> {network: distance} from a case's report (``source``: the NAME its folder maps to by
    ``truth`` items FOLDER=NAME, ``none`` for real images); images in no mapped folder are left out. With
    ``second_look`` (a second_look_case.py state) an image's distances are those after its second look; with
    ``same_images`` (another case) only the images that case holds (by sha256) are kept."""
    folders = parse_truth(truth)
    after: Dict[str, Dict[str, float]] = {}
    if second_look is not None:
        for line in second_look.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                after[r["sha256"]] = r["second"]
    keep = None if same_images is None else {img["sha256"] for img in load_case_report(same_images)["images"]}
    rows: Dict[Tuple[str, int], Dict[str, float]] = {}
    for i, img in enumerate(load_case_report(case)["images"]):
        if keep is not None and img["sha256"] not in keep:
            continue
        src = true_label(img["paths"], folders)
        distances = after.get(img["sha256"], img["distances"])
        if src is not None and all(v is not None for v in distances.values()):
            rows[(src, i)] = {n: float(v) for n, v in distances.items()}
    return rows


def verdict_key(d: Dict[str, float], names: List[str], refs: Dict[str, Reference], rule: str,
                margin: float) -> Tuple[Optional[str], bool]:
    """(attributed network or None, ambiguous) of one image under ``rule``: relative, threshold or lowest."""
    if rule == "lowest":
        return attribute({n: d[n] for n in names}, {n: refs[n].threshold for n in names}).network, False
    dec = decide(d, refs, margin, ranked_by=None if rule == "relative" else RATIO)
    return dec.network, dec.is_ambiguous


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src_arg = p.add_mutually_exclusive_group(required=True)
    src_arg.add_argument("--cross", type=Path, help="JSONL rows with source, under, index, distance")
    src_arg.add_argument("--case", type=Path, help="a finished case folder (with --truth)")
    p.add_argument("--truth", action="append", default=[], metavar="FOLDER=NAME")
    p.add_argument("--calibration", action="append", required=True, metavar="NAME=FILE")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    p.add_argument("--second-look", type=Path, help="with --case: second_look_case.py's state of that case")
    p.add_argument("--same-images", type=Path, metavar="CASE", help="with --case: only the images CASE holds")
    a = p.parse_args(argv)
    own, thresholds = {}, {}
    for item in a.calibration:
        name, _, f = item.partition("=")
        own[name], thresholds[name] = load_calibration(Path(f))
    dist: Dict[Tuple[str, int], Dict[str, float]] = {}
    if a.case is not None:
        if not a.truth:
            p.error("--case needs --truth FOLDER=NAME for each folder")
        dist = case_rows(a.case, a.truth, a.second_look, a.same_images)
    elif a.second_look or a.same_images:
        p.error("--second-look and --same-images go with --case")
    else:
        for line in a.cross.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                dist.setdefault((r["source"], int(r["index"])), {})[r["under"]] = float(r["distance"])
    names = sorted(own)
    medians = {n: statistics.median(own[n]) for n in names}
    out = {"margin": a.margin, "own_median": medians, "threshold": thresholds, "sources": {}}
    scale = {"raw": {n: 1.0 for n in names}, "relative": medians, "threshold": thresholds}
    for src in names:
        imgs = {i: {n: d[n] for n in names} for (s, i), d in dist.items() if s == src and set(d) >= set(names)}
        entry: dict = {"n": len(imgs)}
        for rule, sc in scale.items():
            if any(sc[n] is None for n in names):
                continue
            for other in names:
                if other != src:
                    m = [(d[other] / sc[other]) / (d[src] / sc[src]) for d in imgs.values()]
                    entry.setdefault(rule, {})[other] = {"median": statistics.median(m), "min": min(m)}
        if all(thresholds[n] is not None for n in names):  # verdicts need every threshold
            entry["verdicts"] = verdicts(imgs.values(), src, names, thresholds, own, a.margin)
        out["sources"][src] = entry
    real = [d for (s, _), d in dist.items() if s == "none" and set(d) >= set(names)]
    if real and all(thresholds[n] is not None for n in names):
        out["real"] = {"n": len(real), "verdicts": verdicts(real, None, names, thresholds, own, a.margin)}
    print(json.dumps(out, indent=1))
    return out


def verdicts(imgs, src: Optional[str], names, thresholds, own, margin: float) -> dict:
    """Counts of own / wrong / ambiguous / not attributed (``src`` None: real images, whose every attribution is
    wrong) under each rule."""
    refs = {n: Reference(n, CALIBRATION, thresholds[n], own[n]) for n in names}
    out = {}
    for rule in ("relative", "threshold", "lowest"):
        counts = dict.fromkeys(("own", "wrong", "ambiguous", "not attributed"), 0)
        for d in imgs:
            network, ambiguous = verdict_key(d, names, refs, rule, margin)
            key = ("own" if network == src else "wrong") if network else (
                "ambiguous" if ambiguous else "not attributed")
            counts[key] += 1
        out[rule] = counts
    return out


if __name__ == "__main__":
    main()
