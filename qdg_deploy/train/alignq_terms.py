"""AlignQ's training terms: the gradient approximation and CRP (relation matrices kept close under ADMM).

The DAQ quantizer itself is in quant/daq.py; these act on a network during training only and never reach an export.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.daq import levels, normal_cdf, weight_stats

INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def sigmoid_derivative(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def approx_round_derivative(x: torch.Tensor, n: int, lam: float = 1.0, lam2: float = 4.0) -> torch.Tensor:
    """lam * s'(2 * lam2 * frac(x + n / 2)) for x = n * Phi: frac(n * (Phi + 0.5)), 0 at a rounding edge."""
    return lam * sigmoid_derivative(2.0 * lam2 * torch.frac(x + 0.5 * n))


class ApproxRound(torch.autograd.Function):
    """round(x) (half to even) whose backward is approx_round_derivative instead of the straight-through 1. In
    DAQ's chain rule x = n * Phi(z), so the CDF's density phi enters once, from autograd through Phi."""

    @staticmethod
    def forward(ctx, x, n, lam, lam2):
        ctx.save_for_backward(x)
        ctx.consts = (n, lam, lam2)
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * approx_round_derivative(x, *ctx.consts), None, None, None


def approx_round(lam: float, lam2: float):
    """A DAQ `round_fn` (quant/daq.py) with AlignQ's gradient approximation."""
    return lambda x, n: ApproxRound.apply(x, n, lam, lam2)


@torch.no_grad()
def grad_approx_factor(w: torch.Tensor, bits: int, lam: float = 1.0, lam2: float = 4.0) -> torch.Tensor:
    """`--grad-approx legacy`: lam * s'(2 * lam2 * frac(n * (Phi + 0.5))) * 2 * phi, elementwise over w, multiplied
    into the weight gradient after backward (whose straight-through chain rule already holds phi once).

    Phi is the CDF of w under N(mu, sigma) (the layer's weight statistics), phi the density of that
    normal at w, s' the logistic sigmoid's derivative. frac(n * (Phi + 0.5)) is the position of n * Phi
    inside its rounding bin (for odd n it equals frac(n * Phi + 0.5)): 0 at the bin's lower edge.
    """
    n = levels(bits)
    mu, sigma = weight_stats(w)
    z = (w - mu) / sigma
    phi_cdf = normal_cdf(z)
    density = torch.exp(-0.5 * z * z) * INV_SQRT_2PI / sigma
    return approx_round_derivative(n * phi_cdf, n, lam, lam2) * 2.0 * density


def relation_matrix(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """R(Z) = Zh Zh^T / features with Zh each feature standardized over the batch (unbiased std, eps).

    z: (batch, ...) -> (batch, batch)."""
    z = z.reshape(z.shape[0], -1)
    b = z.shape[0]
    # Standardized by torch's fused batch norm over the batch (biased variance, eps^2 inside the root), the unbiased
    # scale restored on the product: the same matrix up to where eps enters (|diff| ~5e-5), at 0.3x the cost of
    # z.std(dim=0) (forward + backward, 16 x 50176 activations, 1 thread), which dominated an AlignQ + CRP step.
    zh = F.batch_norm(z, None, None, training=True, eps=eps * eps)
    return zh @ zh.t() * ((b - 1) / b / z.shape[1])


def crp_discrepancy(x: torch.Tensor) -> torch.Tensor:
    """D = R(Phi(X)) - R(X) for an activation batch X (standard-normal CDF, as DAQ uses)."""
    return relation_matrix(normal_cdf(x)) - relation_matrix(x)


def admm_loss(d: torch.Tensor, a: torch.Tensor, gamma: torch.Tensor, mu: float = 0.2, rho: float = 0.3) -> torch.Tensor:
    """mu * mean|A| + (rho / 2) * sqrt(mean((D - A)^2)) + mean(Gamma * |D - A|); A, Gamma constants."""
    diff = d - a
    return (
        mu * a.abs().mean() + rho / 2 * torch.sqrt((diff * diff).mean().clamp_min(1e-20)) + (gamma * diff.abs()).mean()
    )


@torch.no_grad()
def admm_update(d: torch.Tensor, gamma: torch.Tensor, mu: float = 0.2, rho: float = 0.3):
    """Closed form: V = D + Gamma / rho; A = max(0, 1 - (mu / rho) / ||V||_F) * V; Gamma += rho (D - A)."""
    v = d + gamma / rho
    norm = torch.linalg.norm(v)
    shrink = (
        torch.clamp(1.0 - (mu / rho) / norm, min=0.0) if norm > 0 else torch.zeros((), dtype=v.dtype, device=v.device)
    )
    a = shrink * v
    return a, gamma + rho * (d - a)


class CrpState:
    """A and Gamma of one activation quantizer (batch x batch); kept outside the network's state dict."""

    def __init__(self, mu: float = 0.2, rho: float = 0.3):
        self.mu, self.rho = mu, rho
        self.a: torch.Tensor | None = None
        self.gamma: torch.Tensor | None = None

    def _ensure(self, b: int, like: torch.Tensor):
        if self.a is None or self.a.shape[0] < b:
            a, g = like.new_zeros(b, b), like.new_zeros(b, b)
            if self.a is not None:  # keep what was learned for the smaller batch
                k = self.a.shape[0]
                a[:k, :k], g[:k, :k] = self.a, self.gamma
            self.a, self.gamma = a, g

    def loss(self, d: torch.Tensor) -> torch.Tensor:
        b = d.shape[0]
        self._ensure(b, d)
        return admm_loss(d, self.a[:b, :b], self.gamma[:b, :b], self.mu, self.rho)

    def update(self, d: torch.Tensor) -> None:
        b = d.shape[0]
        self._ensure(b, d)
        a, g = admm_update(d.detach(), self.gamma[:b, :b], self.mu, self.rho)
        self.a[:b, :b], self.gamma[:b, :b] = a, g


class CrpTerm:
    """The CRP term of one DAQ activation quantizer: while the quantizer trains, a forward pre-hook appends
    D = R(Phi(X)) - R(X) (with its graph) for each input X to `relations`; the algorithm reads and clears it."""

    def __init__(self, quantizer: nn.Module, mu: float = 0.2, rho: float = 0.3):
        self.quantizer, self.state = quantizer, CrpState(mu, rho)
        self.relations: list[torch.Tensor] = []
        self.hook = quantizer.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args) -> None:
        if module.training:
            self.relations.append(crp_discrepancy(args[0]))
