"""NVIDIA stylegan2-ada-pytorch network pickles (``network-snapshot-*.pkl``), read without running their code.

Such a pickle is a dict (``training_set_kwargs``, ``G``, ``D``, ``G_ema``, ``augment_pipe``) whose networks were
written by NVIDIA's persistence mechanism: every module becomes a call of
``torch_utils.persistence._reconstruct_persistent_obj`` with a dict holding the class name, the *source code of
the module that defines it* and the module's attribute dict. Unpickling it with the standard machinery would
import and execute that source (and any global the file names), so it must never be loaded with ``pickle.load``.

:class:`SafeUnpickler` resolves only an allow-list of globals, each to a harmless stand-in:

* the persistence call returns a :class:`PersistentObject` record (class name + state); the source is discarded
  unread, never executed;
* ``dnnlib.util.EasyDict`` is a plain ``dict`` subclass;
* tensors are rebuilt from storages that are themselves read with ``torch.load(..., weights_only=True)``;
* ``collections.OrderedDict``, ``builtins.set`` and numpy scalars (plain numeric dtypes only) for attributes.

Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...) raises :class:`ModelFormatError`
naming the global, before it could be called. Persistent IDs are refused too.

Unpickling is :mod:`.nvidia_pickle`'s job (an allow-list unpickler; the source in the file is never run). The module
tree is then flattened like ``Module.state_dict()`` (``_parameters``, then the persistent
``_buffers``, then ``_modules``, recursively, with dotted names) and mapped onto our networks, whose parameter
names are NVIDIA's; the constant ``resample_filter`` buffers are checked and dropped. The architecture comes
from the constructor arguments recorded in ``_init_kwargs``, with NVIDIA's defaults where a key is absent.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from ..config import ConfigError, DiscriminatorConfig, GeneratorConfig
from ..discriminator import Discriminator
from ..generator import Generator
from .base import ModelFormatError, check_fir_kernel, read_model_file, state_shapes, to_plain, unmapped_message
from .limits import check_network_config
from .nvidia_pickle import (
    ALLOWED_GLOBALS,
    EasyDict,
    PersistentObject,
    SafeUnpickler,
    _iter_modules,
    flatten_module,
    unpickle_nvidia,
)

__all__ = ["SafeUnpickler", "PersistentObject", "EasyDict", "NvidiaNetworks", "unpickle_nvidia", "flatten_module",
           "generator_config_from_kwargs", "discriminator_config_from_kwargs", "generator_name_map",
           "discriminator_name_map", "map_nvidia_state", "load_nvidia_pickle", "init_kwargs", "ALLOWED_GLOBALS"]


# ----------------------------------------------------------------------------------------------------------------
# Constructor arguments -> configs

#: Positional order of the constructors' arguments, for the rare pickle that recorded ``_init_args``.
_G_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
_D_POSITIONAL = ("c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
                 "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs")


def init_kwargs(obj: PersistentObject, positional: Tuple[str, ...], what: str) -> Dict[str, Any]:
    """The constructor arguments recorded in a persistent object (``_init_args`` named by position)."""
    state = obj.state
    kwargs = state.get("_init_kwargs")
    args = state.get("_init_args") or ()
    if kwargs is None and not args:
        raise ModelFormatError(f"{what}: the pickle does not record its constructor arguments (_init_kwargs)")
    kwargs = dict(kwargs or {})
    if not isinstance(args, (tuple, list)) or len(args) > len(positional):
        raise ModelFormatError(f"{what}: unexpected positional constructor arguments")
    for name, value in zip(positional, args):
        if name in kwargs:
            raise ModelFormatError(f"{what}: constructor argument {name} given twice")
        kwargs[name] = value
    return kwargs


def _int(value: Any, name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ModelFormatError(f"{what}: {name} must be an integer, got {value!r}")
    return int(value)


def _float(value: Any, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ModelFormatError(f"{what}: {name} must be a number, got {value!r}")
    return float(value)


def _opt_float(value: Any, name: str, what: str) -> Optional[float]:
    return None if value is None else _float(value, name, what)


def _sub(kwargs: Dict[str, Any], key: str, what: str) -> Dict[str, Any]:
    value = kwargs.pop(key, None)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ModelFormatError(f"{what}: {key} is not a dict")
    return dict(value)


def _check_default(d: Dict[str, Any], key: str, allowed: Tuple[Any, ...], what: str, meaning: str) -> None:
    if key in d:
        value = d.pop(key)
        if value not in allowed:
            raise ModelFormatError(f"{what}: {meaning} {key}={value!r} is not supported")


def _check_filter(d: Dict[str, Any], what: str) -> None:
    if "resample_filter" in d:
        value = d.pop("resample_filter")
        if [float(v) for v in value] != [1.0, 3.0, 3.0, 1.0]:
            raise ModelFormatError(f"{what}: resample_filter {list(value)} is not supported (only [1,3,3,1])")


def _refuse_unknown(d: Dict[str, Any], what: str, ignored: Tuple[str, ...] = ()) -> None:
    unknown = sorted(k for k in d if k not in ignored)
    if unknown:
        raise ModelFormatError(f"{what}: unsupported constructor options {unknown}")


def _refuse_conditional(c_dim: Any, what: str) -> None:
    if c_dim:
        raise ModelFormatError(f"{what}: conditional networks (c_dim={c_dim}) are not supported; this tool "
                               f"handles unconditional StyleGAN2 only")


#: Options that change only speed or memory (float16 layers, memory format, fused vs separate modulation).
_SYNTHESIS_IGNORED = ("fp16_channels_last", "use_fp16", "fused_modconv_default")
_SYNTHESIS_KEYS = ("channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture", "resample_filter",
                   "use_noise", "kernel_size", "activation") + _SYNTHESIS_IGNORED


def generator_config_from_kwargs(kwargs: Dict[str, Any], what: str = "G") -> GeneratorConfig:
    """GeneratorConfig from NVIDIA's Generator constructor arguments, with NVIDIA's defaults for absent keys
    (architecture 'skip', 8 mapping layers, mapping lr multiplier 0.01, channel_base 32768, channel_max 512,
    conv_clamp None)."""
    kw = dict(kwargs)
    _refuse_conditional(kw.pop("c_dim", 0), what)
    for key in ("z_dim", "w_dim", "img_resolution", "img_channels"):
        if key not in kw:
            raise ModelFormatError(f"{what}: constructor argument {key} missing")
    z_dim = _int(kw.pop("z_dim"), "z_dim", what)
    w_dim = _int(kw.pop("w_dim"), "w_dim", what)
    img_resolution = _int(kw.pop("img_resolution"), "img_resolution", what)
    img_channels = _int(kw.pop("img_channels"), "img_channels", what)
    mapping = _sub(kw, "mapping_kwargs", what)
    synthesis = _sub(kw, "synthesis_kwargs", what)
    # The StyleGAN2 networks of NVIDIA's stylegan3 repository take the synthesis options as top-level kwargs.
    for key in _SYNTHESIS_KEYS:
        if key in kw:
            if key in synthesis:
                raise ModelFormatError(f"{what}: {key} given twice")
            synthesis[key] = kw.pop(key)
    _refuse_unknown(kw, what)

    num_layers = _int(mapping.pop("num_layers", 8), "mapping num_layers", what)
    lr_multiplier = _float(mapping.pop("lr_multiplier", 0.01), "mapping lr_multiplier", what)
    w_avg_beta = _float(mapping.pop("w_avg_beta", 0.995), "mapping w_avg_beta", what)
    _check_default(mapping, "layer_features", (None, w_dim), what, "mapping")
    _check_default(mapping, "activation", ("lrelu",), what, "mapping")
    mapping.pop("embed_features", None)  # only used by conditional networks
    _refuse_unknown(mapping, f"{what} mapping_kwargs")

    channel_base = _int(synthesis.pop("channel_base", 32768), "channel_base", what)
    channel_max = _int(synthesis.pop("channel_max", 512), "channel_max", what)
    num_fp16_res = _int(synthesis.pop("num_fp16_res", 0), "num_fp16_res", what)
    conv_clamp = _opt_float(synthesis.pop("conv_clamp", None), "conv_clamp", what)
    architecture = synthesis.pop("architecture", "skip")
    _check_filter(synthesis, what)
    _check_default(synthesis, "use_noise", (True,), what, "synthesis")
    _check_default(synthesis, "kernel_size", (3,), what, "synthesis")
    _check_default(synthesis, "activation", ("lrelu",), what, "synthesis")
    _refuse_unknown(synthesis, f"{what} synthesis_kwargs", ignored=_SYNTHESIS_IGNORED)
    try:
        return GeneratorConfig(z_dim=z_dim, w_dim=w_dim, c_dim=0, img_resolution=img_resolution,
                               img_channels=img_channels, mapping_layers=num_layers,
                               mapping_lr_multiplier=lr_multiplier, w_avg_beta=w_avg_beta, channel_base=channel_base,
                               channel_max=channel_max, architecture=architecture, conv_clamp=conv_clamp,
                               num_fp16_res=num_fp16_res)
    except ConfigError as exc:
        raise ModelFormatError(f"{what}: {exc}") from None


def discriminator_config_from_kwargs(kwargs: Dict[str, Any], what: str = "D") -> DiscriminatorConfig:
    """DiscriminatorConfig from NVIDIA's Discriminator constructor arguments (defaults: 'resnet', channel_base
    32768, channel_max 512, minibatch-stddev group size 4 with 1 channel, conv_clamp None)."""
    kw = dict(kwargs)
    _refuse_conditional(kw.pop("c_dim", 0), what)
    for key in ("img_resolution", "img_channels"):
        if key not in kw:
            raise ModelFormatError(f"{what}: constructor argument {key} missing")
    img_resolution = _int(kw.pop("img_resolution"), "img_resolution", what)
    img_channels = _int(kw.pop("img_channels"), "img_channels", what)
    architecture = kw.pop("architecture", "resnet")
    channel_base = _int(kw.pop("channel_base", 32768), "channel_base", what)
    channel_max = _int(kw.pop("channel_max", 512), "channel_max", what)
    num_fp16_res = _int(kw.pop("num_fp16_res", 0), "num_fp16_res", what)
    conv_clamp = _opt_float(kw.pop("conv_clamp", None), "conv_clamp", what)
    kw.pop("cmap_dim", None)  # conditional only
    _sub(kw, "mapping_kwargs", what)  # conditional only
    block = _sub(kw, "block_kwargs", what)
    epilogue = _sub(kw, "epilogue_kwargs", what)
    _refuse_unknown(kw, what)

    _check_filter(block, what)
    _check_default(block, "activation", ("lrelu",), what, "block")
    _refuse_unknown(block, f"{what} block_kwargs", ignored=("fp16_channels_last", "freeze_layers", "use_fp16"))
    group = epilogue.pop("mbstd_group_size", 4)
    group = None if group is None else _int(group, "mbstd_group_size", what)
    num_channels = _int(epilogue.pop("mbstd_num_channels", 1), "mbstd_num_channels", what)
    _check_default(epilogue, "activation", ("lrelu",), what, "epilogue")
    _refuse_unknown(epilogue, f"{what} epilogue_kwargs")
    try:
        return DiscriminatorConfig(img_resolution=img_resolution, img_channels=img_channels, c_dim=0,
                                   channel_base=channel_base, channel_max=channel_max, architecture=architecture,
                                   mbstd_group_size=group, mbstd_num_channels=num_channels, conv_clamp=conv_clamp,
                                   num_fp16_res=num_fp16_res)
    except ConfigError as exc:
        raise ModelFormatError(f"{what}: {exc}") from None


# ----------------------------------------------------------------------------------------------------------------
# Name mapping


def _is_filter_key(key: str) -> bool:
    return key == "resample_filter" or key.endswith(".resample_filter")


def _name_map(shapes: Dict[str, tuple]) -> "OrderedDict[str, str]":
    # Our parameter and buffer names are NVIDIA's (see generator.py / discriminator.py), so the map is the
    # identity on every tensor our network has; NVIDIA's resample_filter buffers have no counterpart.
    return OrderedDict((ours, ours) for ours in shapes)


def generator_name_map(config: GeneratorConfig) -> "OrderedDict[str, str]":
    """Our generator's state-dict key -> NVIDIA's name, for every tensor of our network."""
    return _name_map(state_shapes(Generator, config))


def discriminator_name_map(config: DiscriminatorConfig) -> "OrderedDict[str, str]":
    """Our discriminator's state-dict key -> NVIDIA's name, for every tensor of our network."""
    return _name_map(state_shapes(Discriminator, config))


def map_nvidia_state(ada_state: Dict[str, torch.Tensor], shapes: Dict[str, tuple], what: str
                     ) -> "OrderedDict[str, torch.Tensor]":
    """NVIDIA-named tensors -> our state dict (in our key order). Every ``resample_filter`` must be the
    constant kernel; any tensor left unmapped in either direction, or of the wrong shape, is refused."""
    name_map = _name_map(shapes)
    ada_to_ours = {ada: ours for ours, ada in name_map.items()}
    leftover = []
    for key, tensor in ada_state.items():
        if _is_filter_key(key) and key not in ada_to_ours:
            check_fir_kernel(tensor, key, what=what)
        elif key not in ada_to_ours:
            leftover.append(key)
    if leftover:
        raise ModelFormatError(unmapped_message(what, "tensors in the file have no counterpart in our network",
                                                leftover))
    missing = [ours for ours, ada in name_map.items() if ada not in ada_state]
    if missing:
        raise ModelFormatError(unmapped_message(what, "tensors of our network are missing from the file", missing))
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for ours, ada in name_map.items():
        t = ada_state[ada]
        if tuple(t.shape) != tuple(shapes[ours]):
            raise ModelFormatError(f"{what}: {ada} has shape {list(t.shape)}, the recorded architecture needs "
                                   f"{list(shapes[ours])}")
        if not t.is_floating_point():
            raise ModelFormatError(f"{what}: {ada} has dtype {t.dtype}, expected floating point")
        out[ours] = t.contiguous()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Loading


@dataclass
class NvidiaNetworks:
    """The networks of one NVIDIA pickle as our configs and state dicts (our key names and order)."""

    G_ema_config: GeneratorConfig
    G_ema_state: "OrderedDict[str, torch.Tensor]"
    G_config: Optional[GeneratorConfig] = None
    G_state: Optional["OrderedDict[str, torch.Tensor]"] = None
    D_config: Optional[DiscriminatorConfig] = None
    D_state: Optional["OrderedDict[str, torch.Tensor]"] = None
    info: Dict[str, Any] = field(default_factory=dict)


def _check_class(obj: Any, expected: str, what: str) -> PersistentObject:
    if not isinstance(obj, PersistentObject):
        raise ModelFormatError(f"{what} is not a network ({type(obj).__name__})")
    names = {m.class_name for m in _iter_modules(obj)}
    if "SynthesisInput" in names:
        raise ModelFormatError(f"{what} is a StyleGAN3 network, which is not supported")
    if obj.class_name != expected:
        raise ModelFormatError(f"{what} is a {obj.class_name}, expected a {expected}")
    return obj


def _generator(obj: Any, what: str) -> Tuple[GeneratorConfig, "OrderedDict[str, torch.Tensor]"]:
    obj = _check_class(obj, "Generator", what)
    config = check_network_config(generator_config_from_kwargs(init_kwargs(obj, _G_POSITIONAL, what), what), what)
    state = map_nvidia_state(flatten_module(obj), state_shapes(Generator, config), what)
    return config, state


def _discriminator(obj: Any, what: str) -> Tuple[DiscriminatorConfig, "OrderedDict[str, torch.Tensor]"]:
    obj = _check_class(obj, "Discriminator", what)
    config = check_network_config(discriminator_config_from_kwargs(init_kwargs(obj, _D_POSITIONAL, what), what),
                                  what)
    state = map_nvidia_state(flatten_module(obj), state_shapes(Discriminator, config), what)
    return config, state


def networks_from_unpickled(data: Any, what: str = "NVIDIA network pickle", with_G: bool = True,
                            with_D: bool = True) -> NvidiaNetworks:
    """Map an unpickled NVIDIA snapshot dict (as returned by :func:`unpickle_nvidia`) onto our networks."""
    if not isinstance(data, dict):
        raise ModelFormatError(f"{what}: not an NVIDIA network pickle (top level is {type(data).__name__}, "
                               f"expected a dict with G_ema)")
    if data.get("G_ema") is None:
        raise ModelFormatError(f"{what}: not an NVIDIA network pickle (no G_ema network; keys "
                               f"{sorted(map(str, data))[:8]})")
    g_ema_cfg, g_ema_state = _generator(data["G_ema"], f"{what}: G_ema")
    nets = NvidiaNetworks(g_ema_cfg, g_ema_state)
    if with_G and data.get("G") is not None:
        nets.G_config, nets.G_state = _generator(data["G"], f"{what}: G")
    if with_D and data.get("D") is not None:
        nets.D_config, nets.D_state = _discriminator(data["D"], f"{what}: D")
    tsk = data.get("training_set_kwargs")
    nets.info = {
        "keys": [str(k) for k in data],
        "training_set_kwargs": to_plain(tsk) if tsk is not None else None,
        "has_augment_pipe": data.get("augment_pipe") is not None,
        "num_fp16_res": g_ema_cfg.num_fp16_res,
    }
    return nets


def load_nvidia_pickle(source: Any, with_G: bool = True, with_D: bool = True,
                       what: Optional[str] = None) -> NvidiaNetworks:
    """Read a stylegan2-ada-pytorch network pickle (a path or the file's bytes) safely (see the module docstring);
    ``what`` names it in messages."""
    if not isinstance(source, (bytes, bytearray)):
        path, source = read_model_file(source)
        what = what or str(path)
    what = what or "NVIDIA network pickle"
    data = unpickle_nvidia(source, what=what)
    return networks_from_unpickled(data, what, with_G=with_G, with_D=with_D)
