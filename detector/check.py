"""`detect check` as a library function: read suspect images, project them (App. D), give verdicts.

Pipeline: file -> :func:`detector.images.load_image` (validation, RGB, centre crop, resize; every step noted) ->
:class:`detector.projector.Projector` (all good images in one batch; per-image results independent) ->
:func:`detector.attribution.verdict`. Bad files are reported and the rest processed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from stylegan.util.files import atomic_write_text

from .attribution import Threshold, threshold_for, verdict
from .images import ImageInputError, LoadedImage, load_image, save_image
from .projector import Projector
from .results import ProjectionResult
from .settings import ProjectorSettings


@dataclass
class CheckRecord:
    """One input's outcome: either an error (bad input) or a distance and verdict."""

    path: str
    error: Optional[str] = None
    sha256: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    distance: Optional[float] = None
    threshold: Optional[float] = None
    threshold_source: Optional[str] = None
    verdict: Optional[str] = None
    steps_run: Optional[int] = None
    result: Optional[ProjectionResult] = None
    target: Optional[torch.Tensor] = None

    def to_dict(self) -> Dict[str, Any]:
        d = {
            "path": self.path,
            "sha256": self.sha256,
            "notes": self.notes,
            "distance": self.distance,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "verdict": self.verdict,
            "steps_run": self.steps_run,
        }
        if self.error is not None:
            d = {"path": self.path, "error": self.error}
        elif self.result is not None:
            d["projection"] = self.result.to_dict()
        return d


def load_targets(paths: Sequence[Path], resolution: int, channels: int) -> tuple:
    """(records for every path, loaded images for the good ones, index of each good image's record)."""
    records: List[CheckRecord] = []
    loaded: List[LoadedImage] = []
    index: List[int] = []
    for p in paths:
        try:
            img = load_image(p, resolution, channels)
        except ImageInputError as exc:
            records.append(CheckRecord(path=str(p), error=str(exc)))
            continue
        records.append(CheckRecord(path=str(p), sha256=img.sha256, notes=list(img.notes)))
        loaded.append(img)
        index.append(len(records) - 1)
    return records, loaded, index


def image_seed(seed: int, sha256: str) -> int:
    """The projection seed of one image: from the run's seed and the file's hash, so that an image gets the same
    result whatever else is checked with it and in whatever order."""
    return (seed * 1_000_003 + int(sha256[:8], 16)) % 2**32


def effective_settings(settings: Optional[ProjectorSettings], threshold: Threshold,
                       early_stop: bool) -> ProjectorSettings:
    """The projector settings a check runs with: ``settings`` (default App. D), with the early-stopping band at
    the decision threshold when ``early_stop``."""
    settings = settings or ProjectorSettings()
    if early_stop:
        settings = dataclasses.replace(settings, early_stop=(threshold.value, threshold.value))
    return settings


def check_images(G: torch.nn.Module, paths: Sequence[Path], distance: Callable, *,
                 settings: Optional[ProjectorSettings] = None, calibration: Optional[dict] = None,
                 threshold: Optional[float] = None, seed: int = 0, early_stop: bool = False,
                 progress: Optional[Callable[[int, int, np.ndarray], None]] = None) -> List[CheckRecord]:
    """Project every readable image in one batch and attach a verdict. Bad inputs become records with ``error``.

    ``early_stop``: freeze an image once its verdict is settled, with the band of undecided distances at the
    decision threshold (:class:`detector.settings.ProjectorSettings` ``early_stop``, margin and patience as
    set there); it changes how long an image runs, never which side of the threshold it ends on."""
    th: Threshold = threshold_for(calibration, threshold)
    settings = effective_settings(settings, th, early_stop)
    records, loaded, index = load_targets(paths, G.img_resolution, G.img_channels)
    if not loaded:
        return records
    device = G.mapping.w_avg.device
    targets = torch.cat([img.tensor for img in loaded]).to(device)
    projector = Projector(G, distance, settings)
    results = projector.project(targets, seeds=[image_seed(seed, img.sha256) for img in loaded], progress=progress)
    for j, (k, res) in enumerate(zip(index, results)):
        rec = records[k]
        rec.result = res
        rec.target = targets[j].detach().cpu()
        rec.distance = float(res.distance)
        rec.threshold = th.value
        rec.threshold_source = th.source
        rec.verdict = verdict(rec.distance, th.value)
        rec.steps_run = res.steps_run
    return records


def difference_image(target: torch.Tensor, resynth: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """|target - re-synthesis| amplified by ``gain``, mapped to [-1, 1] (black = identical)."""
    diff = (target - resynth.clamp(-1, 1)).abs().mul(gain / 2).clamp(0, 1)
    return diff * 2 - 1


def save_check_outputs(record: CheckRecord, out_dir: Path) -> Dict[str, str]:
    """Write ``<stem>.resynth.png``, ``<stem>.diff.png`` and ``<stem>.json`` for one checked image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(record.path).stem
    files: Dict[str, str] = {}
    if record.result is not None:
        files["resynthesis"] = str(save_image(record.result.image.clamp(-1, 1), out_dir / f"{stem}.resynth.png"))
        files["difference"] = str(save_image(difference_image(record.target, record.result.image),
                                             out_dir / f"{stem}.diff.png"))
    doc = {**record.to_dict(), "files": files}
    files["record"] = str(atomic_write_text(out_dir / f"{stem}.json", json.dumps(doc, indent=2) + "\n"))
    return files
