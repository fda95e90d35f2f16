"""The StyleGAN2 discriminator (StyleGAN2 §4.1, Fig. 7c: 'resnet' for configs E/F; 'skip' and 'orig' too).

Blocks from the image resolution down to 8x8 (two 3x3 convolutions, the second FIR-down-sampling by 2), then an
epilogue at 4x4 with the minibatch standard deviation layer (ProGAN §3), a 3x3 conv and two dense layers.
Parameter names follow NVIDIA's stylegan2-ada-pytorch (``b32.fromrgb``, ``b4.fc`` ...).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .config import DiscriminatorConfig
from .ops import Conv2dLayer, FullyConnectedLayer, downsample2d, setup_filter


class DiscriminatorBlock(torch.nn.Module):
    """One resolution: (fromrgb) -> conv0 (3x3) -> conv1 (3x3, down 2). 'resnet' adds a 1x1 down-sampling skip
    branch without bias, both branches times sqrt(1/2); 'skip' reads a down-sampled copy of the image at every
    block through its own fromrgb."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 architecture: str = "resnet", conv_clamp: Optional[float] = None):
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation="lrelu",
                                       conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation="lrelu", down=2,
                                 conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2)

    def forward(self, x: Optional[torch.Tensor],
                img: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.in_channels == 0 or self.architecture == "skip":
            assert img is not None and img.shape[1:] == (self.img_channels, self.resolution, self.resolution), (
                f"expected images [N, {self.img_channels}, {self.resolution}, {self.resolution}], "
                f"got {None if img is None else list(img.shape)}")
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class MinibatchStdLayer(torch.nn.Module):
    """Minibatch standard deviation (ProGAN §3), as StyleGAN2 uses it.

    The batch is split into groups of G = min(group_size, N) samples *strided* through the batch (sample i is in
    group i mod N/G). For each group: the population std over its G members of every feature (plus 1e-8 inside
    the root), averaged over channels and pixels, per block of C/num_channels channels; appended as extra
    constant feature maps.
    """

    def __init__(self, group_size: Optional[int], num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        G = min(self.group_size, N) if self.group_size is not None else N
        if N % G:
            raise ValueError(f"batch size {N} must be divisible by the minibatch-std group size {G}")
        F_ = self.num_channels
        c = C // F_
        y = x.reshape(G, -1, F_, c, H, W)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, F_, 1, 1)
        y = y.repeat(G, 1, H, W)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(torch.nn.Module):
    """4x4 head: (fromrgb for 'skip') -> minibatch std -> 3x3 conv -> fc (lrelu) -> out (one logit)."""

    def __init__(self, in_channels: int, resolution: int, img_channels: int, architecture: str = "resnet",
                 mbstd_group_size: Optional[int] = 4, mbstd_num_channels: int = 1,
                 conv_clamp: Optional[float] = None):
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.architecture = architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation="lrelu")
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: torch.Tensor, img: Optional[torch.Tensor]) -> torch.Tensor:
        assert x.shape[1:] == (self.in_channels, self.resolution, self.resolution), (
            f"expected [N, {self.in_channels}, {self.resolution}, {self.resolution}], got {list(x.shape)}")
        if self.architecture == "skip":
            x = x + self.fromrgb(img)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        return self.out(x)


class Discriminator(torch.nn.Module):
    """img [N, C, R, R] -> logits [N, 1]."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.block_resolutions = config.block_resolutions
        for res in self.block_resolutions:
            in_channels = config.channels(res) if res < config.img_resolution else 0
            block = DiscriminatorBlock(in_channels, config.channels(res), config.channels(res // 2), res,
                                       config.img_channels, architecture=config.architecture,
                                       conv_clamp=config.conv_clamp)
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(config.channels(4), 4, config.img_channels, architecture=config.architecture,
                                        mbstd_group_size=config.mbstd_group_size,
                                        mbstd_num_channels=config.mbstd_num_channels, conv_clamp=config.conv_clamp)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        R = self.img_resolution
        assert img.ndim == 4 and img.shape[1:] == (self.img_channels, R, R), (
            f"images must be [N, {self.img_channels}, {R}, {R}], got {list(img.shape)}")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img)
        return self.b4(x, img)
