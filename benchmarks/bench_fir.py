"""The FIR filter of up/down-sampling (stylegan.ops.upfirdn2d): shifted multiply-adds against a depthwise
convolution, and what the choice does to the synthesis network's forward+backward (issue 27). Prints JSON.

Each comparison is interleaved (A, B, A, B, ... five rounds, the median kept), so that a machine whose load
changes during the run still compares like with like; the reference conv's GFLOP/s is measured at the start and
the end. The whole-network rows time ``synthesis(w, noise)`` forward and backward to w and the noise maps, as a
projection step does, for the 32 px and 64 px channel_max 128 generators of ``bench_projection.py``.

    python benchmarks/bench_fir.py [--threads 1] [--batch 1 8 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine_info, reference_gflops  # noqa: E402
from bench_projection import make_generator  # noqa: E402

import stylegan.ops as ops  # noqa: E402

SHIFTED, DEPTHWISE = 10**9, ops.DEPTHWISE_MIN_CHANNELS  # thresholds that force each implementation


def interleaved(fn, *args, rounds: int = 5) -> tuple:
    """Medians of ``fn(*args, SHIFTED)`` and ``fn(*args, DEPTHWISE)``, run alternately."""
    a, b = [], []
    for _ in range(rounds):
        a.append(fn(*args, SHIFTED))
        b.append(fn(*args, DEPTHWISE))
    return statistics.median(a), statistics.median(b)


def fir_ms(shape, kw, reps: int, threshold: int) -> float:
    ops.DEPTHWISE_MIN_CHANNELS = threshold
    f = ops.setup_filter()
    x = torch.randn(shape, requires_grad=True)
    y = ops.upfirdn2d(x, f, **kw)
    y.backward(torch.ones_like(y))
    t = time.perf_counter()
    for _ in range(reps):
        y = ops.upfirdn2d(x, f, **kw)
        y.backward(torch.ones_like(y))
    return (time.perf_counter() - t) / reps * 1000


def synthesis_ms(G, batch: int, reps: int, threshold: int) -> float:
    ops.DEPTHWISE_MIN_CHANNELS = threshold
    syn = G.synthesis
    w = torch.randn(batch, 1, G.w_dim, requires_grad=True)
    noise = [torch.randn((batch,) + tuple(s), requires_grad=True) for s in syn.noise_shapes]

    def step():
        img = syn(w.expand(-1, G.num_ws, -1), noise=noise, fused_modconv=False)
        img.square().mean().backward()

    step()
    t = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - t) / reps * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16])
    a = p.parse_args()
    torch.set_flush_denormal(True)
    if a.threads:
        torch.set_num_threads(a.threads)
    ref0 = reference_gflops()
    rows = []
    for shape, kw in [((1, 128, 65, 65), dict(padding=(1, 1, 1, 1), gain=4)),
                      ((16, 128, 65, 65), dict(padding=(1, 1, 1, 1), gain=4)),
                      ((16, 128, 33, 33), dict(padding=(1, 1, 1, 1), gain=4)),
                      ((16, 3, 32, 32), dict(up=2, padding=(2, 1, 2, 1), gain=4)),
                      ((8, 128, 32, 32), dict(down=2, padding=(1, 1, 1, 1)))]:
        reps = max(2, int(2e6 / (shape[0] * shape[1] * shape[2] * shape[3])))
        shifted, depthwise = interleaved(fir_ms, shape, kw, reps)
        rows.append({"op": "upfirdn2d", "shape": list(shape), **{k: list(v) if isinstance(v, tuple) else v
                                                                  for k, v in kw.items()},
                     "shifted_ms": round(shifted, 3), "depthwise_ms": round(depthwise, 3),
                     "speedup": round(shifted / depthwise, 2)})
    for res in (32, 64):
        G = make_generator(res).eval()
        for prm in G.parameters():
            prm.requires_grad_(False)
        for batch in a.batch:
            reps = 4 if batch == 1 else 2
            shifted, depthwise = interleaved(synthesis_ms, G, batch, reps)
            rows.append({"op": "synthesis forward+backward", "img_resolution": res, "batch": batch,
                         "shifted_ms_per_image": round(shifted / batch, 2),
                         "depthwise_ms_per_image": round(depthwise / batch, 2),
                         "speedup": round(shifted / depthwise, 2)})
    ops.DEPTHWISE_MIN_CHANNELS = DEPTHWISE
    ref1 = reference_gflops()
    print(json.dumps({"benchmark": "bench_fir", "machine": machine_info("cpu"),
                      "reference_gflops_start_end": [round(ref0, 1), round(ref1, 1)],
                      "threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
