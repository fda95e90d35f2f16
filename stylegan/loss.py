"""StyleGAN2 training objective (Karras et al. 2020, App. B; StyleGAN §2 for style mixing).

* Non-saturating logistic generator loss: softplus(-D(G(z))).
* Logistic discriminator loss: softplus(D(G(z))) + softplus(-D(x)).
* R1 regulariser on reals (Mescheder et al. 2018): gamma/2 * ||grad_x D(x)||^2.
* Path-length regulariser (§3.2, Eq. 4): (||J_w^T y||_2 - a)^2 with y ~ N(0, I) / sqrt(H*W), a an exponential
  moving average of the lengths (decay 0.01), lengths = sqrt(mean over layers of the sum over w dims of the
  squared gradient), on a batch shrunk by 2, weight 2.
* Lazy regularisation (§3.1): the regularisers run every k minibatches, multiplied by k; Adam's learning rate
  and betas are corrected by c = k / (k + 1) (see :func:`lazy_adam_hyperparameters`).

All functions return per-sample terms so that tests and logs can see every piece; callers take the mean.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(D(G(z))) = softplus(-D(G(z)))."""
    return F.softplus(-fake_logits)


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log(1 - sigmoid(D(G(z)))) - log sigmoid(D(x)) = softplus(D(G(z))) + softplus(-D(x))."""
    return F.softplus(fake_logits) + F.softplus(-real_logits)


def r1_penalty(real_img: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """||grad_x sum D(x)||^2 per sample (without the gamma/2 factor). ``real_img`` must require grad."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_img, create_graph=True)
    return grad.square().sum(dim=[1, 2, 3])


def path_lengths(img: torch.Tensor, ws: torch.Tensor, pl_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """||J_w^T y|| per sample: the gradient of sum(img * y) w.r.t. ws, y ~ N(0, I)/sqrt(H*W).

    ``ws`` is [N, num_ws, w_dim] and the length is sqrt(mean over layers of the sum over w dims of grad^2).
    The graph is kept (create_graph) so that the penalty can be back-propagated.
    """
    if pl_noise is None:
        pl_noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
    return grad.square().sum(dim=2).mean(dim=1).sqrt()


def update_pl_mean(pl_mean: torch.Tensor, lengths: torch.Tensor, decay: float = 0.01) -> torch.Tensor:
    """a <- a + decay * (mean(lengths) - a), the running target of the path-length penalty."""
    return pl_mean.lerp(lengths.detach().mean().to(pl_mean.dtype), decay)


def path_length_penalty(lengths: torch.Tensor, pl_mean: torch.Tensor) -> torch.Tensor:
    return (lengths - pl_mean.to(lengths.dtype)).square()


def lazy_adam_hyperparameters(lr: float, betas: Tuple[float, float],
                              interval: int) -> Tuple[float, Tuple[float, float]]:
    """Lazy regularisation (StyleGAN2 §3.1): with the regulariser run every ``interval`` steps, Adam's lr and betas
    become lr * c and beta ** c, c = interval / (interval + 1), so the optimiser sees the same effective schedule."""
    if not interval:
        return lr, betas
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)


def style_mix(ws: torch.Tensor, ws2: torch.Tensor, prob: float,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Style-mixing regularisation (StyleGAN §3.1): with probability ``prob`` switch from ws to ws2 at one random
    crossover layer in [1, num_ws) (one crossover for the whole batch, as in NVIDIA's implementation)."""
    num_ws = ws.shape[1]
    if prob <= 0 or num_ws < 2:
        return ws
    device = ws.device
    u = torch.rand([], generator=generator, device=device)
    cutoff = int(torch.randint(1, num_ws, [], generator=generator, device=device))
    if u.item() >= prob:
        return ws
    ws = ws.clone()
    ws[:, cutoff:] = ws2[:, cutoff:]
    return ws


def ema_beta(batch_size: int, ema_kimg: float, cur_nimg: int, ema_rampup: Optional[float] = None) -> float:
    """Decay of the generator EMA for one step: 0.5 ** (batch / ema_nimg), i.e. a half-life of ``ema_kimg``
    thousand images, optionally ramped up as ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    """p_ema <- p + beta * (p_ema - p) for parameters; buffers (w_avg, noise_const) are copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)
