"""Helpers shared by the benchmark scripts: timing and the machine reference (GFLOP/s of a 3x3 conv)."""

from __future__ import annotations

import platform
import resource
import time
from typing import Callable, Dict, Sequence, Tuple

import torch


def timeit(fn: Callable[[], object], warmup: int = 2, min_time: float = 1.0, max_iters: int = 50) -> float:
    """Median-free simple timing: seconds per call averaged over at least ``min_time`` seconds."""
    for _ in range(warmup):
        fn()
    n = 0
    start = time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time or n >= max_iters:
            return elapsed / n


def reference_gflops(device: str = "cpu") -> float:
    """GFLOP/s of a 3x3, 128->128-channel convolution at batch 8, 32x32: the yardstick each benchmark prints so
    that timings from different machines can be compared as ratios."""
    x = torch.randn(8, 128, 32, 32, device=device)
    w = torch.randn(128, 128, 3, 3, device=device)
    flops = 2 * 8 * 128 * 128 * 9 * 32 * 32

    def run():
        torch.nn.functional.conv2d(x, w, padding=1)
        if device != "cpu":
            torch.cuda.synchronize()

    return flops / timeit(run, warmup=3, min_time=1.0) / 1e9


def machine_info(device: str = "cpu") -> Dict[str, object]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "processor": platform.processor() or platform.machine(),
        "reference_conv3x3_128ch_gflops": round(reference_gflops(device), 2),
    }


def summary(values: Sequence[float]) -> Dict[str, float]:
    """n, median, p5, p95, mean, min and max of a list of numbers (float64)."""
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "median": float(np.median(a)), "p5": float(np.percentile(a, 5)),
            "p95": float(np.percentile(a, 95)), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fig9_histograms(path: str, panels: Sequence[Tuple[str, Sequence[float], Sequence[float]]]) -> None:
    """Paper Fig. 9: per network (one panel each, stacked, on shared log-spaced bins) the LPIPS distances of its
    generated images and of real images. ``panels``: (title, generated distances, real distances). Log bins
    because at 32 px the populations lie an order of magnitude apart; shared bins so that panels compare."""
    import io

    import matplotlib
    import numpy as np

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from stylegan.util.files import atomic_write_bytes

    values = np.concatenate([np.asarray(list(g) + list(r), np.float64) for _, g, r in panels])
    bins = np.geomspace(values.min() / 1.2, values.max() * 1.2, 31)
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 0.4 + 3.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, gen, real) in zip(axes[:, 0], panels):
        ax.hist(gen, bins=bins, color="tab:blue", alpha=0.55, label=f"generated (n={len(gen)})")
        ax.hist(real, bins=bins, color="tab:orange", alpha=0.55, label=f"real (n={len(real)})")
        ax.set_xscale("log")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("count")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("LPIPS distance to the re-synthesis")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
