"""The second look measured on a finished case made without it (issues 24, 28): the case's distances are the
first look; every image some network claims is given the product's second look
(:func:`detector.check.second_look_pass`: from a sample of W drawn from projection seed + 1, with the case's own
settings, seed and networks) in chunks, kept in a resumable JSONL state, and the verdicts of both looks are counted
per true source (``--truth FOLDER=NAME`` as ``detect score`` takes it, ``none`` for real images) with the
projections it cost. Prints JSON.

    python benchmarks/second_look_case.py --case CASE --truth gen_f=celeba32-f --truth real=none \\
        --state second-look.jsonl [--model NAME=FILE]   # a network's file where it moved since the case
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from cases.metrics import load_case_report, parse_truth, true_label  # noqa: E402
from cases.report import case_margin  # noqa: E402
from detector.calibration_store import load_calibration  # noqa: E402
from detector.check import Candidate, CheckRecord, second_look_pass  # noqa: E402
from detector.scoring import Reference, decide  # noqa: E402
from detector.settings import ProjectorSettings  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.perceptual import load_lpips  # noqa: E402


def label(network, ambiguous: bool, src) -> str:
    if src is None:
        return "real attributed" if network else "real ambiguous" if ambiguous else "real none"
    return ("own" if network == src else "wrong") if network else "ambiguous" if ambiguous else "not attributed"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", required=True, type=Path)
    p.add_argument("--truth", action="append", required=True, metavar="FOLDER=NAME")
    p.add_argument("--state", required=True, type=Path, help="JSONL of finished images (resumed)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=FILE")
    p.add_argument("--chunk", type=int, default=8, help="images per second-look pass")
    p.add_argument("--margin", type=float, help="default: the case's own (detect batch --margin)")
    a = p.parse_args(argv)
    torch.set_flush_denormal(True)
    report = load_case_report(a.case)
    prov = report["provenance"]
    case_settings = dict(prov["settings"])  # the projector's, plus what batch records beside them
    if case_settings.pop("second_look", False):
        raise SystemExit(f"{a.case}: this case had its second look already (detect batch --second-look)")
    strict = bool(case_settings.pop("strict", False))
    case_settings.pop("early_decisions", None)
    margin = a.margin if a.margin is not None else case_margin(case_settings)
    case_settings.pop("margin", None)
    settings = ProjectorSettings.from_dict(case_settings)
    moved = dict(m.partition("=")[::2] for m in a.model)
    candidates, refs = [], {}
    for m in prov["models"]:
        path = Path(moved.get(m["name"], m["path"]))
        loaded = load_model(path)
        if loaded.file_sha256 != m["file_sha256"]:
            raise SystemExit(f"{path}: not the file the case used for {m['name']} (give --model NAME=FILE)")
        cal = load_calibration(path, loaded)
        candidates.append(Candidate(m["name"], loaded.G_ema.eval(), cal))
        # the references the case's verdicts were made with (its manifest's summary of each calibration)
        refs[m["name"]] = Reference.from_calibration(m["name"], m["calibration"], prov["threshold_override"])
    distance = load_lpips(prov["distance"]["net"])
    folders = parse_truth(a.truth)
    images = []
    for img in report["images"]:
        src = true_label(img["paths"], folders)
        if src is not None and all(v is not None for v in img["distances"].values()):
            images.append((img, None if src == "none" else src))
    done = {}
    if a.state.exists():
        for line in a.state.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["sha256"]] = r
    todo = [(img, src) for img, src in images if img["sha256"] not in done]
    for k in range(0, len(todo), a.chunk):
        chunk = todo[k:k + a.chunk]
        paths = [Path(img["paths"][0]) for img, _ in chunk]
        per_network: Dict[str, List[CheckRecord]] = {
            c.name: [CheckRecord(str(pth), sha256=img["sha256"], distance=img["distances"][c.name])
                     for pth, (img, _) in zip(paths, chunk)] for c in candidates}
        second_look_pass(candidates, paths, per_network, refs, distance, settings=settings,
                         threshold=prov["threshold_override"], seed=int(prov["seed"]), margin=margin, strict=strict)
        with a.state.open("a") as f:
            for i, (img, _) in enumerate(chunk):
                row = {"sha256": img["sha256"], "path": img["paths"][0], "first": img["distances"],
                       "second": {c.name: per_network[c.name][i].distance for c in candidates},
                       "looks": {c.name: per_network[c.name][i].looks for c in candidates}}
                f.write(json.dumps(row) + "\n")
                done[img["sha256"]] = row
        print(f"second look: {min(k + a.chunk, len(todo))}/{len(todo)} images", file=sys.stderr, flush=True)
    counts: Dict[str, Dict[str, Dict[str, int]]] = {"first": {}, "second": {}}
    changes, extra = [], 0
    for img, src in images:
        row = done[img["sha256"]]
        extra += sum(len(v) - 1 for v in row["looks"].values() if v)
        seen = {}
        for look in ("first", "second"):
            dec = decide(row[look], refs, margin)
            seen[look] = label(dec.network, dec.is_ambiguous, src)
            by_src = counts[look].setdefault(src or "none", {})
            by_src[seen[look]] = by_src.get(seen[look], 0) + 1
        if seen["first"] != seen["second"]:
            changes.append({"image": row["path"], "first": seen["first"], "second": seen["second"],
                            "first_distances": row["first"], "second_distances": row["second"]})
    out = {"benchmark": "second look on a finished case", "case": str(a.case), "margin": margin,
           "truth": folders, "n_images": len(images), "case_projections": len(images) * len(candidates),
           "extra_projections": extra, "verdicts": counts, "changes": changes}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
