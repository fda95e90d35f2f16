"""The projection of one image (:class:`ProjectionResult`) and its HDF5 / JSON forms."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

TRACE_DTYPE = np.dtype([("step", "<i4"), ("loss", "<f8"), ("distance", "<f8"), ("reg", "<f8"), ("lr", "<f8")])


@dataclass(frozen=True, eq=False)
class ProjectionResult:
    """The projection of one image.

    w               [num_ws, w_dim] float32 cpu: the optimised w (W mode: one w broadcast to all layers)
    noise           the optimised noise maps, each [1, res, res] float32 cpu, in ``noise_layers()`` order
    distance        the distance between the target and ``image`` (clean w, optimised noise)
    loss_trace      structured array with fields step, loss, distance, reg (the noise regulariser, before
                    alpha), lr; one row per recorded step (``trace_every``); distance and loss at the noisy w~
    image           [C, R, R] float32 cpu: the re-synthesis g(w, noise), clamped to [-1, 1] when
                    ``clamp_output`` is set, else with the generator's own overshoot: ``distance`` was computed on
                    exactly this tensor
    steps_run       optimisation steps this image ran
    stopped_at_step None, or the step count at which early stopping froze the image (== steps_run)
    settings        the ProjectorSettings as a dict, plus seed, w_std, effective_alpha (the regulariser weight
                    used, :meth:`ProjectorSettings.effective_alpha`) and the distance's name
    clean_trace     ((step, clean distance), ...) at the early-stopping checkpoints, when early stopping or
                    ``clean_checkpoints`` is on; else empty
    """

    w: torch.Tensor
    noise: Tuple[torch.Tensor, ...]
    distance: float
    loss_trace: np.ndarray
    image: torch.Tensor
    steps_run: int
    stopped_at_step: Optional[int] = None
    settings: Dict[str, Any] = field(default_factory=dict)
    clean_trace: Tuple[Tuple[int, float], ...] = ()

    def synthesis_inputs(self, device: Union[str, torch.device, None] = None
                         ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(ws [1, num_ws, w_dim], noise list of [1, 1, res, res]) for ``G.synthesis(ws, noise=noise)``."""
        return self.w[None].to(device), [n[None].to(device) for n in self.noise]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able summary (no big arrays)."""
        last = self.loss_trace[-1] if len(self.loss_trace) else None
        return {
            "distance": float(self.distance),
            "steps_run": int(self.steps_run),
            "stopped_at_step": None if self.stopped_at_step is None else int(self.stopped_at_step),
            "num_ws": int(self.w.shape[0]),
            "w_dim": int(self.w.shape[1]),
            "noise_resolutions": [int(n.shape[-1]) for n in self.noise],
            "image_shape": [int(s) for s in self.image.shape],
            "final_loss": None if last is None else float(last["loss"]),
            "final_reg": None if last is None else float(last["reg"]),
            "settings": _jsonable(self.settings),
        }

    def save_hdf5(self, group) -> None:
        """Write into an h5py group: datasets w, noise_{i}, image, loss_trace; attrs distance, steps_run,
        stopped_at_step (-1 for None), num_noise, settings (JSON)."""
        group.create_dataset("w", data=self.w.numpy())
        for i, n in enumerate(self.noise):
            group.create_dataset(f"noise_{i}", data=n.numpy())
        group.create_dataset("image", data=self.image.numpy())
        group.create_dataset("loss_trace", data=np.asarray(self.loss_trace, dtype=TRACE_DTYPE))
        group.attrs["distance"] = float(self.distance)
        group.attrs["steps_run"] = int(self.steps_run)
        group.attrs["stopped_at_step"] = -1 if self.stopped_at_step is None else int(self.stopped_at_step)
        group.attrs["num_noise"] = len(self.noise)
        group.attrs["settings"] = json.dumps(_jsonable(self.settings), sort_keys=True)
        if self.clean_trace:
            group.create_dataset("clean_trace", data=np.asarray(self.clean_trace, dtype=np.float64))

    @classmethod
    def load_hdf5(cls, group) -> "ProjectionResult":
        num_noise = int(group.attrs["num_noise"])
        stopped = int(group.attrs["stopped_at_step"])
        return cls(
            w=torch.from_numpy(np.array(group["w"])),
            noise=tuple(torch.from_numpy(np.array(group[f"noise_{i}"])) for i in range(num_noise)),
            distance=float(group.attrs["distance"]),
            loss_trace=np.array(group["loss_trace"], dtype=TRACE_DTYPE),
            image=torch.from_numpy(np.array(group["image"])),
            steps_run=int(group.attrs["steps_run"]),
            stopped_at_step=None if stopped < 0 else stopped,
            settings=json.loads(group.attrs["settings"]),
            clean_trace=tuple((int(a), float(b)) for a, b in np.array(group["clean_trace"]))
            if "clean_trace" in group else (),
        )


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x
