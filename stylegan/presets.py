"""Named presets: the one place a preset name is defined, with its network shape and its training settings.

Each entry of :data:`PRESET_TABLE` gives the generator (a StyleGAN2 :class:`GeneratorConfig` with its
:class:`DiscriminatorConfig`, or a config-A :class:`StyleGAN1Config`) and the training hyper-parameters
(:class:`stylegan.training_config.TrainingConfig` fields). paper-f / paper-e follow StyleGAN2 App. B and ADA's
'paper256'; cifar follows ADA's cifar setting; celeba32 and cpu-tiny are ours. Config A (the original StyleGAN):
'stylegan1' is StyleGAN's own setting (1024 px, R1 gamma 10, style mixing 0.9, EMA 10 kimg, progressive growing
600 + 600 kimg per resolution); 'config-a' has celeba32's training settings and network sizes without the
path-length term, growing 4 -> 32 in 180 kimg (30 + 30 per resolution) of the 300, so that config A and config F
('celeba32') compare at the same resolution and budget; 'config-a-tiny' is for tests and demos.

The views :data:`PRESETS` (StyleGAN2 network pairs), :data:`TRAINING_PRESETS` and :data:`STYLEGAN1_PRESETS` are
derived from the table. Channels per resolution: ``min(channel_base // res, channel_max)`` (StyleGAN2 App. B).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from .config import ConfigError, DiscriminatorConfig, GeneratorConfig
from .stylegan1 import StyleGAN1Config

__all__ = ["Preset", "NetworkPreset", "PRESET_TABLE", "PRESETS", "TRAINING_PRESETS", "STYLEGAN1_PRESETS",
           "get_preset"]


@dataclass(frozen=True)
class NetworkPreset:
    """A named pair of StyleGAN2 generator and discriminator configs."""

    name: str
    description: str
    G: GeneratorConfig
    D: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


@dataclass(frozen=True)
class Preset:
    """One named preset: ``G`` (GeneratorConfig or StyleGAN1Config), ``D`` (StyleGAN2 only; config A derives its
    discriminator from G) and the training settings."""

    name: str
    description: str
    G: Union[GeneratorConfig, StyleGAN1Config]
    D: Optional[DiscriminatorConfig]
    training: Mapping[str, Any]

    @property
    def arch(self) -> str:
        return "stylegan1" if isinstance(self.G, StyleGAN1Config) else "stylegan2"


def _stylegan2(res, *, z_dim=512, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512,
               mbstd_group_size=4) -> Tuple[GeneratorConfig, DiscriminatorConfig]:
    return (GeneratorConfig(z_dim=z_dim, w_dim=w_dim, img_resolution=res, mapping_layers=mapping_layers,
                            channel_base=channel_base, channel_max=channel_max),
            DiscriminatorConfig(img_resolution=res, channel_base=channel_base, channel_max=channel_max,
                                mbstd_group_size=mbstd_group_size))


def _entry(name: str, description: str, net, **training: Any) -> Preset:
    G, D = net if isinstance(net, tuple) else (net, None)
    return Preset(name, description, G, D, MappingProxyType(training))


PRESET_TABLE: Tuple[Preset, ...] = (
    _entry("paper-f", "StyleGAN2 config F (1024 px, 512 channels max, channel_base 32768)", _stylegan2(1024),
           batch_size=32, g_lr=0.002, d_lr=0.002, r1_gamma=10.0, ema_kimg=10.0, total_kimg=25000),
    _entry("paper-e", "StyleGAN2 config E / ADA 'paper256' (256 px, channel_base 16384)",
           _stylegan2(256, channel_base=16384),
           batch_size=64, g_lr=0.0025, d_lr=0.0025, r1_gamma=1.0, ema_kimg=20.0, total_kimg=25000),
    _entry("cifar", "ADA 'cifar' (32 px, channel_base 16384, mapping depth 2)",
           _stylegan2(32, channel_base=16384, mapping_layers=2, mbstd_group_size=32),
           batch_size=64, g_lr=0.0025, d_lr=0.0025, r1_gamma=0.01, ema_kimg=500.0, ema_rampup=0.05,
           style_mixing_prob=0.0, pl_weight=0.0, total_kimg=100000),
    _entry("celeba32", "32 px faces on CPU (channel_max 128, mapping depth 8)",
           _stylegan2(32, channel_base=16384, channel_max=128),
           batch_size=16, g_lr=0.0025, d_lr=0.0025, r1_gamma=0.05, ema_kimg=5.0, ema_rampup=0.05,
           xflip=True, total_kimg=300, tick_kimg=2.0, snapshot_ticks=5, image_ticks=5),
    _entry("cpu-tiny", "16 px, 32 channels, z/w 64, mapping depth 2: unit tests and quick demos",
           _stylegan2(16, z_dim=64, w_dim=64, mapping_layers=2, channel_base=256, channel_max=32),
           batch_size=8, g_lr=0.0025, d_lr=0.0025, r1_gamma=1.0, ema_kimg=1.0, ema_rampup=0.05,
           total_kimg=20, tick_kimg=0.5, snapshot_ticks=4, image_ticks=4, grid_size=16),
    _entry("stylegan1", "StyleGAN config A as published (1024 px, progressive growing 600 + 600 kimg)",
           StyleGAN1Config(),
           batch_size=32, g_lr=0.002, d_lr=0.002, r1_gamma=10.0, ema_kimg=10.0, total_kimg=25000,
           style_mixing_prob=0.9, progressive=True, lod_training_kimg=600, lod_transition_kimg=600),
    _entry("config-a", "config A at celeba32's sizes and budget (32 px, growing 4 -> 32 in 180 kimg)",
           StyleGAN1Config(z_dim=512, w_dim=512, img_resolution=32, mapping_layers=8, channel_base=16384,
                           channel_max=128),
           batch_size=16, g_lr=0.0025, d_lr=0.0025, r1_gamma=0.05, ema_kimg=5.0, ema_rampup=0.05,
           xflip=True, total_kimg=300, tick_kimg=2.0, snapshot_ticks=5, image_ticks=5,
           style_mixing_prob=0.9, progressive=True, lod_training_kimg=30, lod_transition_kimg=30),
    _entry("config-a-tiny", "config A for tests and demos (16 px, z/w 32, mapping depth 2)",
           StyleGAN1Config(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=256,
                           channel_max=32),
           batch_size=8, g_lr=0.0025, d_lr=0.0025, r1_gamma=1.0, ema_kimg=1.0, ema_rampup=0.05,
           total_kimg=20, tick_kimg=0.5, snapshot_ticks=4, image_ticks=4, grid_size=16,
           style_mixing_prob=0.9, progressive=True, lod_training_kimg=2, lod_transition_kimg=2),
)

#: StyleGAN2 network shapes by preset name.
PRESETS: Dict[str, NetworkPreset] = {p.name: NetworkPreset(p.name, p.description, p.G, p.D)
                                     for p in PRESET_TABLE if p.arch == "stylegan2"}
#: Training hyper-parameters by preset name (every preset).
TRAINING_PRESETS: Dict[str, Dict[str, Any]] = {p.name: dict(p.training) for p in PRESET_TABLE}
#: Generator shapes of the config-A presets.
STYLEGAN1_PRESETS: Dict[str, StyleGAN1Config] = {p.name: p.G for p in PRESET_TABLE if p.arch == "stylegan1"}


def get_preset(name: str, img_resolution: Optional[int] = None) -> NetworkPreset:
    """Look up a StyleGAN2 preset; ``img_resolution`` overrides the preset's resolution in both networks."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
    if img_resolution is not None:
        preset = dataclasses.replace(
            preset,
            G=dataclasses.replace(preset.G, img_resolution=img_resolution),
            D=dataclasses.replace(preset.D, img_resolution=img_resolution),
        )
    return preset
