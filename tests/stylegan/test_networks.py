"""Properties of the networks that hold for any configuration (StyleGAN2 §2.2, App. B)."""

import math

import pytest
import torch

from stylegan.config import ConfigError, DiscriminatorConfig, GeneratorConfig
from stylegan.discriminator import Discriminator, MinibatchStdLayer
from stylegan.generator import Generator, modulated_conv2d
from stylegan.ops import conv2d_resample, setup_filter, upfirdn2d
from stylegan.presets import PRESETS, get_preset

TINY = dict(z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=16)


def tiny_g(res=16, **kw):
    return Generator(GeneratorConfig(img_resolution=res, **{**TINY, **kw}))


def tiny_d(res=16, **kw):
    return Discriminator(DiscriminatorConfig(img_resolution=res, channel_base=256, channel_max=16, **kw))


def test_demodulation_keeps_unit_std():
    """Eq. 3: with i.i.d. unit-variance inputs, demodulated outputs have unit standard deviation."""
    torch.manual_seed(1)
    N, I, O = 4, 256, 128
    x = torch.randn(N, I, 32, 32)
    weight = torch.randn(O, I, 3, 3)
    styles = torch.rand(N, I) * 3 + 0.1
    y = modulated_conv2d(x, weight, styles, padding=1, demodulate=True)
    std = y[:, :, 1:-1, 1:-1].std(dim=[2, 3])  # away from the zero padding
    assert abs(std.mean().item() - 1) < 0.02
    assert std.min().item() > 0.85 and std.max().item() < 1.15
    # Without demodulation the scale follows the styles and weights instead.
    y2 = modulated_conv2d(x, weight, styles, padding=1, demodulate=False)
    assert y2.std().item() > 10


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_fused_equals_nonfused_modconv(up, demodulate):
    x = torch.randn(3, 8, 8, 8, dtype=torch.float64)
    weight = torch.randn(5, 8, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 8, dtype=torch.float64)
    f = setup_filter().double()
    a = modulated_conv2d(x, weight, styles, up=up, padding=1, resample_filter=f, demodulate=demodulate, fused=True)
    b = modulated_conv2d(x, weight, styles, up=up, padding=1, resample_filter=f, demodulate=demodulate, fused=False)
    assert a.shape == (3, 5, 8 * up, 8 * up)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("res", [8, 16, 32, 64, 128, 256, 512, 1024])
def test_any_power_of_two_resolution(res):
    cfg = GeneratorConfig(img_resolution=res, z_dim=16, w_dim=16, mapping_layers=1, channel_base=4 * res, channel_max=4)
    G = Generator(cfg)
    log2 = int(math.log2(res))
    assert G.num_ws == 2 * log2 - 2
    assert len(G.synthesis.noise_layers()) == 2 * log2 - 3 == cfg.num_noise_inputs
    assert [s[1] for s in G.synthesis.noise_shapes] == [4] + [r for r in cfg.block_resolutions[1:] for _ in (0, 1)]
    if res <= 256:
        with torch.no_grad():
            img = G(torch.randn(1, 16), noise_mode="random")
            assert img.shape == (1, 3, res, res)
            logits = Discriminator(DiscriminatorConfig(img_resolution=res, channel_base=4 * res, channel_max=4))(img)
            assert logits.shape == (1, 1)


def test_bad_resolution_refused():
    for res in (0, 2, 48, 100):
        with pytest.raises(ConfigError):
            GeneratorConfig(img_resolution=res)
        with pytest.raises(ConfigError):
            DiscriminatorConfig(img_resolution=res)


@pytest.mark.parametrize("architecture", ["skip", "orig", "resnet"])
def test_generator_gradients_reach_every_parameter(architecture):
    G = tiny_g(architecture=architecture, conv_clamp=256)
    for layer in G.synthesis.noise_layers():
        layer.noise_strength.data.fill_(0.1)  # init 0 would block the noise-strength gradient only trivially
    G.train()
    img = G(torch.randn(2, 32), noise_mode="random")
    img.square().sum().backward()
    missing = [n for n, p in G.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


@pytest.mark.parametrize("architecture", ["resnet", "skip", "orig"])
def test_discriminator_gradients_reach_every_parameter(architecture):
    D = tiny_d(architecture=architecture, conv_clamp=256)
    D(torch.randn(4, 3, 16, 16)).sum().backward()
    missing = [n for n, p in D.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_noise_modes():
    G = tiny_g().eval()
    for layer in G.synthesis.noise_layers():
        layer.noise_strength.data.fill_(0.5)
    ws = G.mapping(torch.randn(2, 32))
    with torch.no_grad():
        c1 = G.synthesis(ws, noise_mode="const")
        c2 = G.synthesis(ws, noise_mode="const")
        r1 = G.synthesis(ws, noise_mode="random")
        n1 = G.synthesis(ws, noise_mode="none")
        zeros = [torch.zeros(1, *s) for s in G.synthesis.noise_shapes]
        n2 = G.synthesis(ws, noise=zeros)
        consts = [layer.noise_const.reshape(1, *s)
                  for layer, s in zip(G.synthesis.noise_layers(), G.synthesis.noise_shapes)]
        c3 = G.synthesis(ws, noise=consts)
    assert torch.equal(c1, c2)
    assert not torch.allclose(c1, r1)
    torch.testing.assert_close(n1, n2)
    torch.testing.assert_close(c1, c3)
    with pytest.raises(ValueError):
        G.synthesis(ws, noise_mode="bogus")


def test_truncation_and_w_avg_tracking():
    G = tiny_g()
    z = torch.randn(8, 32)
    G.eval()
    ws = G.mapping(z, update_emas=True)
    assert torch.count_nonzero(G.mapping.w_avg) == 0  # eval mode never updates w_avg
    G.train()
    G.mapping(z, update_emas=True)
    expected = ws[:, 0].mean(0) * (1 - 0.995)
    torch.testing.assert_close(G.mapping.w_avg, expected)
    G.eval()
    t = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(t[:, :2], G.mapping.w_avg + 0.5 * (ws[:, :2] - G.mapping.w_avg))
    torch.testing.assert_close(t[:, 2:], ws[:, 2:])
    t0 = G.mapping(z, truncation_psi=0.0)
    torch.testing.assert_close(t0, G.mapping.w_avg.expand_as(t0))


def test_minibatch_std_groups_are_strided():
    """Sample i belongs to group i mod (N/G); the stddev is appended as the last channel."""
    layer = MinibatchStdLayer(group_size=2, num_channels=1)
    x = torch.zeros(4, 2, 1, 1)
    x[0] = 1.0
    x[2] = 3.0  # same group as sample 0 (0 mod 2 == 2 mod 2)
    y = layer(x)
    assert y.shape == (4, 3, 1, 1)
    # group {0, 2}: per-channel population std = 1 for both channels -> mean 1 (plus eps inside the sqrt)
    torch.testing.assert_close(y[[0, 2], 2].flatten(), torch.full((2,), math.sqrt(1 + 1e-8)))
    torch.testing.assert_close(y[[1, 3], 2].flatten(), torch.full((2,), math.sqrt(1e-8)))
    with pytest.raises(ValueError):
        MinibatchStdLayer(group_size=4)(torch.zeros(6, 2, 1, 1))


def test_fir_resampling_shapes_and_dc_gain():
    f = setup_filter()
    torch.testing.assert_close(torch.outer(f, f),
                               torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    x = torch.ones(1, 2, 8, 8)
    up = upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4)
    assert up.shape == (1, 2, 16, 16)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones_like(up[..., 2:-2, 2:-2]))
    w = torch.randn(4, 2, 3, 3)
    assert conv2d_resample(x, w, f, down=2, padding=1).shape == (1, 4, 4, 4)
    assert conv2d_resample(x, w, f, up=2, padding=1).shape == (1, 4, 16, 16)
    assert conv2d_resample(x, w[:, :, :1, :1], f, down=2).shape == (1, 4, 4, 4)


def test_presets_build():
    for _name, preset in PRESETS.items():
        assert preset.G.img_resolution == preset.D.img_resolution
    tiny = get_preset("cpu-tiny")
    G = Generator(tiny.G)
    D = Discriminator(tiny.D)
    assert D(G(torch.randn(4, tiny.G.z_dim))).shape == (4, 1)
    assert get_preset("paper-f").G.channels(1024) == 32 and get_preset("paper-f").G.channels(64) == 512
    assert get_preset("paper-e", img_resolution=64).G.img_resolution == 64
    with pytest.raises(ConfigError):
        get_preset("nope")


def test_float64_runs():
    G = tiny_g().double()
    D = tiny_d().double()
    img = G(torch.randn(2, 32, dtype=torch.float64), noise_mode="const")
    assert img.dtype == torch.float64 and D(img).dtype == torch.float64
