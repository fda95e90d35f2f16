"""Keeping a calibration record with its model, and finding it again: inside our ``.pt`` (rewritten with the
record, weights unchanged) or in a sidecar JSON ``<model>.calibration.json`` beside a foreign model file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

from stylegan.formats import detect_format, load_model, read_network_file
from stylegan.formats.base import check_plain
from stylegan.formats.ours import validate_network_dict
from stylegan.util.files import atomic_torch_save, atomic_write_text, sha256_file

from .calibration import RECORD_FORMAT, RECORD_VERSION, CalibrationError, CalibrationRecord

SIDECAR_SUFFIX = ".calibration.json"


def sidecar_path(model_path: Union[str, Path]) -> Path:
    """``<model file name>.calibration.json`` beside the model file."""
    p = Path(model_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def _record_dict(record: Union[CalibrationRecord, Dict[str, Any]]) -> Dict[str, Any]:
    if isinstance(record, CalibrationRecord):
        return record.to_dict()
    return CalibrationRecord.from_dict(record).to_dict()


def store_calibration(record: Union[CalibrationRecord, Dict[str, Any]], model_path: Union[str, Path],
                      out: Optional[Union[str, Path]] = None) -> Path:
    """Keep a calibration with its model; returns the path written.

    * Our ``.pt``: the file is rewritten (atomically; to ``out`` if given) with the record as its
      ``calibration`` entry. Everything else — weights, metadata (``created``, ``weights_sha256`` ...), training
      state — is kept as it was, so the weights hash is unchanged while the file's sha256 changes (the record
      keeps the pre-calibration file hash in ``hashes.model_file_sha256``). A record made on other weights is
      refused.
    * NVIDIA pickles and rosinality checkpoints: a sidecar JSON ``<model>.calibration.json`` (or ``out``) holding
      the record and the model file's sha256, which :func:`load_calibration` checks.
    """
    model_path = Path(model_path)
    rec = _record_dict(record)
    fmt = detect_format(model_path)
    if fmt == "ours":
        obj = read_network_file(model_path)
        weights = obj["metadata"]["weights_sha256"]
        rec_weights = rec.get("hashes", {}).get("weights_sha256")
        if rec_weights is not None and rec_weights != weights:
            raise CalibrationError(f"{model_path}: the calibration was made on other weights (weights sha256 "
                                   f"{str(rec_weights)[:16]}..., the file's {weights[:16]}...)")
        check_plain(rec, "calibration")
        obj["calibration"] = rec
        validate_network_dict(obj, str(model_path))
        return atomic_torch_save(obj, Path(out) if out is not None else model_path)
    sha = sha256_file(model_path)
    measured = rec.get("hashes", {}).get("model_file_sha256")
    if measured is not None and measured != sha:  # the sidecar must bind the record to the bytes it measured
        raise CalibrationError(f"{model_path}: the calibration was made on another file (sha256 {measured[:16]}..., "
                               f"the file's {sha[:16]}...)")
    doc = {"format": RECORD_FORMAT + "-sidecar", "format_version": RECORD_VERSION,
           "model_file": model_path.name, "model_file_sha256": sha, "model_format": fmt, "record": rec}
    dest = Path(out) if out is not None else sidecar_path(model_path)
    return atomic_write_text(dest, json.dumps(doc, indent=2) + "\n")


def load_calibration(model_path: Union[str, Path], loaded_model: Any = None,
                     sidecar: Optional[Union[str, Path]] = None) -> Optional[Dict[str, Any]]:
    """The calibration record (a dict, as :func:`detector.attribution.threshold_for` takes it) of a model file,
    or None.

    First the record inside our ``.pt`` (``loaded_model.calibration``), used only when it was made on the same
    weights; then the sidecar (``sidecar`` or ``<model>.calibration.json``), used only when the sha256 it
    records is that of the model file. A record that does not fit is ignored with a warning, never used.
    ``loaded_model``: the :class:`stylegan.formats.LoadedModel` already loaded (else the file is loaded).
    """
    model_path = Path(model_path)
    if loaded_model is None:
        loaded_model = load_model(model_path)
    weights = loaded_model.metadata.get("weights_sha256")
    emb = loaded_model.calibration
    if emb:
        try:
            rec = CalibrationRecord.from_dict(emb).to_dict()
        except CalibrationError as exc:
            _warn(f"{model_path}: ignoring its embedded calibration: {exc}")
        else:
            rec_weights = rec.get("hashes", {}).get("weights_sha256")
            if rec_weights is None or rec_weights == weights:
                return rec
            _warn(f"{model_path}: ignoring its embedded calibration, made on other weights")
    side = Path(sidecar) if sidecar is not None else sidecar_path(model_path)
    if not side.exists():
        return None
    try:
        doc = json.loads(side.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT + "-sidecar":
            raise CalibrationError("not a calibration sidecar file")
        rec = CalibrationRecord.from_dict(doc.get("record")).to_dict()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, CalibrationError) as exc:
        _warn(f"{side}: ignoring the calibration file: {' '.join(str(exc).split())}")
        return None
    if doc.get("model_file_sha256") != loaded_model.file_sha256:
        _warn(f"{side}: ignoring the calibration file: it belongs to another file (sha256 "
              f"{str(doc.get('model_file_sha256'))[:16]}..., {model_path.name} has "
              f"{loaded_model.file_sha256[:16]}...)")
        return None
    return rec


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)
