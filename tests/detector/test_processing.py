"""What was done to each suspect image, said with every verdict (issue 26): the structured record, what of it
weakens a verdict, `--strict`, and the record in `check --json` and in a case's report."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from detector.cli import app
from detector.processing import Preprocessing, weaknesses
from stylegan.imageio import save_png
from tests.conftest import tiny_network

runner = CliRunner()


def test_summary_and_weaknesses_of_hand_made_records():
    clean = Preprocessing("PNG", (32, 32), (32, 32), 32)
    assert clean.summary() == "PNG 32x32, as is" and weaknesses(clean) == [] and not clean.changed_geometry
    p = Preprocessing("JPEG", (40, 30), (40, 30), 16, crop=(5, 0, 35, 30), resized_from=30,
                      jpeg={"quality": 75, "exact": True, "subsampling": "4:2:0"})
    assert p.summary() == "JPEG q75 (4:2:0) 40x30 -> centre crop 30x30 -> resized 30 -> 16"
    assert p.resize_factor == pytest.approx(16 / 30)
    w = weaknesses(p)
    assert len(w) == 3 and w[0].startswith("JPEG (quality 75)") and w[1].startswith("downscaled 1.88x")
    assert w[2].startswith("centre-cropped")
    up = Preprocessing("PNG", (16, 16), (16, 16), 32, resized_from=16)
    assert weaknesses(up) == ["upscaled 2.00x to the network's 32 px: with less detail than the network's images, "
                              "real images come back about as close as generated ones, so 'generated' is not "
                              "evidence"]
    # a calibration made on JPEG q75, resized images covers those steps
    assert weaknesses(p, {"jpeg": {"quality": 75}, "resized": True, "cropped": True}) == []
    assert Preprocessing.from_dict(p.to_dict()) == p
    odd = Preprocessing("JPEG", (16, 16), (16, 16), 16, jpeg={"quality": 83, "exact": False, "subsampling": "4:4:4"})
    assert odd.summary() == "JPEG ~q83 (not IJG tables) (4:4:4) 16x16, as is"


@pytest.fixture
def setup(tmp_path, lpips_weights):
    G = tiny_network(tmp_path / "g.pt")
    with torch.no_grad():
        save_png(G(torch.randn(1, 32), noise_mode="const")[0], tmp_path / "fake.png")
    rng = np.random.RandomState(1)
    Image.fromarray(rng.randint(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "real.jpg", quality=75)
    return tmp_path


def test_check_json_and_text_say_what_was_done(setup):
    t = setup
    args = ["check", str(t / "fake.png"), str(t / "real.jpg"), "--model", str(t / "g.pt"), "--steps", "3",
            "--threshold", "0.5", "--device", "cpu"]
    r = runner.invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    res = {x["path"].rsplit("/", 1)[-1]: x for x in json.loads(r.stdout)["results"]}
    jpg = res["real.jpg"]["preprocessing"]
    assert (jpg["format"], jpg["original_size"], jpg["crop"], jpg["resized_from"], jpg["resolution"]) == (
        "JPEG", [40, 30], [5, 0, 35, 30], 30, 16)
    assert jpg["jpeg"] == {"quality": 75, "exact": True, "subsampling": "4:2:0"}
    assert [w.split(" ")[0] for w in res["real.jpg"]["weaknesses"]] == ["JPEG", "downscaled", "centre-cropped"]
    png = res["fake.png"]["preprocessing"]
    assert (png["crop"], png["resized_from"], png["jpeg"]) == (None, None, None) and res["fake.png"]["weaknesses"] == []
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    assert "  processing: JPEG q75 (4:2:0) 40x30 -> centre crop 30x30 -> resized 30 -> 16" in text.stdout
    assert "  processing: PNG 16x16, as is" in text.stdout
    assert text.stdout.count("weaker than calibrated:") == 3


def test_strict_refuses_images_that_would_be_changed(setup):
    t = setup
    r = runner.invoke(app, ["check", str(t / "fake.png"), str(t / "real.jpg"), "--model", str(t / "g.pt"),
                            "--steps", "2", "--threshold", "0.5", "--device", "cpu", "--strict"])
    assert r.exit_code == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {t / 'real.jpg'}: 40x30 px would need cropping and resizing to become the network's "
                      f"16x16; --strict refuses to change images"]
    assert "fake.png: distance" in r.stdout  # the image that needs no change is still checked


def test_case_records_and_report_keep_the_processing(setup):
    t = setup
    (t / "in").mkdir()
    for name in ("fake.png", "real.jpg"):
        (t / "in" / name).write_bytes((t / name).read_bytes())
    r = runner.invoke(app, ["batch", str(t / "in"), "--model", str(t / "g.pt"), "--case", str(t / "case"),
                            "--steps", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", str(t / "case")])
    assert r.exit_code == 0, r.output
    doc = json.loads((t / "case" / "report" / "report.json").read_text())
    imgs = {i["paths"][0].rsplit("/", 1)[-1]: i for i in doc["images"]}
    assert imgs["real.jpg"]["preprocessing"]["jpeg"]["quality"] == 75
    assert len(imgs["real.jpg"]["weaknesses"]) == 3 and imgs["fake.png"]["weaknesses"] == []
    html = (t / "case" / "report" / "report.html").read_text()
    assert "processing: JPEG q75 (4:2:0) 40x30 -&gt; centre crop 30x30 -&gt; resized 30 -&gt; 16" in html
    assert "1 of 2 images went through processing the calibration did not cover" in html
    # the opening says what was checked, found and how sure, in words
    assert "<b>What was checked.</b> 2 distinct images against 1 network:" in html
    assert "<b>What was found.</b> 2 without a verdict (no calibration)." in html
    assert "g: not calibrated, so its distances get no verdict" in html
    # --strict is part of a case's settings: a resumed case keeps its choice
    r = runner.invoke(app, ["batch", str(t / "in"), "--model", str(t / "g.pt"), "--case", str(t / "case"),
                            "--steps", "2", "--device", "cpu", "--strict"])
    assert r.exit_code == 2 and "projector settings differ (strict)" in r.stderr
