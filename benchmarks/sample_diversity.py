"""How different a network's images are from each other: the mean LPIPS-VGG distance between pairs of independent
samples (random z, random noise, truncation psi 1), the same for one z under two draws of the noise maps (how
much of an image the noise decides), and for pairs of real images. Prints JSON.

PPL (StyleGAN §4.1) measures how much the image changes per small step in latent space, so a network whose images
all look alike has a low PPL however entangled it is (a constant generator scores 0). The paper compares PPL
between networks of similar image quality (FID); without Inception weights on this machine, this script gives the
scale PPL should be read against: ``ppl / pair_distance`` compares networks of different diversity.

    python benchmarks/sample_diversity.py --model a.pt --model f.pt --real real_eval100 --pairs 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402

from detector.images import iter_image_files, load_image  # noqa: E402
from stylegan.formats import load_model  # noqa: E402
from stylegan.perceptual import load_lpips  # noqa: E402


def stats(d: np.ndarray) -> dict:
    return {"n_pairs": int(d.size), "mean": float(d.mean()), "median": float(np.median(d)),
            "std": float(d.std(ddof=1))}


@torch.no_grad()
def sample_pairs(G, distance, pairs: int, batch: int, seed: int, same_z: bool = False) -> np.ndarray:
    """LPIPS of pairs of samples (random noise each): independent z, or with ``same_z`` one z under two draws of
    the noise maps (how much of the image the noise decides)."""
    gen = torch.Generator().manual_seed(seed + int(same_z))
    torch.manual_seed(seed + 2 + int(same_z))  # noise_mode='random' draws from the global generator
    out = []
    for start in range(0, pairs, batch):
        n = min(batch, pairs - start)
        z = torch.randn(n, G.z_dim, generator=gen).repeat(2, 1) if same_z else \
            torch.randn(2 * n, G.z_dim, generator=gen)
        img = G(z, truncation_psi=1.0, noise_mode="random")
        out.append(distance(img[:n], img[n:]).reshape(-1).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def real_pairs(folder: str, distance, res: int, channels: int, pairs: int, seed: int) -> np.ndarray:
    files = iter_image_files([Path(folder)])
    imgs = torch.cat([load_image(f, res, channels).tensor for f in files])
    rng = np.random.RandomState(seed)
    a = rng.randint(0, len(imgs), pairs)
    b = (a + rng.randint(1, len(imgs), pairs)) % len(imgs)  # never an image with itself
    return distance(imgs[a], imgs[b]).reshape(-1).cpu().numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--real", default=None, help="folder of real images at the networks' resolution")
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    distance = load_lpips("vgg")
    out = {"benchmark": "sample_diversity", "networks": {}}
    G = None
    for path in args.model:
        model = load_model(path)
        G = model.G_ema.eval()
        out["networks"][path] = {"arch": model.arch, "weights_sha256": model.metadata.get("weights_sha256"),
                                 "pair_distance": stats(sample_pairs(G, distance, args.pairs, args.batch,
                                                                     args.seed)),
                                 "same_z_other_noise_distance": stats(sample_pairs(G, distance, args.pairs,
                                                                                   args.batch, args.seed,
                                                                                   same_z=True))}
    if args.real:
        out["real"] = {"folder": args.real, "pair_distance": stats(
            real_pairs(args.real, distance, G.img_resolution, G.img_channels, args.pairs, args.seed))}
    out.update({"seconds": round(time.perf_counter() - t0, 1), "machine": machine_info()})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
