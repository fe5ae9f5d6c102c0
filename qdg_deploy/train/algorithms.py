"""Training algorithms, DomainBed style: one short class each, `update()` and `predict()` (by name: train/methods.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import build_model
from ..quant import get_scheme, is_quantized, quantize_model

def scheme_from_hparams(hp: dict):
    return get_scheme(hp["scheme"], bits=hp.get("bits"), act_bits=hp.get("act_bits"),
                      quantizer=hp.get("quantizer"))


class Algorithm(nn.Module):
    """A network plus how it learns. `minibatches` is a list of (x, y), one per training domain."""

    name = "base"
    quantizes = False  # whether the selected model must be a quantized one

    def __init__(self, input_shape, num_classes: int, num_domains: int, hparams: dict):
        super().__init__()
        self.hparams = hparams
        self.num_classes = num_classes
        self.network = build_model(hparams["arch"], input_shape[0], num_classes, hparams.get("weights"))
        self.optimizer = self.make_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])

    def update(self, minibatches, step: int, unlabeled=None) -> dict:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.hparams.get("freeze_bn"):  # SWAD-style frozen BatchNorm statistics
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def is_selectable(self, step: int) -> bool:
        """Whether the checkpoint at `step` may be selected (a quantizing method selects quantized ones)."""
        return not self.quantizes or is_quantized(self.network)

    def step_optimizer(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


class ERM(Algorithm):
    name = "erm"
    def update(self, minibatches, step, unlabeled=None):
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        loss = F.cross_entropy(self.predict(x), y)
        self.step_optimizer(loss)
        return {"loss": loss.item()}


class QTDoG(ERM):
    name = "qtdog"
    """ERM whose network becomes the quantized network after `q_steps` float steps.

    Unlike the reference code, the optimizer is rebuilt at the conversion so that the quantized
    weights and the learned step sizes keep training (what the paper describes).
    """

    quantizes = True

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.scheme = scheme_from_hparams(hparams)
        if hparams["q_steps"] <= 0:
            self.quantize()

    def quantize(self):
        quantize_model(self.network, self.scheme)
        self.optimizer = self.make_optimizer()

    def update(self, minibatches, step, unlabeled=None):
        if step == self.hparams["q_steps"] and not is_quantized(self.network):
            self.quantize()
        return super().update(minibatches, step)
