"""Early decisions from measured trajectories (detector.early, issue 27)."""

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


def test_bands_come_from_the_measured_ratios_widened_by_the_slack():
    """far = factor x threshold x 1.1 / min(final / d(t)); under = threshold / (1.1 max(final / d(t))), at most
    the threshold; every measured image counts, whichever side it ended on."""
    trajs = [[(10, 0.05), (20, 0.02)], [(10, 0.03), (20, 0.012)], [(10, 0.2), (20, 0.1)], [(10, 0.4), (20, 0.3)]]
    finals = [0.002, 0.004, 0.05, 0.2]
    b = decision_bands(trajs, finals, threshold=0.01, steps=30, slack=0.1)
    assert b.checkpoints == (10, 20) and b.n == 4
    # ratios at 10: 0.04 .. 0.5; at 20: 0.1 .. 0.667
    assert b.far == pytest.approx((0.011 / 0.04, 0.011 / 0.1))
    assert b.under == pytest.approx((0.01, 0.01))  # 0.01 / 0.55 and 0.01 / 0.733, capped at the threshold
    wide = decision_bands(trajs, finals, threshold=0.01, steps=30, factor=6.0, slack=0.1)
    assert wide.far == pytest.approx((0.066 / 0.04, 0.066 / 0.1))
    assert stop_point([(10, 0.3), (20, 0.2)], 0.1, b) == (10, 0.3, "far")
    assert stop_point([(10, 0.009), (20, 0.004)], 0.003, b) == (10, 0.009, "under")
    assert stop_point([(10, 0.009), (20, 0.004)], 0.003, b, allow_under=False) == (30, 0.003, None)
    assert stop_point([(10, 0.02), (20, 0.015)], 0.011, b) == (30, 0.011, None)
    # an image that rises a lot after step 10 widens the under side's margin there: nothing stops under
    rising = decision_bands(trajs + [[(10, 0.001), (20, 0.005)]], finals + [0.02], threshold=0.01, steps=30)
    assert rising.under[0] == pytest.approx(0.01 / (1.1 * 20))
    assert decision_bands([[(10, 0.0), (20, 0.1)]], [0.05], threshold=0.01, steps=30).checkpoints == (20,)
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
    assert out["mean_steps"] < STEPS

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
    measured = [[(c, 0.02) for c in CHECKPOINTS], own]  # ratios 0.5 and 1 at every checkpoint
    ref = {n: Reference(n, "calibration", threshold=th, generated=[0.002], real=[0.02]) for n in "AB"}
    image = {"A": (own, 0.008), "B": (runner, 0.011)}
    narrow = decision_bands(measured, [0.01, 0.008], th, STEPS, factor=1.0)  # far bound 0.022
    wrong = simulate([image], ref, {"A": narrow, "B": narrow}, margin=1.5)
    assert wrong["images"][0]["verdict"].startswith("ambiguous") and wrong["changed"] == [0]
    at_margin = decision_bands(measured, [0.01, 0.008], th, STEPS, factor=1.5)  # far bound 0.033
    assert simulate([image], ref, {"A": at_margin, "B": at_margin}, margin=1.5)["changed"] == []


def test_leave_one_out_finds_images_outside_the_others_envelope():
    """Out of sample, an image is stopped wrongly only when it moves beyond every other measured image by more
    than the slack: none in a population of smooth runs, and a real image that sits at generated-like distances
    early and rises late is caught."""
    rng = random.Random(1)
    gen, real = _population(rng)
    finals = [f for f, _ in gen + real]
    trajs = [t for _, t in gen + real]
    out = leave_one_out(trajs, finals, 0.01, STEPS)
    assert out["wrong"] == [] and out["closest"] > 1 and out["mean_steps"] < STEPS
    diver = [(c, 0.004 if c < 60 else 0.012) for c in CHECKPOINTS]
    out = leave_one_out(trajs + [diver], finals + [0.012], 0.01, STEPS)
    assert out["wrong"] == [len(finals)] and out["closest"] < 1
