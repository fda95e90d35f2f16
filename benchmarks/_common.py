"""Helpers shared by the benchmark scripts: timing and the machine reference (GFLOP/s of a 3x3 conv)."""

from __future__ import annotations

import platform
import resource
import time
from typing import Callable, Dict

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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
