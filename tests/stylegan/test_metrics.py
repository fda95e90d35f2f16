"""Perceptual path length (stylegan/metrics.py) on toy generators with analytic answers, and on StyleGAN1/2."""

import json
import math

import numpy as np
import pytest
import torch

from stylegan.metrics import face_crop, percentile_filter, perceptual_path_length, ppl_latents, slerp


class ToyMapping(torch.nn.Module):
    def __init__(self, M, num_ws=2):
        super().__init__()
        self.register_buffer("M", M)
        self.register_buffer("w_avg", torch.zeros(M.shape[1], dtype=M.dtype))
        self.num_ws = num_ws

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None, update_emas=False):
        return (z @ self.M).unsqueeze(1).repeat(1, self.num_ws, 1)


class ToySynthesis(torch.nn.Module):
    """Linear: image = A w (w_dim 16 -> 1x4x4), no noise inputs."""

    noise_shapes = []

    def __init__(self, A, side=4):
        super().__init__()
        self.register_buffer("A", A)
        self.side = side

    def forward(self, ws, noise_mode="random", noise=None, fused_modconv=None):
        return (ws[:, 0] @ self.A.t()).reshape(-1, 1, self.side, self.side)


class ToyG(torch.nn.Module):
    def __init__(self, M, A, side=4):
        super().__init__()
        self.mapping = ToyMapping(M)
        self.synthesis = ToySynthesis(A, side)
        self.z_dim = M.shape[0]
        self.img_resolution = side


def sq_l2(a, b):
    return (a - b).square().sum(dim=(1, 2, 3))


def _toy(seed=0, c=None):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(8, 16, generator=g, dtype=torch.float64)
    A = torch.randn(16, 16, generator=g, dtype=torch.float64) if c is None else c * torch.eye(16, dtype=torch.float64)
    return ToyG(M, A), M, A


def test_ppl_in_w_of_a_linear_generator_is_analytic():
    G, M, A = _toy()
    n = 300
    res = perceptual_path_length(G, sq_l2, num_samples=n, space="w", sampling="full", batch_size=64, seed=3)
    z0, z1, t = ppl_latents(n, 8, seed=3, sampling="full")
    # g(lerp(w0, w1, t)) = A w0 + t A (w1 - w0): ||g(t + eps) - g(t)||^2 / eps^2 = ||A (w1 - w0)||^2 for every t
    expected = ((z1 - z0) @ M @ A.t()).square().sum(dim=1).numpy()
    np.testing.assert_allclose(res.values, expected, rtol=1e-6)
    keep = percentile_filter(expected)
    assert res.mean == pytest.approx(expected[keep].mean(), rel=1e-6)
    assert res.std == pytest.approx(expected[keep].std(), rel=1e-5)
    assert res.num_samples == n and res.filtered_count == n - keep.sum() == 4  # 2 below the 1st, 2 above the 99th
    # 'end' sampling gives the same per-sample values for a linear generator (t = 0)
    end = perceptual_path_length(G, sq_l2, num_samples=n, space="w", sampling="end", batch_size=300, seed=3)
    np.testing.assert_allclose(end.values, expected, rtol=1e-6)


def test_ppl_in_z_of_a_linear_generator_is_analytic():
    # mapping = identity (z_dim = w_dim), g(w) = c w: the slerp path moves on a great circle of the unit sphere at
    # angular speed theta = angle(z0, z1), so the sample is c^2 (2 sin(theta eps / 2))^2 / eps^2 ~= c^2 theta^2
    c, eps = 3.0, 1e-4
    G = ToyG(torch.eye(16, dtype=torch.float64), c * torch.eye(16, dtype=torch.float64))
    G.z_dim = 16
    n = 40
    for sampling in ("full", "end"):
        res = perceptual_path_length(G, sq_l2, num_samples=n, space="z", sampling=sampling, epsilon=eps,
                                     batch_size=16, seed=1)
        z0, z1, _ = ppl_latents(n, 16, seed=1, sampling=sampling)
        theta = torch.acos((z0 * z1).sum(1) / (z0.norm(dim=1) * z1.norm(dim=1))).numpy()
        exact = c**2 * (2 * np.sin(theta * eps / 2)) ** 2 / eps**2
        np.testing.assert_allclose(res.values, exact, rtol=1e-6)
        np.testing.assert_allclose(res.values, c**2 * theta**2, rtol=1e-6)


def test_slerp():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    assert torch.allclose(slerp(a, b, torch.zeros(5, dtype=torch.float64)), an)
    assert torch.allclose(slerp(a, b, torch.ones(5, dtype=torch.float64)), bn)
    mid = slerp(a, b, torch.full([5], 0.5, dtype=torch.float64))
    assert torch.allclose(mid.norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose((mid * an).sum(1), (mid * bn).sum(1))  # equidistant


def test_percentile_filter():
    v = np.arange(1000, dtype=np.float64)
    keep = percentile_filter(v)
    # 1st percentile ('lower') is 9, 99th ('higher') is 990
    assert keep.sum() == 982 and v[keep].min() == 9 and v[keep].max() == 990
    v = np.concatenate([np.ones(990), np.full(5, 1e9), np.full(5, -1e9)])
    assert v[percentile_filter(v)].mean() == 1.0
    assert percentile_filter(np.zeros(0)).shape == (0,)


def test_outliers_are_dropped_before_the_mean():
    G, M, A = _toy()
    calls = {"n": 0}

    def spiky(a, b):
        d = sq_l2(a, b)
        if calls["n"] == 0:
            d = d.clone()
            d[0] = d[0] * 1e6  # one wild sample in the first batch
        calls["n"] += 1
        return d

    res = perceptual_path_length(G, spiky, num_samples=200, space="w", batch_size=50, seed=0)
    clean = perceptual_path_length(G, sq_l2, num_samples=200, space="w", batch_size=50, seed=0)
    assert res.values[0] > 1e5 * clean.values[0]
    assert res.mean < 2 * clean.mean
    keep = percentile_filter(res.values)
    assert not keep[0] and res.mean == pytest.approx(res.values[keep].mean())


def test_deterministic_and_seeded():
    G, _, _ = _toy()
    a = perceptual_path_length(G, sq_l2, num_samples=30, space="z", sampling="full", seed=5, batch_size=8)
    b = perceptual_path_length(G, sq_l2, num_samples=30, space="z", sampling="full", seed=5, batch_size=30)
    c = perceptual_path_length(G, sq_l2, num_samples=30, space="z", sampling="full", seed=6, batch_size=8)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-9)  # batch size does not change the draws
    assert a.mean != c.mean
    d = json.loads(json.dumps(a.to_dict()))
    assert d["metric"] == "ppl" and d["settings"]["space"] == "z" and d["num_kept"] + d["filtered_count"] == 30
    z0, z1, t_full = ppl_latents(10, 4, seed=0, sampling="full")
    e0, e1, t_end = ppl_latents(10, 4, seed=0, sampling="end")
    g = torch.Generator().manual_seed(0)  # the documented draws: z0, z1, then t ~ U[0, 1), all float64
    for got, want in ((z0, torch.randn(10, 4, generator=g, dtype=torch.float64)),
                      (z1, torch.randn(10, 4, generator=g, dtype=torch.float64)),
                      (t_full, torch.rand(10, generator=g, dtype=torch.float64))):
        assert torch.equal(got, want)
    assert torch.equal(e0, z0) and torch.equal(e1, z1) and torch.equal(t_end, torch.zeros(10, dtype=torch.float64))


def test_crop_and_downsampling_to_256():
    img = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16)
    c = face_crop(img)
    assert c.shape == (1, 1, 8, 8) and c[0, 0, 0, 0] == 6 * 16 + 4

    seen = []

    def recorder(a, b):
        seen.append(tuple(a.shape))
        return (a - b).square().mean(dim=(1, 2, 3))

    # a 512 px linear toy: image = broadcast of sum(w) (cheap), the distance must see 256 px
    class Big(ToySynthesis):
        def forward(self, ws, noise_mode="random", noise=None, fused_modconv=None):
            return ws[:, 0].sum(dim=1).reshape(-1, 1, 1, 1).expand(-1, 1, 512, 512)

    G, _, _ = _toy()
    G.synthesis = Big(torch.eye(16, dtype=torch.float64))
    perceptual_path_length(G, recorder, num_samples=2, batch_size=2)
    perceptual_path_length(G, recorder, num_samples=2, batch_size=2, crop=True)
    # 512 px: 2x box filter -> 256; cropped first: 256 px of 512, no further down-sampling
    assert seen == [(2, 1, 256, 256), (2, 1, 256, 256)]


def test_bad_arguments():
    G, _, _ = _toy()
    for kw in (dict(space="x"), dict(sampling="mid"), dict(epsilon=0), dict(num_samples=0), dict(noise_mode="x")):
        with pytest.raises(ValueError):
            perceptual_path_length(G, sq_l2, **kw)
    with pytest.raises(TypeError):
        perceptual_path_length(G, None)
    with pytest.raises(ValueError):
        perceptual_path_length(G, lambda a, b: sq_l2(a, b)[:1], num_samples=4, batch_size=4)


@pytest.mark.parametrize("space", ["w", "z"])
@pytest.mark.parametrize("sampling", ["full", "end"])
def test_ppl_runs_on_stylegan1_and_stylegan2(space, sampling):
    from stylegan.generator import Generator
    from stylegan.presets import get_preset
    from stylegan.stylegan1 import StyleGAN1Config, StyleGAN1Generator

    def mse(a, b):
        return (a - b).square().mean(dim=(1, 2, 3))

    torch.manual_seed(0)
    G1 = StyleGAN1Generator(StyleGAN1Config(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2,
                                            channel_base=128, channel_max=16))
    G2 = Generator(get_preset("cpu-tiny").G)
    for G in (G1, G2):
        G.train()
        r = perceptual_path_length(G, mse, num_samples=8, space=space, sampling=sampling, batch_size=4, seed=0)
        assert math.isfinite(r.mean) and r.num_samples == 8
        assert G.training  # the mode is restored
        again = perceptual_path_length(G, mse, num_samples=8, space=space, sampling=sampling, batch_size=8, seed=0)
        np.testing.assert_allclose(again.values, r.values, rtol=1e-3)  # (the noise strengths are still 0)
        G.eval()
        np.testing.assert_allclose(r.values[0], _first_ppl_sample(G, mse, space, sampling, 8, 4), rtol=2e-2)
        with torch.no_grad():  # noise that matters: the two images of a pair must share their maps
            for layer in G.synthesis.noise_layers():
                layer.noise_strength.fill_(0.1)
        noisy = perceptual_path_length(G, mse, num_samples=8, space=space, sampling=sampling, batch_size=4, seed=0)
        np.testing.assert_allclose(noisy.values[0], _first_ppl_sample(G, mse, space, sampling, 8, 4), rtol=2e-2)
        assert np.abs(noisy.values / r.values - 1).max() > 0.05


def _first_ppl_sample(G, distance, space, sampling, num_samples, batch_size, seed=0, eps=1e-4):
    """Sample 0 of perceptual_path_length(..., seed=seed, noise_mode='random') by hand: the pair's latents from the
    documented draws, lerp in W or slerp in Z to t and t + eps, the same noise maps for both images (the first of
    a batch's draws from a generator seeded seed + 1), distance / eps^2."""
    g = torch.Generator().manual_seed(seed)
    z0, z1 = (torch.randn(num_samples, G.z_dim, generator=g, dtype=torch.float64)[:1] for _ in range(2))
    t = 0.0 if sampling == "end" else torch.rand(num_samples, generator=g, dtype=torch.float64)[0].item()
    if space == "w":
        ws = [G.mapping(z0.float()) + tt * (G.mapping(z1.float()) - G.mapping(z0.float())) for tt in (t, t + eps)]
    else:
        a, b = z0 / z0.norm(), z1 / z1.norm()
        theta = torch.acos((a * b).sum())
        ws = [G.mapping(((torch.sin((1 - tt) * theta) * a + torch.sin(tt * theta) * b) / torch.sin(theta)).float())
              for tt in (t, t + eps)]
    noise_gen = torch.Generator().manual_seed(seed + 1)
    noise = [torch.randn(batch_size, *shape, generator=noise_gen)[:1].repeat(2, 1, 1, 1)
             for shape in G.synthesis.noise_shapes]
    with torch.no_grad():
        img = G.synthesis(torch.cat(ws), noise=noise)
    return distance(img[:1], img[1:]).item() / eps ** 2
