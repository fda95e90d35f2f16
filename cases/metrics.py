"""What a finished case measured, when the truth about its inputs is known (``detect score``).

Per network: ROC AUC of its own generated images against the real ones and, at the network's threshold (the
calibrated one the case used), the TPR on its generated images and the achieved FPR on the reals (with a
Clopper-Pearson interval). Over all networks: the attribution confusion table (true source x attributed network
or none) and, for each network's images under every other network, the other's median distance, how many of them
the other's threshold alone would also call generated, and the margin (other / own distance) the attribution
rests on (StyleGAN2 §5: attribution by projection distance).

The truth comes from the input paths: ``FOLDER=LABEL`` labels every input with a path component FOLDER as LABEL,
a network name of the case (as its report names it) or ``none`` for real images. The case's
``report/report.json`` (``detect report CASE`` writes it) is read.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from detector.attribution import NONE_LABEL, attribute, confusion_table
from detector.scoring import CALIBRATION, NONE, SELF, USER, Reference, decide
from detector.statistics import clopper_pearson, rate_at, roc_auc

from .store import CaseError


class CaseMetricsError(CaseError):
    """The truth given does not fit the case (bad FOLDER=LABEL, unknown label, ambiguous content ...)."""


def load_case_report(case: Union[str, Path]) -> dict:
    """The JSON report of a finished case (``CASE/report/report.json``)."""
    path = Path(case) / "report" / "report.json"
    if not path.exists():
        raise CaseMetricsError(f"{path} is missing: run `detect report {case}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def parse_truth(items: Sequence[str]) -> Dict[str, str]:
    """``['gen_f=celeba32-f', 'real=none']`` -> ``{'gen_f': 'celeba32-f', 'real': 'none'}``."""
    out = {}
    for item in items:
        folder, sep, label = item.partition("=")
        if not sep or not folder or not label:
            raise CaseMetricsError(f"--truth wants FOLDER=LABEL, got {item!r}")
        out[folder] = label
    return out


def true_label(paths: Sequence[str], truth: Dict[str, str]) -> Optional[str]:
    """The label of the truth folder among the folders of the image's paths (None: unlabelled). Content found
    under folders of two different labels is an error: its truth would be ambiguous."""
    found = {truth[part] for p in paths for part in Path(p).parts[:-1] if part in truth}
    if len(found) > 1:
        raise CaseMetricsError(f"{paths[0]}: the same content is labelled {sorted(found)}")
    return found.pop() if found else None


def case_metrics(report: dict, truth: Dict[str, str], confidence: float = 0.95) -> dict:
    """Per-network, cross-network and confusion figures of a case report under ``truth`` (see the module
    docstring)."""
    models = report["summary"]["models"]
    names = [m["name"] for m in models]
    for label in truth.values():
        if label != NONE_LABEL and label not in names:
            raise CaseMetricsError(f"--truth label {label!r} is neither {NONE_LABEL!r} nor a network of the case "
                                   f"({', '.join(names)})")
    rows = []  # (true label, attributed, distances)
    unlabelled = 0
    for img in report["images"]:
        if img.get("error"):
            continue
        label = true_label(img["paths"], truth)
        if label is None:
            unlabelled += 1
            continue
        rows.append((label, img["attributed_to"], img["distances"], str(img.get("verdict", ""))))
    per_network = {}
    for m in models:
        name, th = m["name"], m["threshold"]
        gen = [d[name] for lab, _, d, _ in rows if lab == name and d.get(name) is not None]
        real = [d[name] for lab, _, d, _ in rows if lab == NONE_LABEL and d.get(name) is not None]
        entry: dict = {"threshold": th, "threshold_source": m["threshold_source"], "n_generated": len(gen),
                       "n_real": len(real)}
        if gen and real:
            entry["auc"] = roc_auc(gen, real)
        if gen and th is not None:  # no threshold (uncalibrated network): no rates, only the distances
            tp, n = rate_at(gen, th)
            entry["tpr"] = tp / n
            entry["tp"] = tp
        if real and th is not None:
            fp, n = rate_at(real, th)
            entry["achieved_fpr"] = fp / n
            entry["fp"] = fp
            entry["fpr_ci"] = list(clopper_pearson(fp, n, confidence))
        if gen or real:
            entry["median_generated"] = statistics.median(gen) if gen else None
            entry["median_real"] = statistics.median(real) if real else None
        per_network[name] = entry
    cross = {}
    for m in models:
        for o in models:
            name, other = m["name"], o["name"]
            if other == name:
                continue
            pairs = [(d[name], d[other]) for lab, _, d, _ in rows  # own distance > 0: it divides the margin
                     if lab == name and d.get(name) and d.get(other) is not None]
            if pairs:
                claimed = None if o["threshold"] is None else rate_at([b for _, b in pairs], o["threshold"])[0]
                margins = [b / a for a, b in pairs]  # runner-up distance over own, raw
                c = {"n": len(pairs), "median_distance": statistics.median(b for _, b in pairs),
                     "claimed_by_threshold_alone": claimed, "margin_median": statistics.median(margins),
                     "margin_min": min(margins)}
                if m.get("own_median") and o.get("own_median"):  # in the rule's units (detector.scoring)
                    rel = [x * m["own_median"] / o["own_median"] for x in margins]
                    c.update(relative_margin_median=statistics.median(rel), relative_margin_min=min(rel))
                cross[f"{name} under {other}"] = c
    table = confusion_table([r[0] for r in rows], [r[1] for r in rows], names)
    ambiguous = {lab: sum(1 for r in rows if r[0] == lab and r[3].startswith("ambiguous"))
                 for lab in names + [NONE_LABEL]}
    # The earlier rule on the same distances, for comparison: lowest raw distance under its own threshold.
    thresholds = {m["name"]: m["threshold"] for m in models if m["threshold"] is not None}
    old = [attribute({n: d[n] for n in thresholds if d.get(n) is not None}, thresholds).network
           if thresholds and any(d.get(n) is not None for n in thresholds) else None for _, _, d, _ in rows]
    old_table = confusion_table([r[0] for r in rows], old, names)
    sweep = margin_sweep(rows, models)
    return {"benchmark": "case_metrics", "case": report["case"], "truth": truth, "n_labelled": len(rows),
            "margin_sweep": sweep,
            "n_unlabelled": unlabelled, "confidence": confidence, "per_network": per_network,
            "cross_network": cross, "confusion": table.to_dict(), "confusion_text": table.format(),
            "ambiguous": ambiguous, "confusion_lowest_distance": old_table.to_dict(),
            "confusion_lowest_distance_text": old_table.format()}


#: Margins :func:`margin_sweep` tries.
SWEEP_MARGINS = (1.0, 1.25, 1.5, 2.0, 3.0)


def margin_sweep(rows: Sequence[tuple], models: Sequence[dict], margins: Sequence[float] = SWEEP_MARGINS) -> List[dict]:
    """The calibrated rule (:func:`detector.scoring.decide`) re-decided on the case's distances at each margin:
    per margin how many generated images went to their own network, to another one, or were ambiguous or not
    attributed, and how many real images were attributed or ambiguous. ``rows``: (true label, _, distances, _)."""
    def kind(m: dict) -> str:  # a fixed threshold of older reports ('default') counts as a given one
        if m["threshold"] is None:
            return NONE
        return m["threshold_source"] if m["threshold_source"] in (CALIBRATION, SELF, USER) else USER

    refs = {m["name"]: Reference(m["name"], kind(m), m["threshold"],
                                 median=m.get("own_median") if m["threshold"] is not None else None)
            for m in models}
    out = []
    for margin in margins:
        counts = dict.fromkeys(("own", "wrong", "ambiguous_generated", "none_generated", "real_attributed",
                                "real_ambiguous"), 0)
        for label, _, dist, _ in rows:
            dist = {n: d for n, d in dist.items() if d is not None and n in refs}
            if not dist:
                continue
            dec = decide(dist, {n: refs[n] for n in dist}, margin)
            if label == NONE_LABEL:
                counts["real_attributed"] += dec.network is not None
                counts["real_ambiguous"] += dec.is_ambiguous
            elif dec.network is None:
                counts["ambiguous_generated" if dec.is_ambiguous else "none_generated"] += 1
            else:
                counts["own" if dec.network == label else "wrong"] += 1
        out.append({"margin": margin, **counts})
    return out


def format_case_metrics(metrics: dict) -> str:
    """:func:`case_metrics` as text: one paragraph per network, the cross-network margins, the confusion table."""

    def num(x: Optional[float], fmt: str = ".4f") -> str:
        return "n/a" if x is None else format(x, fmt)

    conf = metrics["confidence"]
    lines = [f"{metrics['n_labelled']} labelled images ({metrics['n_unlabelled']} unlabelled)"]
    for name, e in metrics["per_network"].items():
        lines.append(f"{name}: threshold {num(e['threshold'])} ({e['threshold_source']}), "
                     f"{e['n_generated']} generated, {e['n_real']} real")
        parts = []
        if "auc" in e:
            parts.append(f"AUC {e['auc']:.3f}")
        if "tpr" in e:
            parts.append(f"TPR {e['tp']}/{e['n_generated']} ({e['tpr']:.1%})")
        if "achieved_fpr" in e:
            lo, hi = e["fpr_ci"]
            parts.append(f"FPR {e['fp']}/{e['n_real']} ({e['achieved_fpr']:.1%}; {conf:.0%} CI "
                         f"{lo:.1%}-{hi:.1%})")
        if "median_generated" in e:
            parts.append(f"median distance generated {num(e['median_generated'])}, real {num(e['median_real'])}")
        if parts:
            lines.append("  " + ", ".join(parts))
    for key, c in metrics["cross_network"].items():
        claimed = "no threshold" if c["claimed_by_threshold_alone"] is None else \
            f"{c['claimed_by_threshold_alone']}/{c['n']} under its threshold alone"
        rel = "" if "relative_margin_median" not in c else (
            f"; relative to the own images' medians {c['relative_margin_median']:.2f} "
            f"(min {c['relative_margin_min']:.2f})")
        lines.append(f"{key}: median distance {c['median_distance']:.4f}, {claimed}, distance margin median "
                     f"{c['margin_median']:.2f} (min {c['margin_min']:.2f}){rel}")
    lines.append("")
    lines.append(metrics["confusion_text"])
    n_amb = sum(metrics["ambiguous"].values())
    if n_amb:
        lines.append("ambiguous (counted as none above): " + ", ".join(
            f"{lab} {n}" for lab, n in metrics["ambiguous"].items() if n))
    if len(metrics["per_network"]) > 1:
        lines += ["", "the calibrated rule at other margins (generated: own / wrong / ambiguous / none; real: "
                  "attributed / ambiguous):"]
        lines += [f"  margin {r['margin']:<5g} {r['own']} / {r['wrong']} / {r['ambiguous_generated']} / "
                  f"{r['none_generated']}; {r['real_attributed']} / {r['real_ambiguous']}"
                  for r in metrics["margin_sweep"]]
    if metrics["confusion_lowest_distance"] != metrics["confusion"]:
        lines += ["", "the earlier rule (lowest raw distance under its own threshold) on the same distances:",
                  metrics["confusion_lowest_distance_text"]]
    return "\n".join(lines)


def scatter(report: dict, truth: Dict[str, str], path: Union[str, Path]) -> None:
    """:func:`scatter_png` written to ``path``."""
    Path(path).write_bytes(scatter_png(report, truth))


def scatter_png(report: dict, truth: Dict[str, str]) -> bytes:
    """Each labelled image's distance under one network against another, one colour per true source, with both
    thresholds and the line of equal distance: one panel for two networks, one per pair for more. PNG bytes."""
    import io
    from itertools import combinations

    import matplotlib  # lazy: only a scatter draws, and matplotlib costs ~0.5 s to import

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    models = report["summary"]["models"]
    if len(models) < 2:
        raise CaseMetricsError(f"a scatter needs a case of two or more networks, this one has {len(models)}")
    pairs = list(combinations([(m["name"], m["threshold"]) for m in models], 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 5), squeeze=False)
    drawn = False
    for ax, ((a, ta), (b, tb)) in zip(axes[0], pairs):
        groups: Dict[str, List[tuple]] = {}
        for img in report["images"]:
            d = img.get("distances") or {}
            label = true_label(img["paths"], truth)
            if not img.get("error") and label is not None and d.get(a) and d.get(b):
                groups.setdefault(label, []).append((d[a], d[b]))
        if not groups:
            continue
        drawn = True
        for label, pts in sorted(groups.items()):
            name = "real" if label == NONE_LABEL else f"generated by {label}"
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, alpha=0.7, label=f"{name} ({len(pts)})")
        if ta is not None:
            ax.axvline(ta, color="tab:red", linestyle="--", linewidth=1)
        if tb is not None:
            ax.axhline(tb, color="tab:red", linestyle="--", linewidth=1, label="thresholds")
        lo = min(min(p) for pts in groups.values() for p in pts) / 1.5
        hi = max(max(p) for pts in groups.values() for p in pts) * 1.5
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, label="equal distance")
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel=f"LPIPS under {a}",
               ylabel=f"LPIPS under {b}")
        ax.legend(fontsize=8)
    if not drawn:
        plt.close(fig)
        raise CaseMetricsError("scatter: no labelled image has a distance under two networks")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


__all__ = ["CaseMetricsError", "load_case_report", "parse_truth", "true_label", "case_metrics",
           "format_case_metrics", "scatter", "scatter_png"]
