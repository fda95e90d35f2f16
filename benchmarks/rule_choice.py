"""The rule between networks, chosen on dev images (issue 24): every network's generated images projected under
every candidate (``benchmarks/inversion_methods.py --model A --sibling B --sibling C ...``, one state file per
source network, concatenated with a ``source`` and ``under`` name per row), scored three ways:

* ``raw``: the runner-up's distance over the own network's (the issue's "margin");
* ``relative``: each distance over the median distance of that network's own calibration images, then the
  runner-up's over the own (:func:`detector.scoring.decide`'s rule);
* ``threshold``: each distance over that network's calibrated threshold, then the same ratio (the first rule).

For each source and rule: the median and smallest margin against every other network, and the verdicts at
``--margin`` (own, wrong, ambiguous, not attributed) where every candidate's threshold is known. A calibration
is a record (``.json``) or a progress file (``.jsonl``, ``detect calibrate --progress-file``: its generated rows
give the own median; no threshold). Prints JSON.

    python benchmarks/rule_choice.py --cross benchmarks/results/celeba32-three-networks-dev-cross.jsonl \\
        --calibration F=cal-celeba32-f.json --calibration F1=cal-celeba32-f-t1.jsonl --calibration F2=...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector.scoring import CALIBRATION, DEFAULT_MARGIN, RATIO, Reference, decide  # noqa: E402


def load_calibration(path: Path) -> Tuple[List[float], Optional[float]]:
    """(own generated distances, threshold or None) of a calibration record or progress file."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r["distance"] for r in rows if r.get("kind") == "generated"], None
    rec = json.loads(path.read_text())
    return list(rec["generated_distances"]), float(rec["threshold"])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cross", required=True, type=Path, help="JSONL rows with source, under, index, distance")
    p.add_argument("--calibration", action="append", required=True, metavar="NAME=FILE")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    a = p.parse_args(argv)
    own, thresholds = {}, {}
    for item in a.calibration:
        name, _, f = item.partition("=")
        own[name], thresholds[name] = load_calibration(Path(f))
    dist: Dict[Tuple[str, int], Dict[str, float]] = {}
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
        for rule, by in (("relative", None), ("threshold", RATIO)):  # None: the rule as decide() ranks
            if any(thresholds[n] is None for n in names):
                continue
            rs = {n: Reference(n, CALIBRATION, thresholds[n], own[n]) for n in names}
            counts = dict.fromkeys(("own", "wrong", "ambiguous", "not attributed"), 0)
            for d in imgs.values():
                dec = decide(d, rs, a.margin, ranked_by=by)
                key = ("own" if dec.network == src else "wrong") if dec.network else (
                    "ambiguous" if dec.is_ambiguous else "not attributed")
                counts[key] += 1
            entry.setdefault("verdicts", {})[rule] = counts
        out["sources"][src] = entry
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
