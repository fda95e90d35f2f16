"""`detect report`: a case as a JSON document and a self-contained HTML page (:mod:`cases.report_html`).

:func:`write_report` reads a case folder (:class:`cases.store.CaseStore`) and writes ``report.html`` and
``report.json`` (default folder: ``CASE/report``).

What it shows (StyleGAN2 §5): the counts per verdict and each network's threshold with its source; the case's
LPIPS distances drawn over the calibration's generated and real distance histograms when the network has a
calibration record (Fig. 9); per image the target, the re-synthesis, the amplified difference
(:func:`detector.check.difference_image`, Fig. 10) and the two largest optimised noise maps, min-max
normalised to grey (Fig. 18), with the distance and verdict under every network; and the provenance.

JSON schema (version 1; :data:`REPORT_SCHEMA`, checked by :func:`validate_report`). ``X|None`` may be null::

    format      "stylegan-forensics-report"        version  1        generated  ISO time (str)
    case        {case_id: str, path: str, created: str}
    summary     {inputs: int            paths recorded in the manifest (readable ones)
                 distinct: int          distinct contents among them
                 processed: int         distinct contents with a result under every network
                 pending: int           distinct contents still without a result
                 errors: int            distinct contents that could not be used
                 unreadable: int        paths that could not be read at all
                 changed: int           changes of content detected (manifest ``changed``)
                 stale_results: int     results of content that no recorded path has any more
                 verdicts: {verdict (str): count (int)}   over processed + errors
                 margin: float          the margin between networks the verdicts are made at (`batch --margin`)
                 second_look: bool      claimed images were projected again from another start (`--second-look`)
                 models: [{name: str, path: str, file_sha256: str, weights_sha256: str|None,
                           threshold: float|None, threshold_source: str ('calibration'|'self'|'user'|'none'),
                           target_fpr: float|None, calibrated: bool, auc: float|None,
                           achieved_fpr: float|None, own_median: float|None   median distance of the
                           network's own generated images in its calibration (the rule's unit)}]}
    histogram   {bins: [float], models: [{name: str, case: [int], generated: [int]|None, real: [int]|None}]}
                counts per bin (len(bins) - 1 each); generated/real from the calibration record
    evaluation  None, or (``detect report --truth``) :func:`cases.metrics.case_metrics` of the case against the
                known sources of its inputs: truth, per_network, cross_network, confusion {labels, matrix,
                total, accuracy}, ambiguous, margin_sweep, ...
    images      [{paths: [str], sha256: str, verdict: str, attributed_to: str|None, runner_up: str|None,
                  margin: float|None   runner-up's score over the best's (detector.scoring.decide)
                  distances: {model name: float|None},
                  per_model: [{model: str, model_sha256: str, distance: float|None, threshold: float|None,
                               threshold_source: str|None, verdict: str|None, steps_run: int|None,
                               seed: int|None, error: str|None, batch_file: str,
                               looks: [float|None]|None   with a second look, each run's distance}],
                  notes: [str],
                  preprocessing: dict|None   what was done to the image (detector.processing.Preprocessing;
                                             None in cases made before it was recorded)
                  weaknesses: [str]          what of it the calibration's images did not go through
                  error: str|None}]
    errors      [{path: str, sha256: str|None, error: str}]           (bad and unreadable inputs)
    changed     [{path: str, old_sha256: str, new_sha256: str, detected: str}]
    provenance  {tool: dict, libraries: dict, settings: dict, seed: int, image_seed_rule: str,
                 threshold_override: float|None, distance: dict, models: [dict], batches: [str],
                 damaged_batches: [{file: str, error: str}]   skipped now: their images count as pending
                 quarantined: [dict]    damaged batch files `detect batch` moved aside (manifest ``quarantined``)
                 runs: [dict], case_created: str, case_updated: str}
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from detector.attribution import threshold_for
from detector.processing import Preprocessing, weaknesses
from detector.scoring import DEFAULT_MARGIN
from stylegan.util.files import atomic_write_text

from .provenance import now_iso
from .records import ResultRecord, attribute_records
from .report_html import render_html
from .store import CaseStore

REPORT_FORMAT = "stylegan-forensics-report"
REPORT_VERSION = 1

_S, _I, _F, _B, _L, _D = str, int, float, bool, list, dict
_N = type(None)

MODEL_SCHEMA = {"name": _S, "path": _S, "file_sha256": _S, "weights_sha256": (_S, _N), "threshold": (_F, _N),
                "threshold_source": _S, "target_fpr": (_F, _N), "calibrated": _B, "auc": (_F, _N),
                "achieved_fpr": (_F, _N), "own_median": (_F, _N)}
PER_MODEL_SCHEMA = {"model": _S, "model_sha256": _S, "distance": (_F, _N), "threshold": (_F, _N),
                    "threshold_source": (_S, _N), "verdict": (_S, _N), "steps_run": (_I, _N), "seed": (_I, _N),
                    "error": (_S, _N), "batch_file": _S, "looks": ([(_F, _N)], _N)}
IMAGE_SCHEMA = {"paths": [_S], "sha256": _S, "verdict": _S, "attributed_to": (_S, _N), "runner_up": (_S, _N),
                "margin": (_F, _N), "distances": _D,
                "per_model": [PER_MODEL_SCHEMA], "notes": [_S], "preprocessing": (_D, _N), "weaknesses": [_S],
                "error": (_S, _N)}
REPORT_SCHEMA = {
    "format": _S, "version": _I, "generated": _S,
    "case": {"case_id": _S, "path": _S, "created": _S},
    "summary": {"inputs": _I, "distinct": _I, "processed": _I, "pending": _I, "errors": _I, "unreadable": _I,
                "changed": _I, "stale_results": _I, "verdicts": _D, "margin": _F, "second_look": _B,
                "models": [MODEL_SCHEMA]},
    "histogram": {"bins": [_F], "models": [{"name": _S, "case": [_I], "generated": ([_I], _N),
                                             "real": ([_I], _N)}]},
    "evaluation": (_D, _N),
    "images": [IMAGE_SCHEMA],
    "errors": [{"path": _S, "sha256": (_S, _N), "error": _S}],
    "changed": [{"path": _S, "old_sha256": _S, "new_sha256": _S, "detected": _S}],
    "provenance": {"tool": _D, "libraries": _D, "settings": _D, "seed": _I, "image_seed_rule": _S,
                   "threshold_override": (_F, _N), "distance": _D, "models": [_D], "batches": [_S],
                   "damaged_batches": [{"file": _S, "error": _S}], "quarantined": [_D], "runs": [_D],
                   "case_created": _S, "case_updated": _S},
}


def _check(value: Any, schema: Any, where: str) -> None:
    if isinstance(schema, tuple):  # alternatives
        errors = []
        for alt in schema:
            try:
                _check(value, alt, where)
                return
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"{where}: matches none of the allowed types ({'; '.join(errors)})")
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        missing = sorted(set(schema) - set(value))
        extra = sorted(set(value) - set(schema))
        if missing or extra:
            raise ValueError(f"{where}: missing keys {missing}, unexpected keys {extra}")
        for k, sub in schema.items():
            _check(value[k], sub, f"{where}.{k}")
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        for i, v in enumerate(value):
            _check(v, schema[0], f"{where}[{i}]")
        return
    if schema is _F:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif schema is _I:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, schema)
    if not ok:
        raise ValueError(f"{where}: expected {schema.__name__}, got {type(value).__name__}")


def validate_report(doc: Dict[str, Any]) -> None:
    """Raise ValueError naming the first place where ``doc`` departs from :data:`REPORT_SCHEMA`."""
    _check(doc, REPORT_SCHEMA, "report")
    if doc["format"] != REPORT_FORMAT or doc["version"] != REPORT_VERSION:
        raise ValueError("report: wrong format or version")
    for i, img in enumerate(doc["images"]):
        for k, v in img["distances"].items():
            _check(v, (_F, _N), f"report.images[{i}].distances.{k}")
    for k, v in doc["summary"]["verdicts"].items():
        _check(v, _I, f"report.summary.verdicts.{k}")


# ----------------------------------------------------------------------------------------------------------------
# Building the document


def _model_summary(entry: Dict[str, Any], override: Optional[float]) -> Dict[str, Any]:
    cal = entry.get("calibration")
    th = threshold_for(cal, override)
    cal = cal or {}
    return {"name": entry["name"], "path": entry["path"], "file_sha256": entry["file_sha256"],
            "weights_sha256": entry.get("weights_sha256"), "threshold": None if th is None else float(th.value),
            "threshold_source": "none" if th is None else th.source,
            "target_fpr": None if th is None else th.target_fpr, "calibrated": bool(entry.get("calibration")),
            "auc": cal.get("auc"), "achieved_fpr": cal.get("achieved_fpr"),
            "own_median": float(np.median(gen)) if (gen := cal.get("generated_distances")) else None}


def _histogram(models: List[Dict[str, Any]], by_model: Dict[str, List[float]]) -> Dict[str, Any]:
    values = [d for m in models for d in by_model.get(m["file_sha256"], [])]
    for m in models:
        cal = m.get("calibration") or {}
        values += (cal.get("generated_distances") or []) + (cal.get("real_distances") or [])
    hi = max(values) if values else 1.0
    bins = np.linspace(0.0, max(hi * 1.05, 1e-3), 31)
    out = {"bins": [float(b) for b in bins], "models": []}
    for m in models:
        cal = m.get("calibration") or {}

        def counts(v):
            return None if v is None else [int(c) for c in np.histogram(np.asarray(v, float), bins)[0]]

        out["models"].append({"name": m["name"], "case": counts(by_model.get(m["file_sha256"], [])),
                              "generated": counts(cal.get("generated_distances")),
                              "real": counts(cal.get("real_distances"))})
    return out


def case_margin(settings: Dict[str, Any]) -> float:
    """The margin a case's verdicts are made at: the one ``detect batch --margin`` recorded, else the default."""
    return float(settings.get("margin", DEFAULT_MARGIN))


def build_report(store: CaseStore) -> Tuple[Dict[str, Any], Dict[str, List[ResultRecord]]]:
    """(the JSON document, records with arrays per current input sha256) of a case."""
    m = store.manifest
    models = m["models"]
    names = {e["file_sha256"]: e["name"] for e in models}
    model_shas = [e["file_sha256"] for e in models]
    own_generated = {e["file_sha256"]: (e.get("calibration") or {}).get("generated_distances") or () for e in models}
    override = m.get("threshold_override")
    margin = case_margin(m.get("settings", {}))
    paths_of: Dict[str, List[str]] = defaultdict(list)
    for e in m.get("inputs", []):
        if e.get("sha256"):
            paths_of[e["sha256"]].append(e["path"])

    per_input: Dict[str, List[ResultRecord]] = defaultdict(list)
    stale = 0
    for rec in store.results(load=True):
        if not rec.current:
            stale += 1
            continue
        per_input[rec.input_sha256].append(rec)

    images = []
    verdicts: Counter = Counter()
    by_model: Dict[str, List[float]] = defaultdict(list)
    processed = errors = 0
    for sha in sorted(paths_of, key=lambda s: sorted(paths_of[s])[0]):
        recs = sorted(per_input.get(sha, []), key=lambda r: model_shas.index(r.model_sha256)
                      if r.model_sha256 in model_shas else len(model_shas))
        if {r.model_sha256 for r in recs} < set(model_shas) and not any(r.error for r in recs):
            continue  # pending
        att = attribute_records(recs, names, margin, own_generated=own_generated)
        err = next((r.error for r in recs if r.error), None) if all(r.error for r in recs) else None
        if err:
            errors += 1
        else:
            processed += 1
        verdicts[att["verdict"]] += 1
        per_model = []
        for r in recs:
            if r.distance is not None:
                by_model[r.model_sha256].append(r.distance)
            per_model.append({
                "model": names.get(r.model_sha256, r.model_sha256[:12]), "model_sha256": r.model_sha256,
                "distance": r.distance, "threshold": r.threshold, "threshold_source": r.threshold_source,
                "verdict": r.verdict, "steps_run": None if r.result is None else int(r.result.steps_run),
                "seed": None if r.result is None else r.result.settings.get("seed"), "error": r.error,
                "batch_file": r.batch_file or "", "looks": r.looks})
        notes = recs[0].notes if recs else []
        pre = next((r.preprocessing for r in recs if r.preprocessing), None)
        dec = att["decision"] or {}
        images.append({"paths": sorted(paths_of[sha]), "sha256": sha, "verdict": att["verdict"],
                       "attributed_to": att["model"], "runner_up": dec.get("runner_up"), "margin": dec.get("margin"),
                       "distances": {p["model"]: p["distance"] for p in per_model},
                       "per_model": per_model, "notes": list(notes), "preprocessing": pre,
                       "weaknesses": weaknesses(Preprocessing.from_dict(pre)) if pre else [], "error": err})
    distinct = len(paths_of)
    err_list = [{"path": p, "sha256": img["sha256"], "error": img["error"]}
                for img in images if img["error"] for p in img["paths"]]
    err_list += [{"path": u["path"], "sha256": None, "error": u["error"]} for u in m.get("unreadable", [])]
    doc = {
        "format": REPORT_FORMAT, "version": REPORT_VERSION, "generated": now_iso(),
        "case": {"case_id": m["case_id"], "path": str(store.path), "created": m["created"]},
        "summary": {"inputs": sum(len(v) for v in paths_of.values()), "distinct": distinct,
                    "processed": processed, "pending": distinct - processed - errors, "errors": errors,
                    "unreadable": len(m.get("unreadable", [])), "changed": len(m.get("changed", [])),
                    "stale_results": stale, "verdicts": dict(sorted(verdicts.items())), "margin": margin,
                    "second_look": bool(m.get("settings", {}).get("second_look", False)),
                    "models": [_model_summary(e, override) for e in models]},
        "histogram": _histogram(models, by_model),
        "evaluation": None,
        "images": images,
        "errors": err_list,
        "changed": list(m.get("changed", [])),
        "provenance": {"tool": m.get("tool", {}), "libraries": m.get("libraries", {}),
                       "settings": m.get("settings", {}), "seed": int(m["seed"]),
                       "image_seed_rule": m.get("image_seed_rule", ""), "threshold_override": override,
                       "distance": m.get("distance", {}), "models": models,
                       "batches": [p.name for p in store.batch_files()],
                       "damaged_batches": [{"file": f"results/{k}", "error": v} for k, v in store.damaged().items()],
                       "quarantined": list(m.get("quarantined", [])), "runs": m.get("runs", []),
                       "case_created": m["created"], "case_updated": m.get("updated", m["created"])},
    }
    records = {img["sha256"]: per_input.get(img["sha256"], []) for img in images}
    return doc, records


def write_report(case_dir, out_dir=None, truth: Optional[Dict[str, str]] = None) -> Tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` for a case (default folder ``CASE/report``); returns their
    paths. Both are written atomically; the JSON is validated against :data:`REPORT_SCHEMA` first. ``truth``
    (``{FOLDER: network name or 'none'}``, as ``detect score --truth``) adds ``evaluation``: the case's
    figures against the known sources (:func:`cases.metrics.case_metrics`: confusion table under the
    calibrated rule, per-network rates), shown in the report's opening with the scatter of distances."""
    store = CaseStore.open(case_dir)
    doc, records = build_report(store)
    if truth:
        from .metrics import case_metrics

        doc["evaluation"] = json.loads(json.dumps(case_metrics(doc, dict(truth))))
    validate_report(doc)
    out = Path(out_dir) if out_dir is not None else store.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_text(out / "report.json", json.dumps(doc, indent=2) + "\n")
    html_path = atomic_write_text(out / "report.html", render_html(doc, records))
    return html_path, json_path


__all__ = ["write_report", "build_report", "render_html", "validate_report", "REPORT_SCHEMA", "REPORT_FORMAT"]
