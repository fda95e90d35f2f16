"""Parity with NVIDIA's stylegan2-ada-pytorch on the fixtures in ../shared/parity (see its README, §7-8).

float32 is checked with the README's suggested tolerances, float64 against the ``*_fp64`` references tightly.
"""

import pytest
import torch

from stylegan.config import DiscriminatorConfig, GeneratorConfig
from stylegan.discriminator import Discriminator
from stylegan.generator import Generator
from tests.conftest import shared_file

DTYPES = [torch.float32, torch.float64]


def _close(actual, expected, dtype, grad=False):
    expected = expected.to(actual.dtype)
    scale = expected.abs().max().item()
    if dtype == torch.float64:
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9 * scale)
    elif grad:
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-2 * scale)
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=2e-5 * scale)


def _ref(fx, key, dtype):
    """The float64 reference where one exists for float64 runs, else the float32 one."""
    if dtype == torch.float64 and f"{key}_fp64" in fx:
        return fx[f"{key}_fp64"]
    return fx[key]


@pytest.fixture(scope="module")
def gfx():
    return torch.load(shared_file("parity/ada32_G.pt"), weights_only=True)


@pytest.fixture(scope="module")
def dfx():
    return torch.load(shared_file("parity/ada32_D.pt"), weights_only=True)


def _generator(fx, dtype):
    kw = fx["G_init_kwargs"]
    syn = kw["synthesis_kwargs"]
    cfg = GeneratorConfig(z_dim=kw["z_dim"], w_dim=kw["w_dim"], img_resolution=kw["img_resolution"],
                          img_channels=kw["img_channels"], mapping_layers=kw["mapping_kwargs"]["num_layers"],
                          channel_base=syn["channel_base"], channel_max=syn["channel_max"],
                          architecture=syn["architecture"], conv_clamp=syn["conv_clamp"])
    G = Generator(cfg).eval()
    sd = {k: v for k, v in fx["G_state_dict"].items() if not k.endswith("resample_filter")}
    G.load_state_dict(sd, strict=True)
    return G.to(dtype)


def _discriminator(fx, dtype):
    kw = fx["D_init_kwargs"]
    cfg = DiscriminatorConfig(img_resolution=kw["img_resolution"], img_channels=kw["img_channels"],
                              channel_base=kw["channel_base"], channel_max=kw["channel_max"],
                              architecture=kw["architecture"], conv_clamp=kw["conv_clamp"],
                              mbstd_group_size=kw["epilogue_kwargs"]["mbstd_group_size"],
                              mbstd_num_channels=kw["epilogue_kwargs"]["mbstd_num_channels"])
    D = Discriminator(cfg).eval()
    sd = {k: v for k, v in fx["D_state_dict"].items() if not k.endswith("resample_filter")}
    D.load_state_dict(sd, strict=True)
    return D.to(dtype)


def test_parameter_counts_and_names(gfx, dfx):
    G = _generator(gfx, torch.float32)
    D = _discriminator(dfx, torch.float32)
    assert sum(p.numel() for p in G.parameters()) == 3_860_243
    assert sum(p.numel() for p in D.parameters()) == 1_346_305
    assert G.num_ws == gfx["num_ws"] == 8
    # Every fixture tensor has a home (the FIR filters are constants we recreate), and vice versa.
    ours = set(G.state_dict())
    theirs = {k for k in gfx["G_state_dict"] if not k.endswith("resample_filter")}
    assert ours == theirs
    for k, v in gfx["G_state_dict"].items():
        if k.endswith("resample_filter"):
            torch.testing.assert_close(v, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mapping(gfx, dtype):
    G = _generator(gfx, dtype)
    z = gfx["a_z"].to(dtype)
    with torch.no_grad():
        _close(G.mapping(z), _ref(gfx, "a_ws", dtype), dtype)
        _close(G.mapping(z, truncation_psi=gfx["b_truncation_psi"]), _ref(gfx, "b_ws", dtype), dtype)
        _close(G.mapping(z, truncation_psi=gfx["b2_truncation_psi"], truncation_cutoff=gfx["b2_truncation_cutoff"]),
               _ref(gfx, "b2_ws", dtype), dtype)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_synthesis(gfx, dtype, fused):
    G = _generator(gfx, dtype)
    cases = [("a_ws", "const", "a_img"), ("c2_ws", "const", "c2_img"), ("a_ws", "none", "d_img")]
    if dtype == torch.float32:  # these have no float64 reference
        cases += [("b_ws", "const", "b_img"), ("b2_ws", "const", "b2_img"), ("c_ws", "const", "c_img")]
    with torch.no_grad():
        for ws_key, noise_mode, img_key in cases:
            img = G.synthesis(gfx[ws_key].to(dtype), noise_mode=noise_mode, fused_modconv=fused)
            _close(img, _ref(gfx, img_key, dtype), dtype)


def test_fused_equals_nonfused(gfx):
    G = _generator(gfx, torch.float32)
    with torch.no_grad():
        for ws_key, case in (("a_ws", "e"), ("c2_ws", "e2")):
            fused = G.synthesis(gfx[ws_key], noise_mode="const", fused_modconv=True)
            nonfused = G.synthesis(gfx[ws_key], noise_mode="const", fused_modconv=False)
            _close(fused, gfx[f"{case}_img_fused"], torch.float32)
            _close(nonfused, gfx[f"{case}_img_nonfused"], torch.float32)
            _close(fused, nonfused, torch.float32)


def test_style_mixing_layers(gfx):
    """c: layers 0-2 from w1 = a_ws[:, 0], the rest from mapping(c_z2)."""
    G = _generator(gfx, torch.float32)
    with torch.no_grad():
        w2 = G.mapping(gfx["c_z2"])
        ws = w2.clone()
        k = gfx["c_num_layers_from_w1"]
        ws[:, :k] = gfx["a_ws"][:, :k]
    _close(ws, gfx["c_ws"], torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_path_length_and_noise_gradients(gfx, dtype):
    G = _generator(gfx, dtype)
    ws = gfx["a_ws"].to(dtype).clone().requires_grad_(True)
    layers = G.synthesis.noise_layers()
    noise = [layer.noise_const.clone().reshape(1, 1, *layer.noise_const.shape).requires_grad_(True) for layer in layers]
    img = G.synthesis(ws, noise=noise)
    loss = (img * gfx["f_pl_noise"].to(dtype)).sum()
    grads = torch.autograd.grad(loss, [ws] + noise)
    _close(grads[0], _ref(gfx, "f_pl_grads", dtype), dtype, grad=True)
    lengths = grads[0].square().sum(2).mean(1).sqrt()
    ref_len = _ref(gfx, "f_pl_lengths", dtype).to(dtype)
    if dtype == torch.float64:
        _close(lengths, ref_len, dtype)
    else:
        torch.testing.assert_close(lengths, ref_len, rtol=5e-4, atol=0)
        pl_mean = 0.01 * lengths.mean()
        torch.testing.assert_close(pl_mean, gfx["f_pl_mean"].to(dtype).reshape(pl_mean.shape), rtol=5e-4, atol=0)
        torch.testing.assert_close((lengths - pl_mean).square(), gfx["f_pl_penalty"].to(dtype), rtol=5e-4, atol=0)
    ref_noise = _ref(gfx, "f_noise_const_grads", dtype)
    names = [name for name, _ in G.synthesis.named_modules() if name and hasattr(_, "noise_const")]
    assert len(names) == len(ref_noise) == len(noise) == 7
    for name, layer, g in zip(names, layers, grads[1:]):
        _close(g.reshape(layer.noise_const.shape), ref_noise[f"synthesis.{name}.noise_const"], dtype, grad=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_discriminator_logits(dfx, dtype):
    D = _discriminator(dfx, dtype)
    with torch.no_grad():
        for x_key, l_key in (("x", "logits"), ("x8", "logits8"), ("x2", "logits2")):
            _close(D(dfx[x_key].to(dtype)), _ref(dfx, l_key, dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_r1_gradients(dfx, dtype):
    D = _discriminator(dfx, dtype)
    x = dfx["x"].to(dtype).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x)
    _close(g, _ref(dfx, "r1_grads", dtype), dtype)
    _close(g.square().sum(dim=[1, 2, 3]), _ref(dfx, "r1", dtype), dtype)
