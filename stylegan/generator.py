"""The StyleGAN2 generator (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").

Config E/F of the paper: mapping network z -> w (StyleGAN §2), a learned 4x4 constant, modulated and demodulated
3x3 convolutions (StyleGAN2 §2.2, Eq. 1-3), per-layer noise inputs added after demodulation, and the 'skip'
output architecture of §4.1 (ToRGB at every resolution, images summed after FIR up-sampling). The 'orig' and
'resnet' output architectures of Table 2 / Fig. 7 are available too.

Parameter names follow NVIDIA's stylegan2-ada-pytorch (``mapping.fc0.weight``, ``synthesis.b8.conv0.affine.bias``
...) so that their network pickles map one to one.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import GeneratorConfig
from .ops import (
    SQRT2,
    Conv2dLayer,
    FullyConnectedLayer,
    bias_act,
    conv2d_resample,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
)

NOISE_MODES = ("random", "const", "none")


# ----------------------------------------------------------------------------------------------------------------
# Mapping network (StyleGAN §2)


class MappingNetwork(torch.nn.Module):
    """z -> w: normalise z by its second moment, then ``num_layers`` equalised-lr FC layers with lr multiplier
    0.01, leaky ReLU 0.2 and gain sqrt(2). The output is broadcast to ``num_ws`` layers.

    ``w_avg`` (the centre of mass of W used by the truncation trick, StyleGAN §3.1) is tracked with an EMA of
    decay ``w_avg_beta``, only when called with ``update_emas=True`` in training mode.
    """

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8, lr_multiplier: float = 0.01,
                 w_avg_beta: float = 0.995):
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation="lrelu",
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None,
                update_emas: bool = False) -> torch.Tensor:
        """Returns ws of shape [N, num_ws, w_dim]; truncation replaces ws[:, :cutoff] by lerp(w_avg, ws, psi)."""
        assert z.ndim == 2 and z.shape[1] == self.z_dim, f"z must be [N, {self.z_dim}], got {list(z.shape)}"
        x = normalize_2nd_moment(z.to(self.w_avg.dtype))  # the network's own precision (float32 as in ADA)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and self.training:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).to(self.w_avg.dtype).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            w_avg = self.w_avg.to(ws.dtype)
            ws = ws.clone()
            ws[:, :cutoff] = w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return ws

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, num_layers={self.num_layers}"


# ----------------------------------------------------------------------------------------------------------------
# Modulated convolution (StyleGAN2 §2.2, Eq. 1-3)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: Optional[torch.Tensor] = None,
                     up: int = 1, padding: int = 0, resample_filter: Optional[torch.Tensor] = None,
                     demodulate: bool = True, fused: bool = False) -> torch.Tensor:
    """Convolve x [N, I, H, W] with weight [O, I, k, k] modulated per sample by styles [N, I].

    Eq. 1: w'_ijk = s_i * w_ijk.  Eq. 3: w''_ijk = w'_ijk / sqrt(sum_ik w'_ijk^2 + eps), eps = 1e-8.
    ``fused=True`` bakes s and d into one grouped convolution per sample; ``fused=False`` scales the input by s,
    runs a plain convolution shared by the batch and scales the output by d (Eq. 3 folded out of the kernel,
    StyleGAN2 §2.2 "implementation"). Both compute the same function. ``noise`` (broadcastable to the output) is
    added after demodulation.
    """
    N, I, H, W = x.shape
    O, I2, kh, kw = weight.shape
    assert I == I2, f"input has {I} channels, weight expects {I2}"
    assert styles.shape == (N, I), f"styles must be [{N}, {I}], got {list(styles.shape)}"
    weight = weight.to(x.dtype)
    styles = styles.to(x.dtype)
    dcoefs = None
    if demodulate:
        # sum_{i,k} (w_oik s_ni)^2 = (s^2) @ (sum_k w^2)^T : [N, O]
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
    if not fused:
        x = x * styles.reshape(N, I, 1, 1)
        x = conv2d_resample(x, weight, resample_filter, up=up, padding=padding)
        if dcoefs is not None:
            x = x * dcoefs.reshape(N, O, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x
    w = weight.unsqueeze(0) * styles.reshape(N, 1, I, 1, 1)
    if dcoefs is not None:
        w = w * dcoefs.reshape(N, O, 1, 1, 1)
    x = x.reshape(1, N * I, H, W)
    x = conv2d_resample(x, w.reshape(N * O, I, kh, kw), resample_filter, up=up, padding=padding, groups=N)
    x = x.reshape(N, O, x.shape[2], x.shape[3])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


class ModulatedConv2d(torch.nn.Module):
    """Weights and style affine of a modulated convolution: A (affine, bias initialised to 1) maps w to the
    per-input-channel scales s of Eq. 1. The stored weight carries no equalised-lr gain because demodulation
    (Eq. 3) removes any constant factor; layers without demodulation (ToRGB) scale the styles instead."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))


def _resolve_fused(fused_modconv: Optional[bool], x: torch.Tensor, training: bool) -> bool:
    """Default: the non-fused form on CPU (1.4-2.7x faster there) and in training, the fused form on GPU in eval."""
    if fused_modconv is not None:
        return fused_modconv
    return x.device.type != "cpu" and not training


class SynthesisLayer(ModulatedConv2d):
    """One 3x3 layer of the synthesis network: modulated conv (optionally 2x up), noise, bias, lrelu * sqrt(2),
    clamp. Noise (StyleGAN §3.2) is a single-channel map scaled by a learned scalar strength (init 0)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, conv_clamp: Optional[float] = None):
        super().__init__(in_channels, out_channels, w_dim, kernel_size)
        self.resolution = resolution
        self.up = up
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def make_noise(self, x: torch.Tensor, noise_mode: str, noise: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        N = x.shape[0]
        res = self.resolution
        if noise is not None:
            assert noise.ndim == 4 and noise.shape[1:] == (1, res, res) and noise.shape[0] in (1, N), (
                f"noise for a {res}x{res} layer must be [N or 1, 1, {res}, {res}], got {list(noise.shape)}")
            return noise * self.noise_strength
        if noise_mode == "random":
            return torch.randn([N, 1, res, res], device=x.device, dtype=x.dtype) * self.noise_strength
        if noise_mode == "const":
            return self.noise_const * self.noise_strength
        if noise_mode == "none":
            return None
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                noise: Optional[torch.Tensor] = None, fused_modconv: Optional[bool] = None,
                gain: float = 1.0) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels and x.shape[2] * self.up == self.resolution, (
            f"expected [N, {self.in_channels}, {self.resolution // self.up}, ...], got {list(x.shape)}")
        styles = self.affine(w)
        noise_t = self.make_noise(x, noise_mode, noise)
        x = modulated_conv2d(x, self.weight, styles, noise=noise_t, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, demodulate=True,
                             fused=_resolve_fused(fused_modconv, x, self.training))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, "lrelu", gain=SQRT2 * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, resolution={self.resolution}, up={self.up}"


class ToRGB(ModulatedConv2d):
    """1x1 modulated convolution to image channels, without demodulation; styles are scaled by 1/sqrt(in)
    (the equalised-lr gain of the weight), then bias and clamp, no activation (StyleGAN2 §4.1, Fig. 7b)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: Optional[float] = None):
        super().__init__(in_channels, out_channels, w_dim, kernel_size)
        self.conv_clamp = conv_clamp
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: Optional[bool] = None) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False,
                             fused=_resolve_fused(fused_modconv, x, self.training))
        return bias_act(x, self.bias, "linear", clamp=self.conv_clamp)


# ----------------------------------------------------------------------------------------------------------------
# Synthesis network


class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network.

    The 4x4 block starts from the learned constant and has one conv; later blocks up-sample in ``conv0`` and
    refine in ``conv1``. 'skip': every block has a ToRGB whose output is added to the FIR-up-sampled image of the
    previous block; 'resnet' adds a 1x1 up-sampling skip branch (both branches times sqrt(1/2)) and only the last
    block has a ToRGB; 'orig' has neither.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", conv_clamp: Optional[float] = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1 if (is_last or architecture == "skip") else 0
        if self.num_torgb:
            self.torgb = ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2)

    def noise_layers(self) -> List[SynthesisLayer]:
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws: torch.Tensor,
                noise_mode: str = "random", noise: Sequence[Optional[torch.Tensor]] = (None, None),
                fused_modconv: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        assert ws.ndim == 3 and ws.shape[1] == self.num_conv + self.num_torgb, (
            f"block {self.resolution} needs {self.num_conv + self.num_torgb} ws, got {list(ws.shape)}")
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, next(w_iter), noise_mode, noise[0], fused_modconv)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), noise_mode, noise[0], fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode, noise[1], fused_modconv, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), noise_mode, noise[0], fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode, noise[1], fused_modconv)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, next(w_iter), fused_modconv)
            img = img + y if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}"


class BlockwiseSynthesis(torch.nn.Module):
    """What the projector and the trainer need of any synthesis network built of blocks ``b4``, ``b8``, ...,
    each with ``noise_layers()`` whose modules have ``resolution`` and ``noise_strength``."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.w_dim = config.w_dim
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.block_resolutions = config.block_resolutions

    def blocks(self) -> list:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def noise_layers(self) -> list:
        """The layers that take noise, in input order (StyleGAN2: b4.conv1, b8.conv0, b8.conv1, ...)."""
        return [layer for block in self.blocks() for layer in block.noise_layers()]

    @property
    def noise_shapes(self) -> List[Tuple[int, int, int]]:
        return [(1, layer.resolution, layer.resolution) for layer in self.noise_layers()]


class SynthesisNetwork(BlockwiseSynthesis):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R].

    Layer l of the network reads ws[:, l]; ToRGB of one block shares its w with conv0 of the next.
    ``noise`` (optional) gives an explicit noise map for each of the ``num_noise_inputs`` layers, in the order of
    ``noise_layers()``, each [N or 1, 1, res, res]; it overrides ``noise_mode``. The projector uses it to optimise
    per-image noise maps (StyleGAN2 App. D).
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__(config)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = config.channels(res // 2) if res > 4 else 0
            block = SynthesisBlock(in_channels, config.channels(res), config.w_dim, res, config.img_channels,
                                   is_last=(res == config.img_resolution), architecture=config.architecture,
                                   conv_clamp=config.conv_clamp)
            self.num_ws += block.num_conv
            if block.is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)
        assert self.num_ws == config.num_ws

    def forward(self, ws: torch.Tensor, noise_mode: str = "random",
                noise: Optional[Sequence[torch.Tensor]] = None, fused_modconv: Optional[bool] = None) -> torch.Tensor:
        assert ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.w_dim), (
            f"ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if noise is not None:
            assert len(noise) == len(self.noise_layers()), (
                f"expected {len(self.noise_layers())} noise maps, got {len(noise)}")
        noise_iter = iter(noise) if noise is not None else None
        x = img = None
        w_idx = 0
        for block in self.blocks():
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            block_noise = [next(noise_iter) for _ in range(block.num_conv)] if noise_iter else [None, None]
            x, img = block(x, img, block_ws, noise_mode, block_noise, fused_modconv)
            w_idx += block.num_conv
        return img


# ----------------------------------------------------------------------------------------------------------------
# Generator


class Generator(torch.nn.Module):
    """Mapping network + synthesis network: G(z) = g(f(z)) (StyleGAN2 Fig. 2).

    Other generators with the same interface (StyleGAN config A) subclass this with another ``synthesis_class``.
    """

    synthesis_class = SynthesisNetwork

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self.z_dim = config.z_dim
        self.w_dim = config.w_dim
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.synthesis = self.synthesis_class(config)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(config.z_dim, config.w_dim, self.num_ws, num_layers=config.mapping_layers,
                                      lr_multiplier=config.mapping_lr_multiplier, w_avg_beta=config.w_avg_beta)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None,
                noise_mode: str = "random", fused_modconv: Optional[bool] = None,
                update_emas: bool = False) -> torch.Tensor:
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)

    @property
    def device(self) -> torch.device:
        return self.mapping.w_avg.device


def seed_to_z(seed: int, z_dim: int) -> torch.Tensor:
    """z for a seed exactly as NVIDIA's generate.py draws it: numpy RandomState(seed).randn(1, z_dim)."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim)).float()


def generate_seeded(G, seed: int, truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None,
                    noise_mode: str = "random") -> torch.Tensor:
    """One image [1, C, R, R] for a seed. z is :func:`seed_to_z` (NVIDIA's rule); with ``noise_mode='random'``
    the same ``numpy.random.RandomState(seed)`` then draws every noise map, in ``synthesis.noise_shapes`` order,
    so a "random-noise" image is reproducible from its seed alone (as in StyleGAN2's projection experiments,
    where the projector cannot read the noise back). 'const' and 'none' are the network's own modes."""
    device = G.mapping.w_avg.device
    rnd = np.random.RandomState(int(seed))
    z = torch.from_numpy(rnd.randn(1, G.z_dim)).float().to(device)
    with torch.no_grad():
        ws = G.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        if noise_mode != "random":
            return G.synthesis(ws, noise_mode=noise_mode)
        noise = [torch.from_numpy(rnd.randn(*shape)[None]).float().to(device) for shape in G.synthesis.noise_shapes]
        return G.synthesis(ws, noise=noise)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] as NVIDIA's tools do: x*127.5 + 128, clamp, truncate."""
    return (img.detach().permute(0, 2, 3, 1).float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()
