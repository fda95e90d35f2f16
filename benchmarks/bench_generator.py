"""Generator speed: parameter count, synthesis forward and forward+backward ms per call.

Batch 1 and 8, fused and non-fused modulated convolution, 32 px and 64 px, channel_max 128 (z 512, mapping 8,
channel_base 16384) -- the configuration of the issue's NVIDIA reference figures. Prints JSON.

    python benchmarks/bench_generator.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, timeit  # noqa: E402

from stylegan.config import GeneratorConfig  # noqa: E402
from stylegan.generator import Generator  # noqa: E402

# NVIDIA stylegan2-ada-pytorch on this machine kind, fused path, synthesis forward+backward (seconds).
NVIDIA_FWD_BWD = {(32, 1): 0.047, (32, 8): 0.24, (64, 1): 0.13, (64, 8): 0.70}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    min_time = 0.3 if args.quick else 1.5
    out = {"benchmark": "generator", "machine": machine_info(args.device), "results": []}
    for res in (32, 64):
        cfg = GeneratorConfig(z_dim=512, w_dim=512, img_resolution=res, mapping_layers=8, channel_base=16384,
                              channel_max=128)
        G = Generator(cfg).to(args.device).eval()
        for p in G.parameters():
            p.requires_grad_(False)
        n_params = sum(p.numel() for p in G.parameters())
        for batch in (1, 8):
            ws = G.mapping(torch.randn(batch, 512, device=args.device)).detach()
            for fused in (False, True):
                def fwd(G=G, ws=ws, fused=fused):
                    with torch.no_grad():
                        G.synthesis(ws, noise_mode="const", fused_modconv=fused)

                ws_g = ws.clone().requires_grad_(True)

                def fwd_bwd(G=G, ws_g=ws_g, fused=fused):
                    img = G.synthesis(ws_g, noise_mode="const", fused_modconv=fused)
                    img.square().sum().backward()

                t_f = timeit(fwd, min_time=min_time)
                t_fb = timeit(fwd_bwd, min_time=min_time)
                row = {"img_resolution": res, "batch": batch, "fused": fused, "params": n_params,
                       "forward_ms": round(t_f * 1e3, 2), "forward_backward_ms": round(t_fb * 1e3, 2)}
                ref = NVIDIA_FWD_BWD.get((res, batch))
                if ref and args.device == "cpu":
                    row["nvidia_fused_forward_backward_ms"] = ref * 1e3
                    row["speedup_vs_nvidia"] = round(ref / t_fb, 2)
                out["results"].append(row)
                print(json.dumps(row), file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
