"""Config A against config F (issue 7; StyleGAN2 §5, Fig. 9 and Table 1): set the attribution records of several
networks side by side with their perceptual path lengths, and draw their Fig. 9 histograms as stacked panels on
shared bins. Prints JSON.

Inputs are the records the other scripts write: ``eval_attribution.py`` JSON (it must hold the per-image
``distances``) and ``stylegan metrics ppl --json`` output, one pair per network:

    python benchmarks/compare_networks.py \\
        --network "config A" benchmarks/results/celeba32-a48-eval.json benchmarks/results/celeba32-a48-ppl.json \\
        --network "config F" benchmarks/results/celeba32-f48-eval.json benchmarks/results/celeba32-f48-ppl.json \\
        --histogram benchmarks/results/celeba32-a48-vs-f48-histogram.png

Per network: ROC AUC, d' of the log distances, the distance quantiles of both populations, and the true-positive
rate at the threshold that passes 1 % of these real images (the ranks the AUC summarises, read at one operating
point). ``direction`` then states whether the paper's claim holds on these records: the network listed last
(F) separates better (higher d') and has the lower PPL than each one before it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fig9_histograms  # noqa: E402
from eval_attribution import separation  # noqa: E402

from detector.statistics import roc_auc, threshold_at_fpr  # noqa: E402


def quantiles(d) -> dict:
    a = np.asarray(d, np.float64)
    return {"n": int(a.size), "p5": float(np.percentile(a, 5)), "median": float(np.median(a)),
            "p95": float(np.percentile(a, 95)), "min": float(a.min()), "max": float(a.max())}


def network_record(label: str, eval_path: str, ppl_path: str) -> dict:
    ev = json.loads(Path(eval_path).read_text())
    ppl = json.loads(Path(ppl_path).read_text())
    if "distances" not in ev:
        raise SystemExit(f"{eval_path}: no per-image distances (re-run eval_attribution.py with --report-only)")
    gen = list(ev["distances"]["generated"].values())
    real = list(ev["distances"]["real"].values())
    th = threshold_at_fpr(real, 0.01)
    return {"label": label, "eval": eval_path, "ppl_record": ppl_path, "weights_sha256": ev.get("weights_sha256"),
            "complete": ev.get("complete"), "steps": ev["settings"]["steps"],
            "effective_alpha": ev.get("effective_alpha"),
            "auc": roc_auc(gen, real), "separation_dprime_log": separation(gen, real),
            "threshold_at_1pct_fpr": th, "tpr_at_1pct_fpr": float(np.mean(np.asarray(gen) <= th)),
            "generated": quantiles(gen), "real": quantiles(real),
            "ppl": {"mean": ppl["mean"], "space": ppl["settings"]["space"], "sampling": ppl["settings"]["sampling"],
                    "num_samples": ppl["num_samples"], "crop": ppl["settings"]["crop"]},
            "_gen": gen, "_real": real}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", nargs=3, action="append", required=True, metavar=("LABEL", "EVAL_JSON", "PPL_JSON"),
                   help="one network's records; repeat, with the network expected to separate best (F) last")
    p.add_argument("--histogram", default=None, metavar="PNG", help="Fig. 9: one panel per network")
    args = p.parse_args()
    nets = [network_record(*n) for n in args.network]
    ppl_settings = {(n["ppl"]["space"], n["ppl"]["sampling"], n["ppl"]["crop"]) for n in nets}
    if len(ppl_settings) > 1:
        raise SystemExit(f"the PPL records were measured differently: {sorted(ppl_settings)}")
    last = nets[-1]
    direction = {f"{last['label']} vs {n['label']}": {
        "separates_better": last["separation_dprime_log"] > n["separation_dprime_log"],
        "auc_higher_or_equal": last["auc"] >= n["auc"],
        "lower_ppl": last["ppl"]["mean"] < n["ppl"]["mean"]} for n in nets[:-1]}
    if args.histogram:
        fig9_histograms(args.histogram, [
            (f"{n['label']}: ROC AUC {n['auc']:.4f}, d' {n['separation_dprime_log']:.2f}, "
             f"PPL {n['ppl']['mean']:.2f}", n["_gen"], n["_real"]) for n in nets])
    for n in nets:
        del n["_gen"], n["_real"]
    print(json.dumps({"benchmark": "compare_networks", "networks": nets, "direction": direction}, indent=1))


if __name__ == "__main__":
    main()
