"""One input's result under one network (:class:`ResultRecord`), its HDF5 form inside a batch file, and the
verdict for an input from its records under every network of a case."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detector.attribution import Threshold
from detector.attribution import verdict as one_verdict
from detector.results import ProjectionResult
from detector.scoring import CALIBRATION, DEFAULT_MARGIN, NONE, SELF, USER, Reference, decide

Key = Tuple[str, str]  # (input sha256, model file sha256)


@dataclass
class ResultRecord:
    """The outcome of one input under one model.

    ``error`` set: the input could not be used (then no distance). Otherwise distance, threshold, its source,
    the verdict, the preprocessed ``target`` [C, R, R] and the :class:`ProjectionResult`. ``notes``: what loading
    did to the image; ``preprocessing``: the same as a structured record (None in cases made before it was
    kept). ``batch_file`` is filled in when read back. ``current`` (read against the manifest): False when the
    recorded path now has other content.
    """

    input_sha256: str
    model_sha256: str
    path: str
    error: Optional[str] = None
    distance: Optional[float] = None
    threshold: Optional[float] = None
    threshold_source: Optional[str] = None
    verdict: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    result: Any = None  # detector.results.ProjectionResult
    target: Any = None  # torch.Tensor [C, R, R]
    batch_file: Optional[str] = None
    current: bool = True
    preprocessing: Optional[Dict[str, Any]] = None  # detector.processing.Preprocessing.to_dict()
    looks: Optional[List[Optional[float]]] = None  # second look: each run's distance (the closest is ``distance``)

    @property
    def key(self) -> Key:
        return (self.input_sha256, self.model_sha256)

    def to_dict(self) -> Dict[str, Any]:
        d = {"path": self.path, "sha256": self.input_sha256, "model_sha256": self.model_sha256,
             "error": self.error, "distance": self.distance, "threshold": self.threshold,
             "threshold_source": self.threshold_source, "verdict": self.verdict, "notes": list(self.notes),
             "batch_file": self.batch_file, "current": self.current}
        if self.looks is not None:
            d["looks"] = list(self.looks)
        if self.result is not None:
            d["steps_run"] = int(self.result.steps_run)
            d["seed"] = self.result.settings.get("seed")
        return d


def _write_record(root, rec: ResultRecord) -> None:
    g = root.require_group(rec.input_sha256).create_group(rec.model_sha256)
    g.attrs["path"] = rec.path
    g.attrs["notes"] = json.dumps(list(rec.notes))
    if rec.preprocessing is not None:
        g.attrs["preprocessing"] = json.dumps(rec.preprocessing)
    if rec.error is not None:
        g.attrs["error"] = rec.error
        return
    g.attrs["distance"] = float(rec.distance)
    g.attrs["threshold"] = float("nan") if rec.threshold is None else float(rec.threshold)  # NaN: none
    g.attrs["threshold_source"] = str(rec.threshold_source)
    g.attrs["verdict"] = str(rec.verdict)
    if rec.looks is not None:
        g.attrs["looks"] = json.dumps(list(rec.looks))
    rec.result.save_hdf5(g.create_group("projection"))
    g.create_dataset("target", data=np.asarray(rec.target.detach().cpu().numpy(), dtype=np.float32))


def _read_record(g, input_sha: str, model_sha: str, load: bool) -> ResultRecord:
    a = g.attrs
    rec = ResultRecord(input_sha256=input_sha, model_sha256=model_sha, path=str(a["path"]),
                       notes=json.loads(a.get("notes", "[]")),
                       preprocessing=json.loads(a["preprocessing"]) if "preprocessing" in a else None,
                       looks=json.loads(a["looks"]) if "looks" in a else None)
    if "error" in a:
        rec.error = str(a["error"])
        return rec
    rec.distance = float(a["distance"])
    rec.threshold = None if math.isnan(float(a["threshold"])) else float(a["threshold"])
    rec.threshold_source = str(a["threshold_source"])
    rec.verdict = str(a["verdict"])
    if load:
        rec.result = ProjectionResult.load_hdf5(g["projection"])
        rec.target = torch.from_numpy(np.array(g["target"]))
    return rec


_KINDS = {"calibration": CALIBRATION, "self": SELF, "user": USER}


def reference_of(record: ResultRecord, name: str, generated: Sequence[float] = ()) -> Reference:
    """The reference a record was judged against, from its threshold and source (a case made before uncalibrated
    networks stopped getting a default threshold recorded source 'default': no reference now) and the network's
    own generated distances (its calibration's, from the case manifest)."""
    kind = _KINDS.get(str(record.threshold_source))
    if kind is None or record.threshold is None:
        return Reference(name, NONE)
    return Reference(name, kind, float(record.threshold), tuple(generated or ()))


def attribute_records(records: Sequence[ResultRecord], model_names: Dict[str, str],
                      margin: float = DEFAULT_MARGIN,
                      own_generated: Optional[Dict[str, Sequence[float]]] = None) -> Dict[str, Any]:
    """The verdict for one input from its records under the case's networks (:func:`detector.scoring.decide`):
    each distance judged in units of its own network's median distance to its own images, attributed when the best
    is within its own threshold and the runner-up scores at least ``margin`` times higher, 'ambiguous' when
    closer.

    ``own_generated``: model sha256 -> the network's own generated distances (its calibration's); without them
    the networks are compared in units of their thresholds (:func:`detector.scoring.decide` says so).

    Returns ``{"verdict", "model_sha256" (or None), "model" (its name or None), "decision" (the decision's
    dict)}``. With one network the verdict is that network's own ('generated by this network', 'not
    attributed', 'consistent with this network's own images', 'no verdict' ...); an input whose every record is
    an error has verdict 'error'.
    """
    ok = [r for r in records if r.error is None and r.distance is not None]
    if not ok:
        return {"verdict": "error", "model_sha256": None, "model": None, "decision": None}
    name_of = {r.model_sha256: model_names.get(r.model_sha256, r.model_sha256[:12]) for r in ok}
    own = own_generated or {}
    d = decide({name_of[r.model_sha256]: r.distance for r in ok},
               {name_of[r.model_sha256]: reference_of(r, name_of[r.model_sha256], own.get(r.model_sha256, ()))
                for r in ok}, margin)
    sha = next((k for k, v in name_of.items() if v == d.network), None)
    verdict = d.verdict
    if len(model_names) <= 1:  # one network: its own phrasing ('generated by this network' ...)
        ref = reference_of(ok[0], d.best or "")
        verdict = one_verdict(ok[0].distance, None if ref.kind == NONE else Threshold(ref.threshold, ref.kind))
    return {"verdict": verdict, "model_sha256": sha, "model": d.network, "decision": d.to_dict()}
