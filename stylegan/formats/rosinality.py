"""rosinality/stylegan2-pytorch checkpoints (``.pt``: ``g_ema``, ``latent_avg``, optionally ``g``, ``d``,
``g_optim``, ``d_optim``, ``args``), read with ``torch.load(weights_only=True)``.

That code base implements the same StyleGAN2 generator (config F, 'skip' outputs) under other names; every
runtime factor it applies matches ours, so the weights map without rescaling:

* ``style.{1..n_mlp}``: mapping FC layers with lr multiplier ``lr_mlp`` (0.01), stored weight N(0,1)/lr_mul,
  runtime weight gain lr_mul/sqrt(in), bias gain lr_mul, fused leaky ReLU with gain sqrt(2) -> ``mapping.fc{i-1}``.
* ``input.input`` [1, C, 4, 4] -> ``synthesis.b4.const``.
* styled convolutions ``conv1`` (4x4) and ``convs.{2j}`` / ``convs.{2j+1}`` (up-sampling conv0 / conv1 of the
  block at 2^(j+3) px): ``conv.weight`` [1, O, I, 3, 3] (its runtime gain 1/sqrt(9 I) cancels under
  demodulation), ``conv.modulation`` (style affine, gain 1/sqrt(w_dim), bias init 1), ``noise.weight`` [1]
  (noise strength), ``activate.bias`` [O]; the up-sampling convs carry a constant ``conv.blur.kernel``.
* ToRGB ``to_rgb1`` and ``to_rgbs.{j}``: ``conv.weight`` [1, 3, I, 1, 1] whose runtime gain 1/sqrt(I) equals our
  ToRGB style gain, ``conv.modulation``, ``bias`` [1, 3, 1, 1]; ``to_rgbs`` carry a constant ``upsample.kernel``.
* ``noises.noise_{k}`` [1, 1, res, res]: the constant noise maps in layer order -> ``noise_const``.
* ``latent_avg`` -> ``mapping.w_avg`` (estimated from 4096 samples when a checkpoint lacks it).

The only numerical difference is where demodulation adds its epsilon (1e-8 to the sum of squares of the
*scaled* weight there, of the stored weight here): a relative effect far below 1e-6 for any real network.
The discriminator layout differs from NVIDIA's and is not converted.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..config import ConfigError, GeneratorConfig
from ..generator import Generator
from .base import (
    ModelFormatError,
    check_fir_kernel,
    construct,
    container_kind,
    fir_kernel,
    read_model_file,
    require_tensor_dict,
    safe_torch_load,
    state_shapes,
    to_plain,
    unmapped_message,
)
from .limits import check_network_config

__all__ = ["RosinalityNetworks", "rosinality_to_ours", "ours_to_rosinality", "load_rosinality_checkpoint",
           "networks_from_checkpoint", "find_channel_params", "is_rosinality_checkpoint", "key_table"]

W_AVG_SAMPLES = 4096


@dataclass(frozen=True)
class _Entry:
    ours: str
    theirs: str
    kind: str  # how the rosinality shape relates to ours: 'same', 'lead1', 'scalar1', 'rgb_bias', 'noise'


def _their_shape(kind: str, shape: Sequence[int]) -> Tuple[int, ...]:
    shape = tuple(shape)
    if kind == "same":
        return shape
    if kind == "lead1":
        return (1,) + shape
    if kind == "scalar1":
        return (1,)
    if kind == "rgb_bias":
        return (1, shape[0], 1, 1)
    if kind == "noise":
        return (1, 1) + shape
    raise AssertionError(kind)


def _modconv_entries(ours: str, theirs: str, styled: bool) -> List[_Entry]:
    entries = [
        _Entry(f"{ours}.weight", f"{theirs}.conv.weight", "lead1"),
        _Entry(f"{ours}.affine.weight", f"{theirs}.conv.modulation.weight", "same"),
        _Entry(f"{ours}.affine.bias", f"{theirs}.conv.modulation.bias", "same"),
    ]
    if styled:
        entries += [_Entry(f"{ours}.noise_strength", f"{theirs}.noise.weight", "scalar1"),
                    _Entry(f"{ours}.bias", f"{theirs}.activate.bias", "same")]
    else:
        entries.append(_Entry(f"{ours}.bias", f"{theirs}.bias", "rgb_bias"))
    return entries


def key_table(config: GeneratorConfig) -> Tuple[List[_Entry], Dict[str, float]]:
    """Every tensor of our generator (except ``mapping.w_avg``) with its rosinality name, plus rosinality's
    constant FIR buffers (name -> gain of the stored kernel)."""
    entries: List[_Entry] = []
    constants: Dict[str, float] = {}
    for i in range(config.mapping_layers):
        entries += [_Entry(f"mapping.fc{i}.weight", f"style.{i + 1}.weight", "same"),
                    _Entry(f"mapping.fc{i}.bias", f"style.{i + 1}.bias", "same")]
    entries.append(_Entry("synthesis.b4.const", "input.input", "lead1"))
    entries += _modconv_entries("synthesis.b4.conv1", "conv1", styled=True)
    entries += _modconv_entries("synthesis.b4.torgb", "to_rgb1", styled=False)
    noise_idx = 0
    entries.append(_Entry("synthesis.b4.conv1.noise_const", f"noises.noise_{noise_idx}", "noise"))
    for j, res in enumerate(config.block_resolutions[1:]):
        for c, name in enumerate(("conv0", "conv1")):
            theirs = f"convs.{2 * j + c}"
            entries += _modconv_entries(f"synthesis.b{res}.{name}", theirs, styled=True)
            noise_idx += 1
            entries.append(_Entry(f"synthesis.b{res}.{name}.noise_const", f"noises.noise_{noise_idx}", "noise"))
        constants[f"convs.{2 * j}.conv.blur.kernel"] = 4.0
        entries += _modconv_entries(f"synthesis.b{res}.torgb", f"to_rgbs.{j}", styled=False)
        constants[f"to_rgbs.{j}.upsample.kernel"] = 4.0
    return entries, constants


# ----------------------------------------------------------------------------------------------------------------
# Channels


def find_channel_params(channels: Dict[int, int], preferred: Sequence[int] = (32768, 16384)
                        ) -> Optional[Tuple[int, int]]:
    """(channel_base, channel_max) with min(channel_base // res, channel_max) == channels[res] for every
    resolution, or None. A base in ``preferred`` is chosen when it fits, else the smallest that does."""
    if not channels:
        return None
    cmax = max(channels.values())
    lo, hi = 1, None
    for res, ch in channels.items():
        if ch == cmax:
            lo = max(lo, cmax * res)
        else:
            lo = max(lo, ch * res)
            hi = ch * res + res - 1 if hi is None else min(hi, ch * res + res - 1)
    if hi is not None and lo > hi:
        return None
    candidates = [b for b in preferred if b >= lo and (hi is None or b <= hi)] + [lo]
    for base in candidates:
        if all(min(base // res, cmax) == ch for res, ch in channels.items()):
            return base, cmax
    return None


# ----------------------------------------------------------------------------------------------------------------
# Conversion


def _infer_config(state: Dict[str, torch.Tensor], args: Dict[str, Any], what: str) -> GeneratorConfig:
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in state:
        n_mlp += 1
    if n_mlp == 0:
        raise ModelFormatError(f"{what}: no mapping layers (style.1.weight); not a rosinality StyleGAN2 generator")
    for key in ("style.1.weight", "input.input", "to_rgb1.conv.weight"):
        if key not in state:
            raise ModelFormatError(f"{what}: {key} missing; not a rosinality StyleGAN2 generator")
    w_dim, z_dim = state["style.1.weight"].shape if state["style.1.weight"].ndim == 2 else (0, 0)
    const = state["input.input"]
    rgb = state["to_rgb1.conv.weight"]
    if const.ndim != 4 or const.shape[0] != 1 or rgb.ndim != 5:
        raise ModelFormatError(f"{what}: unexpected shapes of input.input / to_rgb1.conv.weight")
    num_blocks = 0
    while f"to_rgbs.{num_blocks}.conv.weight" in state:
        num_blocks += 1
    resolution = 2 ** (num_blocks + 2)
    channels = {4: int(const.shape[1])}
    for j in range(num_blocks):
        key = f"convs.{2 * j}.conv.weight"
        if key not in state or state[key].ndim != 5:
            raise ModelFormatError(f"{what}: {key} missing")
        channels[2 ** (j + 3)] = int(state[key].shape[1])
    preferred: List[int] = []
    cm = args.get("channel_multiplier")
    if isinstance(cm, int) and not isinstance(cm, bool) and cm > 0:
        preferred.append(16384 * cm)
    found = find_channel_params(channels, preferred + [32768, 16384])
    if found is None:
        raise ModelFormatError(f"{what}: the channel counts per resolution {channels} cannot be expressed as "
                               f"min(channel_base / res, channel_max); this network is not supported")
    lr_mlp = args.get("lr_mlp", 0.01)
    if isinstance(lr_mlp, bool) or not isinstance(lr_mlp, (int, float)) or not lr_mlp > 0:
        lr_mlp = 0.01
    try:
        return GeneratorConfig(z_dim=int(z_dim), w_dim=int(w_dim), img_resolution=resolution,
                               img_channels=int(rgb.shape[1]), mapping_layers=n_mlp,
                               mapping_lr_multiplier=float(lr_mlp), channel_base=found[0], channel_max=found[1],
                               architecture="skip")
    except ConfigError as exc:
        raise ModelFormatError(f"{what}: {exc}") from None


def _estimate_w_avg(config: GeneratorConfig, state: Dict[str, torch.Tensor]) -> torch.Tensor:
    G = construct(Generator, config)
    G.load_state_dict(state)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = torch.randn([W_AVG_SAMPLES, config.z_dim], generator=gen)
        return G.mapping(z)[:, 0].mean(dim=0)


def rosinality_to_ours(state: Dict[str, torch.Tensor], latent_avg: Optional[torch.Tensor] = None,
                       args: Optional[Dict[str, Any]] = None, what: str = "rosinality checkpoint"
                       ) -> Tuple[GeneratorConfig, "OrderedDict[str, torch.Tensor]", str]:
    """(config, our state dict, how w_avg was obtained) from a rosinality generator state dict.

    Every tensor must be mapped (FIR buffers: checked as the constant kernel), else ModelFormatError.
    """
    state = require_tensor_dict(state, what)
    config = check_network_config(_infer_config(state, dict(args or {}), what), what)
    shapes = state_shapes(Generator, config)
    entries, constants = key_table(config)
    by_theirs = {e.theirs: e for e in entries}
    by_ours = {e.ours: e for e in entries}
    leftover = [k for k in state if k not in by_theirs and k not in constants]
    if leftover:
        raise ModelFormatError(unmapped_message(what, "tensors have no counterpart in our network",
                                                leftover))
    missing = [e.theirs for e in entries if e.theirs not in state] + [k for k in constants if k not in state]
    if missing:
        raise ModelFormatError(unmapped_message(what, "expected tensors are missing", missing))
    for key, gain in constants.items():
        check_fir_kernel(state[key], key, gain=gain, what=what)
    mapped = {e.ours for e in entries}
    unfilled = [k for k in shapes if k not in mapped and k != "mapping.w_avg"]
    if unfilled:  # pragma: no cover - the key table covers the whole network
        raise ModelFormatError(unmapped_message(what, "tensors of our network have no source", unfilled))
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, shape in shapes.items():
        if key == "mapping.w_avg":
            continue
        e = by_ours[key]
        t = state[e.theirs]
        expected = _their_shape(e.kind, shape)
        if tuple(t.shape) != expected:
            raise ModelFormatError(f"{what}: {e.theirs} has shape {list(t.shape)}, expected {list(expected)}")
        if not t.is_floating_point():
            raise ModelFormatError(f"{what}: {e.theirs} has dtype {t.dtype}, expected floating point")
        out[key] = t.reshape(shape).contiguous()
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != config.w_dim:
            raise ModelFormatError(f"{what}: latent_avg does not have {config.w_dim} values")
        w_avg, w_avg_source = latent_avg.reshape(config.w_dim).to(torch.float32).contiguous(), "latent_avg"
    else:
        w_avg = torch.zeros(config.w_dim)
        w_avg_source = f"estimated: mean of the mapping of {W_AVG_SAMPLES} z (seed 0)"
    # keep our key order: w_avg sits where our state dict has it
    ordered: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key in shapes:
        ordered[key] = w_avg if key == "mapping.w_avg" else out[key]
    if latent_avg is None:
        ordered["mapping.w_avg"] = _estimate_w_avg(config, ordered)
    return config, ordered, w_avg_source


def ours_to_rosinality(generator: torch.nn.Module) -> Tuple["OrderedDict[str, torch.Tensor]", torch.Tensor]:
    """(rosinality ``g_ema`` state dict, ``latent_avg``) for one of our 'skip' generators; the inverse of
    :func:`rosinality_to_ours` (used by tests and for exporting)."""
    config: GeneratorConfig = generator.config
    if config.architecture != "skip" or config.conv_clamp is not None:
        raise ValueError("rosinality's generator has the 'skip' architecture and no conv_clamp")
    ours = generator.state_dict()
    entries, constants = key_table(config)
    theirs: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for e in entries:
        t = ours[e.ours].detach().cpu()
        theirs[e.theirs] = t.reshape(_their_shape(e.kind, t.shape)).clone()
    for key, gain in constants.items():
        theirs[key] = fir_kernel(gain)
    return theirs, ours["mapping.w_avg"].detach().cpu().clone()


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class RosinalityNetworks:
    """The generators of one rosinality checkpoint as our configs and state dicts."""

    G_ema_config: GeneratorConfig
    G_ema_state: "OrderedDict[str, torch.Tensor]"
    G_config: Optional[GeneratorConfig] = None
    G_state: Optional["OrderedDict[str, torch.Tensor]"] = None
    args: Dict[str, Any] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)


def is_rosinality_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("g_ema"), dict)


def _args_dict(args: Any) -> Dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict):
        return {}
    return to_plain(args)


def networks_from_checkpoint(ckpt: Any, what: str = "rosinality checkpoint", with_G: bool = True
                             ) -> RosinalityNetworks:
    """Map a loaded checkpoint dict onto our generators."""
    if not is_rosinality_checkpoint(ckpt):
        raise ModelFormatError(f"{what}: not a rosinality checkpoint (no g_ema state dict)")
    args = _args_dict(ckpt.get("args"))
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise ModelFormatError(f"{what}: latent_avg is not a tensor")
    cfg, state, w_avg_source = rosinality_to_ours(ckpt["g_ema"], latent_avg, args, f"{what}: g_ema")
    nets = RosinalityNetworks(cfg, state, args=args)
    if with_G and isinstance(ckpt.get("g"), dict):
        nets.G_config, nets.G_state, _ = rosinality_to_ours(ckpt["g"], latent_avg, args, f"{what}: g")
    nets.info = {
        "keys": [str(k) for k in ckpt],
        "w_avg": w_avg_source,
        "discriminator": "not converted (rosinality's discriminator layout is not supported)" if "d" in ckpt
        else None,
    }
    return nets


def load_rosinality_checkpoint(path: Any, with_G: bool = True) -> RosinalityNetworks:
    """Read a rosinality/stylegan2-pytorch checkpoint with ``torch.load(weights_only=True)`` (allowing only
    ``argparse.Namespace`` beyond plain data)."""
    path, data = read_model_file(path)
    if container_kind(data, path) == "pickle":
        raise ModelFormatError(f"{path}: not a torch checkpoint (a raw Python pickle)")
    ckpt = safe_torch_load(data, allow_namespace=True, what=str(path))
    return networks_from_checkpoint(ckpt, str(path), with_G=with_G)

