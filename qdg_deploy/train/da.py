"""Unsupervised domain adaptation baselines: DANN (gradient reversal) and DSAN (local MMD).

Labelled source batches arrive as `minibatches` (one domain), the unlabelled target batch as
`unlabeled`. The network that is selected, saved and exported is the classifier network
(`features` + `fc`); the domain discriminator (DANN) lives beside it and is not saved.

* DANN: a discriminator MLP (feature -> 256 -> 2) behind a gradient-reversal layer with coefficient
  2 / (1 + exp(-10 p)) - 1, p = step / steps; loss = source class + source domain + target domain CE.
* DSAN: loss = source class CE + lmmd_weight * (2 / (1 + exp(-10 p)) - 1) * LMMD(source, target features),
  LMMD weighted by source one-hot labels and target softmax predictions over the classes both batches
  share, with five Gaussian kernels (bandwidth multiplier 2), as DSAN does. lmmd_weight = 0.3
  (the AlignQ README's `--param 0.3`).

`--quant` quantizes the network (scheme / quantizer from the hyperparameters) after `q_steps` float
steps, or from the first step when the run starts from `--init`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..errors import QdgError
from ..quant import is_quantized, quantize_model
from .algorithms import Algorithm, scheme_from_hparams


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -ctx.coeff * g, None


def grl_coeff(progress: float) -> float:
    """2 / (1 + e^(-10 p)) - 1: 0 at the start, -> 1 at the end of training."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def split_network(net: nn.Module):
    """(featurizer, classifier head, feature dimension) of a classifier network."""
    if callable(getattr(net, "features", None)) and isinstance(getattr(net, "fc", None), nn.Linear):
        return net.features, net.fc, net.fc.in_features
    if isinstance(net, torchvision.models.ResNet):

        def features(x):
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
            return torch.flatten(net.avgpool(x), 1)

        return features, net.fc, net.fc.in_features
    raise QdgError(f"{type(net).__name__} has no features()/fc split for domain adaptation")


def gaussian_kernels(a: torch.Tensor, b: torch.Tensor, mul: float = 2.0, num: int = 5) -> torch.Tensor:
    total = torch.cat([a, b])
    l2 = torch.cdist(total, total).pow(2)
    n = total.shape[0]
    bw = l2.detach().sum() / max(n * n - n, 1) / (mul ** (num // 2))
    bw = bw.clamp_min(1e-12)
    return sum(torch.exp(-l2 / (bw * mul**i)) for i in range(num))


def lmmd(fs: torch.Tensor, ft: torch.Tensor, ys: torch.Tensor, pt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Local MMD between source features (labels ys) and target features (softmax predictions pt)."""
    ns = fs.shape[0]
    s = F.one_hot(ys, num_classes).float()
    s = s / s.sum(0).clamp_min(1.0)
    t = pt.detach()
    t = t / t.sum(0).clamp_min(1e-12)
    common = torch.zeros(num_classes, device=fs.device)
    present = set(ys.tolist()) & set(pt.argmax(1).tolist())
    if not present:
        return fs.sum() * 0.0
    common[list(present)] = 1.0
    s, t = s * common, t * common
    k = gaussian_kernels(fs, ft)
    w_ss, w_tt, w_st = s @ s.t(), t @ t.t(), s @ t.t()
    loss = (w_ss * k[:ns, :ns]).sum() + (w_tt * k[ns:, ns:]).sum() - 2 * (w_st * k[:ns, ns:]).sum()
    return loss / len(present)


class DannAligner(nn.Module):
    def __init__(self, feat_dim: int, num_classes: int, hidden: int = 256):
        super().__init__()
        self.disc = nn.Sequential(nn.Linear(feat_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, fs, ft, ys, logits_t, progress):
        c = grl_coeff(progress)
        ds = self.disc(GradReverse.apply(fs, c))
        dt = self.disc(GradReverse.apply(ft, c))
        loss_s = F.cross_entropy(ds, torch.zeros(len(fs), dtype=torch.long, device=ds.device))
        loss_t = F.cross_entropy(dt, torch.ones(len(ft), dtype=torch.long, device=dt.device))
        return loss_s + loss_t, {"dom_src": loss_s.item(), "dom_tgt": loss_t.item()}


class LmmdAligner(nn.Module):
    def __init__(self, feat_dim: int, num_classes: int, weight: float = 0.3):
        super().__init__()
        self.num_classes, self.weight = num_classes, weight

    def forward(self, fs, ft, ys, logits_t, progress):
        loss = lmmd(fs, ft, ys, F.softmax(logits_t, dim=1), self.num_classes)
        return self.weight * grl_coeff(progress) * loss, {"lmmd": loss.item()}


ALIGNERS = {"dann": DannAligner, "dsan": LmmdAligner}


class DomainAdaptation(Algorithm):
    """Shared DA machinery; `da` picks the alignment loss. Subclasses add losses / gradient hooks."""

    da = "dann"

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.featurize, self.head, feat_dim = split_network(self.network)
        kind = hparams.get("da") or self.da
        if kind not in ALIGNERS:
            raise QdgError(f"unknown domain-adaptation network {kind!r}; available: {', '.join(ALIGNERS)}")
        kwargs = {"weight": hparams.get("lmmd_weight", 0.3)} if kind == "dsan" else {}
        self.aligner = ALIGNERS[kind](feat_dim, num_classes, **kwargs)
        self.quantizes = self.wants_quant()
        self.scheme = scheme_from_hparams(hparams) if self.quantizes else None
        self.q_at = 0 if hparams.get("init") else hparams.get("q_steps", 0)
        if self.quantizes and self.q_at <= 0:
            self.quantize()
        else:
            self.optimizer = self.make_optimizer()

    def wants_quant(self) -> bool:
        return bool(self.hparams.get("quant"))

    def quantize(self) -> None:
        quantize_model(self.network, self.scheme)
        self.replaced()
        self.featurize, self.head, _ = split_network(self.network)
        self.optimizer = self.make_optimizer()

    def extra_loss(self) -> tuple[torch.Tensor | float, dict]:
        return 0.0, {}

    requires_target = True  # False: without --source/--target, train on the labelled domains only

    def update(self, minibatches, step, unlabeled=None):
        if unlabeled is None and self.requires_target:
            raise QdgError(f"{self.name} is a domain-adaptation method: give --source and --target")
        if self.quantizes and step >= self.q_at and not is_quantized(self.network):
            self.quantize()
        xs = torch.cat([x for x, _ in minibatches])
        ys = torch.cat([y for _, y in minibatches])
        progress = step / max(self.hparams["steps"], 1)
        with self.autocast():
            fs = self.featurize(xs)
            loss_cls = F.cross_entropy(self.head(fs), ys)
            if unlabeled is None:  # single-domain / leave-one-domain-out training: no alignment term
                loss_align, info = 0.0, {}
            else:
                ft = self.featurize(unlabeled)
                loss_align, info = self.aligner(fs, ft, ys, self.head(ft), progress)
            extra, extra_info = self.extra_loss()
            loss = loss_cls + loss_align + extra
        self.step_optimizer(loss)
        return {"loss": loss.item(), "cls": loss_cls.item(), **info, **extra_info}


class DANN(DomainAdaptation):
    name = "dann"
    da = "dann"

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, {**hparams, "da": "dann"})


class DSAN(DomainAdaptation):
    name = "dsan"
    da = "dsan"

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, {**hparams, "da": "dsan"})
