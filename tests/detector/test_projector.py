"""The projector of StyleGAN2 §5 / App. D (detector/projector.py) on tiny random networks.

The networks are 16 px with random weights; their ToRGB weights are scaled down so that images lie roughly in
[-1, 1], and the noise strengths (0 at initialisation) are set non-zero so that the noise maps matter. The
distance is the per-image mean squared error unless a test says otherwise.
"""

import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detector.analysis import noise_structure_correlation, simulate_early_stop
from detector.batching import _RowAdam, distance_resolution, image_seeds
from detector.projector import learning_rate, noise_regularization, normalize_noise_, project, start_points, w_noise_std
from detector.results import TRACE_DTYPE, ProjectionResult
from detector.settings import DEFAULT_PYRAMID, METHODS, ProjectorSettings, settings_identity
from detector.w_stats import cached_w_stats, compute_w_stats
from stylegan.config import GeneratorConfig
from stylegan.generator import Generator

torch.set_flush_denormal(True)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The 16 px networks gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP threads
    waiting for each other made this file up to 50x slower; one thread for this module only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mse(a, b):
    return (a - b).square().mean(dim=(1, 2, 3))


def make_g(seed=1234, noise_strength=0.1, res=16):
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(z_dim=32, w_dim=32, img_resolution=res, mapping_layers=2, channel_base=256,
                                  channel_max=32))
    with torch.no_grad():
        for block in G.synthesis.blocks():
            block.torgb.weight.mul_(0.15)
        for layer in G.synthesis.noise_layers():
            layer.noise_strength.fill_(noise_strength)
    return G.eval()


@pytest.fixture(scope="module")
def G():
    return make_g()


def generated_images(G, n, seed=7):
    """Images made by G itself, with its constant noise."""
    with torch.no_grad():
        z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
        return G.synthesis(G.mapping(z), noise_mode="const")


def real_like_images(n, res=16, seed=5):
    """Piecewise-smooth 'photographs': a coloured disk on a coloured background with a horizontal gradient."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, res), torch.linspace(-1, 1, res), indexing="ij")
    out = []
    for _ in range(n):
        cx, cy = (torch.rand(2, generator=g) - 0.5).tolist()
        rad = 0.3 + 0.5 * torch.rand(1, generator=g).item()
        disk = ((xx - cx) ** 2 + (yy - cy) ** 2 < rad**2).float()
        col = torch.rand(3, 1, 1, generator=g) * 1.6 - 0.8
        bg = torch.rand(3, 1, 1, generator=g) * 1.6 - 0.8
        out.append((disk * col + (1 - disk) * bg + 0.2 * xx).clamp(-1, 1))
    return torch.stack(out)


def resynthesize(G, result, noise=None):
    ws, maps = result.synthesis_inputs()
    with torch.no_grad():
        return G.synthesis(ws, noise=maps if noise is None else noise)


# ----------------------------------------------------------------------------------------------------------------
# Schedules


def test_learning_rate_schedule_hand_values():
    # t:    0 (ramp-up starts at 0), 0.01 (1/5 of the ramp-up), 0.05 and 0.5 (flat), 0.8, 0.9 (cosine), 1 (0)
    expected = {
        0.0: 0.0,
        0.01: 0.02,
        0.05: 0.1,
        0.5: 0.1,
        0.8: 0.1 * (0.5 + 0.5 * 0.8090169943749475),  # ramp 0.8: 0.5 - 0.5 cos(0.8 pi)
        0.9: 0.1 * (0.5 - 0.5 * 0.30901699437494745),  # ramp 0.4: 0.5 - 0.5 cos(0.4 pi)
        1.0: 0.0,
    }
    for t, lr in expected.items():
        assert learning_rate(t, 0.1, 0.25, 0.05) == pytest.approx(lr, abs=1e-12), t
    assert learning_rate(0.8, 0.1, 0.25, 0.05) == pytest.approx(0.09045084971874737, abs=1e-12)
    assert learning_rate(0.9, 0.1, 0.25, 0.05) == pytest.approx(0.034549150281252626, abs=1e-12)
    assert learning_rate(0.5, lr_max=0.3) == pytest.approx(0.3)


def test_w_noise_ramp_hand_values():
    sigma = 2.0
    assert w_noise_std(0.0, sigma) == pytest.approx(0.1)  # 0.05 * sigma_w
    assert w_noise_std(0.375, sigma) == pytest.approx(0.1 * 0.25)  # (1 - 0.5)^2
    assert w_noise_std(0.5, sigma) == pytest.approx(0.1 / 9)  # (1 - 2/3)^2
    assert w_noise_std(0.75, sigma) == 0.0
    assert w_noise_std(0.9, sigma) == 0.0  # max(0, .) keeps it at 0 after the ramp
    assert w_noise_std(0.0, sigma, scale=0.1, noise_ramp=0.5) == pytest.approx(0.2)


# ----------------------------------------------------------------------------------------------------------------
# Noise regulariser and renormalisation


def checkerboard(res):
    yy, xx = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    return ((-1.0) ** (xx + yy)).reshape(1, 1, res, res)


def test_noise_regularization_hand_values():
    # Checkerboard: both 1-pixel autocorrelations are -1 -> 1 + 1 = 2; an 8x8 map has one level only.
    for pyr in ("paper", "official"):
        assert noise_regularization([checkerboard(8)], pyr).item() == pytest.approx(2.0)
        assert noise_regularization([checkerboard(4)], pyr).item() == pytest.approx(2.0)  # 4x4: own level
        # 16x16 checkerboard: 2 at 16x16; its 2x2 averages are 0, so the 8x8 level adds nothing.
        assert noise_regularization([checkerboard(16)], pyr).item() == pytest.approx(2.0)

    # Constant c = 1, 16x16: level 16 gives 2; level 8 is 1 (official) or 2 (paper) -> 2 + 2 = 4 or 2 + 2*16 = 34.
    const16 = torch.ones(1, 1, 16, 16)
    assert noise_regularization([const16], "official").item() == pytest.approx(4.0)
    assert noise_regularization([const16], "paper").item() == pytest.approx(34.0)
    # Constant 32x32: three levels (32, 16, 8): 6 vs 2 * (1 + 16 + 256) = 546.
    const32 = torch.ones(1, 1, 32, 32)
    assert noise_regularization([const32], "official").item() == pytest.approx(6.0)
    assert noise_regularization([const32], "paper").item() == pytest.approx(546.0)

    # m = C + U on 16x16: C the pixel checkerboard, U an 8x8 column pattern B[y, x] = (-1)^x upsampled 2x.
    # Level 16: x-autocorrelation mean(C C') + mean(U U') + cross = -1 + 0 + 0 -> 1; y: -1 + 1 + 0 = 0 -> 0.
    # 2x2 averages: C vanishes, U -> B. Level 8 (official): B has x-autocorr -1 and y-autocorr +1 -> 1 + 1 = 2.
    # Paper: 2B -> (-4)^2 + 4^2 = 32. Totals 3 and 33: the paper's level 8 term is 4^2 = 16x the official one.
    x = torch.arange(16)
    U = ((-1.0) ** (x // 2)).reshape(1, 16).expand(16, 16)
    m = (checkerboard(16)[0, 0] + U).reshape(1, 1, 16, 16)
    assert torch.equal(F.avg_pool2d(m, 2)[0, 0], ((-1.0) ** torch.arange(8)).reshape(1, 8).expand(8, 8))
    assert noise_regularization([m], "official").item() == pytest.approx(3.0)
    assert noise_regularization([m], "paper").item() == pytest.approx(33.0)

    # Sums over maps, one value per image.
    maps = [torch.cat([checkerboard(8), torch.full((1, 1, 8, 8), 0.5)]), torch.cat([const16, m])]
    reg = noise_regularization(maps, "official")
    assert reg.shape == (2,)
    assert reg.tolist() == pytest.approx([2.0 + 4.0, 2 * 0.5**4 + 3.0])
    assert DEFAULT_PYRAMID in ("paper", "official")


def test_paper_pyramid_keeps_white_noise_variance():
    """The paper's x2 per level keeps white noise at unit variance, so each level of white noise contributes
    about equally (~2 / pixels); averaging alone shrinks level j by 4^-j, and its autocorrelations by 16^-j."""
    n = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    level = n
    for _ in range(3):
        level = F.avg_pool2d(level, 2) * 2
        assert 0.85 < level.var().item() < 1.15
    white = torch.randn(64, 1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    paper = torch.stack([noise_regularization([w], "paper") for w in white]).mean().item()
    official = torch.stack([noise_regularization([w], "official") for w in white]).mean().item()
    # E[L] for white noise at r x r: 2 / r^2 (times 16^-j official). paper: 2/1024 + 2/256 + 2/64.
    assert paper == pytest.approx(2 / 1024 + 2 / 256 + 2 / 64, rel=0.35)
    assert official == pytest.approx(2 / 1024 + 2 / 256 / 16 + 2 / 64 / 256, rel=0.35)


def test_normalize_noise_zero_mean_unit_population_variance():
    g = torch.Generator().manual_seed(3)
    maps = [torch.randn(3, 1, r, r, generator=g) * torch.tensor([0.5, 2.0, 7.0]).reshape(3, 1, 1, 1) + 3
            for r in (4, 8, 16)]
    normalize_noise_(maps)
    for n in maps:
        mean = n.mean(dim=(1, 2, 3))
        var = n.square().mean(dim=(1, 2, 3))  # population variance (divisor r*r)
        assert mean.abs().max().item() < 1e-6
        assert (var - 1).abs().max().item() < 1e-5


# ----------------------------------------------------------------------------------------------------------------
# W statistics, optimiser


def test_w_stats_match_definition_and_are_cached(G):
    stats = compute_w_stats(G, num_samples=500, seed=9)
    z = torch.from_numpy(np.random.RandomState(9).randn(500, G.z_dim)).float()
    with torch.no_grad():
        w = G.mapping(z)[:, 0].double()
    mu = w.mean(0)
    sigma = (w - mu).square().sum(1).mean().sqrt().item()  # E ||f(z) - mu_w||^2, over the samples
    assert torch.allclose(stats.w_avg.double(), mu, atol=1e-5)
    assert stats.w_std == pytest.approx(sigma, rel=1e-5)
    # Chunking does not change the samples.
    assert compute_w_stats(G, 500, 9, chunk_size=37).w_std == pytest.approx(stats.w_std, rel=1e-6)
    a = cached_w_stats(G, 500, 9)
    assert cached_w_stats(G, 500, 9) is a
    G2 = make_g(seed=99)
    assert cached_w_stats(G2, 500, 9).w_std != pytest.approx(a.w_std, rel=1e-6)


def test_row_adam_matches_torch_adam():
    g = torch.Generator().manual_seed(0)
    p0 = [torch.randn(3, 1, 5, generator=g), torch.randn(3, 1, 4, 4, generator=g)]
    ours = [p.clone().requires_grad_(True) for p in p0]
    ref = [p.clone().requires_grad_(True) for p in p0]
    opt = _RowAdam(ours, (0.9, 0.999), 1e-8)
    topt = torch.optim.Adam(ref, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    for step in range(8):
        lr = learning_rate(step / 8, 0.1)
        for group in topt.param_groups:
            group["lr"] = lr
        for params in (opt.params, ref):
            loss = sum((p.square() * (1 + k)).sum() + p.sin().sum() for k, p in enumerate(params))
            loss.backward()
        opt.step(lr)
        topt.step()
        opt.zero_grad()
        topt.zero_grad()
    for a, b in zip(opt.params, ref):
        assert torch.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Projection


def test_batch_equals_one_by_one(G):
    targets = torch.cat([generated_images(G, 1), real_like_images(2)])
    settings = ProjectorSettings(steps=30, w_avg_samples=1000)
    seeds = [11, 12, 13]
    batch = project(G, targets, settings, distance=mse, seed=seeds)
    for k in range(3):
        [single] = project(G, targets[k:k + 1], settings, distance=mse, seed=[seeds[k]])
        assert abs(single.distance - batch[k].distance) < 1e-4
        assert torch.allclose(single.w, batch[k].w, atol=1e-4)
        assert np.allclose(single.loss_trace["loss"], batch[k].loss_trace["loss"], atol=1e-4)
    # Chunked forward/backward passes within a step change nothing either.
    chunked = project(G, targets, ProjectorSettings(steps=30, w_avg_samples=1000, chunk_size=2), distance=mse,
                      seed=seeds)
    for a, b in zip(chunked, batch):
        assert abs(a.distance - b.distance) < 1e-4
    # An int seed gives image k the seed image_seeds(seed, N)[k].
    by_int = project(G, targets, settings, distance=mse, seed=5)
    by_list = project(G, targets, settings, distance=mse, seed=image_seeds(5, 3))
    assert [r.distance for r in by_int] == [r.distance for r in by_list]
    assert by_int[0].settings["seed"] == image_seeds(5, 3)[0]


def test_final_distance_is_at_clean_w_with_optimised_noise(G):
    targets = real_like_images(2)
    results = project(G, targets, ProjectorSettings(steps=40, w_avg_samples=1000), distance=mse, seed=[1, 2])
    for r, target in zip(results, targets):
        img = resynthesize(G, r)
        assert torch.allclose(img[0], r.image, atol=1e-6)
        assert mse(img, target[None]).item() == pytest.approx(r.distance, abs=1e-6)
        # The optimised noise matters: fresh noise gives another distance.
        fresh = [torch.randn(1, *shape, generator=torch.Generator().manual_seed(123))
                 for shape in G.synthesis.noise_shapes]
        assert abs(mse(resynthesize(G, r, fresh), target[None]).item() - r.distance) > 1e-4
        # W mode: one w for all layers.
        assert r.w.shape == (G.num_ws, G.w_dim)
        assert torch.equal(r.w, r.w[:1].expand_as(r.w))
        assert [tuple(n.shape) for n in r.noise] == list(G.synthesis.noise_shapes)
        assert r.steps_run == 40 and r.stopped_at_step is None
        assert len(r.loss_trace) == 40 and r.loss_trace.dtype == TRACE_DTYPE
        for n in r.noise:  # renormalised after the last step
            assert abs(n.mean().item()) < 1e-5 and abs(n.square().mean().item() - 1) < 1e-4


def test_generated_image_projects_closer_than_real_like(G):
    targets = torch.cat([generated_images(G, 2), real_like_images(2)])
    assert targets.abs().max() <= 1.0
    results = project(G, targets, ProjectorSettings(steps=100, w_avg_samples=1000), distance=mse, seed=0)
    d = [r.distance for r in results]
    assert max(d[:2]) < 0.2 * min(d[2:]), d


class ConvFeatureDistance(torch.nn.Module):
    """A cheap LPIPS stand-in: squared differences of unit-normalised features of a fixed random conv net,
    offering the optional cached-target protocol (target_features / distance_to_features)."""

    def __init__(self, use_cache=True):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=g) / 5)
        self.w2 = torch.nn.Parameter(torch.randn(16, 8, 3, 3, generator=g) / 8)
        if not use_cache:
            self.target_features = None  # hides the protocol methods
            del self.target_features

    def feats(self, x):
        h1 = F.relu(F.conv2d(x, self.w1, padding=1))
        h2 = F.relu(F.conv2d(F.avg_pool2d(h1, 2), self.w2, padding=1))
        return [h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10) for h in (h1, h2)]

    def distance_to_features(self, a, feats_b):
        return sum((fa - fb).square().sum(1).mean(dim=(1, 2)) for fa, fb in zip(self.feats(a), feats_b))

    def target_features(self, b):
        return self.feats(b)

    def forward(self, a, b):
        return self.distance_to_features(a, self.feats(b))


class Uncached(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, a, b):
        return self.inner(a, b)


def test_cached_target_features_give_the_same_result(G):
    targets = real_like_images(2)
    dist = ConvFeatureDistance()
    settings = ProjectorSettings(steps=15, w_avg_samples=1000)
    cached = project(G, targets, settings, distance=dist, seed=[3, 4])
    plain = project(G, targets, settings, distance=Uncached(dist), seed=[3, 4])
    for a, b in zip(cached, plain):
        assert a.distance == pytest.approx(b.distance, abs=1e-6)
    assert cached[0].settings["distance"] == "ConvFeatureDistance"
    # The distance module is frozen during projection and restored after.
    assert all(p.requires_grad for p in dist.parameters())



def test_w_init_starts_where_asked(G):
    targets = torch.cat([generated_images(G, 1), real_like_images(1)])
    settings = ProjectorSettings(steps=12, w_avg_samples=1000)
    default = project(G, targets, settings, distance=mse, seed=[1, 2])
    at_mu = project(G, targets, settings, distance=mse, seed=[1, 2],
                    w_init=cached_w_stats(G, 1000).w_avg.expand(2, -1))
    assert [r.distance for r in at_mu] == [r.distance for r in default]
    # With a vanishing learning rate w stays where it started.
    w0 = torch.randn(2, G.w_dim, generator=torch.Generator().manual_seed(9))
    still = project(G, targets, ProjectorSettings(steps=2, lr=1e-12, w_avg_samples=1000), distance=mse,
                    seed=[1, 2], w_init=w0)
    assert torch.allclose(torch.stack([r.w[0] for r in still]), w0, atol=1e-6)
    with pytest.raises(ValueError, match=r"w_init must be a tensor \[N, w_dim\] = \[2, 32\]"):
        project(G, targets, settings, distance=mse, seed=[1, 2], w_init=w0[:1])


def test_clamp_output_compares_what_a_file_would_hold():
    G = make_g(seed=3)
    with torch.no_grad():  # make the raw output overshoot [-1, 1], as trained generators do
        for block in G.synthesis.blocks():
            block.torgb.weight.mul_(4.0)
    raw = generated_images(G, 2)
    assert raw.abs().max() > 1.2
    targets = raw.clamp(-1, 1)  # what an image file of it holds
    settings = ProjectorSettings(steps=10, w_avg_samples=1000, clamp_output=True)
    results = project(G, targets, settings, distance=mse, seed=[1, 2])
    for r, target in zip(results, targets):
        assert r.image.abs().max() <= 1.0
        assert mse(resynthesize(G, r).clamp(-1, 1), target[None]).item() == pytest.approx(r.distance, abs=1e-6)
        assert r.settings["clamp_output"] is True
    unclamped = project(G, targets, dataclasses.replace(settings, clamp_output=False), distance=mse, seed=[1, 2])
    assert max(float(r.image.abs().max()) for r in unclamped) > 1.0

def test_wplus_runs(G):
    targets = real_like_images(1)
    w_mode = project(G, targets, ProjectorSettings(steps=40, w_avg_samples=1000), distance=mse, seed=[1])[0]
    plus = project(G, targets, ProjectorSettings(steps=40, wplus=True, w_avg_samples=1000), distance=mse,
                   seed=[1])[0]
    assert plus.w.shape == (G.num_ws, G.w_dim)
    assert not torch.allclose(plus.w[0], plus.w[-1])  # one w per layer
    assert mse(resynthesize(G, plus), targets).item() == pytest.approx(plus.distance, abs=1e-6)
    assert plus.distance < w_mode.distance  # W+ is the larger space
    assert plus.settings["wplus"] is True


def test_early_stopping_freezes_settled_images(G):
    targets = torch.cat([generated_images(G, 1), real_like_images(1)])
    steps = 60
    base = dict(steps=steps, w_avg_samples=1000, alpha_min_resolution=None)  # regulariser on: real stays far
    full = project(G, targets, ProjectorSettings(**base), distance=mse, seed=[1, 2])
    assert full[0].distance < 0.02 and full[1].distance > 0.05  # the band below separates them
    settings = ProjectorSettings(**base, early_stop=(0.05, 10.0), early_stop_start=0.5, early_stop_every=5,
                                 early_stop_patience=3, early_stop_margin=0.01)
    calls = []
    results = project(G, targets, settings, distance=mse, seed=[1, 2],
                      progress=lambda step, total, losses: calls.append((step, total, losses)))
    gen, real = results
    # Checks at steps 30, 35, 40: the generated image (distance << 0.04) is frozen at the third check.
    assert gen.stopped_at_step == 40 and gen.steps_run == 40
    assert len(gen.loss_trace) == 40
    assert mse(resynthesize(G, gen), targets[:1]).item() == pytest.approx(gen.distance, abs=1e-6)
    assert gen.distance < 0.04
    # The other image is undecided (inside the band) and runs to the end, exactly as it would alone.
    assert real.stopped_at_step is None and real.steps_run == steps
    assert abs(real.distance - full[1].distance) < 1e-4
    assert [c[0] for c in calls] == list(range(1, steps + 1))
    assert all(c[1] == steps and c[2].shape == (2,) for c in calls)
    assert calls[-1][2][0] == calls[39][2][0]  # a frozen image keeps its last loss
    # A band that no image can leave: nobody stops.
    never = ProjectorSettings(**base, early_stop=(-1.0, 10.0), early_stop_every=5)
    assert all(r.stopped_at_step is None for r in project(G, targets, never, distance=mse, seed=[1, 2]))


def test_simulated_early_stop_equals_a_real_early_stopped_run(G):
    """One full run with clean checkpoints tells what early stopping would have done, image by image."""
    targets = torch.cat([generated_images(G, 2), real_like_images(2)])
    base = dict(steps=60, w_avg_samples=1000, early_stop_start=0.5, early_stop_every=5, early_stop_patience=3)
    settings = ProjectorSettings(**base, clean_checkpoints=True)
    full = project(G, targets, settings, distance=mse, seed=[1, 2, 3, 4])
    assert all(r.stopped_at_step is None and r.steps_run == 60 for r in full)
    assert [s for s, _ in full[0].clean_trace] == [30, 35, 40, 45, 50, 55]
    for band in [(0.05, 10.0), (0.02, 0.03), (-1.0, 0.01)]:
        stopped = project(G, targets, ProjectorSettings(**base, early_stop=band), distance=mse, seed=[1, 2, 3, 4])
        for f, r in zip(full, stopped):
            steps_run, d = simulate_early_stop(f.clean_trace, f.distance, band, settings)
            assert steps_run == r.steps_run
            assert d == pytest.approx(r.distance, abs=1e-4)
    assert any(r.stopped_at_step is not None for r in
               project(G, targets, ProjectorSettings(**base, early_stop=(0.05, 10.0)), distance=mse, seed=[1, 2, 3, 4]))
    plain = ProjectorSettings(steps=5, w_avg_samples=1000)
    [r] = project(G, targets[:1], plain, distance=mse)
    assert r.clean_trace == ()
    with pytest.raises(ValueError, match="clean_checkpoints"):
        simulate_early_stop(r.clean_trace, r.distance, (0.1, 0.2), plain)


def test_early_stop_schedule_freezes_where_the_bands_say(G):
    """A schedule of measured bands (detector.early) freezes each image at the first checkpoint where it is
    outside the band, exactly where stop_point predicts from a full run of the same image, and reports the clean
    distance there; the schedule survives to_dict/from_dict (inf as None)."""
    from detector.early import decision_bands, stop_point

    targets = torch.cat([generated_images(G, 2), real_like_images(2)])
    full = project(G, targets, ProjectorSettings(steps=40, w_avg_samples=1000, clean_checkpoints=True,
                                                 early_stop_start=0.25, early_stop_every=5),
                   distance=mse, seed=[1, 2, 3, 4])
    finals = [r.distance for r in full]
    threshold = (min(finals[2:]) + max(finals[:2])) / 2  # generated below, real-like above (checked next)
    assert max(finals[:2]) < threshold < min(finals[2:])
    bands = decision_bands([r.clean_trace for r in full], finals, threshold, steps=40, slack=0.0)
    settings = ProjectorSettings(steps=40, w_avg_samples=1000, early_stop_schedule=bands.schedule())
    assert ProjectorSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    stopped = project(G, targets, settings, distance=mse, seed=[1, 2, 3, 4])
    for f, r in zip(full, stopped):
        n, d, side = stop_point(f.clean_trace, f.distance, bands)
        assert r.steps_run == n and r.distance == pytest.approx(d, abs=1e-5)
        assert (r.stopped_at_step is None) == (side is None)
    assert sum(r.steps_run for r in stopped) < 4 * 40  # the bands, with no slack, stop something here
    with pytest.raises(ValueError, match="early_stop_schedule"):
        ProjectorSettings(steps=40, early_stop_schedule=((45, 0.0, 1.0),))
    with pytest.raises(ValueError, match="early_stop_schedule"):
        ProjectorSettings(steps=40, early_stop_schedule=((20, 0.0, 1.0), (10, 0.0, 1.0)))


def test_trace_every_and_progress(G):
    targets = real_like_images(2)
    results = project(G, targets, ProjectorSettings(steps=12, trace_every=5, w_avg_samples=1000), distance=mse)
    assert results[0].loss_trace["step"].tolist() == [0, 5, 10, 11]
    assert results[0].loss_trace["lr"][0] == 0.0  # the ramp-up starts at 0
    none = project(G, targets, ProjectorSettings(steps=3, trace_every=0, w_avg_samples=1000), distance=mse)
    assert len(none[0].loss_trace) == 0
    assert none[0].to_dict()["final_loss"] is None


def test_hdf5_round_trip(G, tmp_path):
    [r] = project(G, real_like_images(1), ProjectorSettings(steps=10, w_avg_samples=1000,
                                                            early_stop=(0.1, 0.2)), distance=mse)
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        r.save_hdf5(f.create_group("img0"))
    with h5py.File(path, "r") as f:
        assert set(f["img0"].keys()) >= {"w", "image", "loss_trace", "noise_0"}
        back = ProjectionResult.load_hdf5(f["img0"])
    assert torch.equal(back.w, r.w) and torch.equal(back.image, r.image)
    assert len(back.noise) == len(r.noise) and all(torch.equal(a, b) for a, b in zip(back.noise, r.noise))
    assert back.distance == r.distance and back.steps_run == r.steps_run
    assert back.stopped_at_step == r.stopped_at_step
    assert np.array_equal(back.loss_trace, r.loss_trace)
    assert back.clean_trace == r.clean_trace and len(r.clean_trace) == 1  # the check at step 5 of 10
    assert back.settings == json.loads(json.dumps(r.settings))
    assert json.loads(json.dumps(r.to_dict())) == back.to_dict()
    assert ProjectorSettings.from_dict({k: v for k, v in back.settings.items()
                                        if k in ProjectorSettings().to_dict()}).early_stop == (0.1, 0.2)


def test_settings_and_validation(G):
    s = ProjectorSettings()
    assert (s.steps, s.lr_rampdown, s.lr_rampup, s.w_noise_scale, s.noise_ramp, s.alpha) == (
        1000, 0.25, 0.05, 0.05, 0.75, 1e5)
    assert s.alpha_min_resolution == 256
    # lr: App. D's 0.1 from 256 px on, 0.2 below (measured at 32 px); a given rate holds everywhere.
    assert s.lr is None and (s.effective_lr(256), s.effective_lr(1024), s.effective_lr(32)) == (0.1, 0.1, 0.2)
    assert ProjectorSettings(lr=0.05).effective_lr(32) == 0.05
    assert ProjectorSettings(**METHODS["appd"]).effective_lr(32) == 0.1
    assert ProjectorSettings(**METHODS["multistart"]).image_steps() == 2000
    with pytest.raises(ValueError, match="lr"):
        ProjectorSettings(lr=0.0)
    # Records written before the start and refinement fields existed name the same projection when those idle.
    before = {k: v for k, v in ProjectorSettings(lr=0.1).to_dict().items()
              if not k.startswith(("start", "keep_start", "refine", "model_", "source_size", "align",
                                   "early_stop_schedule", "degrade_from"))}
    assert settings_identity(ProjectorSettings(lr=0.1).to_dict()) == settings_identity(before) == before
    # so do those written before the degradation fields (issue 26); a modelled degradation names itself
    assert settings_identity(ProjectorSettings(align=4).to_dict())["align_steps"] == 300
    assert settings_identity(ProjectorSettings(model_jpeg=True).to_dict())["model_jpeg"] is True
    assert settings_identity(ProjectorSettings(starts=2).to_dict())["starts"] == 2
    assert "refine_lr" in settings_identity(ProjectorSettings(refine_steps=3).to_dict())
    assert "start_psi" not in settings_identity(ProjectorSettings(refine_steps=3).to_dict())
    # every start kept: no selection point, and keep_starts beyond starts says nothing more
    assert settings_identity(ProjectorSettings(starts=2, keep_starts=5).to_dict()) == settings_identity(
        ProjectorSettings(starts=2, keep_starts=2, start_fraction=0.5).to_dict())
    with pytest.raises(ValueError, match="alpha_min_resolution"):
        ProjectorSettings(alpha_min_resolution=0)
    assert s.betas == (0.9, 0.999) and s.eps == 1e-8 and not s.wplus and s.w_avg_samples == 10000
    json.dumps(s.to_dict())
    assert ProjectorSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="pyramid"):
        ProjectorSettings(pyramid="nope")
    with pytest.raises(ValueError, match="steps"):
        ProjectorSettings(steps=0)
    with pytest.raises(ValueError, match="early_stop"):
        ProjectorSettings(early_stop=(0.5, 0.1))
    with pytest.raises(ValueError, match=r"\[N, 3, 16, 16\]"):
        project(G, torch.zeros(1, 3, 32, 32), distance=mse)
    with pytest.raises(ValueError, match=r"\[N, 3, 16, 16\]"):
        project(G, torch.zeros(3, 16, 16), distance=mse)
    with pytest.raises(ValueError, match="1, 1"):
        project(G, torch.full((1, 3, 16, 16), 200.0), distance=mse)
    with pytest.raises(ValueError, match="seeds"):
        project(G, torch.zeros(2, 3, 16, 16), distance=mse, seed=[1])


def test_effective_alpha():
    """alpha from alpha_min_resolution on, 0 below it; alpha at every resolution when it is None."""
    s = ProjectorSettings()
    assert s.effective_alpha(1024) == s.effective_alpha(256) == 1e5
    assert s.effective_alpha(128) == s.effective_alpha(32) == 0.0
    assert ProjectorSettings(alpha=2.0, alpha_min_resolution=16).effective_alpha(16) == 2.0
    assert ProjectorSettings(alpha=2.0, alpha_min_resolution=32).effective_alpha(16) == 0.0
    assert ProjectorSettings(alpha_min_resolution=None).effective_alpha(16) == 1e5


def test_loss_uses_the_effective_alpha(G):
    """The traced loss is distance + effective_alpha * reg at the noisy w~, and the result records that weight."""
    first_reg = []
    for min_res, expected in ((None, 1e5), (16, 1e5), (64, 0.0)):
        s = ProjectorSettings(steps=3, w_avg_samples=100, alpha_min_resolution=min_res)
        [r] = project(G, real_like_images(1), s, distance=mse)
        tr = r.loss_trace
        assert r.settings["effective_alpha"] == s.effective_alpha(16) == expected
        first_reg.append(float(tr["reg"][0]))
        np.testing.assert_allclose(tr["loss"], tr["distance"] + s.effective_alpha(16) * tr["reg"], rtol=1e-5)
    # The regulariser is still measured (traced) when its weight is 0: at step 0, before any update, it is that of
    # the same seeded starting maps whatever the weight (measured: 0.39 each time).
    assert first_reg[0] > 0 and first_reg == [first_reg[0]] * 3


def test_generator_frozen_during_and_restored_after(G):
    G.train()
    seen = []

    def spy(a, b):
        seen.append((G.training, any(p.requires_grad for p in G.parameters())))
        return mse(a, b)

    project(G, real_like_images(1), ProjectorSettings(steps=2, w_avg_samples=100), distance=spy)
    assert seen and all(s == (False, False) for s in seen)
    assert G.training and all(p.requires_grad for p in G.parameters())
    G.eval()


def test_distance_resolution():
    assert distance_resolution(16, None) == 16
    assert distance_resolution(256, None) == 256
    assert distance_resolution(1024, None) == 256  # area-down-sampled to 256 as NVIDIA's projector does
    assert distance_resolution(32, 64) == 64


def test_distance_sees_resized_images(G):
    shapes = []

    def spy(a, b):
        shapes.append((tuple(a.shape), tuple(b.shape)))
        return mse(a, b)

    project(G, real_like_images(2), ProjectorSettings(steps=2, lpips_resolution=32, w_avg_samples=100),
            distance=spy)
    assert set(shapes) == {((2, 3, 32, 32), (2, 3, 32, 32))}
    big = Generator(GeneratorConfig(z_dim=8, w_dim=8, img_resolution=512, mapping_layers=1, channel_base=512,
                                    channel_max=2))
    shapes.clear()
    [r] = project(big, torch.zeros(1, 3, 512, 512), ProjectorSettings(steps=1, w_avg_samples=100), distance=spy)
    assert set(shapes) == {((1, 3, 256, 256), (1, 3, 256, 256))}
    assert r.image.shape == (3, 512, 512)


# ----------------------------------------------------------------------------------------------------------------
# StyleGAN2 Fig. 18


def test_noise_regulariser_keeps_image_structure_out_of_the_noise_maps():
    """Without the regulariser the optimised noise maps of projected real-like images copy their structure; with
    it they stay close to white noise, at App. D's alpha = 1e5 and at a weak 24.4. 'off' is also what the
    defaults do for this 16 px network (below alpha_min_resolution). Averaged over six images: single 8x8 maps
    correlate with anything by chance at ~0.1. Measured: 0.38 off, 0.11 at 1e5, 0.14 at 24.4."""
    G = make_g(noise_strength=0.5)
    targets = real_like_images(6)
    corr = {}
    for name, kw in (("off", {}), ("paper", dict(alpha_min_resolution=None)),
                     ("weak", dict(alpha=24.4, alpha_min_resolution=None))):
        settings = ProjectorSettings(steps=200, w_avg_samples=1000, **kw)
        results = project(G, targets, settings, distance=mse, seed=list(range(6)))
        assert results[0].settings["effective_alpha"] == (0.0 if name == "off" else settings.alpha)
        corr[name] = float(np.mean([noise_structure_correlation(r, t) for r, t in zip(results, targets)]))
        if name != "off":
            assert max(r.loss_trace["reg"][-1] for r in results) < 1e-6
    assert corr["off"] > 0.2
    assert corr["paper"] < 0.6 * corr["off"] and corr["weak"] < 0.6 * corr["off"], corr


# ----------------------------------------------------------------------------------------------------------------
# Several starts and the refinement


def test_multistart_keeps_the_closest_start_and_batch_equals_one_by_one(G):
    targets = torch.cat([generated_images(G, 2), real_like_images(1)])
    settings = ProjectorSettings(steps=30, w_avg_samples=1000, starts=3, start_fraction=1 / 3, refine_steps=5)
    assert settings.image_steps() == 3 * 10 + 20 + 5
    seeds = [21, 22, 23]
    batch = project(G, targets, settings, distance=mse, seed=seeds)
    for k, r in enumerate(batch):
        info = r.settings
        assert len(info["start_distances"]) == 3
        assert info["start"] == int(np.argmin(info["start_distances"]))
        assert r.steps_run == 35 and len(r.loss_trace) == 35
        [single] = project(G, targets[k:k + 1], settings, distance=mse, seed=[seeds[k]])
        assert single.settings["start"] == info["start"]
        assert abs(single.distance - r.distance) < 1e-4
        assert torch.allclose(single.w, r.w, atol=1e-4)


def test_start_zero_is_app_d(G):
    """Start 0 of a multi-start is App. D's run (mu_w, the image's seed): with one start and no refinement the
    projector is App. D exactly, and the start-0 distance at selection is App. D's at that step."""
    targets = real_like_images(2)
    appd = ProjectorSettings(steps=20, w_avg_samples=1000, clean_checkpoints=True, early_stop_start=0.5,
                             early_stop_every=10)
    assert appd.image_steps() == 20
    ref = project(G, targets, appd, distance=mse, seed=[3, 4])
    multi = project(G, targets, dataclasses.replace(appd, starts=4, start_fraction=0.5), distance=mse, seed=[3, 4])
    for a, b in zip(ref, multi):
        assert b.settings["start_distances"][0] == pytest.approx(a.clean_trace[0][1], abs=1e-6)
        if b.settings["start"] == 0:  # the same trajectory all the way
            assert b.distance == pytest.approx(a.distance, abs=1e-6)
        else:
            assert min(b.settings["start_distances"]) < b.settings["start_distances"][0]


def test_kept_starts_run_to_the_end_and_the_closest_wins(G):
    targets = torch.cat([generated_images(G, 2), real_like_images(2)])
    appd = ProjectorSettings(steps=20, w_avg_samples=1000)
    ref = project(G, targets, appd, distance=mse, seed=[1, 2, 3, 4])
    both = dataclasses.replace(appd, starts=2, keep_starts=2)  # two whole runs: App. D's and one from a sample
    assert both.image_steps() == 40
    two = project(G, targets, both, distance=mse, seed=[1, 2, 3, 4])
    for a, b in zip(ref, two):
        assert "start_distances" not in b.settings  # no selection
        assert b.distance <= a.distance + 1e-7
        if b.settings["start"] == 0:
            assert b.distance == pytest.approx(a.distance, abs=1e-7)
    three = dataclasses.replace(appd, starts=3, keep_starts=2, start_fraction=0.25)
    assert three.image_steps() == 3 * 5 + 2 * 15
    for k, r in enumerate(project(G, targets, three, distance=mse, seed=[1, 2, 3, 4])):
        order = np.argsort(r.settings["start_distances"])
        assert r.settings["start"] in order[:2]  # one of the two kept
        [single] = project(G, targets[k:k + 1], three, distance=mse, seed=[[1, 2, 3, 4][k]])
        assert single.distance == pytest.approx(r.distance, abs=1e-5)
    with pytest.raises(ValueError, match="early stopping"):
        dataclasses.replace(appd, starts=2, keep_starts=2, early_stop=(0.1, 0.2))


def test_sampled_starts_are_samples_of_w_truncated_by_start_psi(G):
    stats = cached_w_stats(G, 1000)
    n, K = 100, 3
    w0 = torch.randn(n, G.w_dim)

    def points(psi):
        gens = [torch.Generator().manual_seed(r) for r in range(n * K)]
        return start_points(G, stats, w0, gens, K, psi).reshape(n, K, G.w_dim)

    full, half, none = points(1.0), points(0.5), points(0.0)
    for p in (full, half, none):
        assert torch.equal(p[:, 0], w0)  # start 0: the given start (mu_w in App. D)
    assert torch.allclose(none[:, 1:], stats.w_avg.expand(n, K - 1, -1))
    assert torch.allclose(half[:, 1:], stats.w_avg + 0.5 * (full[:, 1:] - stats.w_avg), atol=1e-6)
    # psi 1: samples of W, whose mean squared distance to mu_w is sigma_w^2 (200 samples: within 25 %).
    msd = (full[:, 1:] - stats.w_avg).square().sum(-1).mean().item()
    assert 0.75 < msd / stats.w_std ** 2 < 1.25
    assert len({tuple(v.tolist()) for v in full[:, 1:].reshape(-1, G.w_dim)}) == n * (K - 1)


def test_a_sampled_start_replaces_mu_w_and_batch_equals_one_by_one(G):
    # start_from="sample" (the second look's start): the one start is a sample of W drawn as the multi-start's
    # sampled starts are, from the image's own stream
    stats = cached_w_stats(G, 1000)
    w0 = stats.w_avg.reshape(1, -1).expand(4, -1)
    gens = [torch.Generator().manual_seed(r) for r in range(4)]
    first = start_points(G, stats, w0, gens, 1, 0.5, sample_first=True)
    gens = [torch.Generator().manual_seed(r) for r in range(4)]
    z = torch.stack([torch.randn([G.z_dim], generator=g) for g in gens])
    with torch.no_grad():
        expected = stats.w_avg + 0.5 * (G.mapping(z)[:, 0] - stats.w_avg)
    assert torch.allclose(first, expected, atol=1e-6) and not torch.allclose(first, w0)

    targets = torch.cat([generated_images(G, 2), real_like_images(1)])
    mean = ProjectorSettings(steps=20, w_avg_samples=1000)
    sample = dataclasses.replace(mean, start_from="sample")
    seeds = [5, 6, 7]
    from_mean = project(G, targets, mean, distance=mse, seed=seeds)
    batch = project(G, targets, sample, distance=mse, seed=seeds)
    for k, r in enumerate(batch):
        assert r.settings["start_from"] == "sample" and not torch.allclose(r.w, from_mean[k].w)
        [single] = project(G, targets[k:k + 1], sample, distance=mse, seed=[seeds[k]])
        assert abs(single.distance - r.distance) < 1e-4 and torch.allclose(single.w, r.w, atol=1e-4)
    with pytest.raises(ValueError, match="w_init"):
        project(G, targets[:1], sample, distance=mse, w_init=w0[:1])
    with pytest.raises(ValueError, match="start_from"):
        ProjectorSettings(start_from="random")
    # idle at "mean" (records made before the field name the same projection); with a sampled start the
    # truncation of that start acts
    assert "start_from" not in settings_identity(mean.to_dict())
    assert settings_identity(dataclasses.replace(sample, start_psi=0.7).to_dict())["start_psi"] == 0.7


def test_refinement_schedule_and_it_does_not_lose_ground(G):
    targets = torch.cat([generated_images(G, 1), real_like_images(1)])
    base = ProjectorSettings(steps=40, w_avg_samples=1000)
    plain = project(G, targets, base, distance=mse, seed=[5, 6])
    refined = project(G, targets, dataclasses.replace(base, refine_steps=20, refine_lr=0.01), distance=mse,
                      seed=[5, 6])
    for p, r in zip(plain, refined):
        assert np.array_equal(r.loss_trace["loss"][:40], p.loss_trace["loss"])  # App. D first, unchanged
        lr = r.loss_trace["lr"][40:]
        assert lr[0] == pytest.approx(0.01) and np.all(np.diff(lr) < 0) and lr[-1] < 0.01 * 0.01
        assert r.distance < p.distance
    # A pixel term in the refinement changes the path; the reported distance stays the distance alone.
    feat = ConvFeatureDistance()
    with_mse = project(G, targets, dataclasses.replace(base, refine_steps=20, refine_mse=10.0), distance=feat,
                       seed=[5, 6])
    without = project(G, targets, dataclasses.replace(base, refine_steps=20), distance=feat, seed=[5, 6])
    for a, b, target in zip(with_mse, without, targets):
        assert not torch.allclose(a.w, b.w)
        with torch.no_grad():
            assert feat(a.image[None], target[None]).item() == pytest.approx(a.distance, rel=1e-5)


def test_multistart_settings_are_checked():
    with pytest.raises(ValueError, match="start_fraction"):
        ProjectorSettings(steps=10, starts=2, start_fraction=1.0)
    with pytest.raises(ValueError, match="2 steps"):
        ProjectorSettings(steps=1, starts=2)
    assert ProjectorSettings(steps=2, starts=2, start_fraction=0.01).start_steps == 1
    assert ProjectorSettings(steps=2, starts=2, start_fraction=0.99).start_steps == 1
    assert ProjectorSettings(steps=1000, starts=4, start_fraction=0.2).image_steps() == 4 * 200 + 800
    with pytest.raises(ValueError, match="starts"):
        ProjectorSettings(starts=0)
    with pytest.raises(ValueError, match="W\\+"):
        ProjectorSettings(starts=2, wplus=True)
    with pytest.raises(ValueError, match="start_psi"):
        ProjectorSettings(start_psi=1.5)


def test_auto_chunk_adapts_to_channels_and_keeps_the_measured_points():
    """The pass size follows the synthesis activations: 32 images at 32 px and 8 at 64 px for 128 channels (the
    measured optimum, as the old 32768 / R^2 rule), more for a narrow network, 1 for a wide 256 px one."""
    from detector.batching import auto_chunk_size, synthesis_activations

    def net(res, base, cmax):
        return Generator(GeneratorConfig(img_resolution=res, channel_base=base, channel_max=cmax, z_dim=32,
                                         w_dim=32, mapping_layers=1))

    sizes = {}
    for key, (res, base, cmax) in {"32/128": (32, 16384, 128), "64/128": (64, 16384, 128),
                                   "32/64": (32, 2048, 64), "256/512": (256, 16384, 512)}.items():
        sizes[key] = auto_chunk_size(res, synthesis_activations(net(res, base, cmax)))
    assert sizes == {"32/128": 32, "64/128": 8, "32/64": 64, "256/512": 1}
    assert auto_chunk_size(64) == 8 and auto_chunk_size(256) == 1
