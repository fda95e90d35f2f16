"""StyleGAN config A (stylegan/stylegan1.py): AdaIN, noise, progressive growing, format round trip, projector."""

import math

import pytest
import torch

from stylegan.config import ConfigError
from stylegan.formats import load_model
from stylegan.formats.ours import arch_of, get_arch, save_network
from stylegan.ops import setup_filter
from stylegan.progressive import lod_to_stage, pg_process_reals, pg_schedule, stage_to_lod
from stylegan.stylegan1 import (
    AdaIN,
    NoiseInput,
    StyleGAN1Config,
    StyleGAN1Discriminator,
    StyleGAN1Generator,
    instance_norm,
    stylegan1_discriminator_config,
    upsample_bilinear2x,
)

CFG = StyleGAN1Config(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channel_base=128, channel_max=16)


def make_g(seed=0, noise_strength=0.3):
    torch.manual_seed(seed)
    G = StyleGAN1Generator(CFG).eval()
    with torch.no_grad():
        for n in G.synthesis.noise_layers():
            n.noise_strength.fill_(noise_strength)
        G.mapping.w_avg.copy_(torch.randn(CFG.w_dim))
    return G


def mse(a, b):
    return (a - b).square().mean(dim=(1, 2, 3))


# -- AdaIN ----------------------------------------------------------------------------------------------------------


def test_instance_norm_normalises_each_channel():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, 8) * (torch.rand(3, 5, 1, 1) * 4 + 0.5) + torch.randn(3, 5, 1, 1) * 10
    y = instance_norm(x.double())
    assert torch.allclose(y.mean(dim=[2, 3]), torch.zeros(3, 5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(y.std(dim=[2, 3], unbiased=False), torch.ones(3, 5, dtype=torch.float64), atol=1e-6)


def test_adain_applies_the_styles_scale_and_bias():
    torch.manual_seed(1)
    C, wd = 4, 6
    ada = AdaIN(C, wd).double()
    x = torch.randn(2, C, 8, 8, dtype=torch.float64) * 3 + 7
    w = torch.randn(2, wd, dtype=torch.float64)
    y_s, y_b = ada.styles(w)
    assert y_s.shape == y_b.shape == (2, C)
    out = ada(x, w)
    # Eq. 1: each channel ends with mean y_b and std |y_s|
    assert torch.allclose(out.mean(dim=[2, 3]), y_b, atol=1e-9)
    assert torch.allclose(out.std(dim=[2, 3], unbiased=False), y_s.abs(), atol=1e-6)
    expected = instance_norm(x) * y_s[:, :, None, None] + y_b[:, :, None, None]
    assert torch.allclose(out, expected, atol=1e-12)
    # the affine's bias starts at (1, ..., 1, 0, ..., 0): with a zero weight y_s = 1 and y_b = 0
    with torch.no_grad():
        ada.affine.weight.zero_()
    y_s, y_b = ada.styles(w)
    assert torch.equal(y_s, torch.ones_like(y_s)) and torch.equal(y_b, torch.zeros_like(y_b))
    assert torch.allclose(ada(x, w), instance_norm(x), atol=1e-12)
    # known styles: weight 0, bias (s, b)
    with torch.no_grad():
        ada.affine.bias.copy_(torch.tensor([2.0, -1.0, 0.5, 3.0, 0.1, 0.2, -0.3, 4.0]))
    out = ada(x, w)
    assert torch.allclose(out.mean(dim=[2, 3]), torch.tensor([[0.1, 0.2, -0.3, 4.0]] * 2, dtype=torch.float64),
                          atol=1e-9)
    assert torch.allclose(out.std(dim=[2, 3], unbiased=False),
                          torch.tensor([[2.0, 1.0, 0.5, 3.0]] * 2, dtype=torch.float64), atol=1e-6)


def test_noise_input_per_channel_strengths():
    n = NoiseInput(3, 4)
    assert n.noise_strength.shape == (3,) and torch.all(n.noise_strength == 0)
    x = torch.zeros(2, 3, 4, 4)
    with torch.no_grad():
        n.noise_strength.copy_(torch.tensor([0.0, 1.0, -2.0]))
    maps = torch.randn(2, 1, 4, 4)
    y = n(x, noise=maps)
    assert torch.equal(y[:, 0], torch.zeros(2, 4, 4))
    assert torch.allclose(y[:, 1], maps[:, 0]) and torch.allclose(y[:, 2], -2 * maps[:, 0])
    assert torch.equal(n(x, "none"), x)
    assert torch.allclose(n(x, "const")[:, 1], n.noise_const.expand(2, 4, 4))
    with pytest.raises(ValueError):
        n(x, "bogus")


def test_bilinear_upsampling_is_zero_insertion_and_1331():
    torch.manual_seed(2)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    y = upsample_bilinear2x(x, setup_filter((1, 2, 1)).double())
    assert y.shape == (1, 2, 10, 10)
    # interior pixels: nearest then [1,2,1]/4 == weights (1/4, 3/4) between neighbours
    # (output row 3 reads input rows 1, 1, 2; output column 4 reads input columns 1, 2, 2)
    assert torch.allclose(y[0, 0, 3, 4], (x[0, 0, 1, 1] * 0.75 + x[0, 0, 2, 1] * 0.25) * 0.25
                          + (x[0, 0, 1, 2] * 0.75 + x[0, 0, 2, 2] * 0.25) * 0.75)
    c = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    assert torch.allclose(upsample_bilinear2x(c, setup_filter((1, 2, 1)).double())[0, 0, 1:-1, 1:-1],
                          torch.ones(6, 6, dtype=torch.float64))


# -- generator --------------------------------------------------------------------------------------------------


def test_config_and_counts():
    assert CFG.num_ws == 2 * 4 - 2 == 6
    G = make_g()
    assert G.num_ws == G.synthesis.num_ws == 6 and G.mapping.num_ws == 6
    layers = G.synthesis.noise_layers()
    assert len(layers) == CFG.num_noise_inputs == G.num_ws  # two per resolution, 4x4 included
    assert [n.resolution for n in layers] == [4, 4, 8, 8, 16, 16]
    assert G.synthesis.noise_shapes == [(1, r, r) for r in (4, 4, 8, 8, 16, 16)]
    assert all(n.noise_strength.shape == (CFG.channels(n.resolution),) for n in layers)
    assert all(torch.all(n.noise_strength == 0) for n in StyleGAN1Generator(CFG).synthesis.noise_layers())
    assert StyleGAN1Config.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ConfigError):
        StyleGAN1Config.from_dict(dict(CFG.to_dict(), architecture="skip"))
    with pytest.raises(ConfigError):
        StyleGAN1Config(img_resolution=24)


def test_output_shape_and_every_layer_reads_its_own_w():
    G = make_g()
    z = torch.randn(3, CFG.z_dim)
    img = G(z, noise_mode="const")
    assert img.shape == (3, CFG.img_channels, 16, 16) and torch.isfinite(img).all()
    ws = G.mapping(z)
    base = G.synthesis(ws, noise_mode="const")
    for layer in range(G.num_ws):
        ws2 = ws.clone()
        ws2[:, layer] += 1.0
        assert not torch.allclose(G.synthesis(ws2, noise_mode="const"), base), layer


def test_gradients_reach_every_parameter():
    G = make_g()
    G.train()
    z = torch.randn(4, CFG.z_dim)
    G.synthesis.set_lod(0.5)  # fade-in 8 -> 16 uses b8.torgb and b16.torgb
    G(z).square().mean().backward()
    missing = [n for n, p in G.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == ["synthesis.b4.torgb.weight", "synthesis.b4.torgb.bias"]
    G.zero_grad(set_to_none=True)
    G.synthesis.set_lod(2)  # 4x4 only
    G(z).square().mean().backward()
    assert torch.any(G.synthesis.b4.torgb.weight.grad != 0) and G.synthesis.b16.conv1.bias.grad is None
    # the noise strengths also get gradients from zero (their initial value)
    G0 = StyleGAN1Generator(CFG)
    G0(z).square().mean().backward()
    assert all(n.noise_strength.grad is not None and torch.any(n.noise_strength.grad != 0)
               for n in G0.synthesis.noise_layers())


def test_noise_modes_and_explicit_noise():
    G = make_g()
    ws = G.mapping(torch.randn(2, CFG.z_dim))
    s = G.synthesis
    assert torch.equal(s(ws, noise_mode="const"), s(ws, noise_mode="const"))
    assert not torch.allclose(s(ws, noise_mode="random"), s(ws, noise_mode="random"))
    zeros = [torch.zeros(1, *shape) for shape in s.noise_shapes]
    assert torch.allclose(s(ws, noise=zeros), s(ws, noise_mode="none"))
    consts = [n.noise_const.reshape(1, 1, n.resolution, n.resolution) for n in s.noise_layers()]
    assert torch.allclose(s(ws, noise=consts), s(ws, noise_mode="const"))
    maps = [torch.randn(2, *shape) for shape in s.noise_shapes]
    a = s(ws, noise=maps, fused_modconv=True)  # fused_modconv is ignored
    assert torch.equal(a, s(ws, noise=maps, noise_mode="none"))  # explicit maps override the mode
    assert not torch.allclose(a, s(ws, noise_mode="const"))
    with pytest.raises(ValueError):
        s(ws, noise=maps[:-1])
    with pytest.raises(ValueError):
        s(ws, noise_mode="bogus")


def test_truncation_and_style_mixing_through_the_mapping():
    G = make_g()
    z = torch.randn(3, CFG.z_dim)
    ws = G.mapping(z, truncation_psi=0.0)
    assert torch.allclose(ws, G.mapping.w_avg.expand(3, G.num_ws, -1))
    img = G(z, truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(img[0], img[1], atol=1e-5) and torch.allclose(img[0], img[2], atol=1e-5)
    ws = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    full = G.mapping(z)
    assert torch.allclose(ws[:, 2:], full[:, 2:])
    assert torch.allclose(ws[:, :2], G.mapping.w_avg.lerp(full[:, :2], 0.5))
    # style mixing: coarse styles from one latent, fine from another
    z2 = torch.randn(3, CFG.z_dim)
    mixed = torch.cat([G.mapping(z)[:, :2], G.mapping(z2)[:, 2:]], dim=1)
    out = G.synthesis(mixed, noise_mode="const")
    assert out.shape == (3, 3, 16, 16) and not torch.allclose(out, G(z, noise_mode="const"))


def test_save_load_round_trip_records_the_arch(tmp_path):
    G = make_g()
    D = StyleGAN1Discriminator(stylegan1_discriminator_config(CFG))
    assert arch_of(G).name == "stylegan1" and get_arch("stylegan1").generator is StyleGAN1Generator
    G.synthesis.set_lod(0.25)
    path = save_network(tmp_path / "a.pt", G, G=G, D=D, metadata={"source": "test"})
    obj = torch.load(path, weights_only=True)
    assert obj["arch"] == "stylegan1" and obj["G_config"] == CFG.to_dict()
    model = load_model(path, with_training=True)
    assert model.arch == "stylegan1"
    assert isinstance(model.G_ema, StyleGAN1Generator) and isinstance(model.D, StyleGAN1Discriminator)
    assert float(model.G_ema.synthesis.lod) == 0.25
    ws = G.mapping(torch.randn(2, CFG.z_dim))
    assert torch.equal(model.G_ema.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"))
    img = torch.randn(4, 3, 16, 16)
    assert torch.allclose(model.D(img, lod=0.5), D(img, lod=0.5))


# -- progressive growing ------------------------------------------------------------------------------------------


def test_lod_stage_conversions_and_schedule():
    assert lod_to_stage(0, 16) == (16, 1.0)
    assert lod_to_stage(0.25, 16) == (16, 0.75)
    assert lod_to_stage(2, 16) == (4, 1.0)
    assert stage_to_lod(16, 0.75, 16) == 0.25 and stage_to_lod(8, 1.0, 16) == 1.0
    with pytest.raises(ValueError):
        lod_to_stage(2.5, 16)
    kw = dict(lod_training_kimg=600, lod_transition_kimg=600, img_resolution=16)
    assert pg_schedule(0, **kw) == (2.0, 1.0)
    assert pg_schedule(599_000, **kw) == (2.0, 1.0)
    lod, alpha = pg_schedule(900_000, **kw)  # half-way through the 4 -> 8 fade-in
    assert lod == pytest.approx(1.5) and alpha == pytest.approx(0.5)
    assert pg_schedule(1_200_000, **kw) == (1.0, 1.0)
    lod, alpha = pg_schedule(2_100_000, **kw)
    assert lod == pytest.approx(0.5) and alpha == pytest.approx(0.5)
    assert pg_schedule(10_000_000, **kw) == (0.0, 1.0)
    assert pg_schedule(0, img_resolution=16, initial_resolution=16) == (0.0, 1.0)
    lods = [pg_schedule(n, **kw)[0] for n in range(0, 4_000_000, 50_000)]
    assert all(a >= b for a, b in zip(lods, lods[1:]))  # monotone


@pytest.mark.parametrize("lo_lod", [1, 2])
def test_fade_in_blends_the_two_resolutions(lo_lod):
    G = make_g()
    ws = G.mapping(torch.randn(2, CFG.z_dim))
    s = G.synthesis
    low = s(ws, noise_mode="const", lod=lo_lod)  # lower resolution, nearest-up-sampled to 16x16
    high = s(ws, noise_mode="const", lod=lo_lod - 1)
    r = 16 >> lo_lod
    assert low.shape == (2, 3, 16, 16)
    # the low-resolution output is piecewise constant on (16/r)x(16/r) cells
    f = 16 // r
    assert torch.equal(low, low[:, :, ::f, ::f].repeat_interleave(f, 2).repeat_interleave(f, 3))
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        lod = lo_lod - alpha
        out = s(ws, noise_mode="const", lod=lod)
        assert torch.allclose(out, torch.lerp(low, high, alpha), atol=1e-5), alpha
    # alpha -> 0 from inside the transition approaches the lower-resolution output
    assert torch.allclose(s(ws, noise_mode="const", lod=lo_lod - 1e-6), low, atol=1e-4)
    # set_lod is the stored default
    s.set_lod(lo_lod - 0.5)
    assert torch.equal(s(ws, noise_mode="const"), s(ws, noise_mode="const", lod=lo_lod - 0.5))
    with pytest.raises(ValueError):
        s.set_lod(3)


def test_discriminator_fade_in_and_reals():
    torch.manual_seed(3)
    D = StyleGAN1Discriminator(stylegan1_discriminator_config(CFG)).eval()
    assert D.config.architecture == "orig"
    img = torch.randn(4, 3, 16, 16)
    assert torch.allclose(D(img, lod=0), D(img))
    for lo in (1, 2):
        # continuity at the start of a transition: alpha -> 0 equals the lower resolution's network
        assert torch.allclose(D(img, lod=lo - 1e-7), D(img, lod=lo), atol=1e-4)
    # reals: identity at lod 0, box down + nearest up at integer lods, lerp during a fade
    assert torch.equal(pg_process_reals(img, 0), img)
    r1 = pg_process_reals(img, 1)
    assert torch.allclose(r1[:, :, ::2, ::2], torch.nn.functional.avg_pool2d(img, 2))
    half = pg_process_reals(img, 0.5)
    assert torch.allclose(half, torch.lerp(r1, img, 0.5), atol=1e-6)
    with pytest.raises(ConfigError):
        StyleGAN1Discriminator(stylegan1_discriminator_config(CFG).__class__(img_resolution=16, architecture="skip"))


def test_one_adversarial_step_with_progressive_growing():
    G = make_g()
    G.train()
    D = StyleGAN1Discriminator(stylegan1_discriminator_config(CFG, mbstd_group_size=2))
    lod = 0.5
    G.set_lod(lod)
    D.set_lod(lod)
    fake = G(torch.randn(4, CFG.z_dim))
    reals = pg_process_reals(torch.rand(4, 3, 16, 16) * 2 - 1, lod).requires_grad_(True)
    loss_g = torch.nn.functional.softplus(-D(fake)).mean()
    loss_g.backward()
    assert torch.any(G.synthesis.b16.torgb.weight.grad != 0) and torch.any(G.synthesis.b8.torgb.weight.grad != 0)
    logits = D(reals)
    (r1,) = torch.autograd.grad(logits.sum(), reals, create_graph=True)
    loss_d = torch.nn.functional.softplus(logits).mean() + r1.square().sum(dim=[1, 2, 3]).mean()
    D.zero_grad()
    loss_d.backward()
    assert torch.any(D.fromrgb8.weight.grad != 0) and torch.any(D.b16.fromrgb.weight.grad != 0)
    assert D.fromrgb4.weight.grad is None
    assert math.isfinite(loss_d.item()) and math.isfinite(loss_g.item())


# -- the projector works unchanged ------------------------------------------------------------------------------


def test_projector_runs_on_a_stylegan1_generator():
    from detector.projector import project
    from detector.settings import ProjectorSettings

    G = make_g()
    with torch.no_grad():
        targets = G(torch.randn(2, CFG.z_dim), noise_mode="const").clamp(-1, 1)
    settings = ProjectorSettings(steps=3, w_avg_samples=200, lpips_resolution=None)
    results = project(G, targets, settings, distance=mse, seed=0)
    assert len(results) == 2
    for r, target in zip(results, targets):
        assert r.steps_run == 3
        assert len(r.noise) == G.num_ws and [n.shape[-1] for n in r.noise] == [4, 4, 8, 8, 16, 16]
        assert r.image.shape == (3, 16, 16)
        ws, noise = r.synthesis_inputs()
        assert ws.shape == (1, G.num_ws, CFG.w_dim)
        # the result is the projection: its w and noise re-synthesise its image, at its distance from the target
        with torch.no_grad():
            img = G.synthesis(ws, noise=noise)
        assert torch.allclose(img[0], r.image, atol=1e-4)  # (one image here, two in the projector's batch)
        assert mse(img, target[None]).item() == pytest.approx(r.distance, rel=1e-5)
