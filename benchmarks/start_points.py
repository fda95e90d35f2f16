"""Where a projection starts, and whether it stalls (issues 24, 28): each image projected under each network from
mu_w (App. D's start) and from a sample of W (``ProjectorSettings.start_from = "sample"``, the second look's
start), with projection seeds 0..N-1, at the settings the network was calibrated with (else the projector's
defaults) and ``--steps``. A run that ends far above the network's own images (above ``--stall`` x its calibrated
threshold) is counted as stalled. Prints JSON; nothing to resume (a few minutes for one 32 px image).

    python benchmarks/start_points.py --model b=detector/assets/demo_mnist32_b.pt \\
        --model a=detector/assets/demo_mnist32_a.pt --demo-digit demo_mnist32_b:5 --seeds 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from _common import machine_info  # noqa: E402

from detector.calibration import calibrated_settings  # noqa: E402
from detector.calibration_store import load_calibration  # noqa: E402
from detector.images import load_image  # noqa: E402
from detector.projector import Projector  # noqa: E402
from detector.settings import ProjectorSettings  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.perceptual import load_lpips  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=FILE")
    p.add_argument("--image", action="append", default=[], type=Path, help="a suspect image (repeat)")
    p.add_argument("--demo-digit", action="append", default=[], metavar="NETWORK:INDEX",
                   help="the demo's generated digit INDEX of the shipped network NETWORK (as `detect demo` writes it)")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, help="default: the calibration's")
    p.add_argument("--stall", type=float, default=3.0)
    a = p.parse_args(argv)
    torch.set_flush_denormal(True)
    images = list(a.image)
    if a.demo_digit:
        from detector.cli.demo import DEMO_NETWORKS, asset_path, write_generated

        tmp = Path(tempfile.mkdtemp())
        for spec in a.demo_digit:
            name, _, index = spec.partition(":")
            if f"{name}.pt" not in DEMO_NETWORKS:
                raise SystemExit(f"--demo-digit: {name} is not one of the demo networks {DEMO_NETWORKS}")
            G = load_model(asset_path(f"{name}.pt")).G_ema
            images.append(write_generated(G, tmp / name, int(index) + 1)[int(index)])
    if not images:
        raise SystemExit("nothing to project: give --image or --demo-digit")
    distance = load_lpips("vgg")
    out = {"benchmark": "start_points", "seeds": a.seeds, "stall_factor": a.stall, "machine": machine_info("cpu"),
           "images": [str(i) for i in images], "networks": {}}
    for spec in a.model:
        name, _, path = spec.partition("=")
        m = load_model(path)
        cal = load_calibration(path, m)
        base = calibrated_settings(cal) or ProjectorSettings()
        base = dataclasses.replace(base, device=None, chunk_size=None, **({"steps": a.steps} if a.steps else {}))
        threshold = (cal or {}).get("threshold")
        entry = {"file": path, "steps": base.steps, "threshold": threshold, "runs": {}}
        for img in images:
            target = load_image(img, m.G_ema.img_resolution, m.G_ema.img_channels).tensor
            runs = {}
            for start in ("mean", "sample"):
                t0 = time.perf_counter()
                res = Projector(m.G_ema, distance, dataclasses.replace(base, start_from=start)).project(
                    target.repeat(a.seeds, 1, 1, 1), seeds=list(range(a.seeds)))
                d = [r.distance for r in res]
                runs[start] = {"distances": d, "seconds": time.perf_counter() - t0,
                               "stalled": None if threshold is None else sum(x > a.stall * threshold for x in d)}
                print(f"{name} {Path(img).name} from {start}: {[round(x, 4) for x in d]}", file=sys.stderr)
            entry["runs"][Path(img).name] = runs
        out["networks"][name] = entry
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
