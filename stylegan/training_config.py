"""The configuration of a training run (:class:`TrainingConfig`) and its construction from a named preset.

Defaults are StyleGAN2 config F's training settings (Karras et al. 2020, App. B); :func:`training_config_for`
combines a preset of :mod:`stylegan.presets` (network shape and training settings) with overrides. ``arch``
'stylegan1' trains the original StyleGAN's config A (:mod:`stylegan.stylegan1`), optionally with PGGAN's
progressive growing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .config import ConfigError, DiscriminatorConfig, GeneratorConfig, _check_resolution
from .formats.ours import get_arch
from .presets import PRESETS, STYLEGAN1_PRESETS, TRAINING_PRESETS, get_preset
from .stylegan1 import StyleGAN1Config, stylegan1_discriminator_config

__all__ = ["TRAINABLE_ARCHS", "TrainingConfig", "training_config_for", "stylegan1_config_like"]

#: Architectures the trainer can train (names of the arch registry of :mod:`stylegan.formats.ours`).
TRAINABLE_ARCHS = ("stylegan2", "stylegan1")


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that defines a run. Defaults are StyleGAN2 config F's training settings (App. B).

    ``arch`` 'stylegan2' (G a GeneratorConfig) or 'stylegan1' (config A: G a StyleGAN1Config, ``pl_weight`` 0).
    ``G`` / ``D`` left at None get the arch's default: GeneratorConfig() / DiscriminatorConfig() for stylegan2,
    StyleGAN1Config() / ``stylegan1_discriminator_config(G)`` for stylegan1. ``progressive`` (stylegan1 only):
    PGGAN progressive growing from ``initial_resolution`` with ``lod_training_kimg`` of stabilisation and
    ``lod_transition_kimg`` of fade-in per resolution; ``pg_reset_opt`` clears the Adam states when the
    resolution changes (StyleGAN's reset_opt_for_new_lod).
    """

    G: Any = None
    D: Optional[DiscriminatorConfig] = None
    preset: str = "custom"
    data: str = ""
    total_kimg: float = 25000.0
    batch_size: int = 32
    g_lr: float = 0.002
    d_lr: float = 0.002
    betas: Tuple[float, float] = (0.0, 0.99)
    adam_eps: float = 1e-8
    r1_gamma: float = 10.0
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    style_mixing_prob: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: Optional[float] = None
    xflip: bool = False
    seed: int = 0
    tick_kimg: float = 4.0
    snapshot_ticks: int = 5
    image_ticks: int = 5
    keep_snapshots: int = 3
    grid_size: int = 16
    arch: str = "stylegan2"
    progressive: bool = False
    lod_training_kimg: float = 600.0
    lod_transition_kimg: float = 600.0
    initial_resolution: int = 4
    pg_reset_opt: bool = True

    def __post_init__(self) -> None:
        if self.arch not in TRAINABLE_ARCHS:
            raise ConfigError(f"arch must be one of {', '.join(TRAINABLE_ARCHS)}, got {self.arch!r}")
        g_cls = StyleGAN1Config if self.arch == "stylegan1" else GeneratorConfig
        if self.G is None:
            object.__setattr__(self, "G", g_cls())
        if not isinstance(self.G, g_cls):
            raise ConfigError(f"arch {self.arch!r} needs G to be a {g_cls.__name__}, got {type(self.G).__name__}")
        if self.D is None:
            object.__setattr__(self, "D", stylegan1_discriminator_config(self.G) if self.arch == "stylegan1"
                               else DiscriminatorConfig())
        if not isinstance(self.D, DiscriminatorConfig):
            raise ConfigError(f"D must be a DiscriminatorConfig, got {type(self.D).__name__}")
        if self.arch == "stylegan1":
            if self.pl_weight != 0:
                raise ConfigError(f"pl_weight must be 0 for arch 'stylegan1' (config A has no path-length "
                                  f"regularisation), got {self.pl_weight}")
            if self.D.architecture == "skip":
                raise ConfigError("arch 'stylegan1' needs an 'orig' or 'resnet' discriminator, not 'skip'")
        if self.progressive:
            if self.arch != "stylegan1":
                raise ConfigError(f"progressive growing is only available for arch 'stylegan1' (config A), "
                                  f"not {self.arch!r}")
            _check_resolution(self.initial_resolution)
            if self.initial_resolution > self.G.img_resolution:
                raise ConfigError(f"initial_resolution {self.initial_resolution} exceeds img_resolution "
                                  f"{self.G.img_resolution}")
            if (self.lod_training_kimg < 0 or self.lod_transition_kimg < 0
                    or self.lod_training_kimg + self.lod_transition_kimg <= 0):
                raise ConfigError("lod_training_kimg and lod_transition_kimg must be >= 0 and not both 0")
        if self.G.img_resolution != self.D.img_resolution:
            raise ConfigError("G and D must have the same img_resolution")
        if self.batch_size < 1 or self.total_kimg <= 0:
            raise ConfigError("batch_size and total_kimg must be positive")
        if self.pl_weight > 0 and self.batch_size // self.pl_batch_shrink < 1:
            raise ConfigError("batch too small for the path-length batch shrink")
        group = self.D.mbstd_group_size
        if group is not None and self.batch_size % min(group, self.batch_size):
            raise ConfigError(f"batch_size {self.batch_size} must be divisible by the minibatch-std group {group}")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainingConfig":
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown training config fields: {sorted(unknown)}")
        arch = d.get("arch", "stylegan2")
        if arch not in TRAINABLE_ARCHS:
            raise ConfigError(f"arch must be one of {', '.join(TRAINABLE_ARCHS)}, got {arch!r}")
        spec = get_arch(arch)
        if isinstance(d.get("G"), dict):
            d["G"] = spec.generator_config.from_dict(d["G"])
        if isinstance(d.get("D"), dict):
            d["D"] = (spec.discriminator_config or DiscriminatorConfig).from_dict(d["D"])
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def replace(self, **changes: Any) -> "TrainingConfig":
        return dataclasses.replace(self, **changes)


def stylegan1_config_like(g: GeneratorConfig) -> StyleGAN1Config:
    """The config-A generator with a StyleGAN2 config's sizes (z/w, resolution, channels, mapping network)."""
    return StyleGAN1Config(z_dim=g.z_dim, w_dim=g.w_dim, img_resolution=g.img_resolution,
                           img_channels=g.img_channels, mapping_layers=g.mapping_layers,
                           mapping_lr_multiplier=g.mapping_lr_multiplier, w_avg_beta=g.w_avg_beta,
                           channel_base=g.channel_base, channel_max=g.channel_max)


def training_config_for(preset: str, img_resolution: Optional[int] = None, **overrides: Any) -> TrainingConfig:
    """The TrainingConfig of a named preset, with any field overridden (``None`` values are ignored).

    The config-A presets ('stylegan1', 'config-a', 'config-a-tiny') give ``arch='stylegan1'``; ``arch='stylegan1'``
    with a StyleGAN2 preset trains config A with that preset's sizes and training settings (and no path-length
    term). Config A's pl_weight is 0; overriding it with a positive value is a ConfigError.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    arch = overrides.pop("arch", None)
    if preset not in TRAINING_PRESETS and preset not in STYLEGAN1_PRESETS and preset not in PRESETS:
        known = sorted(set(TRAINING_PRESETS) | set(STYLEGAN1_PRESETS) | set(PRESETS))
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(known)}")
    kwargs: Dict[str, Any] = dict(TRAINING_PRESETS.get(preset, {}))
    if preset in STYLEGAN1_PRESETS:
        if arch not in (None, "stylegan1"):
            raise ConfigError(f"preset {preset!r} is a config-A (stylegan1) preset, not {arch!r}")
        arch = "stylegan1"
        G: Any = STYLEGAN1_PRESETS[preset]
        if img_resolution is not None:
            G = dataclasses.replace(G, img_resolution=img_resolution)
        D = stylegan1_discriminator_config(G)
    else:
        arch = arch or "stylegan2"
        if arch not in TRAINABLE_ARCHS:
            raise ConfigError(f"arch must be one of {', '.join(TRAINABLE_ARCHS)}, got {arch!r}")
        net = get_preset(preset, img_resolution)
        G, D = net.G, net.D
        if arch == "stylegan1":
            G = stylegan1_config_like(G)
            D = stylegan1_discriminator_config(G)
    if arch == "stylegan1":
        kwargs["pl_weight"] = 0.0
    kwargs.update(overrides)
    return TrainingConfig(G=G, D=D, preset=preset, arch=arch, **kwargs)
