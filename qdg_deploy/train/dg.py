"""Domain-generalization algorithms beside ERM, DomainBed style; each takes `--quant` like ERM (QT-DoG's
"quantization is orthogonal to the algorithm": `coral --quant`, `mixstyle --quant`).

* CORAL (Sun & Saenko 2016, as DomainBed's CORAL): cross-entropy plus `coral_weight` (1) times the mean over pairs
  of training domains of ‖μ_i − μ_j‖² / d + ‖C_i − C_j‖²_F / d² (feature means and unbiased covariances).
  Features of all domains come from one forward of the concatenated batch (DomainBed runs one per domain; the two
  differ only for BatchNorm statistics in training).
* MixStyle (Zhou et al. 2021, as DomainBed's MixStyle): after the early stages the per-sample channel mean and
  standard deviation are mixed with those of a random other sample of the batch (λ ~ Beta(α, α), applied with
  probability p), in training only: in eval — and so in every export — it is the identity. The mixing sits in forward
  hooks on the stages, not in the network, so a run's weights and its rebuilt network are the plain ones.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QdgError
from .algorithms import ERM
from .da import split_network


def coral_penalty(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance of two feature sets' means and covariances, each averaged over its entries."""
    mean_a, mean_b = a.mean(0, keepdim=True), b.mean(0, keepdim=True)
    ca, cb = a - mean_a, b - mean_b
    cov_a = ca.t() @ ca / (len(a) - 1)
    cov_b = cb.t() @ cb / (len(b) - 1)
    return (mean_a - mean_b).pow(2).mean() + (cov_a - cov_b).pow(2).mean()


class CORAL(ERM):
    name = "coral"

    def loss(self, minibatches):
        featurize, head, _ = split_network(self.network)
        sizes = [len(x) for x, _ in minibatches]
        feats = featurize(torch.cat([x for x, _ in minibatches]))
        y = torch.cat([y for _, y in minibatches])
        ce = F.cross_entropy(head(feats), y)
        parts = feats.split(sizes)
        pairs = [(i, j) for i in range(len(parts)) for j in range(i + 1, len(parts))]
        penalty = (
            sum(coral_penalty(parts[i], parts[j]) for i, j in pairs) / len(pairs) if pairs else feats.new_zeros(())
        )
        loss = ce + self.hparams.get("coral_weight", 1.0) * penalty
        return loss, {"ce": ce.item(), "coral": float(penalty.detach())}


def mixstyle(x: torch.Tensor, p: float, alpha: float, eps: float = 1e-6) -> torch.Tensor:
    """Mix each sample's channel statistics with a random other sample's (with probability p per batch)."""
    if x.dim() != 4 or x.shape[0] < 2 or torch.rand(()) > p:
        return x
    mu = x.mean(dim=(2, 3), keepdim=True).detach()
    sig = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt().detach()
    lam = torch.distributions.Beta(alpha, alpha).sample((x.shape[0], 1, 1, 1)).to(x)
    perm = torch.randperm(x.shape[0], device=x.device)
    mu_mix = mu * lam + mu[perm] * (1 - lam)
    sig_mix = sig * lam + sig[perm] * (1 - lam)
    return (x - mu) / sig * sig_mix + mu_mix


def _mix_hook(module: nn.Module, inputs, output, p: float, alpha: float):
    return mixstyle(output, p, alpha) if module.training else output


def mixstyle_points(net: nn.Module) -> list[str]:
    """Where MixStyle mixes: after a ResNet's layer1 and layer2, after the MNIST CNN's first two stages."""
    names = dict(net.named_children())
    for pair in (("layer1", "layer2"), ("bn0", "bn1")):
        if all(n in names for n in pair):
            return list(pair)
    raise QdgError(f"MixStyle does not know where to mix in a {type(net).__name__} (needs layer1/layer2 or bn0/bn1)")


class MixStyle(ERM):
    name = "mixstyle"

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        hook = functools.partial(_mix_hook, p=hparams.get("mixstyle_p", 0.5), alpha=hparams.get("mixstyle_alpha", 0.1))
        modules = dict(self.network.named_children())
        self.hooks = [modules[n].register_forward_hook(hook) for n in mixstyle_points(self.network)]
