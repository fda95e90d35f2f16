"""Typed network configurations (the named presets built from them are in :mod:`stylegan.presets`).

Every network in this package is built from one of these dataclasses, never from loose dicts. The field names
follow the vocabulary of the StyleGAN2 paper and of NVIDIA's reference implementation (``z_dim``, ``w_dim``,
``img_resolution``, ``channel_base`` ...) so that a config can be read against either.

Channels per resolution follow StyleGAN2 App. B / ADA: ``min(channel_base // res, channel_max)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

GENERATOR_ARCHITECTURES = ("skip", "orig", "resnet")
DISCRIMINATOR_ARCHITECTURES = ("resnet", "skip", "orig")


class ConfigError(ValueError):
    """A configuration that cannot describe a valid network."""


def _check_resolution(img_resolution: int) -> None:
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise ConfigError(f"img_resolution must be a power of two >= 4, got {img_resolution}")


def channels_for(res: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at resolution ``res`` (StyleGAN2 App. B)."""
    return min(channel_base // res, channel_max)


class GeneratorShape:
    """What every generator config derives from its resolution and channel settings (mixin for the dataclasses)."""

    img_resolution: int
    channel_base: int
    channel_max: int

    @property
    def log2_resolution(self) -> int:
        return int(math.log2(self.img_resolution))

    @property
    def block_resolutions(self) -> list:
        return [2**i for i in range(2, self.log2_resolution + 1)]

    @property
    def num_ws(self) -> int:
        """Number of per-layer w inputs: 2*log2(R) - 2 (two layers per resolution, counting the last ToRGB of
        StyleGAN2 or the 4x4 block's two layers of StyleGAN)."""
        return 2 * self.log2_resolution - 2

    def channels(self, res: int) -> int:
        return channels_for(res, self.channel_base, self.channel_max)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]):
        return _from_dict(cls, d)


@dataclass(frozen=True)
class GeneratorConfig(GeneratorShape):
    """StyleGAN2 generator (config E/F of the paper: 'skip' ToRGB outputs, weight demodulation).

    ``num_fp16_res`` is recorded for files that carry it; this package always computes in float32 (or float64).
    """

    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 0
    img_resolution: int = 1024
    img_channels: int = 3
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995
    channel_base: int = 32768
    channel_max: int = 512
    architecture: str = "skip"
    conv_clamp: Optional[float] = None
    num_fp16_res: int = 0

    def __post_init__(self) -> None:
        _check_resolution(self.img_resolution)
        if self.architecture not in GENERATOR_ARCHITECTURES:
            raise ConfigError(f"generator architecture must be one of {GENERATOR_ARCHITECTURES}, "
                              f"got {self.architecture!r}")
        if self.c_dim != 0:
            raise ConfigError("conditional generators (c_dim > 0) are not supported")
        for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "img_channels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.channel_base // self.img_resolution < 1 and self.channel_max >= 1:
            raise ConfigError(f"channel_base {self.channel_base} gives no channels at {self.img_resolution} px")

    @property
    def num_noise_inputs(self) -> int:
        """One noise map per 3x3 convolution: 2*log2(R) - 3."""
        return 2 * self.log2_resolution - 3


@dataclass(frozen=True)
class DiscriminatorConfig:
    """StyleGAN2 discriminator (config E/F: 'resnet'), with minibatch standard deviation in the epilogue."""

    img_resolution: int = 1024
    img_channels: int = 3
    c_dim: int = 0
    channel_base: int = 32768
    channel_max: int = 512
    architecture: str = "resnet"
    mbstd_group_size: Optional[int] = 4
    mbstd_num_channels: int = 1
    conv_clamp: Optional[float] = None
    num_fp16_res: int = 0

    def __post_init__(self) -> None:
        _check_resolution(self.img_resolution)
        if self.architecture not in DISCRIMINATOR_ARCHITECTURES:
            raise ConfigError(
                f"discriminator architecture must be one of {DISCRIMINATOR_ARCHITECTURES}, got {self.architecture!r}"
            )
        if self.c_dim != 0:
            raise ConfigError("conditional discriminators (c_dim > 0) are not supported")

    @property
    def block_resolutions(self) -> list:
        return [2**i for i in range(int(math.log2(self.img_resolution)), 2, -1)]

    def channels(self, res: int) -> int:
        return channels_for(res, self.channel_base, self.channel_max)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DiscriminatorConfig":
        return _from_dict(cls, d)


def _from_dict(cls, d: Dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**d)
