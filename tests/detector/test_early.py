"""Early decisions from measured trajectories (detector.early, issue 27)."""

import math
import random

import pytest

from detector.early import decision_bands, leave_one_out, simulate, stop_point
from detector.scoring import Reference

STEPS = 100
CHECKPOINTS = range(10, 100, 10)


def _trajectory(final: float, start: float, rng: random.Random, wobble: float = 0.05):
    """Clean distances that fall from ``start`` towards ``final`` (geometric, with multiplicative wobble)."""
    out = []
    for c in CHECKPOINTS:
        t = c / STEPS
        d = final * (start / final) ** ((1 - t) ** 2) * (1 + wobble * rng.uniform(-1, 1))
        out.append((c, max(d, final)))
    return out


def _population(rng, n_gen=30, n_real=30):
    gen = [(f, _trajectory(f, f * rng.uniform(5, 10), rng)) for f in (rng.uniform(0.001, 0.004)
                                                                   for _ in range(n_gen))]
    real = [(f, _trajectory(f, f * rng.uniform(1.5, 3), rng)) for f in (rng.uniform(0.012, 0.03)
                                                                     for _ in range(n_real))]
    return gen, real


def test_bands_are_the_measured_extremes_widened_by_the_slack():
    trajs = [[(10, 0.05), (20, 0.02)], [(10, 0.03), (20, 0.012)], [(10, 0.2), (20, 0.1)], [(10, 0.4), (20, 0.3)]]
    finals = [0.002, 0.004, 0.05, 0.2]
    b = decision_bands(trajs, finals, threshold=0.01, steps=30, slack=0.1)
    assert b.checkpoints == (10, 20) and b.n_under == 2 and b.n_far == 2
    assert b.far == pytest.approx((0.055, 0.022))  # the highest of the images ending under, x 1.1
    assert b.under == pytest.approx((0.01, 0.01))  # 0.2 / 1.1 and 0.1 / 1.1, capped at the threshold
    wide = decision_bands(trajs, finals, threshold=0.01, steps=30, factor=6.0, slack=0.1)
    assert wide.far == pytest.approx((0.22, 0.11)) and wide.n_far == 3  # the 0.05 ending is within 6 x
    assert stop_point([(10, 0.06), (20, 0.05)], 0.04, b) == (10, 0.06, "far")
    assert stop_point([(10, 0.009), (20, 0.004)], 0.003, b) == (10, 0.009, "under")
    assert stop_point([(10, 0.009), (20, 0.004)], 0.003, b, allow_under=False) == (30, 0.003, None)
    assert stop_point([(10, 0.02), (20, 0.015)], 0.011, b) == (30, 0.011, None)
    one_sided = decision_bands(trajs[:2], finals[:2], threshold=0.01, steps=30)
    assert one_sided.under == (0.0, 0.0) and math.isinf(one_sided.far[0]) is False
    assert decision_bands(trajs[2:], finals[2:], threshold=0.01, steps=30).far == (math.inf, math.inf)
    with pytest.raises(ValueError):
        decision_bands(trajs, finals[:2], threshold=0.01, steps=30)


def test_early_decisions_never_change_a_verdict_on_the_trajectories_they_were_set_from():
    """In sample, by construction: every measured image lies inside its own bands' envelope. One network (under
    and far stops) and three networks (far stops at the margin) alike."""
    rng = random.Random(0)
    gen, real = _population(rng)
    finals = [f for f, _ in gen + real]
    trajs = [t for _, t in gen + real]
    th = 0.01
    ref = Reference("G", "calibration", threshold=th, generated=finals[:30], real=finals[30:])
    bands = decision_bands(trajs, finals, th, STEPS)
    out = simulate([{"G": (t, f)} for t, f in zip(trajs, finals)], {"G": ref}, {"G": bands}, margin=1.5)
    assert out["changed"] == []
    assert out["mean_steps"] < 0.5 * STEPS  # the populations separate early here

    # Three networks: each image's own network gives its generated distance, the others real-like ones, some
    # of them close to the margin.
    names = ["A", "B", "C"]
    images = []
    for k in range(60):
        runs = {}
        for j, name in enumerate(names):
            if k < 45 and k % 3 == j:
                f, t = gen[k % 30]
            else:
                f = rng.uniform(0.006, 0.03)
                t = _trajectory(f, f * rng.uniform(1.5, 3), rng)
            runs[name] = (t, f)
        images.append(runs)
    refs = {n: Reference(n, "calibration", threshold=th, generated=finals[:30], real=finals[30:]) for n in names}
    per_net = {n: decision_bands([r[n][0] for r in images], [r[n][1] for r in images], th, STEPS, factor=1.5)
               for n in names}
    out = simulate(images, refs, per_net, margin=1.5)
    assert out["changed"] == []
    assert out["mean_steps"] < STEPS
    assert any(r["verdict"].startswith("ambiguous") for r in out["images"])  # the margin is exercised


def test_far_stops_below_the_margin_would_change_verdicts():
    """Why the far bound of several candidates is taken at the margin: bands at the threshold alone (factor 1)
    stop a runner-up that ends between 1 and margin x threshold, and its early (higher) distance turns an
    'ambiguous' verdict into an attribution."""
    th = 0.01
    own = [(c, 0.008) for c in CHECKPOINTS]
    runner = [(c, 0.03 if c <= 50 else 0.011) for c in CHECKPOINTS]
    ref = {n: Reference(n, "calibration", threshold=th, generated=[0.002], real=[0.02]) for n in "AB"}
    image = {"A": (own, 0.008), "B": (runner, 0.011)}
    others = [[(c, 0.02) for c in CHECKPOINTS]]  # the band's only image ending within threshold... at 0.005
    narrow = decision_bands(others + [own], [0.005, 0.008], th, STEPS, factor=1.0)
    wrong = simulate([image], ref, {"A": narrow, "B": narrow}, margin=1.5)
    assert wrong["images"][0]["verdict"].startswith("ambiguous") and wrong["changed"] == [0]
    at_margin = decision_bands(others + [own] + [runner], [0.005, 0.008, 0.011], th, STEPS, factor=1.5)
    assert simulate([image], ref, {"A": at_margin, "B": at_margin}, margin=1.5)["changed"] == []


def test_leave_one_out_finds_images_outside_the_others_envelope():
    """Out of sample, an image is stopped wrongly when it lies beyond the others' envelope by more than the
    slack: populations whose early distances overlap (generated images starting 5-10x above their end) have
    such images; well separated ones (3-5x) none."""
    rng = random.Random(1)
    gen, real = _population(rng)
    overlapping = leave_one_out([t for _, t in gen + real], [f for f, _ in gen + real], 0.01, STEPS)
    assert overlapping["wrong"] and overlapping["closest"] < 1
    assert all(i < len(gen) for i in overlapping["wrong"])  # generated images far-stopped early
    gen = [(f, _trajectory(f, f * rng.uniform(3, 5), rng)) for f in (rng.uniform(0.001, 0.003) for _ in range(60))]
    finals = [f for f, _ in gen + real]
    trajs = [t for _, t in gen + real]
    out = leave_one_out(trajs, finals, 0.01, STEPS)
    assert out["wrong"] == [] and out["closest"] > 1 and out["mean_steps"] < STEPS
    # A real image that dives late, from generated-like distances early on: out of every envelope.
    diver = [(c, 0.004 if c < 60 else 0.012) for c in CHECKPOINTS]
    out = leave_one_out(trajs + [diver], finals + [0.012], 0.01, STEPS)
    assert out["wrong"] == [len(finals)] and out["closest"] < 1
