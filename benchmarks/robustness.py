"""Suspect images as they really arrive (issue 26): how the distance separates a network's images from real ones
after JPEG, resizing, shifts and blur, with plain projection and with degradation-aware projection.

Every condition is applied identically to both populations, generated (seeds ``--seed-offset + i``, 8-bit PNG
as `stylegan generate --noise-mode random` writes them) and real (held-out faces at the network's size), and
the processed files go through `detect check`'s own path (:func:`detector.check.check_images`: the loader reads
the JPEG's tables, resizes what is not at the network's size, ...). So the table measures origin, not file format.

Conditions: ``png``, ``jpeg95/90/75/50`` (Pillow, 4:2:0), ``jpeg90x2`` (JPEG 90 decoded and saved again),
``down0.5/down0.75`` (Lanczos down to that factor and back, saved at the network's size), ``small0.5`` (saved at
half the size: the loader upscales it), ``shift1/2/4/8`` (the image moved by k px down and right, edges
replicated), ``blur`` (Gaussian, radius 0.6 px). Methods: ``plain`` (the projector's default) and ``aware``
(``model_jpeg``, ``model_resize`` and ``align`` 8 px), or ``NAME:key=value,...`` with ProjectorSettings fields;
``consistency`` projects plainly and then, for a JPEG file, refines towards consistency with it
(:func:`detector.jpeg_consistency.refine_consistency`, ``--consistency-steps/-lr/-weight``): each image gives a
``plain`` row and a ``consistency`` row (the refined LPIPS through the JPEG model as its distance, and the residual
before and after), from one projection.

Per condition and method: ROC AUC, and at the clean calibration's threshold (``--calibration`` record, what a
user with a calibrated network experiences) the TPR and the achieved FPR with 95 % intervals; a method projected
otherwise than the calibration (``appd``) is scored at its own clean calibration's threshold
(``--method-calibration appd=cal-appd.json``) where one is given. Resumable:
distances are appended to ``--state`` (JSONL) after each batch; ``--report-only`` summarises. Prints JSON;
``--plot`` draws AUC and TPR/FPR per condition, ``--markdown`` writes the table for the docs.

    python benchmarks/robustness.py --model F.pt --calibration cal.json --real real_eval100 --work /tmp/rob \\
        --state rob.jsonl --condition png:100 --condition jpeg75:100 --condition shift4:30 --method plain
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine_info  # noqa: E402

from detector.check import check_images  # noqa: E402
from detector.images import load_image  # noqa: E402
from detector.jpeg import DifferentiableJpeg  # noqa: E402
from detector.jpeg_coefficients import JpegFormatError, read_jpeg_coefficients  # noqa: E402
from detector.jpeg_consistency import ConsistencySettings, refine_consistency  # noqa: E402
from detector.settings import ProjectorSettings  # noqa: E402
from detector.statistics import clopper_pearson, roc_auc  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.generator import generate_seeded  # noqa: E402
from stylegan.perceptual import load_lpips  # noqa: E402

METHODS: Dict[str, Dict[str, object]] = {"plain": {}, "aware": {"model_jpeg": True, "model_resize": True,
                                                                 "align": 8}, "consistency": {}}


def _jpeg(a: np.ndarray, q: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=q)
    return buf.getvalue()


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _resized(a: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((side, side), Image.LANCZOS))


def _shifted(a: np.ndarray, k: int) -> np.ndarray:
    p = np.pad(a, ((k, 0), (k, 0), (0, 0)), mode="edge")
    return p[:a.shape[0], :a.shape[1]]


def condition(name: str) -> Callable[[np.ndarray], tuple]:
    """The processing of one condition: uint8 [R, R, 3] -> (file bytes, extension)."""
    if name == "png":
        return lambda a: (_png(a), ".png")
    if name.startswith("jpeg") and name.endswith("x2"):
        q = int(name[4:-2])
        return lambda a: (_jpeg(np.asarray(Image.open(io.BytesIO(_jpeg(a, q))).convert("RGB")), q), ".jpg")
    if name.startswith("jpeg"):
        q = int(name[4:])
        return lambda a: (_jpeg(a, q), ".jpg")
    if name.startswith("down"):
        f = float(name[4:])
        return lambda a: (_png(_resized(_resized(a, round(a.shape[0] * f)), a.shape[0])), ".png")
    if name.startswith("small"):
        f = float(name[5:])
        return lambda a: (_png(_resized(a, round(a.shape[0] * f))), ".png")
    if name.startswith("shift"):
        k = int(name[5:])
        return lambda a: (_png(_shifted(a, k)), ".png")
    if name == "blur":
        return lambda a: (_png(np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(0.6)))), ".png")
    raise SystemExit(f"unknown condition {name!r}")


def consistent(G, path: Path, rec, distance, settings: ConsistencySettings):
    """The consistency refinement of one checked JPEG file (None for other files)."""
    loaded = load_image(path, G.img_resolution, G.img_channels)
    if loaded.jpeg is None:
        return None
    try:
        stored = read_jpeg_coefficients(Path(path).read_bytes())
    except JpegFormatError:
        stored = None  # intervals re-derived from the decoded pixels
    return refine_consistency(G, rec.result, rec.target[None], DifferentiableJpeg(loaded.jpeg), distance, settings,
                              stored)


def parse_method(text: str) -> tuple:
    name, _, rest = text.partition(":")
    over = dict(METHODS.get(name, {}))
    fields = set(ProjectorSettings.__dataclass_fields__)
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown ProjectorSettings field {key!r} in --method {text!r}")
        over[key] = json.loads(value)
    if name not in METHODS and not rest:
        raise SystemExit(f"unknown method {name!r} (plain, aware, or NAME:key=value,...)")
    return name, over


def sources(G, real_dir: Path, n: int, seed_offset: int) -> Dict[str, List[tuple]]:
    """{'generated': [(name, uint8 HWC)], 'real': [...]}: n of each at the network's size."""
    gen = []
    for i in range(n):
        img = generate_seeded(G, seed_offset + i, 1.0)
        a = (img[0].permute(1, 2, 0) * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()
        gen.append((f"seed{seed_offset + i}", a))
    files = sorted(p for p in real_dir.iterdir() if p.suffix.lower() == ".png")[:n]
    if len(files) < n:
        raise SystemExit(f"{real_dir}: {len(files)} PNG files, {n} asked for")
    real = [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in files]
    R = G.img_resolution
    if any(a.shape[:2] != (R, R) for _, a in real):
        raise SystemExit(f"{real_dir}: real images must be {R}x{R} PNGs")
    return {"generated": gen, "real": real}


def rates(k: int, n: int) -> dict:
    lo, hi = clopper_pearson(k, n) if n else (None, None)
    return {"count": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


def report(records: List[dict], threshold: float, method_thresholds: Dict[str, float] | None = None) -> dict:
    """Per condition and method: AUC, medians, and TPR / FPR at the clean threshold (``method_thresholds[method]``
    where given, else ``threshold``)."""
    out: Dict[str, dict] = {}
    for (cond, method) in dict.fromkeys((r["condition"], r["method"]) for r in records):
        rows = [r for r in records if r["condition"] == cond and r["method"] == method]
        thr = (method_thresholds or {}).get(method, threshold)
        gen = [r["distance"] for r in rows if r["kind"] == "generated"]
        real = [r["distance"] for r in rows if r["kind"] == "real"]
        entry = {"n_generated": len(gen), "n_real": len(real), "clean_threshold": thr,
                 "auc": roc_auc(gen, real) if gen and real else None,
                 "median_generated": float(np.median(gen)) if gen else None,
                 "median_real": float(np.median(real)) if real else None,
                 "tpr_at_clean_threshold": rates(sum(d <= thr for d in gen), len(gen)),
                 "fpr_at_clean_threshold": rates(sum(d <= thr for d in real), len(real)),
                 "seconds_per_image": float(np.mean([r["seconds_per_image"] for r in rows]))}
        res = [(r["kind"], r["consistency"]["residual"]) for r in rows if r.get("consistency")]
        if res:
            rg = [v for k, v in res if k == "generated"]
            rr = [v for k, v in res if k == "real"]
            entry["residual"] = {"auc": roc_auc(rg, rr) if rg and rr else None,
                                 "median_generated": float(np.median(rg)) if rg else None,
                                 "max_generated": max(rg) if rg else None,
                                 "median_real": float(np.median(rr)) if rr else None,
                                 "min_real": min(rr) if rr else None}
        out.setdefault(cond, {})[method] = entry
    return out


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from stylegan.util.files import atomic_write_bytes

    conds = list(doc["conditions"])
    methods = sorted({m for c in conds for m in doc["conditions"][c]})
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.7 * len(conds) + 2), 6), sharex=True)
    x = np.arange(len(conds))
    low = 0.5
    for j, m in enumerate(methods):
        off = (j - (len(methods) - 1) / 2) * 0.35
        auc = [np.nan if (v := doc["conditions"][c].get(m, {}).get("auc")) is None else v for c in conds]
        low = min([low] + [v - 0.05 for v in auc if np.isfinite(v)])
        tpr = [(doc["conditions"][c].get(m) or {}).get("tpr_at_clean_threshold", {}).get("rate") for c in conds]
        fpr = [(doc["conditions"][c].get(m) or {}).get("fpr_at_clean_threshold", {}).get("rate") for c in conds]
        axes[0].bar(x + off, auc, width=0.35, label=m)
        axes[1].bar(x + off, [np.nan if v is None else v for v in tpr], width=0.35, label=f"{m} TPR")
        axes[1].plot(x + off, [np.nan if v is None else v for v in fpr], "kx", label="FPR" if j == 0 else None)
    axes[0].set_ylim(max(0.0, low), 1.0)  # 0.5 up, lower where an AUC is (below 0.5: real comes back closer)
    axes[1].set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("ROC AUC")
    axes[1].set_ylabel("at the clean threshold")
    axes[1].set_xticks(x, conds, rotation=45, ha="right")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


#: The issue's order of conditions, for tables (others follow in the order met).
CONDITION_ORDER = ["png", "jpeg95", "jpeg90", "jpeg90x2", "jpeg75", "jpeg50", "down0.75", "down0.5", "small0.5",
                   "shift1", "shift2", "shift4", "shift8", "blur"]


def markdown(doc: dict) -> str:
    """The report as a Markdown table: per condition and method, the images, ROC AUC, and at the clean threshold
    (the method's own calibration where it has one) the generated and the real images under it."""
    conds = doc["conditions"]
    order = [c for c in CONDITION_ORDER if c in conds] + [c for c in conds if c not in CONDITION_ORDER]
    lines = ["| condition | projection | images | AUC | generated under the clean threshold (TPR) | "
             "real under it (FPR, 95 % interval) | median generated / real |", "|---|---|---|---|---|---|---|"]
    for c in order:
        for m in sorted(conds[c], key=lambda m: (m != "plain", m)):
            e = conds[c][m]
            t, f = e["tpr_at_clean_threshold"], e["fpr_at_clean_threshold"]
            auc = "-" if e["auc"] is None else f"{e['auc']:.4f}"
            fpr = "-" if not f["n"] else f"{f['count']}/{f['n']} ({f['ci95'][0]:.2f}-{f['ci95'][1]:.2f})"
            tpr = "-" if not t["n"] else f"{t['count']}/{t['n']}"
            med = " / ".join("-" if v is None else f"{v:.4f}" for v in (e["median_generated"], e["median_real"]))
            lines.append(f"| {c} | {m} | {e['n_generated']} + {e['n_real']} | {auc} | {tpr} | {fpr} | {med} |")
            if e.get("residual"):  # the consistency refinement's own statistic (no clean threshold of its own)
                r = e["residual"]
                auc = "-" if r["auc"] is None else f"{r['auc']:.4f}"
                med = " / ".join("-" if v is None else f"{v:.2g}" for v in (r["median_generated"], r["median_real"]))
                lines.append(f"| {c} | {m}: its JPEG residual | | {auc} | | | {med} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--calibration", required=True, help="the clean calibration record (JSON) of --model")
    p.add_argument("--method-calibration", action="append", default=[], metavar="METHOD=PATH",
                   help="the clean calibration a method's rows are scored at (e.g. appd=cal-appd.json; repeat)")
    p.add_argument("--real", required=True, type=Path, help="held-out real faces, PNGs at the network's size")
    p.add_argument("--condition", action="append", required=True, metavar="NAME:N",
                   help="a condition and its images per population (repeat)")
    p.add_argument("--method", action="append", required=True, help="plain, aware or NAME:key=value,...")
    p.add_argument("--work", required=True, type=Path, help="folder for the processed files")
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed-offset", type=int, default=2_000_000)
    p.add_argument("--plot", type=Path)
    p.add_argument("--markdown", type=Path, help="also write the report as a Markdown table here")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--consistency-steps", type=int, default=ConsistencySettings.steps)
    p.add_argument("--consistency-lr", type=float, default=ConsistencySettings.lr)
    p.add_argument("--consistency-weight", type=float, default=ConsistencySettings.weight)
    a = p.parse_args(argv)
    torch.set_flush_denormal(True)

    cal = json.loads(Path(a.calibration).read_text(encoding="utf-8"))
    threshold = float(cal["threshold"])
    method_cals = {}
    for item in a.method_calibration:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--method-calibration {item!r}: METHOD=PATH")
        c = json.loads(Path(path).read_text(encoding="utf-8"))
        method_cals[name] = {"path": path, "threshold": float(c["threshold"]), "fpr_ci": c.get("fpr_ci")}
    method_thresholds = {m: c["threshold"] for m, c in method_cals.items()}
    records = [json.loads(x) for x in a.state.read_text().splitlines() if x.strip()] if a.state.exists() else []
    done = {(r["condition"], r["method"], r["kind"], r["name"]) for r in records}
    conds = [(c.partition(":")[0], int(c.partition(":")[2] or 30)) for c in a.condition]
    methods = [parse_method(m) for m in a.method]
    csettings = ConsistencySettings(a.consistency_steps, a.consistency_lr, a.consistency_weight)
    info = {"report_only": True} if a.report_only else machine_info(a.device)
    if not a.report_only:
        G = load_model(a.model, device=a.device).G_ema.eval()
        distance = load_lpips("vgg", device=a.device)
        src = sources(G, a.real, max(n for _, n in conds), a.seed_offset)
        for cond, n in conds:
            make = condition(cond)
            paths: Dict[str, List[Path]] = {}
            for kind, items in src.items():
                folder = a.work / cond / kind
                folder.mkdir(parents=True, exist_ok=True)
                paths[kind] = []
                for name, arr in items[:n]:
                    data, ext = make(arr)
                    f = folder / f"{name}{ext}"
                    if not f.exists() or f.read_bytes() != data:
                        f.write_bytes(data)
                    paths[kind].append(f)
            for mname, over in methods:
                if mname == "consistency" and not cond.startswith("jpeg"):
                    print(f"{cond}: not a JPEG condition, no consistency refinement", file=sys.stderr)
                    continue
                settings = ProjectorSettings(**{"steps": a.steps, **over})
                for kind in ("generated", "real"):
                    todo = [f for f in paths[kind] if (cond, mname, kind, f.stem) not in done]
                    for b in range(0, len(todo), a.batch):
                        batch = todo[b:b + a.batch]
                        t0 = time.perf_counter()
                        recs = check_images(G, batch, distance, settings=settings)
                        projected = (time.perf_counter() - t0) / len(batch)
                        refined = [None] * len(batch)
                        if mname == "consistency":
                            refined = [consistent(G, f, r, distance, csettings) for f, r in zip(batch, recs)]
                        sec = (time.perf_counter() - t0) / len(batch)
                        with a.state.open("a") as fh:
                            for f, r, c in zip(batch, recs, refined):
                                if r.error:
                                    raise SystemExit(f"{f}: {r.error}")
                                rec = {"condition": cond, "method": mname, "overrides": over, "kind": kind,
                                       "name": f.stem, "distance": r.distance, "notes": r.notes,
                                       "shift": None if r.preprocessing is None else r.preprocessing.shift,
                                       "seconds_per_image": sec,
                                       "reference_gflops": info["reference_conv3x3_128ch_gflops"]}
                                rows = [rec]
                                if mname == "consistency":  # the plain row of the same projection, then its own
                                    rows = [{**rec, "method": "plain", "from_method": "consistency",
                                             "seconds_per_image": projected}]
                                    if c is not None:
                                        rows.append({**rec, "distance": c.distance, "consistency": c.to_dict()})
                                for row in rows:
                                    if (cond, row["method"], kind, f.stem) not in done:
                                        fh.write(json.dumps(row) + "\n")
                                        records.append(row)
                                        done.add((cond, row["method"], kind, f.stem))
                            fh.flush()
                            os.fsync(fh.fileno())
                        print(f"{cond} {mname} {kind} {b + len(batch)}/{len(todo)}: {sec:.1f} s/image",
                              file=sys.stderr)
    doc = {"benchmark": "robustness", "model": a.model, "threshold": threshold,
           "calibration_target_fpr": cal.get("target_fpr"), "calibration_fpr_ci": cal.get("fpr_ci"),
           "method_calibrations": method_cals,
           "steps": a.steps, "machine": info, "methods": {m: o for m, o in methods},
           "consistency": csettings.to_dict() if any(m == "consistency" for m, _ in methods) else None,
           "conditions": report(records, threshold, method_thresholds)}
    if a.plot:
        plot(doc, a.plot)
    if a.markdown:
        from stylegan.util.files import atomic_write_text

        atomic_write_text(a.markdown, markdown(doc))
    print(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
