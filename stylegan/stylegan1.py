"""The original StyleGAN, config A of StyleGAN2 Table 1 (Karras et al. 2019, "A Style-Based Generator
Architecture for Generative Adversarial Networks", §2), with progressive growing (Karras et al. 2018, PGGAN §3).

Generator (StyleGAN §2, Fig. 1b):

* the 8-layer mapping network z -> w is :class:`stylegan.generator.MappingNetwork` (lr multiplier 0.01, w_avg
  tracking), so style mixing and the truncation trick work exactly as for StyleGAN2 (``G.mapping(z,
  truncation_psi, truncation_cutoff)``, ``ws`` of shape [N, num_ws, w_dim]);
* a learned 4x4 constant; every resolution has two layers, each ending in
  ``noise -> bias -> leaky ReLU -> AdaIN`` (the "epilogue" of a layer). The 4x4 block is
  ``const -> epilogue -> conv 3x3 -> epilogue``; every later block is
  ``2x up-sample -> conv 3x3 -> epilogue -> conv 3x3 -> epilogue``;
* AdaIN (StyleGAN Eq. 1): instance normalisation of every channel, then a per-channel scale y_s and bias y_b,
  both given by a learned affine map A of w;
* noise (StyleGAN §3.2): a single-channel Gaussian map per layer, broadcast to all feature maps with learned
  per-channel strengths (initialised to 0);
* up-sampling is the paper's "bilinear" up-sampling: nearest-neighbour x2 followed by the [1, 2, 1] binomial
  blur (together: zero insertion and the [1, 3, 3, 1] filter, the same low-pass StyleGAN2 uses);
* equalised learning rate everywhere (:class:`stylegan.ops.Conv2dLayer`, :class:`~stylegan.ops.FullyConnectedLayer`);
* the output is a 1x1 ToRGB convolution (no style, no activation). For progressive growing every resolution
  has its own ToRGB.

``num_ws = 2*log2(R) - 2``: one w per layer (ToRGB takes none). There are as many noise inputs as ws (two per
resolution, the 4x4 block included), in the order b4.epi0, b4.conv1, b8.conv0, b8.conv1, ...

Progressive growing (PGGAN §3, "fade in"). The level of detail ``lod`` is ``log2(R) - log2(r)`` for a network
currently producing r x r images; a fractional lod is a transition. With ``k = floor(lod)``, ``r = R / 2**k``
and ``alpha = 1 - (lod - k)``::

    img_r = lerp(upsample_nearest(torgb_{r/2}(x_{r/2})), torgb_r(x_r), alpha)     (alpha 0 -> 1 as lod falls)

and the result is up-sampled (nearest) to R x R, so that the discriminator, the losses and the data pipeline
always see R x R tensors (the way PGGAN's own implementation keeps shapes fixed). The discriminator
(:class:`StyleGAN1Discriminator`) average-pools its input back to r x r and mirrors the fade-in with a fromRGB at
each resolution; :func:`pg_process_reals` prepares real images the same way. ``lod`` is a persistent buffer of
the synthesis network and the discriminator (``set_lod``): a snapshot taken mid-training generates what it was
trained to generate. At ``lod == 0`` (the default and the end of training) the network is plain config A.

Discriminator: config A used the PGGAN discriminator; here that is :class:`stylegan.discriminator.Discriminator`
with the 'orig' architecture (no residual branches, FIR [1,3,3,1] down-sampling, minibatch std group 4), extended
by a fromRGB at every lower resolution for progressive growing (:class:`StyleGAN1Discriminator`).

Initialisation choices (documented deviations where the paper is silent): the constant is N(0, 1) (a constant
map of ones would be erased by the instance normalisation that follows it); the affine maps of AdaIN start with
bias 1 for the scale half and 0 for the bias half, so that y_s starts near 1 and y_b near 0 (StyleGAN initialises
the style scale so that y_s = 1 + A_s(w) with A's bias 0: the same function).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .config import ConfigError, DiscriminatorConfig, GeneratorShape, _check_resolution
from .discriminator import Discriminator
from .formats.ours import ArchSpec, register_arch
from .generator import NOISE_MODES, BlockwiseSynthesis, Generator
from .ops import SQRT2, Conv2dLayer, FullyConnectedLayer, bias_act, setup_filter, upfirdn2d
from .progressive import _box_down, _nearest_up, lod_to_stage

__all__ = ["StyleGAN1Config", "AdaIN", "NoiseInput", "StyleGAN1Layer", "StyleGAN1Block", "StyleGAN1Synthesis",
           "StyleGAN1Generator", "StyleGAN1Discriminator", "stylegan1_discriminator_config",
           "upsample_bilinear2x", "instance_norm"]


# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class StyleGAN1Config(GeneratorShape):
    """StyleGAN config A generator.

    Channels per resolution: ``min(channel_base // res, channel_max)``; StyleGAN's ``fmap_base`` 8192 with
    ``nf(stage) = 8192 / 2**stage``, ``stage = log2(res) - 1``, is ``channel_base = 16384`` here (the default:
    512 channels up to 32x32, 16 at 1024x1024).
    """

    z_dim: int = 512
    w_dim: int = 512
    img_resolution: int = 1024
    img_channels: int = 3
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995
    channel_base: int = 16384
    channel_max: int = 512

    def __post_init__(self) -> None:
        _check_resolution(self.img_resolution)
        for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "img_channels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.channel_base // self.img_resolution < 1:
            raise ConfigError(f"channel_base {self.channel_base} gives no channels at {self.img_resolution} px")
        if not 0 <= self.w_avg_beta <= 1:
            raise ConfigError(f"w_avg_beta must be in [0, 1], got {self.w_avg_beta}")

    @property
    def num_noise_inputs(self) -> int:
        """Two noise inputs per resolution, the 4x4 block included: 2*log2(R) - 2 (= num_ws)."""
        return 2 * self.log2_resolution - 2

    @property
    def max_lod(self) -> int:
        """The level of detail of the 4x4 network: log2(R) - 2."""
        return self.log2_resolution - 2



def stylegan1_discriminator_config(g: StyleGAN1Config, mbstd_group_size: Optional[int] = 4) -> DiscriminatorConfig:
    """The discriminator config A was trained with: 'orig' architecture, the generator's resolution and channels."""
    return DiscriminatorConfig(img_resolution=g.img_resolution, img_channels=g.img_channels,
                               channel_base=g.channel_base, channel_max=g.channel_max, architecture="orig",
                               mbstd_group_size=mbstd_group_size)


# ----------------------------------------------------------------------------------------------------------------
# Building blocks


def instance_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise every channel of every sample to mean 0 and (population) std 1 over its pixels."""
    assert x.ndim == 4, f"expected [N, C, H, W], got {list(x.shape)}"
    x = x - x.mean(dim=[2, 3], keepdim=True)
    return x * (x.square().mean(dim=[2, 3], keepdim=True) + eps).rsqrt()


class AdaIN(torch.nn.Module):
    """Adaptive instance normalisation, StyleGAN Eq. 1: AdaIN(x_i, y) = y_{s,i} (x_i - mu(x_i)) / sigma(x_i) + y_{b,i}.

    ``y = (y_s, y_b)`` comes from the learned affine transform A of w (equalised lr); A's bias starts at 1 for
    the scales and 0 for the biases, so every y_s starts near 1. ``eps`` = 1e-8 inside the root of sigma.
    """

    def __init__(self, channels: int, w_dim: int, eps: float = 1e-8):
        super().__init__()
        self.channels = channels
        self.w_dim = w_dim
        self.eps = eps
        self.affine = FullyConnectedLayer(w_dim, 2 * channels, bias_init=1)
        with torch.no_grad():
            self.affine.bias[channels:] = 0

    def styles(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(y_s, y_b), each [N, C]."""
        assert w.ndim == 2 and w.shape[1] == self.w_dim, f"w must be [N, {self.w_dim}], got {list(w.shape)}"
        y = self.affine(w.to(self.affine.weight.dtype))
        return y[:, :self.channels], y[:, self.channels:]

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.channels, f"expected [N, {self.channels}, H, W], got {list(x.shape)}"
        y_s, y_b = self.styles(w)
        x = instance_norm(x, self.eps)
        return x * y_s.to(x.dtype)[:, :, None, None] + y_b.to(x.dtype)[:, :, None, None]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, w_dim={self.w_dim}, eps={self.eps}"


class NoiseInput(torch.nn.Module):
    """Per-layer noise (StyleGAN §3.2): one single-channel N(0, 1) map per sample, added to every channel times a
    learned per-channel strength (``noise_strength`` [C], initialised to 0).

    Same interface as the noise of :class:`stylegan.generator.SynthesisLayer`: ``resolution``, ``noise_strength``,
    a persistent ``noise_const`` [res, res] for ``noise_mode='const'``, and explicit maps [N or 1, 1, res, res]
    that override the mode (what the projector optimises).
    """

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        self.channels = channels
        self.resolution = resolution
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = torch.nn.Parameter(torch.zeros([channels]))

    def forward(self, x: torch.Tensor, noise_mode: str = "random",
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        N, C, H, W = x.shape
        res = self.resolution
        assert C == self.channels and H == W == res, f"expected [N, {self.channels}, {res}, {res}], got {list(x.shape)}"
        if noise is not None:
            assert noise.ndim == 4 and noise.shape[1:] == (1, res, res) and noise.shape[0] in (1, N), (
                f"noise for a {res}x{res} layer must be [N or 1, 1, {res}, {res}], got {list(noise.shape)}")
            n = noise.to(x.dtype)
        elif noise_mode == "random":
            n = torch.randn([N, 1, res, res], device=x.device, dtype=x.dtype)
        elif noise_mode == "const":
            n = self.noise_const.to(x.dtype).reshape(1, 1, res, res)
        elif noise_mode == "none":
            return x
        else:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        return x + n * self.noise_strength.to(x.dtype).reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, resolution={self.resolution}"


def upsample_bilinear2x(x: torch.Tensor, blur: torch.Tensor) -> torch.Tensor:
    """StyleGAN's "bilinear" 2x up-sampling: nearest-neighbour, then the separable [1, 2, 1] / 4 blur (zero
    padding of 1 pixel). Equivalent to zero insertion and the [1, 3, 3, 1] filter with gain 4."""
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    return upfirdn2d(x, blur, padding=1)


class StyleGAN1Layer(torch.nn.Module):
    """One layer: (2x bilinear up-sampling) -> (3x3 conv, equalised lr, no bias) -> noise -> bias -> leaky ReLU
    (slope 0.2, gain sqrt(2)) -> AdaIN. ``conv=False`` is the first layer of the 4x4 block (the epilogue applied
    to the learned constant)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, conv: bool = True,
                 up: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        if up:
            self.register_buffer("blur_filter", setup_filter((1, 2, 1)), persistent=False)
        self.conv = Conv2dLayer(in_channels, out_channels, kernel_size=3, bias=False) if conv else None
        if not conv and in_channels != out_channels:
            raise ValueError("a layer without convolution keeps its channel count")
        self.noise = NoiseInput(out_channels, resolution)
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.adain = AdaIN(out_channels, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        in_res = self.resolution // 2 if self.up else self.resolution
        assert x.ndim == 4 and x.shape[1:] == (self.in_channels, in_res, in_res), (
            f"expected [N, {self.in_channels}, {in_res}, {in_res}], got {list(x.shape)}")
        if self.up:
            x = upsample_bilinear2x(x, self.blur_filter)
        if self.conv is not None:
            x = self.conv(x)
        x = self.noise(x, noise_mode, noise)
        x = bias_act(x, self.bias, "lrelu", gain=SQRT2)
        return self.adain(x, w)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, resolution={self.resolution}, up={self.up}, "
                f"conv={self.conv is not None}")


class StyleGAN1Block(torch.nn.Module):
    """One resolution: two layers (``epi0`` + ``conv1`` on the constant at 4x4; ``conv0`` (up) + ``conv1``
    above) and the resolution's ToRGB (1x1, equalised lr, bias, linear)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
            self.epi0 = StyleGAN1Layer(out_channels, out_channels, w_dim, resolution, conv=False)
        else:
            self.conv0 = StyleGAN1Layer(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = StyleGAN1Layer(out_channels, out_channels, w_dim, resolution)
        self.torgb = Conv2dLayer(out_channels, img_channels, kernel_size=1)

    def layers(self) -> List[StyleGAN1Layer]:
        return [self.epi0 if self.in_channels == 0 else self.conv0, self.conv1]

    def noise_layers(self) -> List[NoiseInput]:
        return [layer.noise for layer in self.layers()]

    def forward(self, x: Optional[torch.Tensor], ws: torch.Tensor, noise_mode: str = "random",
                noise: Sequence[Optional[torch.Tensor]] = (None, None)) -> torch.Tensor:
        assert ws.ndim == 3 and ws.shape[1] == 2, f"block {self.resolution} needs 2 ws, got {list(ws.shape)}"
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        first, second = self.layers()
        x = first(x, ws[:, 0], noise_mode, noise[0])
        return second(x, ws[:, 1], noise_mode, noise[1])

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}"


# ----------------------------------------------------------------------------------------------------------------
# Synthesis network and generator


class StyleGAN1Synthesis(BlockwiseSynthesis):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R]; layer l reads ws[:, l]. Noise inputs, in order:
    b4.epi0, b4.conv1, b8.conv0, b8.conv1, ...

    ``noise`` (optional): one explicit map per entry of ``noise_layers()``, each [N or 1, 1, res, res]; it
    overrides ``noise_mode``. ``lod`` (optional) overrides the stored level of detail (see the module docstring);
    layers above the current resolution are not evaluated (their ws and noise are ignored).
    """

    def __init__(self, config: StyleGAN1Config):
        super().__init__(config)
        for res in self.block_resolutions:
            in_channels = config.channels(res // 2) if res > 4 else 0
            setattr(self, f"b{res}", StyleGAN1Block(in_channels, config.channels(res), config.w_dim, res,
                                                    config.img_channels))
        self.num_ws = 2 * len(self.block_resolutions)
        assert self.num_ws == config.num_ws
        self.register_buffer("lod", torch.zeros([]))

    def set_lod(self, lod: float) -> None:
        lod_to_stage(lod, self.img_resolution)  # range check
        self.lod.fill_(float(lod))

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", noise: Optional[Sequence[torch.Tensor]] = None,
                fused_modconv: Optional[bool] = None, lod: Optional[float] = None) -> torch.Tensor:
        """``fused_modconv`` is accepted for interface compatibility with StyleGAN2 and ignored."""
        del fused_modconv
        assert ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.w_dim), (
            f"ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if noise is not None and len(noise) != self.num_ws:
            raise ValueError(f"expected {self.num_ws} noise maps, got {len(noise)}")
        r, alpha = lod_to_stage(float(self.lod) if lod is None else lod, self.img_resolution)
        x = img_lo = None
        for i, block in enumerate(self.blocks()):
            if block.resolution > r:
                break
            block_noise = noise[2 * i: 2 * i + 2] if noise is not None else (None, None)
            x = block(x, ws[:, 2 * i: 2 * i + 2], noise_mode, block_noise)
            if alpha < 1 and block.resolution == r // 2:
                img_lo = block.torgb(x)
        img = getattr(self, f"b{r}").torgb(x)
        if img_lo is not None:
            img = torch.lerp(_nearest_up(img_lo, 2), img, alpha)
        return _nearest_up(img, self.img_resolution // r)


class StyleGAN1Generator(Generator):
    """Mapping network + AdaIN synthesis network (StyleGAN Fig. 1b); the interface of
    :class:`stylegan.generator.Generator` (whose ``fused_modconv`` the AdaIN synthesis ignores)."""

    synthesis_class = StyleGAN1Synthesis

    def __init__(self, config: StyleGAN1Config):
        if not isinstance(config, StyleGAN1Config):
            raise ConfigError(f"StyleGAN1Generator needs a StyleGAN1Config, got {type(config).__name__}")
        super().__init__(config)

    def set_lod(self, lod: float) -> None:
        self.synthesis.set_lod(lod)


# ----------------------------------------------------------------------------------------------------------------
# Discriminator with progressive growing


class StyleGAN1Discriminator(Discriminator):
    """The 'orig' (PGGAN-style) :class:`~stylegan.discriminator.Discriminator` plus a fromRGB (1x1, lrelu) at every
    resolution below R (``fromrgb{res}``, 4 included) for progressive growing.

    ``forward(img, lod=None)`` takes R x R images; at lod > 0 it box-filters them to r x r, starts at the
    fromRGB of r and, during a transition, blends with the fromRGB of r/2 applied to the 2x box-filtered image:
    ``x_{r/2} = lerp(fromrgb_{r/2}(down(img_r)), block_r(fromrgb_r(img_r)), alpha)`` (PGGAN Fig. 2).
    'resnet' also works; 'skip' reads the image at every block and is refused.
    """

    def __init__(self, config: DiscriminatorConfig):
        if config.architecture == "skip":
            raise ConfigError("StyleGAN1Discriminator supports the 'orig' (config A) and 'resnet' architectures")
        super().__init__(config)
        for res in [r for r in self.block_resolutions + [4] if r < self.img_resolution]:
            setattr(self, f"fromrgb{res}", Conv2dLayer(config.img_channels, config.channels(res), kernel_size=1,
                                                           activation="lrelu", conv_clamp=config.conv_clamp))
        self.register_buffer("lod", torch.zeros([]))

    def set_lod(self, lod: float) -> None:
        lod_to_stage(lod, self.img_resolution)
        self.lod.fill_(float(lod))

    def _enter(self, img_r: torch.Tensor, r: int) -> torch.Tensor:
        """Features entering resolution r's block (or the epilogue at 4) from an r x r image."""
        if r == self.img_resolution:
            x, _ = getattr(self, f"b{r}")(None, img_r)
            return x
        x = getattr(self, f"fromrgb{r}")(img_r)
        if r > 4:
            x, _ = getattr(self, f"b{r}")(x, None)
        return x

    def forward(self, img: torch.Tensor, lod: Optional[float] = None) -> torch.Tensor:
        R = self.img_resolution
        assert img.ndim == 4 and img.shape[1:] == (self.img_channels, R, R), (
            f"images must be [N, {self.img_channels}, {R}, {R}], got {list(img.shape)}")
        r, alpha = lod_to_stage(float(self.lod) if lod is None else lod, R)
        if r == R and alpha == 1:
            return super().forward(img)
        img_r = _box_down(img, R // r)
        x = self._enter(img_r, r)
        if alpha < 1:
            y = getattr(self, f"fromrgb{r // 2}")(_box_down(img_r, 2))
            x = torch.lerp(y, x, alpha)
        # x now holds features at resolution r/2 (or the 4x4 input of the epilogue when r == 4)
        for res in self.block_resolutions:
            if res <= r // 2:
                x, _ = getattr(self, f"b{res}")(x, None)
        return self.b4(x, None)


# ----------------------------------------------------------------------------------------------------------------
# Registration in our file format


def _register() -> None:
    register_arch(ArchSpec(name="stylegan1", generator_config=StyleGAN1Config, generator=StyleGAN1Generator,
                           discriminator_config=DiscriminatorConfig, discriminator=StyleGAN1Discriminator))


_register()
