"""Model files: one entry point for every supported format.

* ``'ours'``: this project's ``.pt`` (:mod:`.ours`), a torch zip of plain data with a weights hash;
* ``'nvidia-pkl'``: NVIDIA stylegan2-ada-pytorch network pickles (:mod:`.nvidia`), read with an allow-list
  unpickler that never executes the code they embed;
* ``'rosinality'``: rosinality/stylegan2-pytorch checkpoints (:mod:`.rosinality`).

The format is recognised from the content, not the extension. Nothing here calls ``pickle.load`` or
``torch.load`` without ``weights_only=True``. :func:`load_model` reads the file once and hashes and parses the
same bytes. What a file may make the loader allocate is bounded before allocating (:mod:`.limits`: file size,
network size, tensor and storage extents). Every problem with a file (missing, a directory, empty, too large,
truncated, random bytes, text, an unknown or tampered format, a refused pickle global, sizes out of bounds)
raises :class:`ModelFormatError` with a one-line message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..discriminator import Discriminator
from ..generator import Generator
from .base import (
    ModelFormatError,
    check_readable_file,
    construct,
    container_kind,
    one_line,
    read_model_file,
    safe_torch_load,
)
from .nvidia import NvidiaNetworks, load_nvidia_pickle
from .ours import FORMAT_NAME, build_networks, read_network_file, save_network, validate_network_dict, weights_sha256
from .rosinality import networks_from_checkpoint

__all__ = ["ModelFormatError", "FORMATS", "detect_format", "LoadedModel", "load_model", "load_generator", "convert",
           "save_network", "read_network_file", "weights_sha256"]

FORMATS = ("ours", "nvidia-pkl", "rosinality")


# ----------------------------------------------------------------------------------------------------------------
# Detection


def _classify_torch_object(obj: Any, path: Path) -> str:
    if isinstance(obj, dict) and "format" in obj and "g_ema" not in obj:
        return "ours"
    if isinstance(obj, dict) and "g_ema" in obj:
        return "rosinality"
    keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ModelFormatError(f"not a supported model file: {path} is a torch file but neither a {FORMAT_NAME} "
                           f"model nor a rosinality checkpoint (found {keys})")


def detect_format(path: Any) -> str:
    """``'ours'``, ``'nvidia-pkl'`` or ``'rosinality'`` from the file's content; else ModelFormatError.

    Torch files are inspected with ``torch.load(weights_only=True)`` (memory-mapped for zip files, so tensor
    data is not read); a raw binary pickle is taken to be an NVIDIA network pickle, which its loader verifies.
    """
    path = check_readable_file(path)
    kind = container_kind(path)
    if kind == "pickle":
        return "nvidia-pkl"
    obj = safe_torch_load(path, allow_namespace=True, what=str(path), mmap=(kind == "torch-zip"))
    return _classify_torch_object(obj, path)


# ----------------------------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedModel:
    """Networks read from a model file.

    ``G_ema`` is in eval mode with ``requires_grad`` off, on ``device``. ``G`` and ``D`` (training networks) are
    only loaded with ``with_training=True`` and when the file has them; they are in eval mode too (call
    ``.train()`` to train). ``metadata`` follows our format's layout for every source format (``created``,
    ``tool_version``, ``source``, ``training``, ``dataset_fingerprint``, ``weights_sha256``, plus format-specific
    details). ``file_sha256`` is the hash of the file's bytes (the very bytes the networks were parsed from).
    """

    G_ema: torch.nn.Module
    D: Optional[torch.nn.Module]
    G: Optional[torch.nn.Module]
    metadata: Dict[str, Any]
    source_format: str
    file_sha256: str
    calibration: Optional[dict]
    arch: str
    training_state: Optional[dict] = None

    @property
    def config(self):
        return self.G_ema.config


def _foreign_metadata(path: Path, fmt: str, sha: str, g_ema_state: Dict[str, torch.Tensor],
                      extra: Dict[str, Any]) -> Dict[str, Any]:
    meta = {
        "created": None,
        "tool_version": None,
        "source": {"file_name": path.name, "format": fmt, "sha256": sha},
        "training": {},
        "dataset_fingerprint": None,
        "weights_sha256": weights_sha256(g_ema_state),
    }
    meta.update(extra)
    return meta


def _build(cls: Any, config: Any, state: Dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    try:
        module = construct(cls, config)
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise ModelFormatError(f"{what}: cannot load the weights ({one_line(exc, 200)})") from exc
    return module


def _finish(model: LoadedModel, device: Any) -> LoadedModel:
    device = torch.device(device)
    model.G_ema = model.G_ema.to(device).eval().requires_grad_(False)
    if model.G is not None:
        model.G = model.G.to(device).eval()
    if model.D is not None:
        model.D = model.D.to(device).eval()
    return model


def _load_ours(obj: Any, path: Path, sha: str, with_training: bool) -> LoadedModel:
    obj = validate_network_dict(obj, str(path))
    G_ema, G, D = build_networks(obj, with_training=with_training, what=str(path))
    return LoadedModel(G_ema=G_ema, D=D, G=G, metadata=obj["metadata"], source_format="ours", file_sha256=sha,
                       calibration=obj.get("calibration"), arch=obj["arch"],
                       training_state=obj.get("training_state") if with_training else None)


def _load_nvidia(nets: NvidiaNetworks, path: Path, sha: str) -> LoadedModel:
    G_ema = _build(Generator, nets.G_ema_config, nets.G_ema_state, f"{path}: G_ema")
    G = _build(Generator, nets.G_config, nets.G_state, f"{path}: G") if nets.G_state is not None else None
    D = _build(Discriminator, nets.D_config, nets.D_state, f"{path}: D") if nets.D_state is not None else None
    meta = _foreign_metadata(path, "nvidia-pkl", sha, nets.G_ema_state, {"nvidia": nets.info})
    return LoadedModel(G_ema=G_ema, D=D, G=G, metadata=meta, source_format="nvidia-pkl", file_sha256=sha,
                       calibration=None, arch="stylegan2")


def _load_rosinality(obj: Any, path: Path, sha: str, with_training: bool) -> LoadedModel:
    nets = networks_from_checkpoint(obj, str(path), with_G=with_training)
    G_ema = _build(Generator, nets.G_ema_config, nets.G_ema_state, f"{path}: g_ema")
    G = _build(Generator, nets.G_config, nets.G_state, f"{path}: g") if nets.G_state is not None else None
    meta = _foreign_metadata(path, "rosinality", sha, nets.G_ema_state,
                             {"rosinality": {"args": nets.args, **nets.info}})
    return LoadedModel(G_ema=G_ema, D=None, G=G, metadata=meta, source_format="rosinality", file_sha256=sha,
                       calibration=None, arch="stylegan2")


def load_model(path: Any, device: Any = "cpu", with_training: bool = False) -> LoadedModel:
    """Load any supported model file (format found from the content). See :class:`LoadedModel`.

    The file is read once (at most ``MAX_MODEL_FILE_BYTES``); its SHA-256 and the networks come from those bytes.
    """
    path, data = read_model_file(path)
    sha = hashlib.sha256(data).hexdigest()
    kind = container_kind(data, path)
    if kind == "pickle":
        nets = load_nvidia_pickle(data, with_G=with_training, with_D=with_training, what=str(path))
        del data  # the tensors have their own storages; the file's bytes are no longer needed
        model = _load_nvidia(nets, path, sha)
    else:
        obj = safe_torch_load(data, allow_namespace=True, what=str(path))
        del data
        fmt = _classify_torch_object(obj, path)
        if fmt == "ours":
            model = _load_ours(obj, path, sha, with_training)
        else:
            model = _load_rosinality(obj, path, sha, with_training)
    return _finish(model, device)


def load_generator(path: Any, device: Any = "cpu") -> torch.nn.Module:
    """The generator to use (G_ema) of any supported model file, in eval mode on ``device``."""
    return load_model(path, device=device).G_ema


def convert(in_path: Any, out_path: Any, g_ema_only: bool = False) -> Path:
    """Rewrite any supported model file in our format (atomically). ``metadata.source`` records the original
    file's name, format and SHA-256; G and D (and our training state) are kept when the source has them
    (rosinality: G only), unless ``g_ema_only``."""
    in_path = Path(in_path)
    model = load_model(in_path, with_training=not g_ema_only)
    source: Dict[str, Any] = {"file_name": in_path.name, "format": model.source_format,
                              "sha256": model.file_sha256}
    meta: Dict[str, Any] = {"source": source,
                            "training": dict(model.metadata.get("training") or {}),
                            "dataset_fingerprint": model.metadata.get("dataset_fingerprint")}
    if model.source_format == "ours":
        source["original"] = model.metadata.get("source")
    else:
        key = "nvidia" if model.source_format == "nvidia-pkl" else "rosinality"
        if key in model.metadata:
            meta[key] = model.metadata[key]
    if g_ema_only:
        return save_network(out_path, model.G_ema, metadata=meta, calibration=model.calibration, arch=model.arch)
    return save_network(out_path, model.G_ema, G=model.G, D=model.D, training_state=model.training_state,
                        metadata=meta, calibration=model.calibration, arch=model.arch)


def describe(path: Any) -> Tuple[str, Dict[str, Any]]:
    """(format, metadata) of a model file; loads it (``stylegan info``)."""
    model = load_model(path)
    return model.source_format, model.metadata
