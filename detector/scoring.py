"""Scoring an image's distance under each candidate network against that network's own calibrated distances, and
the attribution rule built on the scores (StyleGAN2 §5, turned into a decision among several networks).

The raw distance is not comparable across networks: a network that reconstructs *every* image closely (a sibling
trained on the same data) gives lower distances to images it never made than their own network does. So each
distance is scored against the network's own calibration (:class:`Reference`):

* ``relative = distance / own_median``: the distance in units of the median distance of the network's own
  generated images (its calibration's or self-calibration's). An image a network made comes back at about 1;
  under another network, at that network's scale for images it did not make.
* ``ratio = distance / threshold``: the distance in units of the network's own threshold. A full calibration's
  threshold is the target-FPR point of its real images; a self-calibration (generated images only) uses the
  :data:`SELF_QUANTILE` point of the network's own generated distances; a user's ``--threshold`` is taken as given.
* ``own_quantile``: the fraction of the network's own generated distances at or above the distance (1: closer than
  every image the network was calibrated with; small: rarely seen among its own images).
* ``real_rate``: the fraction of its calibration's real images at or below the distance (the false-positive rate
  a threshold at this distance would have had); None without real images.

:func:`decide` ranks the candidates by ``relative`` (by ``ratio`` when a compared candidate has no own-image
distances, e.g. a bare ``--threshold``; the decision says so) and attributes an image to the first when its
distance is within that network's own threshold (``ratio`` at most 1) and the runner-up's score is at least
``margin`` times larger; with a smaller margin the verdict is "ambiguous" and names both. The threshold is what
bounds the false-positive rate on real images; the own median is what makes networks comparable: dividing by
the threshold instead mixes in how closely each network fits *real* images, which handicaps a network whose
threshold sits close to its own images against a sibling whose threshold does not (docs/measurements.md, issue
24). A candidate without any calibration is not compared (and listed as such): its
distance alone cannot say whether it is close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

#: Self-calibration (no real images): "consistent with the network's own images" up to this quantile of its own
#: generated distances. The false-positive rate of such a verdict is unknown.
SELF_QUANTILE = 0.99

#: Runner-up's score over the best's needed to attribute (below it the verdict is ambiguous). Fixed on dev images
#: of the CelebA F network against its one-thread sibling (every margin >= 1.63 at lr 0.2) before the three-network
#: test case was run, and kept when the scores became relative to each network's own images (dev images of F, F1
#: and F2 under all three: docs/measurements.md, issue 24).
DEFAULT_MARGIN = 1.5

NOT_ATTRIBUTED = "not attributed"
NO_VERDICT = "no verdict"

# Kinds of reference a network can have.
CALIBRATION, SELF, USER, NONE = "calibration", "self", "user", "none"

# What candidates are ranked by (Decision.ranked_by).
RELATIVE, RATIO = "relative", "ratio"


@dataclass(frozen=True)
class Reference:
    """What a network's distances are judged against.

    kind        'calibration' (generated and real images measured), 'self' (its own generated images only),
                'user' (a threshold given by the user) or 'none'
    threshold   the distance at ratio 1, None for kind 'none'
    generated   its calibration's generated distances (sorted); real: its real distances (sorted)
    own_median  ``median`` when given (e.g. from a case report, which keeps the median only), else the median of
                ``generated``; None without either: the network's scale for its own images
    """

    name: str
    kind: str
    threshold: Optional[float] = None
    generated: Tuple[float, ...] = ()
    real: Tuple[float, ...] = ()
    target_fpr: Optional[float] = None
    median: Optional[float] = None

    def __post_init__(self) -> None:
        if self.kind not in (CALIBRATION, SELF, USER, NONE):
            raise ValueError(f"unknown reference kind {self.kind!r}")
        if (self.kind == NONE) != (self.threshold is None):
            raise ValueError("a reference has a threshold exactly when its kind is not 'none'")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"{self.name}: threshold must be > 0, got {self.threshold}")
        object.__setattr__(self, "generated", tuple(sorted(float(v) for v in self.generated)))
        object.__setattr__(self, "real", tuple(sorted(float(v) for v in self.real)))
        if self.generated and not all(math.isfinite(g) for g in self.generated):
            raise ValueError(f"{self.name}: own generated distances must be finite")
        if self.own_median is not None and not self.own_median > 0:
            raise ValueError(f"{self.name}: the median of its own images' distances must be > 0")

    @property
    def own_median(self) -> Optional[float]:
        if self.median is not None:
            return float(self.median)
        return float(np.median(self.generated)) if self.generated else None

    @classmethod
    def from_calibration(cls, name: str, calibration: Optional[Mapping[str, Any]],
                         override: Optional[float] = None) -> "Reference":
        """The reference of a network from its calibration record (a dict as stored) and the user's threshold
        override: the override wins; a record with real distances is a full calibration; one with generated
        distances only a self-calibration; nothing at all is kind 'none'."""
        cal = calibration or {}
        gen = tuple(cal.get("generated_distances") or ())
        real = tuple(cal.get("real_distances") or ())
        if override is not None:
            return cls(name, USER, float(override), gen, real, None)
        if real and cal.get("threshold") is not None:
            return cls(name, CALIBRATION, float(cal["threshold"]), gen, real, cal.get("target_fpr"))
        if gen:
            return cls(name, SELF, self_threshold(gen), gen, (), None)
        return cls(name, NONE)


def self_threshold(generated: Sequence[float], quantile: float = SELF_QUANTILE) -> float:
    """The :data:`SELF_QUANTILE` point of a network's own generated distances (linear interpolation)."""
    g = np.asarray(generated, dtype=np.float64)
    if g.size == 0 or not np.all(np.isfinite(g)):
        raise ValueError("a self-calibration needs finite generated distances")
    return float(np.quantile(g, quantile))


@dataclass(frozen=True)
class Score:
    """One distance judged against one network's reference (see the module docstring)."""

    name: str
    distance: float
    kind: str
    threshold: Optional[float]
    ratio: Optional[float]
    own_quantile: Optional[float]
    real_rate: Optional[float]
    own_median: Optional[float] = None
    relative: Optional[float] = None

    @property
    def under(self) -> bool:
        """Within the network's own threshold (ratio <= 1)."""
        return self.ratio is not None and self.ratio <= 1.0

    def to_dict(self) -> Dict[str, Any]:
        return {"distance": self.distance, "reference": self.kind, "threshold": self.threshold,
                "ratio": self.ratio, "own_median": self.own_median, "relative": self.relative,
                "own_quantile": self.own_quantile, "real_rate": self.real_rate}


def score(distance: float, ref: Reference) -> Score:
    """Judge one distance against one reference. A NaN distance gets no ratio (it can never be attributed)."""
    d = float(distance)
    finite = math.isfinite(d)
    ratio = d / ref.threshold if ref.threshold is not None and finite else None
    own = (sum(1 for g in ref.generated if g >= d) / len(ref.generated)) if ref.generated and finite else None
    real = (sum(1 for r in ref.real if r <= d) / len(ref.real)) if ref.real and finite else None
    med = ref.own_median
    relative = d / med if med is not None and finite else None
    return Score(ref.name, d, ref.kind, ref.threshold, ratio, own, real, med, relative)


def generated_by(name: str) -> str:
    return f"generated by {name}"


def consistent_with(name: str) -> str:
    return f"consistent with {name}'s own images"


def ambiguous(a: str, b: str) -> str:
    return f"ambiguous: {a} or {b}"


@dataclass(frozen=True)
class Decision:
    """The verdict on one image among its candidate networks.

    verdict      'generated by N', "consistent with N's own images" (N self-calibrated: false-positive rate
                 unknown), 'ambiguous: N or M', 'not attributed', or 'no verdict' (no candidate has a reference)
    network      the attributed network (None unless the verdict names one network)
    best         the compared network with the smallest score (``ranked_by``: 'relative' or 'ratio')
    runner_up    the compared network with the next-smallest score, and ``margin`` = its score / the best score
    scores       every candidate's :class:`Score`
    uncompared   candidates without any reference (their distance is reported, not judged)
    """

    verdict: str
    network: Optional[str]
    best: Optional[str]
    runner_up: Optional[str]
    margin: Optional[float]
    scores: Dict[str, Score]
    uncompared: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = field(default=())
    ranked_by: str = RELATIVE

    @property
    def is_ambiguous(self) -> bool:
        return self.verdict.startswith("ambiguous")

    def to_dict(self) -> Dict[str, Any]:
        margin = self.margin if self.margin is None or math.isfinite(self.margin) else None
        return {"verdict": self.verdict, "network": self.network, "best": self.best, "runner_up": self.runner_up,
                "margin": margin, "ranked_by": self.ranked_by, "uncompared": list(self.uncompared),
                "notes": list(self.notes),
                "scores": {name: s.to_dict() for name, s in self.scores.items()}}


def decide(distances: Mapping[str, float], references: Mapping[str, Reference],
           margin: float = DEFAULT_MARGIN, ranked_by: Optional[str] = None) -> Decision:
    """Attribute one image among candidate networks (``distances``: name -> distance; ``references``: name ->
    :class:`Reference`). The rule is the module docstring's; equal scores count as margin 1 (ambiguous), and
    names break ties in the ordering only, so the result does not depend on the order the networks came in.
    ``ranked_by``: None (the rule: :func:`ranking`), or RATIO to rank by threshold ratios whatever the references
    hold (the first rule, kept for comparisons)."""
    if not distances:
        raise ValueError("decide needs at least one network's distance")
    if not margin >= 1:
        raise ValueError(f"margin must be >= 1, got {margin}")
    missing = [name for name in distances if name not in references]
    if missing:
        raise ValueError(f"no reference for network(s) {missing}")
    scores = {name: score(d, references[name]) for name, d in distances.items()}
    uncompared = tuple(sorted(name for name, s in scores.items() if s.kind == NONE))
    notes = []
    if uncompared:
        notes.append(f"not compared, no calibration: {', '.join(uncompared)} (run `detect calibrate`)")
    compared = [s for s in scores.values() if s.ratio is not None]
    if not compared:
        return Decision(NO_VERDICT, None, None, None, None, scores, uncompared, tuple(notes))
    if ranked_by not in (None, RATIO):
        raise ValueError(f"ranked_by must be None or {RATIO!r}, got {ranked_by!r}")
    by = ranked_by or ranking(compared)
    if by == RATIO and len(compared) > 1:
        bare = sorted(s.name for s in compared if s.relative is None)
        notes.append(f"compared in units of their thresholds (no calibration of their own images: "
                     f"{', '.join(bare)}; `detect calibrate` makes one)")
    ranked = sorted(compared, key=lambda s: (getattr(s, by), s.name))
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    m = None
    if runner is not None:
        b, r = getattr(best, by), getattr(runner, by)
        m = math.inf if b == 0 else r / b
    if not best.under:
        verdict, network = NOT_ATTRIBUTED, None
        within = [x.name for x in ranked[1:] if x.under]
        if within:
            notes.append(f"{best.name} scores best but is over its own threshold; {', '.join(within)}, within "
                         f"{'its' if len(within) == 1 else 'their'} own, score{'s' if len(within) == 1 else ''} "
                         f"further from {'its' if len(within) == 1 else 'their'} own images")
    elif m is not None and m < margin:
        verdict, network = ambiguous(best.name, runner.name), None
    else:
        network = best.name
        verdict = consistent_with(network) if best.kind == SELF else generated_by(network)
    if best.under and best.kind == SELF:
        notes.append(f"{best.name} has no real-image calibration: the false-positive rate is unknown")
    return Decision(verdict, network, best.name, runner.name if runner else None, m, scores, uncompared,
                    tuple(notes), by)


def ranking(scores: Sequence[Score]) -> str:
    """RELATIVE when every compared score has one (the rule), else RATIO for all of them."""
    return RELATIVE if all(s.relative is not None for s in scores) else RATIO


def far_factors(references: Mapping[str, Reference], margin: float = DEFAULT_MARGIN) -> Dict[str, float]:
    """For early decisions among several candidates: per network, the factor f such that a distance ending at or
    above ``f x threshold`` under it can change no verdict of :func:`decide` at ``margin`` or a smaller one. Such a
    network is not attributed (f >= 1) and cannot be the best or spoil the margin of any network j within its own
    threshold: in relative units j scores at most ``c_j = threshold_j / own_median_j``, so f_k = margin x max_j c_j
    / c_k (the margin itself when ranked by ratio). One compared candidate: 1."""
    compared = {n: r for n, r in references.items() if r.threshold is not None}
    if len(compared) <= 1:
        return {n: 1.0 for n in references}
    if any(r.own_median is None for r in compared.values()):
        return {n: float(margin) for n in references}
    c = {n: r.threshold / r.own_median for n, r in compared.items()}
    top = max(c.values())
    return {n: max(float(margin), float(margin) * top / c[n]) if n in c else float(margin) for n in references}


__all__ = ["Reference", "Score", "Decision", "score", "decide", "ranking", "far_factors", "self_threshold",
           "SELF_QUANTILE", "DEFAULT_MARGIN", "NOT_ATTRIBUTED", "NO_VERDICT", "CALIBRATION", "SELF", "USER", "NONE",
           "RELATIVE", "RATIO"]
