"""The training objective and loop (StyleGAN2 App. B): hand-computed loss terms, lazy-regularisation corrections,
EMA, exact resume, bad input, and two gloo ranks staying identical."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from stylegan import loss as L
from stylegan.cli import app
from stylegan.config import DiscriminatorConfig, GeneratorConfig
from stylegan.data import build_dataset
from stylegan.formats.ours import read_network_file
from stylegan.generator import Generator
from stylegan.training import Trainer, TrainingError, latest_snapshot
from stylegan.training_config import TrainingConfig, training_config_for
from tests.conftest import shared_file, wait_for

# ----------------------------------------------------------------------------------------------------------------
# Loss terms against hand-computed values


def test_logistic_losses():
    logits = torch.tensor([0.0, 1.0, -2.0])
    torch.testing.assert_close(L.g_nonsaturating_loss(logits),
                               torch.tensor([math.log(2), math.log(1 + math.exp(-1)), math.log(1 + math.exp(2))]))
    real = torch.tensor([2.0, 0.0])
    fake = torch.tensor([-1.0, 0.5])
    expected = torch.tensor([math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2)),
                             math.log(1 + math.exp(0.5)) + math.log(2)])
    torch.testing.assert_close(L.d_logistic_loss(real, fake), expected)


def test_r1_penalty_of_a_linear_discriminator():
    a = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])  # D(x) = sum(a * x) -> grad = a, |grad|^2 = 1+4+0.25+9
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    logits = (x * a).sum(dim=[1, 2, 3])
    torch.testing.assert_close(L.r1_penalty(x, logits), torch.full((3,), 14.25))


def test_path_lengths_of_a_linear_synthesis():
    """img = M applied to sum over layers of ws: J^T y = M^T y at every layer, so the length is |M^T y|."""
    torch.manual_seed(3)
    M = torch.randn(5, 1 * 2 * 2)
    ws = torch.randn(2, 3, 5, requires_grad=True)
    img = (ws.sum(1) @ M).reshape(2, 1, 2, 2)
    y = torch.randn(2, 1, 2, 2)
    lengths = L.path_lengths(img, ws, y)
    expected = (y.reshape(2, 4) @ M.t()).norm(dim=1)
    torch.testing.assert_close(lengths, expected)
    pl_mean = L.update_pl_mean(torch.zeros([]), lengths, 0.01)
    torch.testing.assert_close(pl_mean, 0.01 * expected.mean())
    torch.testing.assert_close(L.path_length_penalty(lengths, pl_mean), (expected - pl_mean) ** 2)


def test_path_length_pieces_match_parity_fixture():
    fx = torch.load(shared_file("parity/ada32_G.pt"), weights_only=True)
    kw = fx["G_init_kwargs"]
    G = Generator(GeneratorConfig(img_resolution=32, channel_base=kw["synthesis_kwargs"]["channel_base"],
                                  channel_max=kw["synthesis_kwargs"]["channel_max"])).eval()
    G.load_state_dict({k: v for k, v in fx["G_state_dict"].items() if not k.endswith("resample_filter")})
    ws = fx["a_ws"].clone().requires_grad_(True)
    img = G.synthesis(ws, noise_mode="const")
    lengths = L.path_lengths(img, ws, fx["f_pl_noise"])
    torch.testing.assert_close(lengths, fx["f_pl_lengths"], rtol=5e-4, atol=0)
    pl_mean = L.update_pl_mean(torch.zeros([]), lengths, 0.01)
    torch.testing.assert_close(pl_mean, fx["f_pl_mean"].reshape([]), rtol=5e-4, atol=0)
    torch.testing.assert_close(L.path_length_penalty(lengths, pl_mean), fx["f_pl_penalty"], rtol=5e-4, atol=0)


def test_lazy_regularisation_correction():
    lr, betas = L.lazy_adam_hyperparameters(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.002 * 16 / 17)
    assert betas == pytest.approx((0.0, 0.99 ** (16 / 17)))
    lr, betas = L.lazy_adam_hyperparameters(0.0025, (0.5, 0.99), 4)
    assert lr == pytest.approx(0.002) and betas == pytest.approx((0.5**0.8, 0.99**0.8))
    assert L.lazy_adam_hyperparameters(0.002, (0.0, 0.99), 0) == (0.002, (0.0, 0.99))


def test_ema_formula():
    assert L.ema_beta(32, 10, 10**6) == pytest.approx(0.5 ** (32 / 10000))
    assert L.ema_beta(32, 10, 1000, ema_rampup=0.05) == pytest.approx(0.5 ** (32 / 50))
    assert L.ema_beta(32, 10, 10**6, ema_rampup=0.05) == pytest.approx(0.5 ** (32 / 10000))
    a = torch.nn.Linear(2, 2)
    b = torch.nn.Linear(2, 2)
    before = [p.detach().clone() for p in a.parameters()]
    L.update_ema(a, b, 0.9)
    for p_ema, p_old, p in zip(a.parameters(), before, b.parameters()):
        torch.testing.assert_close(p_ema, p + 0.9 * (p_old - p))


def test_style_mixing():
    ws = torch.zeros(4, 6, 3)
    ws2 = torch.ones(4, 6, 3)
    assert torch.equal(L.style_mix(ws, ws2, 0.0), ws)
    for seed in range(10):
        mixed = L.style_mix(ws, ws2, 1.0, generator=torch.Generator().manual_seed(seed))
        layer_from_2 = mixed[0, :, 0] == 1
        cutoff = int(layer_from_2.float().argmax())
        assert 1 <= cutoff < 6
        assert not layer_from_2[:cutoff].any() and layer_from_2[cutoff:].all()
        assert torch.equal(mixed[0], mixed[3])  # one crossover for the batch


# ----------------------------------------------------------------------------------------------------------------
# The loop


def _dataset(tmp_path: Path, res: int = 16, n: int = 32) -> Path:
    src = tmp_path / f"imgs{res}"
    src.mkdir()
    rng = np.random.RandomState(0)
    for i in range(n):
        Image.fromarray(rng.randint(0, 255, (res, res, 3), dtype=np.uint8)).save(src / f"{i:03d}.png")
    out = tmp_path / f"data{res}.h5"
    build_dataset(src, out, res)
    return out


def _tiny_config(data: Path, **kw) -> TrainingConfig:
    base = dict(data=str(data), total_kimg=0.064, tick_kimg=0.016, snapshot_ticks=100, image_ticks=2,
                grid_size=4, r1_interval=4, pl_interval=2)
    base.update(kw)
    return training_config_for("cpu-tiny", **base)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_exact_resume(tmp_path):
    """N iterations straight == N/2, stop (snapshot), resume, N/2: identical weights, EMA and pl mean."""
    data = _dataset(tmp_path)
    cfg = _tiny_config(data)
    straight = Trainer(cfg, tmp_path / "a")
    straight.start()
    final_a = straight.run()
    assert straight.iteration == 8
    stopped = Trainer(cfg, tmp_path / "b")
    stopped.start()
    assert stopped.run(max_iterations=3) is None
    resumed = Trainer.resume(tmp_path / "b")
    assert resumed.iteration == 3
    final_b = resumed.run()
    a, b = read_network_file(final_a), read_network_file(final_b)
    for key in ("G", "D", "G_ema"):
        assert _states_equal(a[key], b[key]), key
    torch.testing.assert_close(a["training_state"]["pl_mean"], b["training_state"]["pl_mean"], rtol=0, atol=0)
    assert a["training_state"]["cur_nimg"] == b["training_state"]["cur_nimg"] == 64
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    for key in ("loss/G", "loss/D", "loss/pl_penalty", "loss/r1_penalty", "pl/mean", "sec_per_kimg", "peak_rss_mb",
                "lr/G", "kimg"):
        assert any(key in entry for entry in log), key
    assert (tmp_path / "a" / "fakes-000000.png").exists()
    assert json.loads((tmp_path / "a" / "config.json").read_text())["preset"] == "cpu-tiny"


def test_training_moves_weights_and_tracks_w_avg(tmp_path, monkeypatch):
    import stylegan.training as T

    data = _dataset(tmp_path)
    trainer = Trainer(_tiny_config(data), tmp_path / "run")
    lengths = []  # the mean path length of every path-length step
    real_path_lengths = T.path_lengths

    def spy(*args, **kwargs):
        out = real_path_lengths(*args, **kwargs)
        lengths.append(float(out.detach().mean()))
        return out

    monkeypatch.setattr(T, "path_lengths", spy)
    g0 = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    for _ in range(4):
        trainer.train_step()
    changed = [k for k, v in trainer.G.state_dict().items() if not torch.equal(v, g0[k]) and "noise_const" not in k]
    assert "mapping.w_avg" in changed and "synthesis.b16.conv1.weight" in changed and "mapping.fc0.weight" in changed
    # pl_interval 2: path-length steps at iterations 0 and 2; pl_mean is their EMA (decay 0.01) from 0
    assert len(lengths) == 2
    expected = 0.0
    for m in lengths:
        expected += 0.01 * (m - expected)
    assert float(trainer.pl_mean) == pytest.approx(expected, rel=1e-5)
    # G_ema trails G: different from both its start and G itself.
    assert not torch.equal(trainer.G_ema.synthesis.b16.conv1.weight, trainer.G.synthesis.b16.conv1.weight)


def test_snapshots_rotate_and_latest_is_found(tmp_path):
    data = _dataset(tmp_path)
    cfg = _tiny_config(data, total_kimg=5.0, tick_kimg=0.032, snapshot_ticks=8, keep_snapshots=1, batch_size=32)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.start()
    trainer.run(max_iterations=35)  # 1.12 kimg: snapshots 000000 (x3), then 000001 replaces them
    snaps = sorted(p.name for p in (tmp_path / "run").glob("network-snapshot-*.pt"))
    assert snaps == ["network-snapshot-000001.pt"]
    assert latest_snapshot(tmp_path / "run").name == "network-snapshot-000001.pt"
    assert Trainer.resume(tmp_path / "run").iteration == 35


def test_bad_input(tmp_path):
    data = _dataset(tmp_path)
    with pytest.raises(TrainingError, match="resolution"):
        Trainer(training_config_for("cpu-tiny", img_resolution=32, data=str(data)), tmp_path / "r1")
    with pytest.raises(TrainingError):
        Trainer(training_config_for("cpu-tiny", data=str(tmp_path / "missing.h5")), tmp_path / "r2")
    with pytest.raises(TrainingError, match="does not exist"):
        Trainer.resume(tmp_path / "nope")
    trainer = Trainer(_tiny_config(data), tmp_path / "r3")
    trainer.start()
    trainer.run(max_iterations=1)
    with pytest.raises(TrainingError, match="another config"):
        Trainer.resume(tmp_path / "r3", expect=_tiny_config(data, r1_gamma=5.0))
    with pytest.raises(TrainingError, match="already holds a run"):
        Trainer(_tiny_config(data), tmp_path / "r3").start()


def test_cli_errors_are_one_line_exit_2(tmp_path):
    runner = CliRunner()
    data = _dataset(tmp_path)
    r = runner.invoke(app, ["train", "--data", str(data), "--preset", "cpu-tiny", "--res", "32"])
    assert r.exit_code == 2 and "error:" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["dataset", str(tmp_path / "empty"), str(tmp_path / "x.h5"), "--res", "16"])
    assert r.exit_code == 2 and "error:" in r.output
    r = runner.invoke(app, ["dataset", str(tmp_path / "imgs16"), str(tmp_path / "x.h5"), "--res", "48"])
    assert r.exit_code == 2 and "power of two" in r.output


def test_cli_train_and_resume(tmp_path):
    runner = CliRunner()
    data = _dataset(tmp_path)
    args = ["train", "--data", str(data), "--preset", "cpu-tiny", "--out", str(tmp_path / "runs"), "--run", "x",
            "--kimg", "0.032", "--tick", "0.016"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "x" / "network-final.pt").exists()
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "runs" / "x"), "--kimg", "0.048"])
    # a finished run keeps only network-final.pt: nothing to resume from, and the error says so
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1] == f"error: {tmp_path / 'runs' / 'x'} has no snapshot to resume from"


_TRAIN = [sys.executable, "-c", "import sys; from stylegan.cli import app; sys.argv[0] = 'stylegan'; app()", "train"]
_ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

# Runs `stylegan train` with a hook that signals the process itself on the N-th call of a Trainer method, i.e. at a
# chosen point inside a chosen iteration (a test driver: nothing of the kind is in the product).
_SIGNAL_DRIVER = """
import os, signal, sys
from stylegan.training import Trainer
method, n = sys.argv[1], int(sys.argv[2])
original, calls = getattr(Trainer, method), [0]
def hooked(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self, *args, **kwargs)
setattr(Trainer, method, hooked)
from stylegan.cli import app
sys.argv = ["stylegan", "train"] + sys.argv[3:]
app()
"""


def _final_state(run: Path) -> dict:
    return read_network_file(run / "network-final.pt")


def test_sigterm_inside_an_iteration_resumes_bit_for_bit(tmp_path):
    """SIGTERM at several points inside an iteration (G step, path-length step, D step, R1 step, a generator
    pass): the iteration finishes, the snapshot is taken after it, and the resumed run ends with weights equal
    bit for bit to an uninterrupted run (one thread, CPU)."""
    data = _dataset(tmp_path)
    args = ["--data", str(data), "--preset", "cpu-tiny", "--out", str(tmp_path / "runs"), "--kimg", "0.064",
            "--tick", "0.016", "--snap", "1000"]
    r = subprocess.run(_TRAIN + args + ["--run", "straight"], env=_ONE_THREAD, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    straight = _final_state(tmp_path / "runs" / "straight")
    # cpu-tiny, batch 8: iteration 0 steps G, path length, D, R1 (_step calls 1-4), iteration 1 G, D (5, 6) ...
    points = [("_step", 2, "path-length step, iteration 0"), ("_step", 4, "R1 step, iteration 0"),
              ("_step", 6, "D step, iteration 1"), ("_generate", 5, "D's fakes, iteration 1")]
    for method, n, where in points:
        name = f"{method.strip('_')}{n}"
        r = subprocess.run([sys.executable, "-c", _SIGNAL_DRIVER, method, str(n)] + args + ["--run", name],
                           env=_ONE_THREAD, capture_output=True, text=True)
        assert r.returncode == 143, (where, r.stderr)
        assert "after a whole iteration, snapshot written" in r.stderr, where
        run = tmp_path / "runs" / name
        snap = read_network_file(latest_snapshot(run))
        assert snap["training_state"]["iteration"] == (1 if "iteration 0" in where else 2), where
        assert not (run / "network-final.pt").exists()
        r = subprocess.run(_TRAIN + ["--resume", str(run)], env=_ONE_THREAD, capture_output=True, text=True)
        assert r.returncode == 0, (where, r.stderr)
        resumed = _final_state(run)
        for key in ("G", "D", "G_ema"):
            assert _states_equal(straight[key], resumed[key]), (where, key)
        assert torch.equal(straight["training_state"]["pl_mean"], resumed["training_state"]["pl_mean"]), where


def test_cli_train_signals_stop_cleanly_even_when_the_shell_ignored_sigint(tmp_path):
    """kill (SIGTERM, exit 143) and a SIGINT that the shell had ignored (exit 130) both stop training after the
    current iteration with a snapshot, and the run resumes."""
    data = _dataset(tmp_path)
    for sig, name, code in ((signal.SIGTERM, "term", 143), (signal.SIGINT, "int", 130)):
        run = tmp_path / "runs" / name
        cmd = _TRAIN + ["--data", str(data), "--preset", "cpu-tiny", "--out", str(tmp_path / "runs"), "--run", name,
                        "--kimg", "100", "--tick", "0.016", "--snap", "1000"]
        # preexec: start with SIGINT ignored, as a background job of a non-interactive shell is
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ONE_THREAD,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        log = run / "log.jsonl"
        wait_for(lambda log=log: log.exists() and log.read_text().count("\n") >= 2, proc, "no ticks logged")
        assert not list(run.glob("network-snapshot-*.pt"))  # --snap 1000: none written by the schedule
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == code, err
        assert "snapshot written" in err
        assert len(list(run.glob("network-snapshot-*.pt"))) == 1
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "runs" / "term"), "--kimg", "0.064"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "term" / "network-final.pt").exists()


def test_sigkill_then_resume_and_a_second_process_is_refused(tmp_path):
    """A run folder is locked while a run trains (a second process on it exits 2 naming the holder); after a
    SIGKILL the lock is gone, the run resumes from its last snapshot and the temporary files a kill in the middle
    of a write leaves are removed."""
    data = _dataset(tmp_path)
    run = tmp_path / "runs" / "k"
    proc = subprocess.Popen(_TRAIN + ["--data", str(data), "--preset", "cpu-tiny", "--out", str(tmp_path / "runs"),
                                      "--run", "k", "--kimg", "100", "--tick", "0.008", "--snap", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ONE_THREAD)
    wait_for(lambda: len(list(run.glob("network-snapshot-*.pt"))) >= 1 and (run / ".lock").exists(), proc,
              "no snapshot")
    second = subprocess.run(_TRAIN + ["--resume", str(run)], env=_ONE_THREAD, capture_output=True, text=True)
    assert second.returncode == 2, second.stderr
    assert f"run folder {run} is in use by pid {proc.pid} " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 2  # 'resuming ...' and the one-line error
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    leftover = run / ".network-snapshot-000123.pt.k1ll3d.tmp"  # what a kill inside an atomic write leaves
    leftover.write_bytes(b"half a snapshot")
    kimg = read_network_file(latest_snapshot(run))["training_state"]["cur_nimg"] / 1000
    r = subprocess.run(_TRAIN + ["--resume", str(run), "--kimg", f"{kimg + 0.016:.3f}"], env=_ONE_THREAD,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (run / "network-final.pt").exists()
    assert not leftover.exists() and not list(run.glob("*.tmp"))


# ----------------------------------------------------------------------------------------------------------------
# torch.distributed (gloo on CPU)


def _dist_worker(rank: int, world: int, init_file: str, data: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        cfg = _tiny_config(Path(data), total_kimg=0.032, batch_size=8)
        trainer = Trainer(cfg, Path(out_dir) / "run")
        trainer.start()
        torch.distributed.barrier()
        trainer.run()
        torch.save({"G": trainer.G.state_dict(), "D": trainer.D.state_dict(), "G_ema": trainer.G_ema.state_dict(),
                    "pl_mean": trainer.pl_mean, "indices_seen": trainer.stream.sampler.state_dict()},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    data = _dataset(tmp_path)
    torch.multiprocessing.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(data), str(tmp_path)), nprocs=2,
                                join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in ("G", "D", "G_ema"):
        assert _states_equal(r0[key], r1[key]), key
    assert torch.equal(r0["pl_mean"], r1["pl_mean"])
    assert r0["indices_seen"]["rank"] == 0 and r1["indices_seen"]["rank"] == 1
    # rank 0 alone wrote the run; its final file holds both ranks' RNG and data states for exact resume
    final = read_network_file(tmp_path / "run" / "network-final.pt")
    assert final["training_state"]["world_size"] == 2 and len(final["training_state"]["data_states"]) == 2
    assert _states_equal(final["G"], r0["G"])


# ----------------------------------------------------------------------------------------------------------------
# Config A (the original StyleGAN) with progressive growing


def _config_a(data: Path, **kw) -> TrainingConfig:
    """config-a-tiny (z/w 32, 16 px, mapping 2): 4x4 for 2 iterations, fade-in to 8x8 over 2 (lod 1.5 at the
    second), 8x8 for 2, fade-in to 16x16 (lod 0.5), 16x16 from the 9th iteration."""
    base = dict(data=str(data), total_kimg=0.064, tick_kimg=0.016, snapshot_ticks=100, image_ticks=2,
                grid_size=4, r1_interval=2, lod_training_kimg=0.016, lod_transition_kimg=0.016)
    base.update(kw)
    return training_config_for("config-a-tiny", **base)


def test_config_a_preset_and_validation():
    from stylegan.stylegan1 import StyleGAN1Config, stylegan1_discriminator_config

    cfg = training_config_for("config-a-tiny")
    assert cfg.arch == "stylegan1" and cfg.progressive and cfg.pl_weight == 0 and cfg.style_mixing_prob == 0.9
    assert cfg.G == StyleGAN1Config(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=256,
                                    channel_max=32)
    assert cfg.D == stylegan1_discriminator_config(cfg.G) and cfg.D.architecture == "orig"
    assert TrainingConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # config-a matches celeba32's network sizes and training settings, minus the path-length term
    a, f = training_config_for("config-a"), training_config_for("celeba32")
    assert a.G.img_resolution == f.G.img_resolution == 32
    for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max"):
        assert getattr(a.G, name) == getattr(f.G, name), name
    for name in ("batch_size", "g_lr", "d_lr", "r1_gamma", "ema_kimg", "total_kimg", "style_mixing_prob", "xflip"):
        assert getattr(a, name) == getattr(f, name), name
    assert f.pl_weight > 0 and a.pl_weight == 0
    assert training_config_for("celeba32", arch="stylegan1").G == a.G
    # the defaults of a bare stylegan1 config, and a config.json without the new fields reads as stylegan2
    bare = TrainingConfig(arch="stylegan1", pl_weight=0.0)
    assert bare.G == StyleGAN1Config() and bare.D == stylegan1_discriminator_config(StyleGAN1Config())
    old = training_config_for("cpu-tiny").to_dict()
    for key in ("arch", "progressive", "lod_training_kimg", "lod_transition_kimg", "initial_resolution",
                "pg_reset_opt"):
        old.pop(key)
    assert TrainingConfig.from_dict(old).arch == "stylegan2"


def test_config_a_refuses_path_length_and_growing_needs_config_a():
    from stylegan.config import ConfigError

    with pytest.raises(ConfigError, match="pl_weight must be 0 for arch 'stylegan1'"):
        training_config_for("config-a-tiny", pl_weight=2.0)
    with pytest.raises(ConfigError, match="pl_weight must be 0"):
        training_config_for("cpu-tiny", arch="stylegan1", pl_weight=1.0)
    with pytest.raises(ConfigError, match="pl_weight must be 0"):
        TrainingConfig(arch="stylegan1")  # the StyleGAN2 default 2.0
    with pytest.raises(ConfigError, match="only available for arch 'stylegan1'"):
        training_config_for("cpu-tiny", progressive=True)
    with pytest.raises(ConfigError, match="stylegan1"):
        training_config_for("config-a-tiny", arch="stylegan2")
    with pytest.raises(ConfigError, match="StyleGAN1Config"):
        TrainingConfig(G=GeneratorConfig(img_resolution=16), D=DiscriminatorConfig(img_resolution=16),
                       arch="stylegan1", pl_weight=0.0)
    with pytest.raises(ConfigError, match="arch"):
        training_config_for("cpu-tiny", arch="stylegan3")
    with pytest.raises(ConfigError, match="initial_resolution"):
        training_config_for("config-a-tiny", initial_resolution=32)


def test_config_a_trains_with_progressive_growing(tmp_path, monkeypatch):
    import stylegan.training as T
    from stylegan.progressive import pg_schedule
    from stylegan.stylegan1 import StyleGAN1Discriminator, StyleGAN1Generator

    data = _dataset(tmp_path)
    cfg = _config_a(data)
    trainer = Trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.G, StyleGAN1Generator) and isinstance(trainer.G_ema, StyleGAN1Generator)
    assert isinstance(trainer.D, StyleGAN1Discriminator)
    seen = []
    real_process = T.pg_process_reals
    monkeypatch.setattr(T, "pg_process_reals", lambda x, lod: seen.append(lod) or real_process(x, lod))
    g0 = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    lods = []
    for _ in range(8):
        nimg = trainer.cur_nimg
        trainer.train_step()
        lod = float(trainer.D.lod)
        assert lod == pytest.approx(pg_schedule(nimg, 0.016, 0.016, img_resolution=16)[0], abs=1e-6)
        assert float(trainer.G.synthesis.lod) == float(trainer.G_ema.synthesis.lod) == lod
        lods.append(lod)
    assert lods == pytest.approx([2, 2, 2, 1.5, 1, 1, 1, 0.5])
    assert seen == pytest.approx(lods)  # the reals went through pg_process_reals at every iteration's lod
    assert all(a >= b for a, b in zip(lods, lods[1:]))
    trainer.train_step()
    assert float(trainer.D.lod) == 0 and trainer.scheduled_lod() == 0
    changed = [k for k, v in trainer.G.state_dict().items() if not torch.equal(v, g0[k]) and "noise_const" not in k]
    for key in ("mapping.w_avg", "mapping.fc0.weight", "synthesis.b4.conv1.conv.weight", "synthesis.b16.torgb.weight"):
        assert any(k.startswith(key) for k in changed), key
    assert float(trainer.pl_mean) == 0  # no path-length term
    for p in trainer.G.parameters():
        assert torch.isfinite(p).all()


def test_config_a_exact_resume_with_progressive_growing(tmp_path):
    """N iterations straight == N/2 (stopped mid-growth), resume, N/2: identical G, D, G_ema and lod."""
    from stylegan.formats import load_model

    data = _dataset(tmp_path)
    cfg = _config_a(data)
    straight = Trainer(cfg, tmp_path / "a")
    straight.start()
    final_a = straight.run()
    assert straight.iteration == 8
    stopped = Trainer(cfg, tmp_path / "b")
    stopped.start()
    assert stopped.run(max_iterations=4) is None
    snap = read_network_file(latest_snapshot(tmp_path / "b"))
    assert snap["arch"] == "stylegan1" and float(snap["D"]["lod"]) == 1.5
    resumed = Trainer.resume(tmp_path / "b")
    assert resumed.iteration == 4 and resumed.lod == 1.5
    final_b = resumed.run()
    a, b = read_network_file(final_a), read_network_file(final_b)
    assert a["arch"] == b["arch"] == "stylegan1"
    for key in ("G", "D", "G_ema"):
        assert _states_equal(a[key], b[key]), key
    assert float(a["G_ema"]["synthesis.lod"]) == 0.5  # the lod of the last iteration
    assert a["metadata"]["training"]["arch"] == "stylegan1"
    assert json.loads((tmp_path / "a" / "config.json").read_text())["arch"] == "stylegan1"
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert any("progress/lod" in e for e in log) and not any("loss/pl_penalty" in e for e in log)
    assert (tmp_path / "a" / "fakes-000000.png").exists()
    # network-final.pt loads as a config-A network
    model = load_model(final_a, with_training=True)
    assert model.arch == "stylegan1" and type(model.G_ema).__name__ == "StyleGAN1Generator"
    assert type(model.D).__name__ == "StyleGAN1Discriminator"
    with torch.no_grad():
        img = model.G_ema(torch.randn(2, 32), noise_mode="const")
    assert img.shape == (2, 3, 16, 16)


def test_config_a_without_growing_and_arch_mismatch_on_resume(tmp_path):
    data = _dataset(tmp_path)
    cfg = _config_a(data, progressive=False, total_kimg=0.016)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.start()
    trainer.run(max_iterations=1)
    assert trainer.lod == 0 and float(trainer.G.synthesis.lod) == 0
    snap = latest_snapshot(tmp_path / "run")
    other = Trainer(_tiny_config(data), tmp_path / "other")
    with pytest.raises(TrainingError, match="stylegan1"):
        other.load_snapshot(snap)


def test_cli_train_config_a(tmp_path):
    runner = CliRunner()
    data = _dataset(tmp_path)
    args = ["train", "--data", str(data), "--preset", "cpu-tiny", "--arch", "stylegan1", "--progressive",
            "--lod-kimg", "0.008", "--out", str(tmp_path / "runs"), "--run", "a", "--kimg", "0.032",
            "--tick", "0.016"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "runs" / "a" / "config.json").read_text())
    assert cfg["arch"] == "stylegan1" and cfg["progressive"] and cfg["pl_weight"] == 0
    assert cfg["lod_training_kimg"] == cfg["lod_transition_kimg"] == 0.008 and cfg["G"]["z_dim"] == 64
    assert read_network_file(tmp_path / "runs" / "a" / "network-final.pt")["arch"] == "stylegan1"
    r = runner.invoke(app, ["train", "--data", str(data), "--preset", "cpu-tiny", "--progressive",
                            "--out", str(tmp_path / "runs"), "--run", "b"])
    assert r.exit_code == 2 and "only available for arch 'stylegan1'" in r.output
    r = runner.invoke(app, ["train", "--data", str(data), "--preset", "config-a-tiny", "--pl-weight", "2",
                            "--out", str(tmp_path / "runs"), "--run", "c"])
    assert r.exit_code == 2 and "pl_weight must be 0" in r.output


def _dist_stop_worker(rank: int, world: int, init_file: str, data: str, out_dir: str, phase: str) -> None:
    """'stop': a stop asked on rank 1 alone, after its 2nd iteration; 'resume': continue the stopped run."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        run_dir = Path(out_dir) / "stopped"
        if phase == "stop":
            trainer = Trainer(_tiny_config(Path(data), total_kimg=0.032, batch_size=8), run_dir)
            trainer.start()
            torch.distributed.barrier()
            trainer.should_stop = lambda: rank == 1 and trainer.iteration >= 2
            assert trainer.run() is None
        else:
            trainer = Trainer.resume(run_dir)
            trainer.run()
        torch.save({"G": trainer.G.state_dict(), "iteration": trainer.iteration, "stopped": trainer.stopped},
                   Path(out_dir) / f"{phase}{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_a_stop_on_one_rank_stops_every_rank_after_the_same_iteration(tmp_path):
    """Under torchrun, a signal may reach the ranks at different moments: they agree on the iteration to stop after,
    and the resumed run ends equal to an uninterrupted one."""
    data = _dataset(tmp_path)
    torch.multiprocessing.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(data), str(tmp_path)), nprocs=2,
                                join=True)
    for phase in ("stop", "resume"):
        torch.multiprocessing.spawn(_dist_stop_worker, args=(2, str(tmp_path / f"init-{phase}"), str(data),
                                                             str(tmp_path), phase), nprocs=2, join=True)
    stop = [torch.load(tmp_path / f"stop{r}.pt", weights_only=True) for r in (0, 1)]
    assert [(s["iteration"], s["stopped"]) for s in stop] == [(2, "signal"), (2, "signal")]
    assert read_network_file(latest_snapshot(tmp_path / "stopped"))["training_state"]["iteration"] == 2
    straight = torch.load(tmp_path / "rank0.pt", weights_only=True)
    for r in (0, 1):
        resumed = torch.load(tmp_path / f"resume{r}.pt", weights_only=True)
        assert resumed["iteration"] == 4 and _states_equal(resumed["G"], straight["G"]), r
