"""Pure-PyTorch building blocks of StyleGAN2 (Karras et al. 2020, App. B).

* Equalised learning rate (ProGAN §4.1): weights are stored as N(0, 1) / lr_multiplier and scaled at run time by
  ``lr_multiplier / sqrt(fan_in)``.
* FIR resampling with the separable binomial filter [1, 3, 3, 1] (StyleGAN §2 / StyleGAN2 App. B): up-sampling
  inserts zeros, pads and low-pass filters with gain 4; down-sampling filters and keeps every second pixel.
* Bias + leaky ReLU (slope 0.2) with gain sqrt(2), and optional clamping of the result (``conv_clamp``).

Everything here works on NCHW tensors of any floating dtype and on any device; there are no compiled kernels.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)
LRELU_SLOPE = 0.2

Padding = Union[int, Sequence[int]]


# ----------------------------------------------------------------------------------------------------------------
# Activation


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, activation: str = "linear", gain: float = 1.0,
             clamp: Optional[float] = None) -> torch.Tensor:
    """Add a per-channel bias (dim 1), apply the activation, multiply by ``gain`` and clamp to +-``clamp``.

    For ``'lrelu'`` the caller passes the full gain (sqrt(2) times any extra gain), as in StyleGAN2.
    """
    if b is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + b.to(x.dtype).reshape(shape)
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    elif activation != "linear":
        raise ValueError(f"unknown activation {activation!r}")
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def default_gain(activation: str) -> float:
    return SQRT2 if activation == "lrelu" else 1.0


# ----------------------------------------------------------------------------------------------------------------
# FIR filtering


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """The separable low-pass filter as a 1-D tensor normalised to sum 1 (the 2-D kernel is its outer product)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return f / f.sum()


def _parse_padding(padding: Padding) -> Tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    px0, px1, py0, py1 = padding
    return px0, px1, py0, py1


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding: Padding = 0,
              gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with the separable FIR filter ``f`` (1-D), downsample by striding.

    ``padding`` is (x0, x1, y0, y1) applied after up-sampling; negative values crop. ``gain`` scales the 2-D
    filter (``up**2`` keeps the signal level when up-sampling).
    """
    N, C, H, W = x.shape
    if up > 1:
        x = x.reshape(N, C, H, 1, W, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(N, C, H * up, W * up)
    px0, px1, py0, py1 = _parse_padding(padding)
    if C >= DEPTHWISE_MIN_CHANNELS:
        # A depthwise convolution (groups=C) with the 2-D filter, padding and striding included: one pass over
        # the activations, forward and backward. On CPU 3.5-5x faster than the shifted multiply-adds below at
        # 128 channels (f+b of [1, 128, 65, 65]: 6.9 against 25.5 ms; [16, 128, 65, 65]: 243 against 915 ms).
        same = px0 == px1 == py0 == py1 and px0 >= 0
        if not same and any((px0, px1, py0, py1)):
            x = _pad_or_crop(x, px0, px1, py0, py1)
        taps = f.detach().to(x.dtype).flip(0) * math.sqrt(gain)
        k = taps.numel()
        kernel = (taps[:, None] * taps[None, :]).flip([0, 1]).reshape(1, 1, k, k).expand(C, 1, k, k)
        return F.conv2d(x, kernel, stride=down, padding=px0 if same else 0, groups=C)
    if any((px0, px1, py0, py1)):
        x = _pad_or_crop(x, px0, px1, py0, py1)
    # Few channels (an RGB skip image): the separable filter as a few shifted multiply-adds per axis (true
    # convolution, flipped taps), faster there than a convolution.
    taps = (f.detach().flip(0).double() * math.sqrt(gain)).tolist()
    y = _fir1d(_fir1d(x, taps, dim=3), taps, dim=2)
    if down > 1:
        y = y[:, :, ::down, ::down]
    return y


#: From this many channels on, upfirdn2d filters with a depthwise convolution (below: shifted multiply-adds).
DEPTHWISE_MIN_CHANNELS = 16


def _pad_or_crop(x: torch.Tensor, px0: int, px1: int, py0: int, py1: int) -> torch.Tensor:
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    return x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]


def _fir1d(x: torch.Tensor, taps: Sequence[float], dim: int) -> torch.Tensor:
    """Valid 1-D cross-correlation of ``x`` along ``dim`` with constant ``taps``."""
    k = len(taps)
    n = x.shape[dim] - k + 1
    if n <= 0:
        raise ValueError(f"input of size {x.shape[dim]} is smaller than the {k}-tap filter")
    if all(abs(taps[i] - taps[k - 1 - i]) <= 1e-12 * abs(taps[i]) for i in range(k)):
        # Symmetric taps (the binomial filters): pair the mirrored samples first, half the multiplies.
        y = None
        for i in range(k // 2):
            pair = x.narrow(dim, i, n) + x.narrow(dim, k - 1 - i, n)
            y = pair * taps[i] if y is None else torch.add(y, pair, alpha=taps[i])
        if k % 2:
            y = torch.add(y, x.narrow(dim, k // 2, n), alpha=taps[k // 2])
        return y
    y = x.narrow(dim, 0, n) * taps[0]
    for i in range(1, k):
        y = torch.add(y, x.narrow(dim, i, n), alpha=taps[i])
    return y


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """2x FIR up-sampling: zeros at odd positions, pad (2, 1) for a 4-tap filter, filter with gain 4."""
    fw = f.numel()
    p0 = (fw + up - 1) // 2
    p1 = (fw - up) // 2
    return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2) -> torch.Tensor:
    """2x FIR down-sampling: pad (1, 1) for a 4-tap filter, filter, keep every second pixel."""
    fw = f.numel()
    p0 = (fw - down + 1) // 2
    p1 = (fw - down) // 2
    return upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))


# ----------------------------------------------------------------------------------------------------------------
# Convolution with resampling


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1, down: int = 1,
                    padding: int = 0, groups: int = 1) -> torch.Tensor:
    """Convolution (PyTorch cross-correlation layout, ``w`` is [O, I/groups, k, k]) combined with FIR resampling.

    * ``up == 2``: transposed convolution with stride 2 (kernel axes swapped, not flipped), pad, FIR with gain 4;
      a 1x1 kernel instead up-samples first and convolves after.
    * ``down == 2``: pad, FIR, then a stride-2 convolution (a 1x1 kernel: FIR and striding, then the convolution).

    ``padding`` is the padding of the plain convolution (``k // 2`` keeps the size); the output is
    ``H * up // down``.
    """
    O, Ig, kh, kw = w.shape
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample does one resampling step at a time")
    if f is None:
        raise ValueError("resampling needs a FIR filter")
    fw = f.numel()
    if down > 1:
        p0 = padding + (fw - down + 1) // 2
        p1 = padding + (fw - down) // 2
        if kw == 1:
            x = upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))
            return F.conv2d(x, w, groups=groups)
        x = upfirdn2d(x, f, padding=(p0, p1, p0, p1))
        return F.conv2d(x, w, stride=down, groups=groups)
    if kw == 1:
        return F.conv2d(upsample2d(x, f, up=up), w, groups=groups)
    # Transposed convolution: conv_transpose2d expects [I, O/groups, k, k]; swap the axes within each group.
    wt = w.reshape(groups, O // groups, Ig, kh, kw).transpose(1, 2).reshape(groups * Ig, O // groups, kh, kw)
    x = F.conv_transpose2d(x, wt, stride=up, groups=groups)
    # (H-1)*up + k pixels come out; pad so that the FIR leaves H*up (one pixel each side for k = 3, 4 taps).
    p0 = padding + (fw + up - 1) // 2 - (kw - 1)
    p1 = padding + (fw - up) // 2 - (kw - up)
    return upfirdn2d(x, f, padding=(p0, p1, p0, p1), gain=up * up)


# ----------------------------------------------------------------------------------------------------------------
# Equalised-learning-rate layers (ProGAN §4.1, StyleGAN2 App. B)


class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalised learning rate: y = act(x @ (W * lr_mul / sqrt(in)).T + b * lr_mul)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 2 and x.shape[1] == self.in_features, f"expected [N, {self.in_features}], got {list(x.shape)}"
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return bias_act(x, b, self.activation, gain=default_gain(self.activation))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(torch.nn.Module):
    """Convolution with equalised learning rate, optional FIR up/down-sampling, bias, activation and clamp.

    ``forward(x, gain)`` multiplies the activation's gain by ``gain`` (the residual branches use sqrt(1/2)) and
    clamps to +-``conv_clamp * gain``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, conv_clamp: Optional[float] = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = default_gain(activation)
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == self.in_channels, (
            f"expected [N, {self.in_channels}, H, W], got {list(x.shape)}")
        w = self.weight.to(x.dtype) * self.weight_gain
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
                f"up={self.up}, down={self.down}")


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps): the 'pixel norm' StyleGAN applies to z before the mapping network."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()
