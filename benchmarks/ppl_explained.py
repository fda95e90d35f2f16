"""Why one network's perceptual path length is lower than another's (issue 7): measures that PPL (StyleGAN §4.1)
mixes together, per network and for real images. Prints JSON.

PPL in W with end-point sampling is ``E[d(g(w), g(w + eps * (w1 - w0))) / eps^2]``: it grows with the length of
the steps W's distribution makes the path take, with how strongly the image reacts to a step, and with how much
of the image a perceptual distance can see change at all. A blurry generator scores low on the last count however
entangled it is. So, for each network:

* ``w_step_sq``: ``E|w1 - w0|^2`` over pairs of mapped z (the squared length of the path PPL walks along);
  ``ppl / w_step_sq`` is then the perceptual sensitivity per unit of squared W distance;
* ``spectrum``: the radially averaged power spectrum of the images' luminance (mean removed, Hann window),
  one value per integer frequency 1 .. H/2 cycles per image, and ``high_frequency_fraction``, the share of
  the power above H/4 (the upper half of the band up to Nyquist): how much fine detail the images carry;
  ``spectrum_over_real`` divides a network's spectrum by the real images' (1 at every frequency: real detail);
* ``kid_vgg``: kernel inception distance (Bińkowski et al. 2018, cubic polynomial kernel, unbiased) between the
  network's images and the real ones, in the space of the LPIPS VGG16 trunk's deepest activations (spatial
  mean, 512-d) instead of Inception's, which this machine does not have: a quality yardstick (lower is closer
  to the real images), comparable between networks measured in one run;
* ``ppl_cv`` (std / mean of the per-pair values the percentile filter keeps) and ``ppl_p99_over_median``: how
  evenly the path lengths spread, a scale-free view of smoothness beside PPL's mean;
* ``ppl_pixel``: the same PPL with mean squared pixel difference in place of LPIPS (``/ eps^2`` likewise): whether
  a gap between networks is LPIPS's way of weighing the change or the change itself;
* ``path_length``: ``|J_w^T y|`` (the quantity StyleGAN2 §3.2 regularises, ``stylegan.loss.path_lengths``) at
  ``--jacobian-samples`` mapped z, const noise: its mean and its coefficient of variation. The regulariser asks
  for one fixed length everywhere, i.e. a low CV, not a small mean;
* ``ppl_blurred``: PPL with both images of each pair low-passed by a Gaussian of each ``--blur`` sigma (pixels)
  before LPIPS, alongside the high-frequency fraction the blur leaves: how much of a network's PPL lives in the
  detail another network lacks. At the sigma where one network's blurred images carry the other's
  high-frequency fraction, the two PPLs compare like for like.

    python benchmarks/ppl_explained.py --model a.pt --model f.pt --real real_cal200 --real real_eval100 \\
        --n 2000 --ppl-samples 4000 --blur 0.5 0.7 1.0 --jacobian-samples 1000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

from detector.images import iter_image_files, load_image  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.loss import path_lengths  # noqa: E402
from stylegan.metrics import perceptual_path_length  # noqa: E402
from stylegan.perceptual import load_lpips  # noqa: E402


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian low-pass of NCHW images, reflect padding, radius ceil(3 sigma); sigma 0 is identity."""
    if sigma <= 0:
        return img
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    C = img.shape[1]
    out = F.pad(img, (r, r, r, r), mode="reflect")
    out = F.conv2d(out, k.reshape(1, 1, 1, -1).repeat(C, 1, 1, 1), groups=C)
    return F.conv2d(out, k.reshape(1, 1, -1, 1).repeat(C, 1, 1, 1), groups=C)


def radial_spectrum(img: torch.Tensor) -> np.ndarray:
    """Mean radially averaged power spectrum of the luminance of NCHW images in [-1, 1]: [H // 2] values, for
    integer radii 1 .. H/2 cycles per image (square images)."""
    N, C, H, W = img.shape
    if H != W:
        raise ValueError(f"square images needed, got {H}x{W}")
    y = img.double()
    if C == 3:
        y = 0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2]
    else:
        y = y[:, 0]
    y = y - y.mean(dim=(1, 2), keepdim=True)
    win = torch.hann_window(H, periodic=False, dtype=torch.float64)
    y = y * (win[:, None] * win[None, :])
    power = torch.fft.fft2(y).abs().square().mean(dim=0)
    f = torch.fft.fftfreq(H, d=1.0 / H, dtype=torch.float64)
    radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).round().long()
    out = np.zeros(H // 2)
    for r in range(1, H // 2 + 1):
        out[r - 1] = float(power[radius == r].mean())
    return out


def high_frequency_fraction(spectrum: np.ndarray) -> float:
    """Share of the spectrum's power (radii 1 .. H/2) at radii above H/4."""
    half = len(spectrum) // 2
    return float(spectrum[half:].sum() / spectrum.sum())


@torch.no_grad()
def vgg_features(distance, img: torch.Tensor, batch: int = 100) -> np.ndarray:
    """Spatial means of the deepest LPIPS trunk activations (relu5_3 for VGG16): [N, 512]."""
    out = []
    for i in range(0, len(img), batch):
        x = img[i:i + batch]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        feats = distance.model.net(distance.model.scaling_layer(x))
        out.append(feats[-1].mean(dim=(2, 3)).double().cpu().numpy())
    return np.concatenate(out)


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 between feature sets a [m, d] and b [n, d] under k(x, y) = (x.y / d + 1)^3."""
    d = a.shape[1]
    kaa = (a @ a.T / d + 1) ** 3
    kbb = (b @ b.T / d + 1) ** 3
    kab = (a @ b.T / d + 1) ** 3
    m, n = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())


@torch.no_grad()
def generate(G, n: int, seed: int, batch: int = 100) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + 1)  # noise_mode='random' draws from the global generator
    return torch.cat([G(torch.randn(min(batch, n - i), G.z_dim, generator=gen), truncation_psi=1.0,
                        noise_mode="random").clamp(-1, 1) for i in range(0, n, batch)])


@torch.no_grad()
def w_step_sq(G, n: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed + 2)
    w0 = G.mapping(torch.randn(n, G.z_dim, generator=gen))[:, 0]
    w1 = G.mapping(torch.randn(n, G.z_dim, generator=gen))[:, 0]
    return float((w1 - w0).square().sum(dim=1).mean())


def pixel_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).square().mean(dim=(1, 2, 3))


def jacobian_lengths(G, n: int, seed: int, batch: int = 32) -> np.ndarray:
    """|J_w^T y| at n mapped z (one w broadcast to all layers, const noise, fresh y per sample)."""
    gen = torch.Generator().manual_seed(seed + 3)
    torch.manual_seed(seed + 4)  # y in path_lengths draws from the global generator
    out = []
    for i in range(0, n, batch):
        with torch.no_grad():
            ws = G.mapping(torch.randn(min(batch, n - i), G.z_dim, generator=gen))
        ws.requires_grad_(True)
        out.append(path_lengths(G.synthesis(ws, noise_mode="const"), ws).detach().double().numpy())
    return np.concatenate(out)


def spread(values: np.ndarray) -> dict:
    med = float(np.median(values))
    return {"mean": float(values.mean()), "cv": float(values.std() / values.mean()), "median": med,
            "p99_over_median": float(np.percentile(values, 99) / med)}


def image_measures(img: torch.Tensor, blurs: Sequence[float]) -> dict:
    spec = radial_spectrum(img)
    return {"spectrum": [float(v) for v in spec], "high_frequency_fraction": high_frequency_fraction(spec),
            "high_frequency_fraction_blurred": {str(s): high_frequency_fraction(radial_spectrum(gaussian_blur(img, s)))
                                                for s in blurs}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--label", action="append", default=None, help="a name per --model (default: the path)")
    p.add_argument("--real", action="append", required=True, help="folder of real images at the networks' size")
    p.add_argument("--n", type=int, default=2000, help="generated images per network for spectrum and KID")
    p.add_argument("--ppl-samples", type=int, default=4000)
    p.add_argument("--blur", type=float, nargs="*", default=[0.5, 0.7, 1.0])
    p.add_argument("--jacobian-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    labels = args.label or args.model
    if len(labels) != len(args.model):
        raise SystemExit("give one --label per --model")
    t0 = time.perf_counter()
    torch.set_flush_denormal(True)
    distance = load_lpips("vgg")
    first = load_model(args.model[0]).G_ema
    res, ch = first.img_resolution, first.img_channels
    real = torch.cat([load_image(f, res, ch).tensor for f in iter_image_files([Path(r) for r in args.real])])
    real_feats = vgg_features(distance, real)
    out = {"benchmark": "ppl_explained",
           "settings": {"n": args.n, "ppl_samples": args.ppl_samples, "blur_sigmas": args.blur, "seed": args.seed,
                        "ppl": {"space": "w", "sampling": "end", "epsilon": 1e-4, "crop": False},
                        "kid_features": "LPIPS VGG16 trunk, deepest activations, spatial mean"},
           "real": {"folders": args.real, "n": len(real), **image_measures(real, args.blur)},
           "networks": {}}
    for label, path in zip(labels, args.model):
        model = load_model(path)
        G = model.G_ema.eval()
        imgs = generate(G, args.n, args.seed)
        rec = {"model": path, "arch": model.arch, "weights_sha256": model.metadata.get("weights_sha256"),
               **image_measures(imgs, args.blur), "kid_vgg": kid(vgg_features(distance, imgs), real_feats),
               "w_step_sq": w_step_sq(G, 4000, args.seed)}
        ppl = {}
        for s in [0.0, *args.blur]:
            dist = distance if s == 0 else (lambda a, b, s=s: distance(gaussian_blur(a, s), gaussian_blur(b, s)))
            res = perceptual_path_length(G, dist, num_samples=args.ppl_samples, batch_size=64, seed=args.seed)
            ppl[str(s)] = res.mean
            if s == 0:
                rec["ppl_cv"] = res.std / res.mean
                rec["ppl_p99_over_median"] = float(np.percentile(res.values, 99) / np.median(res.values))
        res = perceptual_path_length(G, pixel_mse, num_samples=args.ppl_samples, batch_size=64, seed=args.seed)
        rec["ppl_pixel"] = {"mean": res.mean, "cv": res.std / res.mean}
        rec["path_length"] = spread(jacobian_lengths(G, args.jacobian_samples, args.seed))
        rec["ppl"] = ppl["0.0"]
        rec["ppl_blurred"] = {k: v for k, v in ppl.items() if k != "0.0"}
        rec["ppl_per_w_step_sq"] = rec["ppl"] / rec["w_step_sq"]
        rec["spectrum_over_real"] = [g / r for g, r in zip(rec["spectrum"], out["real"]["spectrum"])]
        out["networks"][label] = rec
        print(f"{label}: ppl {rec['ppl']:.3f} (cv {rec['ppl_cv']:.2f}), |J^T y| {rec['path_length']['mean']:.4f} "
              f"(cv {rec['path_length']['cv']:.2f}), hf {rec['high_frequency_fraction']:.4f}, "
              f"kid {rec['kid_vgg']:.4f}", file=sys.stderr)
    out.update({"seconds": round(time.perf_counter() - t0, 1), "machine": machine_info()})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
