"""A case folder: what was analysed, with what, and the results, written so that a crash never corrupts it.

Layout::

    CASE/
      manifest.json                 case id, dates, tool and library versions, projector settings, seed, the
                                    threshold override, the distance's provenance, the model(s) (path, file and
                                    weights sha256, threshold, calibration summary), every input (path, sha256,
                                    size, format), changed inputs, unreadable inputs, the runs
      results/batch-r<rank>-<n>.h5  one HDF5 file per completed batch (rank = torchrun rank, n = 1, 2, ...)
      quarantine/                   damaged batch files moved aside (their images are projected again)
      .lock                         who runs (or last ran) `detect batch` on the case

Crash safety (a kill -9 at any moment loses at most the batch in flight and never duplicates a result):

* A batch file is written under a temporary name in ``results/``, fsync'ed and ``os.replace``'d onto its final
  name, so it is complete or absent (HDF5 files are not crash-safe when modified in place, so nothing is ever
  appended to an existing file). Left-over temporary files (``.batch-*.tmp``) are ignored and removed by the
  next run of the same rank.
* The set of result files on disk is the truth. ``manifest.json`` (also replaced atomically) lists the batch
  files as bookkeeping only: a file written just before a crash that did not reach the manifest is adopted by
  the next run. Nothing depends on the manifest being current, so a crash between the two writes loses nothing.
* A result's key is (input sha256, model file sha256). Reading the case is the union of all batch files; a key
  found in several files (possible only when two processes ran the same case at once, or after a crash between
  a write and bookkeeping of an older layout) is taken from the first file in sorted file-name order and never
  counted twice.
* Damaged batch files (truncated by a partial copy, bit-rot: unreadable, not a batch file of this case, or not
  matching the sha256 the manifest recorded when the file was written) are skipped when the case is read and
  named in :meth:`CaseStore.damaged`; ``detect batch`` moves them to ``quarantine/`` (recorded in the
  manifest's ``quarantined``), so that their images are projected again and the case keeps working.
* One process at a time writes a case: ``detect batch`` holds an advisory lock on ``CASE/.lock``
  (:func:`stylegan.util.locking.exclusive_lock`), and a second one is refused with the holder's name.
* Inputs are identified by content. The same bytes under two paths are projected once; an input whose content
  changed since it was recorded (same path, new sha256) is reported by :meth:`CaseStore.check_inputs` and
  projected again as a new result under its new hash; the old result stays in the files and is marked stale
  (``current`` False) when read against the manifest.

Under torchrun every rank writes only its own batch files (the rank is in the name) and only rank 0 writes the
manifest; the case then reads as one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import h5py

from detector.settings import settings_identity
from stylegan.formats.base import one_line
from stylegan.util.files import _fsync_dir, atomic_write_text, remove_leftover_temporaries, sha256_file

from .inputs import InputFile
from .provenance import library_versions, now_iso, tool_info
from .records import Key, ResultRecord, _read_record, _write_record

CASE_FORMAT = "stylegan-forensics-case"
BATCH_FORMAT = "stylegan-forensics-case-batch"
CASE_VERSION = 1
MANIFEST = "manifest.json"
RESULTS = "results"
QUARANTINE = "quarantine"
LOCK = ".lock"
_BATCH_RE = re.compile(r"^batch-r(\d{3,})-(\d{6,})\.h5$")

# Settings that change speed, memory or placement but not results: a case may be resumed with other values.
NON_RESULT_SETTINGS = ("device", "chunk_size")
# Defaults that changed: (setting, its value in older cases, its value now, how such a case resumes)
CHANGED_DEFAULTS = (("lr", 0.1, None, "cases made before lr 0.2 became the default below 256 px resume with "
                                      "--method appd"),
                    ("second_look", None, True, "cases made before the second look became the default resume "
                                                "with --no-second-look"))


class CaseError(RuntimeError):
    """A case folder cannot be used as asked (missing, not a case, created with other settings ...)."""


# ----------------------------------------------------------------------------------------------------------------
# The store


def _comparable(settings: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in settings_identity(settings).items() if k not in NON_RESULT_SETTINGS}


class CaseStore:
    """A case folder (see the module docstring). ``CaseStore.create(...)`` or ``CaseStore.open(path)``."""

    def __init__(self, path, manifest: Optional[Dict[str, Any]] = None):
        self.path = Path(path)
        self.manifest: Dict[str, Any] = manifest if manifest is not None else {}

    # -- paths ---------------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def results_dir(self) -> Path:
        return self.path / RESULTS

    # -- creation / opening --------------------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, settings: Dict[str, Any], seed: int, models: Sequence[Dict[str, Any]],
               threshold: Optional[float] = None, distance: Optional[Dict[str, Any]] = None,
               write: bool = True) -> "CaseStore":
        """A new case folder (it may exist but must not hold a manifest). ``models``: one dict per network with
        at least ``path`` and ``file_sha256`` (see :func:`cases.batch.model_entry`)."""
        path = Path(path)
        if (path / MANIFEST).exists():
            raise CaseError(f"{path} is already a case (open it to resume)")
        if path.exists() and not path.is_dir():
            raise CaseError(f"{path} exists and is not a folder")
        shas = [m["file_sha256"] for m in models]
        if not models or len(set(shas)) != len(shas):
            raise CaseError("a case needs one or more distinct models")
        manifest = {
            "format": CASE_FORMAT,
            "version": CASE_VERSION,
            "case_id": uuid.uuid4().hex,
            "created": now_iso(),
            "updated": now_iso(),
            "tool": tool_info(),
            "libraries": library_versions(),
            "settings": dict(settings),
            "seed": int(seed),
            "image_seed_rule": "detector.check.image_seed(seed, input sha256)",
            "threshold_override": None if threshold is None else float(threshold),
            "distance": distance or {},
            "models": [dict(m) for m in models],
            "inputs": [],
            "changed": [],
            "unreadable": [],
            "batches": [],
            "runs": [],
        }
        store = cls(path, manifest)
        if write:
            store.results_dir.mkdir(parents=True, exist_ok=True)
            store.save_manifest()
        return store

    @classmethod
    def open(cls, path) -> "CaseStore":
        path = Path(path)
        mp = path / MANIFEST
        if not mp.is_file():
            raise CaseError(f"{path} is not a case folder (no {MANIFEST})")
        try:
            manifest = json.loads(mp.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CaseError(f"{mp}: cannot read the manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != CASE_FORMAT:
            raise CaseError(f"{mp} is not a {CASE_FORMAT} manifest")
        if manifest.get("version") != CASE_VERSION:
            raise CaseError(f"{mp}: unsupported case version {manifest.get('version')!r}")
        return cls(path, manifest)

    def check_compatible(self, *, settings: Dict[str, Any], seed: int, models: Sequence[Dict[str, Any]],
                         threshold: Optional[float] = None, distance: Optional[Dict[str, Any]] = None) -> None:
        """Raise :class:`CaseError` unless a resumed run would produce results comparable with the recorded ones
        (same settings except device/chunk size, seed, threshold override, model files and distance weights)."""
        m = self.manifest
        problems = []
        then, now = _comparable(m["settings"]), _comparable(json.loads(json.dumps(settings)))
        if then != now:
            diff = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
            hint = next((f" ({how})" for key, old, new, how in CHANGED_DEFAULTS
                         if diff == [key] and then.get(key) == old and now.get(key) == new), "")
            problems.append(f"projector settings differ ({', '.join(diff)}){hint}")
        if int(m["seed"]) != int(seed):
            problems.append(f"seed {seed} != {m['seed']}")
        old_th = m.get("threshold_override")
        if (old_th is None) != (threshold is None) or (old_th is not None and float(old_th) != float(threshold)):
            problems.append(f"threshold {threshold} != {old_th}")
        if [x["file_sha256"] for x in m["models"]] != [x["file_sha256"] for x in models]:
            same_weights = len(m["models"]) == len(models) and all(
                a.get("weights_sha256") and a.get("weights_sha256") == b.get("weights_sha256")
                for a, b in zip(m["models"], models))
            problems.append("the model files differ (by sha256, in order)" + (
                "; their weights are the same, so a calibration was probably stored in them since the case began "
                "and the thresholds of the recorded results would no longer hold" if same_weights else ""))
        if distance and m.get("distance"):
            a, b = m["distance"], distance
            if (a.get("net"), a.get("trunk_sha256"), a.get("linear_weights_sha256")) != \
                    (b.get("net"), b.get("trunk_sha256"), b.get("linear_weights_sha256")):
                problems.append("the LPIPS network or weights differ")
        if problems:
            raise CaseError(f"{self.path} was created with other parameters: {'; '.join(problems)} "
                            f"(use a new case folder)")

    def save_manifest(self) -> None:
        self.manifest["updated"] = now_iso()
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2, sort_keys=False) + "\n")

    # -- inputs --------------------------------------------------------------------------------------------
    def recorded_inputs(self) -> Dict[str, str]:
        """path -> sha256 as last recorded in the manifest."""
        return {e["path"]: e["sha256"] for e in self.manifest.get("inputs", []) if e.get("sha256")}

    def check_inputs(self, inputs: Iterable[InputFile]
                     ) -> Tuple[List[InputFile], List[InputFile], List[Tuple[InputFile, str]]]:
        """Sort hashed inputs into (new, done, changed). ``done``: every model has a result (or a recorded
        error) for its sha256. ``changed``: (input, old sha256) for a path recorded with other content; a changed
        input is not done (unless its new content was done under another path) and is also in ``new``.
        Unreadable inputs (``error``) are in none of the lists."""
        recorded = self.recorded_inputs()
        done_keys = self.done_keys()
        model_shas = [m["file_sha256"] for m in self.manifest["models"]]
        new, done, changed = [], [], []
        for inp in inputs:
            if inp.sha256 is None:
                continue
            old = recorded.get(inp.path)
            if old is not None and old != inp.sha256:
                changed.append((inp, old))
            if all((inp.sha256, ms) in done_keys for ms in model_shas):
                done.append(inp)
            else:
                new.append(inp)
        return new, done, changed

    def record_inputs(self, inputs: Sequence[InputFile], changed: Sequence[Tuple[InputFile, str]] = ()) -> None:
        """Merge hashed inputs into the manifest (by path; the newest hash wins) and log changes. Rank 0 only."""
        by_path = {e["path"]: e for e in self.manifest.get("inputs", [])}
        unreadable = {e["path"]: e for e in self.manifest.get("unreadable", [])}
        for inp in inputs:
            if inp.error is not None:
                unreadable[inp.path] = {"path": inp.path, "error": inp.error, "seen": now_iso()}
                continue
            unreadable.pop(inp.path, None)
            by_path[inp.path] = inp.to_dict()
        for inp, old in changed:
            self.manifest.setdefault("changed", []).append(
                {"path": inp.path, "old_sha256": old, "new_sha256": inp.sha256, "detected": now_iso()})
        self.manifest["inputs"] = [by_path[p] for p in sorted(by_path)]
        self.manifest["unreadable"] = [unreadable[p] for p in sorted(unreadable)]

    # -- results -------------------------------------------------------------------------------------------
    def all_batch_files(self) -> List[Path]:
        """Every file in ``results/`` named like a batch file, damaged or not, sorted by name."""
        if not self.results_dir.is_dir():
            return []
        return sorted(p for p in self.results_dir.iterdir() if _BATCH_RE.match(p.name))

    def batch_files(self) -> List[Path]:
        """Completed, readable batch files, sorted by name (the order that resolves duplicate keys); damaged
        ones are left out (see :meth:`damaged`)."""
        return [p for p in self.all_batch_files() if self._problem(p) is None]

    def damaged(self) -> Dict[str, str]:
        """Batch file name -> what is wrong with it, for every damaged batch file in ``results/``."""
        return {p.name: err for p in self.all_batch_files() if (err := self._problem(p)) is not None}

    def _problem(self, f: Path) -> Optional[str]:
        """None when ``f`` reads as a complete batch file of this case, else what is wrong (checked once per
        file: batch files never change once written)."""
        cache = self.__dict__.setdefault("_problems", {})
        if f.name not in cache:
            cache[f.name] = _batch_file_problem(f, self.manifest.get("case_id"),
                                                (self.manifest.get("batch_sha256") or {}).get(f.name))
        return cache[f.name]

    def done_keys(self) -> Set[Key]:
        """Every (input sha256, model sha256) with a result or a recorded error."""
        cache = self.__dict__.setdefault("_scanned", {})  # batch files never change once written
        keys: Set[Key] = set()
        for f in self.batch_files():
            if f.name not in cache:
                found = set()
                with h5py.File(f, "r") as h:
                    for isha, g in h.items():
                        for msha in g.keys():
                            found.add((isha, msha))
                cache[f.name] = found
            keys |= cache[f.name]
        return keys

    def quarantine_damaged(self) -> List[Dict[str, str]]:
        """Move damaged batch files to ``quarantine/`` and record them in the manifest (``quarantined``); their
        images then count as not done and are projected again. Returns what was moved. Call with the case's
        lock held (``detect batch`` does). A file without a recorded sha256 (cases made before they were kept) is
        read whole first, since only its structure was checked; it gets its sha256 once it reads."""
        hashes = self.manifest.get("batch_sha256") or {}
        for f in self.all_batch_files():
            if f.name not in hashes and self._problem(f) is None:
                self._read_whole(f, load=True)  # marks the file damaged when it does not read
        moved = []
        for name, err in self.damaged().items():
            qdir = self.path / QUARANTINE
            qdir.mkdir(parents=True, exist_ok=True)
            dest = qdir / name
            n = 1
            while dest.exists():
                n += 1
                dest = qdir / f"{name}.{n}"
            shutil.move(str(self.results_dir / name), str(dest))
            entry = {"file": f"{RESULTS}/{name}", "moved_to": f"{QUARANTINE}/{dest.name}", "error": err,
                     "moved": now_iso()}
            self.manifest.setdefault("quarantined", []).append(entry)
            if name in self.manifest.get("batches", []):
                self.manifest["batches"].remove(name)
            (self.manifest.get("batch_sha256") or {}).pop(name, None)
            self.__dict__.get("_problems", {}).pop(name, None)
            self.__dict__.get("_scanned", {}).pop(name, None)
            moved.append(entry)
        if moved:
            _fsync_dir(self.results_dir)
        return moved

    def clean_temporary(self, rank: int) -> None:
        """Remove temporary files a killed run of this rank left behind."""
        remove_leftover_temporaries(self.results_dir, f".batch-r{rank:03d}-*.tmp")

    def _next_batch_name(self, rank: int) -> Path:
        n = 0
        for p in self.batch_files():
            m = _BATCH_RE.match(p.name)
            if int(m.group(1)) == rank:
                n = max(n, int(m.group(2)))
        return self.results_dir / f"batch-r{rank:03d}-{n + 1:06d}.h5"

    def write_batch(self, records: Sequence[ResultRecord], rank: int = 0) -> Optional[Path]:
        """Write one batch of records as a new result file, atomically; returns its path (None if empty).
        Keys already in the case are dropped (never duplicated)."""
        done = self.done_keys()
        seen: Set[Key] = set()
        todo = []
        for r in records:
            if r.key in done or r.key in seen:
                continue
            seen.add(r.key)
            todo.append(r)
        if not todo:
            return None
        self.results_dir.mkdir(parents=True, exist_ok=True)
        dest = self._next_batch_name(rank)
        fd, tmp = tempfile.mkstemp(dir=self.results_dir, prefix=f".batch-r{rank:03d}-", suffix=".tmp")
        os.close(fd)
        try:
            with h5py.File(tmp, "w") as h:
                h.attrs["format"] = BATCH_FORMAT
                h.attrs["version"] = CASE_VERSION
                h.attrs["case_id"] = str(self.manifest.get("case_id", ""))
                h.attrs["rank"] = int(rank)
                h.attrs["written"] = now_iso()
                for r in todo:
                    _write_record(h, r)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(self.results_dir)
        return dest

    def note_batch(self, path: Path) -> None:
        """Bookkeeping: list a written batch file and its sha256 in the manifest (rank 0; the hash lets later
        runs tell a damaged file from a good one)."""
        names = self.manifest.setdefault("batches", [])
        if path.name not in names:
            names.append(path.name)
        hashes = self.manifest.setdefault("batch_sha256", {})
        if path.name not in hashes:
            hashes[path.name] = sha256_file(path)

    def sync_batches(self) -> List[str]:
        """Adopt readable batch files on disk that the manifest does not list yet (after a crash, or other
        ranks), and record the sha256 of every readable one that has none (cases made before hashes were
        recorded); returns the adopted names."""
        names = self.manifest.setdefault("batches", [])
        new = [p.name for p in self.batch_files() if p.name not in names]
        for p in self.batch_files():
            self.note_batch(p)
        names.sort()
        return new

    def _read_whole(self, f: Path, load: bool, skip: Set[Key] = frozenset()) -> Optional[List[ResultRecord]]:
        """Every record of batch file ``f`` (keys in ``skip`` left out), or None when the file does not read
        whole; it is then marked damaged (damage the structural check cannot see where no sha256 was kept)."""
        try:
            with h5py.File(f, "r") as h:
                return [_read_record(h[isha][msha], isha, msha, load)
                        for isha in sorted(h.keys()) for msha in sorted(h[isha].keys()) if (isha, msha) not in skip]
        except Exception as exc:  # noqa: BLE001 - whatever the damage, the file is set aside
            self.__dict__.setdefault("_problems", {})[f.name] = f"unreadable ({one_line(exc, 160)})"
            self.__dict__.get("_scanned", {}).pop(f.name, None)
            return None

    def results(self, load: bool = True, include_stale: bool = True) -> Iterator[ResultRecord]:
        """Every record of the case, once per key (first file in sorted order wins), with ``current`` set from
        the manifest's inputs. ``load=False`` skips the arrays (fast summaries)."""
        recorded = self.recorded_inputs()
        current_shas = set(recorded.values())
        seen: Set[Key] = set()
        for f in self.batch_files():
            recs = self._read_whole(f, load, skip=seen)  # whole before given out: a damaged file gives none
            for rec in recs or ():
                seen.add(rec.key)
                rec.batch_file = f.name
                rec.current = rec.input_sha256 in current_shas or not recorded
                if rec.current or include_stale:
                    yield rec


def _batch_file_problem(f: Path, case_id: Optional[str], sha256: Optional[str]) -> Optional[str]:
    """What is wrong with a batch file (None: nothing): its hash differs from the recorded one, it cannot be read
    (truncated, not HDF5), it is not a batch file of case ``case_id``, or a record in it is incomplete."""
    try:
        if sha256 and sha256_file(f) != sha256:
            return "its sha256 differs from the one recorded when it was written"
        with h5py.File(f, "r") as h:
            if h.attrs.get("format") != BATCH_FORMAT:
                return "not a case batch file"
            if case_id and str(h.attrs.get("case_id", "")) != str(case_id):
                return "written for another case"
            for isha, g in h.items():
                for msha, r in g.items():
                    a = r.attrs
                    complete = "path" in a and ("error" in a or (
                        "distance" in a and "projection" in r and "target" in r))
                    if not complete:
                        return f"the record {isha[:12]}/{msha[:12]} is incomplete"
    except Exception as exc:  # noqa: BLE001 - h5py raises many kinds on damaged files
        return f"unreadable ({one_line(exc, 160)})"
    return None
