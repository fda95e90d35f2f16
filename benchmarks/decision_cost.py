"""What a full decision costs against App. D's 1000 steps (issue 24): per image and network of a finished case,
the optimisation steps the case ran (first look, early decisions included), plus those of its second look (in the
case, ``detect batch --second-look``, or ``benchmarks/second_look_case.py``'s state), over App. D's 1000 steps per
image and network; and the time of one image-step at the case's settings against App. D's (``--method appd``),
measured A/B in this run on the case's first network and images (``--rounds`` alternations of ``--timed-steps``
steps at batch ``--batch``). The time factor is the product of the two, for the first look alone and with the
second look. Prints JSON.

    python benchmarks/decision_cost.py --case CASE [--second-look STATE.jsonl] [--model NAME=FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from _common import machine_info  # noqa: E402

from cases.metrics import load_case_report  # noqa: E402
from detector.images import load_image  # noqa: E402
from detector.projector import Projector  # noqa: E402
from detector.settings import METHODS, ProjectorSettings  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.perceptual import load_lpips  # noqa: E402

APPD_STEPS = 1000


def step_seconds(G, distance, targets: torch.Tensor, settings: ProjectorSettings) -> float:
    """Seconds per image-step of ``settings`` (its schedule over ``settings.steps``) on ``targets``."""
    t0 = time.perf_counter()
    Projector(G, distance, settings).project(targets, seeds=0)
    return (time.perf_counter() - t0) / (settings.steps * targets.shape[0])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", required=True, type=Path)
    p.add_argument("--second-look", type=Path, help="second_look_case.py's state of this case")
    p.add_argument("--model", action="append", default=[], metavar="NAME=FILE",
                   help="a network's file where it moved since the case")
    p.add_argument("--timed-steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args(argv)
    torch.set_flush_denormal(True)
    report = load_case_report(a.case)
    prov = report["provenance"]
    settings_dict = {k: v for k, v in prov["settings"].items()  # the projector's, without what batch adds
                     if k in {f.name for f in dataclasses.fields(ProjectorSettings)}}
    settings = ProjectorSettings.from_dict(settings_dict)
    images = [img for img in report["images"] if not img.get("error")]
    n_networks = len(prov["models"])
    first = sum(m["steps_run"] or 0 for img in images for m in img["per_model"])
    # a case made with --second-look keeps both runs' distances (looks); one given its second look afterwards, the
    # state of second_look_case.py
    second = settings.steps * sum(len(m.get("looks") or []) - 1 for img in images for m in img["per_model"]
                                  if m.get("looks"))
    if a.second_look:
        if second:
            raise SystemExit(f"{a.case} had its second look in the case already")
        rows = [json.loads(x) for x in a.second_look.read_text().splitlines() if x.strip()]
        second = settings.steps * sum(len(v) - 1 for r in rows for v in r["looks"].values() if v)
    appd_steps = APPD_STEPS * len(images) * n_networks
    # per-step time, A/B on the first network
    m0 = prov["models"][0]
    path = dict(x.partition("=")[::2] for x in a.model).get(m0["name"], m0["path"])
    G = load_model(path).G_ema.eval()
    distance = load_lpips(prov["distance"]["net"])
    targets = torch.cat([load_image(Path(img["paths"][0]), G.img_resolution, G.img_channels).tensor
                         for img in images[:a.batch]])
    ours = dataclasses.replace(settings, steps=a.timed_steps, device=None, chunk_size=None, early_stop_schedule=None)
    appd = ProjectorSettings(**{**METHODS["appd"], "steps": a.timed_steps})
    times = {"case settings": [], "appd": []}
    for _ in range(a.rounds):
        times["case settings"].append(step_seconds(G, distance, targets, ours))
        times["appd"].append(step_seconds(G, distance, targets, appd))
    per_step = {k: statistics.median(v) for k, v in times.items()}
    ratio = per_step["case settings"] / per_step["appd"]
    factors = {"first look": first / appd_steps, "with the second look": (first + second) / appd_steps}
    out = {"benchmark": "decision_cost", "case": str(a.case), "images": len(images), "networks": n_networks,
           "image_steps": {"first_look": first, "second_look": second, "appd_1000_steps": appd_steps},
           "steps_factor": factors, "seconds_per_image_step": per_step, "timing_runs": times,
           "step_time_ratio": ratio, "time_factor": {k: v * ratio for k, v in factors.items()},
           "timed_on": {"network": m0["name"], "batch": targets.shape[0], "steps": a.timed_steps},
           "machine": machine_info("cpu")}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
