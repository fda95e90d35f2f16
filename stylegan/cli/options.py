"""What the `stylegan` commands share: their error types, the choices they offer and the help panels of
`stylegan train`."""

from __future__ import annotations

import enum

from ..util.cli_support import user_errors as _user_errors


def _stylegan_errors() -> tuple:
    from ..config import ConfigError
    from ..data import DatasetError
    from ..formats import ModelFormatError
    from ..training import TrainingError

    return (ConfigError, DatasetError, ModelFormatError, TrainingError)


def user_errors(extra: tuple = ()):
    """The one-line error convention, for stylegan's own error types (and any ``extra``)."""
    return _user_errors(_stylegan_errors() + tuple(extra))


# Help panels of `stylegan train`.
OBJECTIVE = "Objective (App. B)"
NETWORK = "Network"
GROWING = "Progressive growing (config A)"
SCHEDULE = "Schedule"


class NoiseMode(str, enum.Enum):
    """stylegan.generator.NOISE_MODES."""

    const = "const"
    random = "random"
    none = "none"


class Preset(str, enum.Enum):
    """The training presets (stylegan.training.TRAINING_PRESETS)."""

    paper_f = "paper-f"
    paper_e = "paper-e"
    cifar = "cifar"
    celeba32 = "celeba32"
    cpu_tiny = "cpu-tiny"
    stylegan1 = "stylegan1"
    config_a = "config-a"
    config_a_tiny = "config-a-tiny"


class Arch(str, enum.Enum):
    """stylegan.training.TRAINABLE_ARCHS."""

    stylegan2 = "stylegan2"
    stylegan1 = "stylegan1"


class Crop(str, enum.Enum):
    """stylegan.images.CROPS."""

    center = "center"
    celeba = "celeba"
    none = "none"


class Space(str, enum.Enum):
    w = "w"
    z = "z"


class Sampling(str, enum.Enum):
    end = "end"
    full = "full"


PRESET_HELP = ("paper-f, paper-e, cifar, celeba32, cpu-tiny (StyleGAN2); stylegan1, config-a, config-a-tiny (the "
               "original StyleGAN, config A).")
