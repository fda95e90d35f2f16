"""Attribution accuracy (StyleGAN2 §5, Fig. 9): project N images a network generated and N real images it was not
trained on, and report both LPIPS distance distributions and the ROC AUC. Prints JSON.

Generated images go through 8 bits (x*127.5+128, clamp, truncate) as a suspect file would; their noise is random,
drawn from the image's seed (:func:`detector.calibration_run.generate_images`, as ``detect calibrate``), so the
projector cannot simply read back stored noise. Real images are the held-out tail of a zip or folder (e.g. the
CelebA images after the first 8,934 used for training), cropped and resized as the training set was.

Resumable: each projected batch is appended to ``--state`` (JSONL); a re-run skips what is there. Generated and
real images are projected interleaved, so a stopped run summarises equal numbers of both (``"complete": false``);
``--report-only`` summarises a state file without projecting; ``--shard I/N`` splits the work between processes
or machines (on 2 CPU cores, two one-thread shards of 8 gave the same images per hour as one two-thread batch of
16: 13.7 vs 13.3 ms per image-step), whose state files are then concatenated. Each record keeps the re-synthesis
and w (float16); for generated images also ||w - w_true|| / sigma_w, which tells whether the projector found the
latent that made the image; for all ||w - mu_w|| / sigma_w (samples of W lie at about 1) and how much image
structure the noise maps picked up (Fig. 18, :func:`detector.analysis.noise_structure_correlation`).
``--rescore`` measures the stored re-syntheses again with LPIPS at other resolutions and with pixel MSE.

Early stopping is measured from the same run: every image is projected in full with the clean distance recorded
at the early-stopping checkpoints (``clean_checkpoints``), and :func:`detector.analysis.simulate_early_stop`
then gives, for the band at the decision threshold, the steps each image would have run and its verdict. The
threshold is ``--threshold``, else the model's calibration, else the one at 1 % FPR on these real images.

    python benchmarks/eval_attribution.py --model runs/celeba32-f/network-final.pt \\
        --real ../shared/data/celeba_subset/celeba_89x109_9934.zip --real-skip 8934 --crop celeba \\
        --n 100 --steps 1000 --state eval-celeba32.jsonl
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fig9_histograms, machine_info, summary  # noqa: E402

from detector.analysis import noise_structure_correlation, simulate_early_stop  # noqa: E402
from detector.calibration_run import generate_images  # noqa: E402
from detector.calibration_store import load_calibration  # noqa: E402
from detector.projector import Projector  # noqa: E402
from detector.settings import ProjectorSettings  # noqa: E402
from detector.statistics import roc_auc, threshold_at_fpr  # noqa: E402
from stylegan.data import iter_source_images, prepare_image  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.perceptual import load_lpips  # noqa: E402


def real_targets(src: str, skip: int, n: int, res: int, channels: int, crop: str) -> list:
    out = []
    for i, (name, im) in enumerate(iter_source_images(src)):
        if i < skip or isinstance(im, Exception):
            continue
        arr = prepare_image(im, res, crop=crop, channels=channels)
        out.append((name, torch.from_numpy(np.array(arr)).float()[None] / 127.5 - 1))
        if len(out) == n:
            break
    return out


def separation(gen, real) -> float:
    """d' of the log distances: (mean log d_real - mean log d_generated) / pooled std. AUC saturates at 1 once
    the populations no longer overlap in a small sample; d' still tells how far apart they are, which is what
    choosing between projector variants needs."""
    g, r = np.log(np.asarray(gen, np.float64)), np.log(np.asarray(real, np.float64))
    return float((r.mean() - g.mean()) / np.sqrt(0.5 * (g.var(ddof=1) + r.var(ddof=1))))


def early_stopping_figures(items, done, settings, gen_d, real_d, threshold, calibration) -> dict:
    """What early stopping with the band at the threshold would have saved on these projections, and whether
    any verdict would have changed (it must not)."""
    if threshold is not None:
        th, source = float(threshold), "--threshold"
    elif calibration and calibration.get("threshold") is not None:
        th, source = float(calibration["threshold"]), "calibration"
    else:
        th, source = threshold_at_fpr(real_d, 0.01), "1% FPR on these real images"
    steps_full = steps_early = changed = 0
    per_pop = {"generated": [], "real": []}
    for key, pop, _, _ in items:
        rec = done[key]
        if not rec.get("clean_trace"):
            return {"threshold": th, "threshold_source": source, "note": "state has no clean checkpoints"}
        n, d = simulate_early_stop([(int(a), float(b)) for a, b in rec["clean_trace"]], rec["distance"], (th, th),
                                   settings)
        steps_full += settings.steps
        steps_early += n
        per_pop[pop].append(n)
        changed += (d <= th) != (rec["distance"] <= th)
    return {"threshold": th, "threshold_source": source, "band": [th, th], "margin": settings.early_stop_margin,
            "verdicts_changed": int(changed), "steps_saved_fraction": 1 - steps_early / max(steps_full, 1),
            "mean_steps_generated": float(np.mean(per_pop["generated"])) if per_pop["generated"] else None,
            "mean_steps_real": float(np.mean(per_pop["real"])) if per_pop["real"] else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--real", required=True, help="zip or folder of real images")
    p.add_argument("--real-skip", type=int, default=0, help="skip the first K (the training images)")
    p.add_argument("--crop", default="center")
    p.add_argument("--n", type=int, default=100, help="images per population")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pyramid", default=None)
    p.add_argument("--lpips-resolution", type=int, default=None)
    p.add_argument("--lr", type=float, default=None,
                   help="ProjectorSettings.lr (default: 0.2 below 256 px, App. D's 0.1 from 256 px)")
    p.add_argument("--alpha", type=float, default=None, help="noise regularisation weight (default: App. D's 1e5)")
    p.add_argument("--alpha-min-resolution", type=int, default=None,
                   help="ProjectorSettings.alpha_min_resolution (default: the projector's; 0: every resolution)")
    p.add_argument("--truncation-psi", type=float, default=1.0,
                   help="truncation of the generated images (default 1: the network's full distribution)")
    p.add_argument("--clamp-output", choices=["on", "off"], default=None,
                   help="ProjectorSettings.clamp_output (default: the projector's default)")
    p.add_argument("--lpips-weights", default=None)
    p.add_argument("--threshold", type=float, default=None, help="decision threshold for the early-stopping figures")
    p.add_argument("--seed-offset", type=int, default=1_000_000, help="generated images use seeds offset+i")
    p.add_argument("--state", required=True, help="JSONL of finished distances (resume)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--report-only", action="store_true", help="project nothing: summarise the state file")
    p.add_argument("--shard", default="0/1",
                   help="I/N: project only the (generated, real) pairs I, I+N, ... (run N processes or machines "
                        "with their own --state, then --report-only on the concatenated states)")
    p.add_argument("--histogram", default=None, metavar="PNG",
                   help="also draw both distance distributions (paper Fig. 9) into this PNG")
    p.add_argument("--rescore", action="store_true",
                   help="also measure the stored re-syntheses with LPIPS at other resolutions and pixel MSE")
    args = p.parse_args()
    torch.set_flush_denormal(True)

    model = load_model(args.model, device=args.device)
    G = model.G_ema
    kw = {"steps": args.steps, "lpips_resolution": args.lpips_resolution, "clean_checkpoints": True}
    if args.pyramid:
        kw["pyramid"] = args.pyramid
    for name in ("lr", "alpha"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.alpha_min_resolution is not None:
        kw["alpha_min_resolution"] = args.alpha_min_resolution or None
    if args.clamp_output:
        kw["clamp_output"] = args.clamp_output == "on"
    settings = ProjectorSettings(**kw)
    projector = Projector(G, load_lpips("vgg", args.lpips_weights, device=args.device), settings)

    state = Path(args.state)
    done = {}
    if state.exists():
        for line in state.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["key"]] = rec
    seeds = [args.seed_offset + i for i in range(args.n)]
    reals = real_targets(args.real, args.real_skip, args.n, G.img_resolution, G.img_channels, args.crop)
    gens = [(f"gen:{s}", "generated", None, s) for s in seeds]
    # Interleaved, so that a stopped run has both populations in equal numbers.
    items = [it for pair in zip(gens, [(f"real:{name}", "real", t, None) for name, t in reals]) for it in pair]
    items += gens[len(reals):]
    shard, shards = (int(v) for v in args.shard.split("/"))
    todo = [] if args.report_only else [it for i, it in enumerate(items) if it[0] not in done
            and (i // 2) % shards == shard]  # by (generated, real) pairs
    w_std, w_avg = projector.w_stats.w_std, projector.w_stats.w_avg.cpu()
    t0 = time.perf_counter()
    for b in range(0, len(todo), args.batch):
        chunk = todo[b:b + args.batch]
        targets = torch.cat([target_of(G, it, args.device, args.truncation_psi) for it in chunk])
        chunk_seeds = [int(hashlib.sha256(it[0].encode()).hexdigest()[:8], 16) for it in chunk]
        results = projector.project(targets, seeds=chunk_seeds)
        with open(state, "a") as f:
            for j, (it, res) in enumerate(zip(chunk, results)):
                rec = {"key": it[0], "population": it[1], "distance": res.distance, "steps_run": res.steps_run,
                       "clean_trace": [list(c) for c in res.clean_trace], "image_f16": _pack(res.image),
                       "w_f16": _pack(res.w[0])}
                rec["w_from_mean_over_sigma_w"] = float((res.w[0] - w_avg).norm()) / w_std
                # Fig. 18: how much of the target's structure the optimised noise maps picked up
                rec["noise_structure_correlation"] = noise_structure_correlation(res, targets[j])
                if it[1] == "generated":  # how far the projection ended from the w that made the image
                    w_true = true_w(G, it[3], args.truncation_psi)
                    rec["w_error_over_sigma_w"] = float((res.w[0] - w_true).norm()) / w_std
                done[it[0]] = rec
                f.write(json.dumps(rec) + "\n")
        print(f"{sum(it[0] in done for it in items)}/{len(items)} projected", file=sys.stderr)
    finished = [it for it in items if it[0] in done]
    gen_d = [done[it[0]]["distance"] for it in finished if it[1] == "generated"]
    real_d = [done[it[0]]["distance"] for it in finished if it[1] == "real"]
    out = {"benchmark": "eval_attribution", "model": args.model, "model_sha256": model.file_sha256,
           "weights_sha256": model.metadata.get("weights_sha256"),
           "settings": settings.to_dict(), "effective_alpha": settings.effective_alpha(G.img_resolution),
           "generated_truncation_psi": args.truncation_psi,
           "complete": len(finished) == len(items)}
    if gen_d and real_d:
        w_err = [done[it[0]]["w_error_over_sigma_w"] for it in finished
                 if it[1] == "generated" and "w_error_over_sigma_w" in done[it[0]]]
        out.update({"generated": summary(gen_d), "real": summary(real_d), "auc": roc_auc(gen_d, real_d),
                    "separation_dprime_log": separation(gen_d, real_d),
                    "generated_w_error_over_sigma_w": summary(w_err) if w_err else None,
                    "w_from_mean_over_sigma_w": {
                        pop: summary([done[it[0]]["w_from_mean_over_sigma_w"] for it in finished if it[1] == pop
                                      and "w_from_mean_over_sigma_w" in done[it[0]]] or [float("nan")])
                        for pop in ("generated", "real")},
                    "noise_structure_correlation": {
                        pop: summary([done[it[0]]["noise_structure_correlation"] for it in finished if it[1] == pop
                                      and "noise_structure_correlation" in done[it[0]]] or [float("nan")])
                        for pop in ("generated", "real")},
                    "early_stopping": early_stopping_figures(finished, done, settings, gen_d, real_d, args.threshold,
                                                             load_calibration(args.model, model))})
        if args.rescore:
            out["rescored"] = rescore(G, finished, done, args)
        out["distances"] = {pop: {it[0]: done[it[0]]["distance"] for it in finished if it[1] == pop}
                            for pop in ("generated", "real")}
        if args.histogram:
            fig9_histograms(args.histogram, [(f"{Path(args.model).name}: {len(finished)} images, {args.steps} "
                                              f"steps, ROC AUC {out['auc']:.4f}", gen_d, real_d)])
    out.update({"seconds_this_run": round(time.perf_counter() - t0, 1), "machine": machine_info(args.device)})
    print(json.dumps(out, indent=1))


def target_of(G, item, device, truncation_psi: float = 1.0) -> torch.Tensor:
    """The [1, C, R, R] target of an item: a generated image (8 bits, random noise from its seed) or a real one."""
    if item[1] == "generated":
        return generate_images(G, [item[3]], truncation_psi).to(device)
    return item[2].to(device)


@torch.no_grad()
def true_w(G, seed: int, truncation_psi: float = 1.0) -> torch.Tensor:
    """The w a generated image was made from (z drawn as :func:`stylegan.generator.generate_seeded` draws it)."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(G.mapping.w_avg.device)
    return G.mapping(z, truncation_psi=truncation_psi)[0, 0].cpu()


def _pack(x: torch.Tensor) -> dict:
    a = x.detach().cpu().numpy().astype(np.float16)
    return {"shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def _unpack(d: dict) -> torch.Tensor:
    a = np.frombuffer(base64.b64decode(d["b64"]), np.float16).reshape(d["shape"])
    return torch.from_numpy(a.astype(np.float32))


@torch.no_grad()
def rescore(G, finished, done, args) -> dict:
    """The same projections measured differently (no new optimisation): LPIPS-VGG between target and
    re-synthesis (float16-stored) at other resolutions (bilinear up-sampling), and the pixel MSE. Tells how much of
    the separation is the measurement rather than the fit."""
    from detector.batching import _resize

    vgg = load_lpips("vgg", args.lpips_weights, device=args.device)
    measures = {f"lpips_vgg_{r}": r for r in (G.img_resolution, 64, 128, 256)}
    scores = {name: {"generated": [], "real": []} for name in list(measures) + ["mse"]}
    for it in finished:
        rec = done[it[0]]
        if "image_f16" not in rec:
            continue
        x = target_of(G, it, args.device, args.truncation_psi)
        y = _unpack(rec["image_f16"])[None].to(args.device)
        for name, r in measures.items():
            scores[name][it[1]].append(float(vgg(_resize(x, r), _resize(y, r))))
        scores["mse"][it[1]].append(float((x - y).square().mean()))
    out = {}
    for name, s in scores.items():
        if s["generated"] and s["real"]:
            out[name] = {"n": [len(s["generated"]), len(s["real"])], "auc": roc_auc(s["generated"], s["real"]),
                         "separation_dprime_log": separation(s["generated"], s["real"]),
                         "median_generated": float(np.median(s["generated"])),
                         "median_real": float(np.median(s["real"]))}
    return out


if __name__ == "__main__":
    main()
