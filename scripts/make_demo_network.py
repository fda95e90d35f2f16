#!/usr/bin/env python
"""Reproduce the two networks ``detect demo`` ships (``detector/assets/demo_mnist32_a.pt`` and ``_b.pt``) and its
real digits (``demo_real/``).

Data: the MNIST test set (LeCun, Cortes, Burges; CC BY-SA 3.0, redistributable with attribution), from the two
IDX.gz files in ``--mnist`` (default ``/work/shared/data/mnist_test``; any copy of ``t10k-images-idx3-ubyte.gz``
works, MD5 ``9fb629c4189551a2d022fa330f9573f3``). Each 28x28 digit is padded with 2 px of black to 32x32 grey.

* Digits 0 .. 8,999 are the training set (PNGs -> ``stylegan.data.build_dataset(..., channels=1)``).
* Digits 9,000 .. 9,023 (``--n-calib``) are the held-out reals of the calibration.
* Digits 9,500 .. 9,505 are copied to ``detector/assets/demo_real/`` (with network ``a``) as the demo's real images.

Network: a small 1-channel StyleGAN2 (config F: skip G, resnet D, path-length regularisation on, as in the
paper), z/w 128, mapping 4 layers, 64 channels at every resolution (``channel_base 2048``, ``channel_max 64``),
trained with :class:`stylegan.training.Trainer` on the ``cpu-tiny`` settings at batch 32 with R1 gamma 10 for
100 kimg (it stops at the first tick past it: 100.352 kimg, ~2 h on one core). The two networks differ only in the
training seed (``--network a``: 0, ``b``: 1). Shorter runs or cpu-tiny's R1 gamma 1 leave a network that makes
only a few digit classes (the first demo network, 47 kimg at gamma 1: 4 classes, entropy 0.51; see
``docs/measurements.md``, "What the collapse is"). ``--minutes`` stops a call at a tick boundary with a snapshot;
``--resume`` continues the run in ``--work/NAME``; ``--no-train`` only exports and calibrates its latest snapshot.

Export: the G_ema of the run is written with :func:`stylegan.formats.save_network` (G_ema only: no G, D or
training state, about 1.7 MB), its diversity measured (:func:`diversity`: digit classes of 1,000 of its images
as a small CNN trained on the training digits sees them), then it is calibrated with
:func:`detector.calibration_run.calibrate` on ``--n-calib`` generated + ``--n-calib`` held-out real digits at the
demo's projector settings (``--steps``; ``detect demo`` uses the same number), trajectories included (so that
the demo may stop images early), and the record stored inside the file.

Usage (one core each; the published networks were made this way)::

    OMP_NUM_THREADS=1 python scripts/make_demo_network.py --network a --work /tmp/demo_work
    OMP_NUM_THREADS=1 python scripts/make_demo_network.py --network b --work /tmp/demo_work
    OMP_NUM_THREADS=1 python scripts/make_demo_network.py --network a --work /tmp/demo_work --minutes 60  # part
    OMP_NUM_THREADS=1 python scripts/make_demo_network.py --network a --work /tmp/demo_work --resume  # the rest
    OMP_NUM_THREADS=1 python scripts/make_demo_network.py --network a --calibrate-only  # the asset as it is
    python scripts/make_demo_network.py --diversity detector/assets/demo_mnist32_*.pt

Needs the LPIPS-VGG weights for the calibration (as ``detect check``: ``DETECT_LPIPS_WEIGHTS`` or
``detect fetch-weights``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "detector" / "assets"
DEMO_REAL = ASSETS / "demo_real"
#: The two demo networks of one recipe (issue 28): name -> training seed; files ``demo_mnist32_NAME.pt``.
NETWORKS = {"a": 0, "b": 1}


def network_asset(name: str) -> Path:
    """The shipped file of demo network ``name`` (``a`` or ``b``)."""
    return ASSETS / f"demo_mnist32_{name}.pt"


N_TRAIN = 9000
CALIB_START = 9000
DEMO_REAL_START = 9500
N_DEMO_REAL = 6
MAX_ASSET_BYTES = 2 * 1024 * 1024
DEMO_STEPS = 300  # keep in sync with detector.cli.demo.DEFAULT_STEPS


def load_mnist(folder: Path) -> np.ndarray:
    """The MNIST test digits, [10000, 32, 32] uint8 (28x28 padded with 2 px of black)."""
    raw = gzip.open(folder / "t10k-images-idx3-ubyte.gz").read()
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    return np.pad(x, ((0, 0), (2, 2), (2, 2)))


def write_pngs(digits: np.ndarray, indices, folder: Path, prefix: str = "mnist_test") -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in indices:
        p = folder / f"{prefix}_{i:05d}.png"
        Image.fromarray(digits[i], mode="L").save(p)
        paths.append(p)
    return paths


def load_labels(folder: Path) -> np.ndarray:
    """The MNIST test labels, [10000] uint8."""
    raw = gzip.open(folder / "t10k-labels-idx1-ubyte.gz").read()
    return np.frombuffer(raw, np.uint8, offset=8).copy()


def digit_classifier(digits: np.ndarray, labels: np.ndarray, epochs: int = 3, seed: int = 0):
    """A small CNN (two conv layers, ~99 % on held-out digits after 3 epochs) trained on the network's training
    digits (0 .. N_TRAIN-1); returns (classifier in eval mode, its accuracy on digits 9,000 .. 9,999)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 10))
    x = torch.from_numpy(digits[:N_TRAIN]).float().div(127.5).sub(1).unsqueeze(1)
    y = torch.from_numpy(labels[:N_TRAIN]).long()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        for idx in torch.randperm(N_TRAIN, generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        xt = torch.from_numpy(digits[N_TRAIN:]).float().div(127.5).sub(1).unsqueeze(1)
        acc = float((net(xt).argmax(1) == torch.from_numpy(labels[N_TRAIN:]).long()).float().mean())
    return net, acc


def diversity(model_path: Path, digits: np.ndarray, labels: np.ndarray, n: int = 1000, classifier=None) -> dict:
    """How varied a digit network's images are (issue 28): the share of each digit class among ``n`` images
    generated from seeds 0 .. n-1 (random noise), as the classifier of :func:`digit_classifier` sees them, the
    number of classes holding at least 2 % of them, and the normalised entropy of the shares (1: all ten equally
    often; 0: one class only). A mode-collapsed network scores few classes and low entropy. ``classifier``: a
    ``(net, accuracy)`` pair from :func:`digit_classifier`, to measure several networks with one classifier."""
    import torch

    from stylegan.formats import load_model
    from stylegan.generator import generate_seeded

    net, acc = classifier or digit_classifier(digits, labels)
    G = load_model(model_path).G_ema
    with torch.no_grad():
        imgs = torch.cat([generate_seeded(G, s, 1.0) for s in range(n)]).clamp(-1, 1)
        pred = net(imgs).argmax(1).numpy()
    shares = np.bincount(pred, minlength=10) / n
    p = shares[shares > 0]
    return {"model": str(model_path), "n": n, "classifier_accuracy": round(acc, 4),
            "class_shares": [round(float(v), 3) for v in shares],
            "classes_at_least_2pct": int((shares >= 0.02).sum()),
            "normalised_entropy": round(float(-(p * np.log(p)).sum() / np.log(10)), 3)}


def training_config(data: Path, args):
    from stylegan.config import DiscriminatorConfig, GeneratorConfig
    from stylegan.training_config import training_config_for

    G = GeneratorConfig(img_resolution=32, img_channels=1, z_dim=128, w_dim=128, mapping_layers=4,
                        channel_base=2048, channel_max=64)
    D = DiscriminatorConfig(img_resolution=32, img_channels=1, channel_base=2048, channel_max=64,
                            mbstd_group_size=args.mbstd_group)
    base = training_config_for("cpu-tiny", img_resolution=32, data=str(data), batch_size=32, pl_weight=args.pl_weight,
                               style_mixing_prob=args.mixing,
                               r1_gamma=args.r1_gamma, g_lr=args.lr, d_lr=args.lr, total_kimg=args.total_kimg,
                               ema_kimg=args.ema_kimg,
                               tick_kimg=0.5, image_ticks=4, snapshot_ticks=4, keep_snapshots=args.keep_snapshots,
                               seed=args.seed)
    # training_config_for drops None overrides, so "no ramp-up" is set here
    return base.replace(G=G, D=D, ema_rampup=args.ema_rampup or None)


def train(args, data: Path):
    from stylegan.training import Trainer

    run_dir = args.work / "run"
    cfg = training_config(data, args)
    if args.resume or args.no_train:
        trainer = Trainer.resume(run_dir, total_kimg=args.total_kimg)
    else:
        trainer = Trainer(cfg, run_dir)
        trainer.start()
    if args.no_train:
        return trainer, 0.0
    if args.minutes is not None:
        trainer.deadline = time.time() + args.minutes * 60

    def progress(e):
        if "tick" in e:
            print(json.dumps({k: e[k] for k in ("tick", "kimg", "sec_per_kimg", "elapsed_s") if k in e}
                             | {k: v for k, v in e.items() if k.startswith("loss/") or k == "pl/mean"}),
                  flush=True)

    trainer.progress = progress
    t0 = time.time()
    trainer.run()
    trainer.save_grid()
    return trainer, time.time() - t0


def export(args, trainer, digits: np.ndarray, data_fingerprint: str) -> None:
    from stylegan.formats import save_network

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = trainer.config
    save_network(out, trainer.G_ema, metadata={
        "source": "scripts/make_demo_network.py: MNIST test digits 0..8999 (LeCun, Cortes, Burges; CC BY-SA 3.0)",
        "training": {"kimg": round(trainer.cur_nimg / 1000, 3), "iterations": trainer.iteration,
                     "preset": cfg.preset, "batch_size": cfg.batch_size, "pl_weight": cfg.pl_weight,
                     "r1_gamma": cfg.r1_gamma, "g_lr": cfg.g_lr, "d_lr": cfg.d_lr, "seed": cfg.seed,
                     "elapsed_s": round(trainer.elapsed, 1)},
        "dataset_fingerprint": data_fingerprint,
    })
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1024:.0f} KiB) at {trainer.cur_nimg / 1000:.1f} kimg", flush=True)
    if size > MAX_ASSET_BYTES:
        sys.exit(f"{out} is {size} bytes, over the 2 MB budget")
    if out.resolve() != network_asset("a").resolve():
        return  # network b, or a file elsewhere: the demo's real images stay as they are

    # The demo's bundled real images.
    if DEMO_REAL.exists():
        for p in DEMO_REAL.glob("*.png"):
            p.unlink()
    idx = list(range(DEMO_REAL_START, DEMO_REAL_START + N_DEMO_REAL))
    write_pngs(digits, idx, DEMO_REAL)
    (DEMO_REAL / "README.md").write_text(
        "# Bundled real images of `detect demo`\n\n"
        f"{N_DEMO_REAL} digits of the **MNIST test set** (Yann LeCun, Corinna Cortes, Christopher J. C. Burges,\n"
        "<http://yann.lecun.com/exdb/mnist/>), file `t10k-images-idx3-ubyte.gz`, test-set indices\n"
        f"{idx[0]}..{idx[-1]} (0-based; file `mnist_test_NNNNN.png` is index NNNNN). Each 28x28 digit is padded with\n"
        "2 px of black to 32x32 greyscale; nothing else is changed.\n\n"
        "Licence: MNIST is distributed under the Creative Commons Attribution-Share Alike 3.0 licence\n"
        "(CC BY-SA 3.0, <https://creativecommons.org/licenses/by-sa/3.0/>); these derived images are\n"
        "distributed under the same licence.\n\n"
        "None of these digits were used to train the demo networks `../demo_mnist32_a.pt` and\n"
        "`../demo_mnist32_b.pt` (trained on test-set indices 0..8999) or to calibrate them (indices 9000..).\n"
        "Made by `scripts/make_demo_network.py --network a`.\n")


def calibrate(args, digits: np.ndarray) -> None:
    from detector.calibration_run import calibrate as do_calibrate
    from detector.calibration_store import store_calibration
    from detector.settings import ProjectorSettings

    reals = write_pngs(digits, range(CALIB_START, CALIB_START + args.n_calib), args.work / "calib_real")
    t0 = time.time()
    last = [0.0]

    def progress(done, total):
        if time.time() - last[0] > 30:
            last[0] = time.time()
            print(f"calibrating: {done}/{total} image-steps", flush=True)

    rec = do_calibrate(args.out, reals, n_generated=args.n_calib, target_fpr=args.fpr,
                       settings=ProjectorSettings(steps=args.steps), batch_size=args.n_calib, progress=progress)
    store_calibration(rec, args.out)
    d = rec.to_dict()
    summary = {k: d.get(k) for k in ("auc", "threshold", "target_fpr", "achieved_fpr", "tpr", "fpr_ci",
                                     "n_generated", "n_real")}
    print(f"calibrated in {time.time() - t0:.0f} s: {rec.summary()}", flush=True)
    print(json.dumps(summary, default=str), flush=True)
    print(f"network {args.out}: {args.out.stat().st_size / 1024:.0f} KiB, sha256 "
          f"{hashlib.sha256(args.out.read_bytes()).hexdigest()}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mnist", type=Path, default=Path("/work/shared/data/mnist_test"))
    ap.add_argument("--network", choices=sorted(NETWORKS),
                    help="which of the demo's two networks to make (required unless --diversity): its file in "
                         "detector/assets and its seed (a: 0, b: 1) unless given, and its run in --work/NAME; "
                         "network a also writes demo_real/")
    ap.add_argument("--work", type=Path, default=Path("demo-network-work"))
    ap.add_argument("--minutes", type=float, default=None,
                    help="wall-clock training budget of this call (default: none); a call that stops before "
                         "--total-kimg exports nothing: continue it with --resume")
    ap.add_argument("--total-kimg", type=float, default=100.0, help="training length (the recipe's 100)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --work")
    ap.add_argument("--no-train", action="store_true", help="export and calibrate the latest snapshot only")
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument("--calibrate-only", action="store_true",
                    help="no training, no export: calibrate the shipped asset again in place (e.g. after the "
                         "projector's defaults changed)")
    ap.add_argument("--steps", type=int, default=DEMO_STEPS, help="projector steps of the calibration")
    ap.add_argument("--n-calib", type=int, default=24)
    ap.add_argument("--fpr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=None, help="training seed (default: the --network's, a 0 and b 1)")
    ap.add_argument("--r1-gamma", type=float, default=10.0,
                    help="R1 weight (the recipe's 10; cpu-tiny's 1.0 collapsed)")
    ap.add_argument("--lr", type=float, default=0.0025, help="G and D learning rate (cpu-tiny's 0.0025)")
    ap.add_argument("--pl-weight", type=float, default=2.0, help="path-length regularisation weight")
    ap.add_argument("--mixing", type=float, default=0.9, help="style-mixing probability")
    ap.add_argument("--mbstd-group", type=int, default=4, help="D's minibatch-std group size")
    ap.add_argument("--ema-kimg", type=float, default=1.0, help="G_ema half-life in kimg (cpu-tiny's 1.0)")
    ap.add_argument("--ema-rampup", type=float, default=0.05,
                    help="G_ema half-life ramp-up: at most this fraction of the images seen (0: none)")
    ap.add_argument("--keep-snapshots", type=int, default=2, help="snapshots kept in --work (older are deleted)")
    ap.add_argument("--diversity", type=Path, metavar="MODEL", nargs="+",
                    help="only measure digit networks' diversity (class shares of 1,000 images each) and print "
                         "one JSON line per network")
    ap.add_argument("--out", type=Path, default=None,
                    help="network file to write (and calibrate); default the --network's file in "
                         "detector/assets")
    args = ap.parse_args(argv)
    if args.network is None and args.diversity is None:
        ap.error("--network a|b is required (or --diversity MODEL ...)")
    if args.network is not None:
        args.work = args.work / args.network
        if args.seed is None:
            args.seed = NETWORKS[args.network]
        if args.out is None:
            args.out = network_asset(args.network)

    import torch

    torch.set_num_threads(1)
    from stylegan.data import build_dataset, open_dataset

    digits = load_mnist(args.mnist)
    if args.diversity is not None:
        labels = load_labels(args.mnist)
        classifier = digit_classifier(digits, labels)
        for model in args.diversity:
            print(json.dumps(diversity(model, digits, labels, classifier=classifier)), flush=True)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    if args.calibrate_only:
        calibrate(args, digits)
        return
    data = args.work / "mnist32_train.h5"
    if not data.exists():
        png_dir = args.work / "train_png"
        write_pngs(digits, range(N_TRAIN), png_dir)
        rep = build_dataset(png_dir, data, resolution=32, crop="none", channels=1)
        print(rep.summary(), flush=True)
        shutil.rmtree(png_dir)
    with open_dataset(data) as ds:
        fingerprint = ds.fingerprint
    trainer, wall = train(args, data)
    print(f"trained {wall / 60:.1f} min in this call; now at {trainer.cur_nimg / 1000:.1f} kimg", flush=True)
    if trainer.stopped is not None and not args.no_train:
        print(f"stopped ({trainer.stopped}) before {args.total_kimg:g} kimg; nothing exported: continue with "
              f"--resume (or export this snapshot with --no-train)", flush=True)
        return
    export(args, trainer, digits, fingerprint)
    print(json.dumps({"diversity": diversity(args.out, digits, load_labels(args.mnist))}), flush=True)
    if not args.no_calibrate:
        calibrate(args, digits)


if __name__ == "__main__":
    main()
