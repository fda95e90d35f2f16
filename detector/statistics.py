"""Pure statistics of a calibration (StyleGAN2 §5, Fig. 9): how well two samples of distances separate, and a
decision threshold with a stated false-positive rate.

Generated images are the positive class and *lower distance = more "generated"*; the rule is
``distance <= threshold``. :func:`threshold_at_fpr` picks the largest threshold whose empirical false-positive rate
on the reals does not exceed the target; :func:`clopper_pearson` gives an exact binomial confidence interval for
the achieved rate; :func:`roc_auc` (Mann-Whitney) and :func:`roc_curve` describe the separation. All are pure
functions of lists of floats.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
from scipy.stats import beta

# Slack when turning a target rate into a count: floor(target * n + _COUNT_EPS) (0.29 * 100 is 28.999999999999996).
_COUNT_EPS = 1e-9


def _as_array(x: Sequence[float], what: str, allow_empty: bool = False) -> np.ndarray:
    a = np.asarray(list(x), dtype=np.float64).reshape(-1)
    if a.size == 0 and not allow_empty:
        raise ValueError(f"{what} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return a


def roc_auc(gen_distances: Sequence[float], real_distances: Sequence[float]) -> float:
    """Area under the ROC curve with generated images as the positive class and lower distance meaning "more
    generated": ``P(d_gen < d_real) + 0.5 * P(d_gen == d_real)`` over all (generated, real) pairs (the
    Mann-Whitney U statistic divided by ``n_gen * n_real``). 1 = perfect separation, 0.5 = chance, 0 = reversed."""
    g = _as_array(gen_distances, "gen_distances")
    r = np.sort(_as_array(real_distances, "real_distances"))
    above = r.size - np.searchsorted(r, g, side="right")  # reals strictly farther than each generated image
    ties = np.searchsorted(r, g, side="right") - np.searchsorted(r, g, side="left")
    u2 = 2 * int(above.sum()) + int(ties.sum())  # twice U, an exact integer
    return u2 / (2.0 * g.size * r.size)


def roc_curve(gen_distances: Sequence[float], real_distances: Sequence[float]
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for the rule ``distance <= threshold``, thresholds increasing.

    The first point is (0, 0) at threshold -inf; then one point per distinct distance value in either sample,
    with ``fpr`` = fraction of reals and ``tpr`` = fraction of generated images at or below it; the last point is
    (1, 1). Tied values form one point, so the trapezoidal area under the curve equals :func:`roc_auc`.
    """
    g = np.sort(_as_array(gen_distances, "gen_distances"))
    r = np.sort(_as_array(real_distances, "real_distances"))
    values = np.unique(np.concatenate([g, r]))
    fpr = np.searchsorted(r, values, side="right") / r.size
    tpr = np.searchsorted(g, values, side="right") / g.size
    return (np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr]),
            np.concatenate([[-np.inf], values]))


def allowed_false_positives(n_real: int, target_fpr: float) -> int:
    """The most reals that may fall at or below the threshold: ``floor(target_fpr * n_real)`` (with a 1e-9 slack
    for binary fractions)."""
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    return int(math.floor(target_fpr * n_real + _COUNT_EPS))


def threshold_at_fpr(real_distances: Sequence[float], target_fpr: float) -> float:
    """The largest threshold t whose empirical false-positive rate ``#{real <= t} / n_real`` is <= target_fpr.

    With the reals sorted r_1 <= ... <= r_n and k = floor(target_fpr * n) false positives allowed, every t below
    r_{k+1} qualifies and r_{k+1} itself does not, so the answer is the largest float below r_{k+1}
    (``nextafter(r_{k+1}, -inf)``): at most k reals are flagged and every generated image closer than r_{k+1} is
    caught.

    Ties: reals with equal distances are flagged together or not at all. When r_k == r_{k+1} the threshold still
    sits just below r_{k+1}, so all of the tied reals fall above it and the achieved rate is *below* the target
    (never above it).

    With few reals and a tiny target (k = 0, e.g. 50 reals at 1 %) the threshold falls below every real: that is
    the honest answer, since no real image can be flagged without exceeding the target; the confidence interval
    of the achieved rate (:func:`clopper_pearson` with k = 0) then says how little 0 / n proves.
    """
    r = np.sort(_as_array(real_distances, "real_distances"))
    k = allowed_false_positives(r.size, target_fpr)
    if k >= r.size:  # cannot happen with target_fpr < 1
        return float("inf")
    return float(np.nextafter(r[k], -np.inf))


def rate_at(distances: Sequence[float], threshold: float) -> Tuple[int, int]:
    """(number of distances <= threshold, number of distances)."""
    a = _as_array(distances, "distances", allow_empty=True)
    return int(np.count_nonzero(a <= threshold)), int(a.size)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for a binomial proportion with k successes in n trials:
    ``(Beta.ppf(alpha/2, k, n-k+1), Beta.ppf(1-alpha/2, k+1, n-k))`` with ``alpha = 1 - confidence``
    (:func:`scipy.stats.beta.ppf`); the lower bound is 0 when k = 0 and the upper 1 when k = n (then e.g.
    upper = 1 - (alpha/2)^(1/n) for k = 0). The same interval as ``scipy.stats.binomtest(k, n).proportion_ci(
    confidence, method="exact")``, without its root-finding tolerance."""
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def reals_needed(target_fpr: float, confidence: float = 0.95) -> int:
    """The fewest real images that, with none of them flagged, put the upper end of the two-sided
    :func:`clopper_pearson` interval at or below ``target_fpr``: ``1 - (alpha/2)^(1/n) <= target_fpr``."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    alpha = 1.0 - confidence
    n = math.ceil(math.log(alpha / 2) / math.log(1.0 - target_fpr))
    while n > 1 and clopper_pearson(0, n - 1, confidence)[1] <= target_fpr:  # guard against rounding up too far
        n -= 1
    while clopper_pearson(0, n, confidence)[1] > target_fpr:
        n += 1
    return n
