"""The project's own model file: a ``torch.save`` zip of plain data, loadable with ``weights_only=True``.

Top-level dict::

    format          "stylegan-forensics"
    format_version  1
    arch            "stylegan2" (an entry of the arch registry below; another generator family registers itself)
    G_config        GeneratorConfig.to_dict() (the arch's generator config)
    G_ema           state dict of the generator used for generation / detection (EMA weights)
    G, D, D_config  optional: the trained generator, the discriminator and its config (training snapshots)
    training_state  optional: nested plain data (optimiser states, counters ...) for resuming training
    calibration     optional: detector calibration record (plain data)
    metadata        created (ISO-8601 UTC), tool_version, source, training, dataset_fingerprint, weights_sha256

Only dicts, lists, str, int, float, bool, None and tensors occur anywhere, which is checked before writing.
``weights_sha256`` covers the G_ema tensors (see :func:`weights_sha256`); a file whose G_ema does not match it
is refused on reading.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from ..config import ConfigError, DiscriminatorConfig, GeneratorConfig
from ..discriminator import Discriminator
from ..generator import Generator
from ..util.files import atomic_torch_save
from .base import (
    ModelFormatError,
    check_plain,
    construct,
    container_kind,
    one_line,
    read_model_file,
    require_tensor_dict,
    safe_torch_load,
)
from .limits import check_network_config

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "ArchSpec", "register_arch", "get_arch", "arch_of", "known_archs",
           "save_network", "read_network_file", "validate_network_dict", "weights_sha256", "tool_version",
           "build_networks", "make_metadata"]

FORMAT_NAME = "stylegan-forensics"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------------
# Architecture registry


@dataclass(frozen=True)
class ArchSpec:
    """How to rebuild the networks of one generator family from a file: config classes (with ``from_dict`` /
    ``to_dict``) and module classes taking the config as their only constructor argument."""

    name: str
    generator_config: type
    generator: Callable[[Any], torch.nn.Module]
    discriminator_config: Optional[type] = None
    discriminator: Optional[Callable[[Any], torch.nn.Module]] = None


_ARCHS: Dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> None:
    """Add (or replace) an architecture; the name is what the file's ``arch`` field holds."""
    _ARCHS[spec.name] = spec


def known_archs() -> tuple:
    _ensure_builtin_archs()
    return tuple(_ARCHS)


def _ensure_builtin_archs() -> None:
    if "stylegan2" not in _ARCHS:
        register_arch(ArchSpec("stylegan2", GeneratorConfig, Generator, DiscriminatorConfig, Discriminator))
    if "stylegan1" not in _ARCHS:
        # Imported here, not at the top: stylegan1 imports this module to register itself (a cycle otherwise).
        from .. import stylegan1  # noqa: F401  (registers ArchSpec 'stylegan1' on import)


def get_arch(name: str) -> ArchSpec:
    _ensure_builtin_archs()
    try:
        return _ARCHS[name]
    except KeyError:
        raise ModelFormatError(f"unknown network architecture {name!r} (known: {', '.join(_ARCHS)})") from None


def arch_of(generator: torch.nn.Module) -> ArchSpec:
    """The registered architecture whose generator class ``generator`` is (exact class first, then subclass)."""
    _ensure_builtin_archs()
    for spec in _ARCHS.values():
        if type(generator) is spec.generator:
            return spec
    for spec in _ARCHS.values():
        if isinstance(spec.generator, type) and isinstance(generator, spec.generator):
            return spec
    raise ValueError(f"{type(generator).__name__} is not a registered generator architecture")


# ----------------------------------------------------------------------------------------------------------------
# Hashing and metadata


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 identifying a set of weights independently of how the file was written.

    Keys in sorted order; for each: the key (UTF-8), the dtype string (``torch.float32``), the shape
    (comma-separated) and the byte count, each followed by a NUL byte, then the tensor's raw bytes (contiguous,
    CPU, native byte order).
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{key} is not a tensor")
        t = t.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy()
        for part in (key, str(t.dtype), ",".join(str(s) for s in t.shape), str(raw.nbytes)):
            h.update(part.encode("utf-8"))
            h.update(b"\0")
        h.update(raw.data)
    return h.hexdigest()


def tool_version() -> str:
    try:
        return version("stylegan-forensics")
    except PackageNotFoundError:
        return "unknown"


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


_RESERVED_METADATA = ("created", "tool_version", "weights_sha256")


def make_metadata(G_ema_state: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, Any]] = None
                  ) -> Dict[str, Any]:
    """The metadata block for a file holding ``G_ema_state``: user fields (``source``, ``training``,
    ``dataset_fingerprint`` and any extra plain-data keys) plus ``created``, ``tool_version`` and
    ``weights_sha256``, which are always computed here."""
    user = dict(metadata or {})
    clash = [k for k in _RESERVED_METADATA if k in user]
    if clash:
        raise ValueError(f"metadata fields {clash} are set by save_network and cannot be given")
    fingerprint = user.pop("dataset_fingerprint", None)
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise ValueError("metadata.dataset_fingerprint must be a string or None")
    training = user.pop("training", None)
    training = {} if training is None else training
    if not isinstance(training, dict):
        raise ValueError("metadata.training must be a dict")
    meta = {
        "created": _utc_now(),
        "tool_version": tool_version(),
        "source": user.pop("source", None),
        "training": training,
        "dataset_fingerprint": fingerprint,
        "weights_sha256": weights_sha256(G_ema_state),
    }
    meta.update(user)
    return meta


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _cpu_state(module: torch.nn.Module) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, v.detach().to("cpu").contiguous()) for k, v in module.state_dict().items())


def _checked_plain(obj: Any, name: str) -> Any:
    try:
        check_plain(obj, name)
    except TypeError as exc:
        raise ValueError(f"cannot save {name}: {exc} (only dicts, lists, str, int, float, bool, None and "
                         f"tensors are allowed)") from None
    return obj


def save_network(path: Any, G_ema: torch.nn.Module, *, G: Optional[torch.nn.Module] = None,
                 D: Optional[torch.nn.Module] = None, training_state: Optional[dict] = None,
                 metadata: Optional[Mapping[str, Any]] = None, calibration: Optional[dict] = None,
                 arch: Optional[str] = None) -> Path:
    """Write networks in our format, atomically. Returns the path.

    ``G_ema`` (required) and ``G`` must be generators of a registered architecture (``arch`` is found from the
    class unless given) with a ``config``; ``D`` a discriminator with a ``config``. ``metadata`` holds the user
    fields of :func:`make_metadata`. Everything must be plain data, else ValueError before anything is written.
    """
    spec = get_arch(arch) if arch is not None else arch_of(G_ema)
    if G is not None and not isinstance(G, type(G_ema)):
        raise ValueError(f"G ({type(G).__name__}) and G_ema ({type(G_ema).__name__}) must be the same kind")
    if G is not None and G.config != G_ema.config:
        raise ValueError("G and G_ema have different configs")
    g_ema_state = _cpu_state(G_ema)
    obj: Dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": spec.name,
        "G_config": G_ema.config.to_dict(),
        "G_ema": g_ema_state,
    }
    if G is not None:
        obj["G"] = _cpu_state(G)
    if D is not None:
        obj["D"] = _cpu_state(D)
        obj["D_config"] = D.config.to_dict()
    if training_state is not None:
        obj["training_state"] = _checked_plain(training_state, "training_state")
    if calibration is not None:
        obj["calibration"] = _checked_plain(calibration, "calibration")
    obj["metadata"] = _checked_plain(make_metadata(g_ema_state, metadata), "metadata")
    for key in ("G_ema", "G", "D"):
        if key in obj:
            obj[key] = dict(obj[key])  # plain dict: OrderedDict needs no extra allow-listing, order is kept
    _checked_plain({k: v for k, v in obj.items()}, "file")
    return atomic_torch_save(obj, path)


# ----------------------------------------------------------------------------------------------------------------
# Reading


def validate_network_dict(obj: Any, what: str = "model file", verify_hash: bool = True) -> Dict[str, Any]:
    """Check the structure of a loaded file; refuses a foreign format, another version, an unknown arch and a
    G_ema that does not match ``metadata.weights_sha256``."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ModelFormatError(f"{what}: not a {FORMAT_NAME} model file (format={found!r})")
    version = obj.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFormatError(f"{what}: format_version missing or not an integer ({version!r})")
    if version > FORMAT_VERSION:
        raise ModelFormatError(f"{what}: written by a newer version of the tool (format_version {version}; "
                               f"this version reads {FORMAT_VERSION})")
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"{what}: unsupported format_version {version} (expected {FORMAT_VERSION})")
    arch = obj.get("arch")
    if not isinstance(arch, str):
        raise ModelFormatError(f"{what}: arch missing")
    get_arch(arch)
    if not isinstance(obj.get("G_config"), dict):
        raise ModelFormatError(f"{what}: G_config missing")
    require_tensor_dict(obj.get("G_ema"), f"{what}: G_ema")
    for key in ("G", "D"):
        if obj.get(key) is not None:
            require_tensor_dict(obj[key], f"{what}: {key}")
    if obj.get("D") is not None and not isinstance(obj.get("D_config"), dict):
        raise ModelFormatError(f"{what}: D present without D_config")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("weights_sha256"), str):
        raise ModelFormatError(f"{what}: metadata.weights_sha256 missing")
    for key in ("calibration", "training_state"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise ModelFormatError(f"{what}: {key} is not a dict")
    if verify_hash:
        actual = weights_sha256(obj["G_ema"])
        if actual != meta["weights_sha256"]:
            raise ModelFormatError(
                f"{what}: weights_sha256 mismatch (recorded {meta['weights_sha256'][:16]}..., G_ema hashes to "
                f"{actual[:16]}...): the weights were modified after saving or the file is corrupt")
    return obj


def read_network_file(path: Any) -> Dict[str, Any]:
    """Load and validate one of our files (``torch.load(weights_only=True)``); every failure is a
    ModelFormatError with a one-line message."""
    path, data = read_model_file(path)
    kind = container_kind(data, path)
    if kind != "torch-zip":
        what = "a Python pickle" if kind == "pickle" else "a legacy torch file"
        raise ModelFormatError(f"{path}: not a {FORMAT_NAME} model file (it is {what})")
    obj = safe_torch_load(data, what=str(path))
    return validate_network_dict(obj, str(path))


def _instantiate(cls: Callable[[Any], torch.nn.Module], config: Any, state: Dict[str, torch.Tensor],
                 what: str) -> torch.nn.Module:
    try:
        module = construct(cls, config)
    except (ConfigError, ValueError, AssertionError, TypeError, RuntimeError, MemoryError) as exc:
        raise ModelFormatError(f"{what}: cannot build the network ({one_line(exc, 200)})") from exc
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise ModelFormatError(f"{what}: weights do not fit the config (missing {missing[:4]}, "
                               f"unexpected {extra[:4]})")
    for k, v in expected.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise ModelFormatError(f"{what}: {k} has shape {list(state[k].shape)}, the config needs "
                                   f"{list(v.shape)}")
    module.load_state_dict(state, strict=True)
    return module


def _config(cls: type, d: Any, what: str) -> Any:
    """The config object, within the bounds of :func:`.limits.check_network_config` (checked before any module
    is built)."""
    try:
        config = cls.from_dict(d)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ModelFormatError(f"{what}: invalid config ({one_line(exc, 200)})") from exc
    return check_network_config(config, what)


def build_networks(obj: Dict[str, Any], with_training: bool = False, what: str = "model file"):
    """(G_ema, G, D) modules (CPU, float32 as stored) from a validated file dict; G and D only with
    ``with_training`` and when present."""
    spec = get_arch(obj["arch"])
    g_cfg = _config(spec.generator_config, obj["G_config"], f"{what}: G_config")
    G_ema = _instantiate(spec.generator, g_cfg, obj["G_ema"], f"{what}: G_ema")
    G = D = None
    if with_training and obj.get("G") is not None:
        G = _instantiate(spec.generator, g_cfg, obj["G"], f"{what}: G")
    if with_training and obj.get("D") is not None:
        if spec.discriminator is None or spec.discriminator_config is None:
            raise ModelFormatError(f"{what}: arch {spec.name!r} has no discriminator class registered")
        d_cfg = _config(spec.discriminator_config, obj["D_config"], f"{what}: D_config")
        D = _instantiate(spec.discriminator, d_cfg, obj["D"], f"{what}: D")
    return G_ema, G, D
