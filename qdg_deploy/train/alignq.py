"""AlignQ (Chen et al.): DAQ quantization + gradient approximation + CRP under ADMM, on a DA network.

    qdg-deploy train --method alignq --source 0 --target 75 --init runs/dann_float [--no-crp] [--bits 4]

* Network: DANN (default) or DSAN (`da="dsan"`), see `da.py`; trained on labelled source and
  unlabelled target batches. With `--init RUN_DIR` the run starts from that run's weights and is
  quantized from the first step (progressive 8 -> 4 -> 3 -> 2: each stage `--init`s the previous one);
  without it, the first `q_steps` steps train the float network. Without --source/--target (the
  reference's single-domain setting, or leave-one-domain-out here) it trains DAQ + gradient
  approximation + CRP on the labelled domains with no alignment loss.
* DAQ (`quant/daq.py`, scheme "alignq"; the terms below: `alignq_terms.py`): every conv's weights, every conv's input except the image;
  the classifier stays float. Weights and activations use the same bits (act_bits defaults to bits);
  activation range `act_range` (2) is stored in each activation quantizer's buffer, so `load_run`
  rebuilds the exact network.
* Gradient approximation (`grad_approx`), on every DAQ-quantized conv weight except the first conv's: "chain"
  (default) replaces round's straight-through derivative by lam * s'(2 lam2 frac(n (Phi + 0.5))) (lam 1,
  lam2 4) inside the chain rule, so the CDF's density phi appears once; "legacy" multiplies the finished
  gradient by that factor times 2 phi (phi twice in all; kept for comparison); "off" for the ablation.
* CRP: for each CRP activation quantizer, D = R(Phi(X)) - R(X) on the source batch and on the target
  batch, loss mu mean|A| + rho/2 sqrt(mean((D - A)^2)) + mean(Gamma |D - A|) added to the task loss
  (mu 0.2, rho 0.3); after the optimizer step A and Gamma get their closed-form update from the step's
  last D (the target batch), as the reference's ADMM module, which keeps the last D it saw.
  Which quantizers: on a torchvision ResNet, the input quantizer of each residual block's first conv
  (the block's input, i.e. the previous block's output); mnist-cnn has no residual blocks, so every
  DAQ activation quantizer (conv2..conv4 inputs, each the output of a ReLU + GroupNorm stage).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from ..quant import quant_layers
from ..quant.daq import is_daq
from ..quant.residual import input_quant
from .alignq_terms import CrpTerm, approx_round, grad_approx_factor
from .da import DomainAdaptation


def crp_quantizers(net: nn.Module) -> dict[str, nn.Module]:
    """name -> DAQ activation quantizer that carries a CRP term (see the module docstring)."""
    blocks = [
        (n, m)
        for n, m in net.named_modules()
        if isinstance(m, (torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck))
    ]
    if blocks:
        found = {f"{n}.conv1": input_quant(m.conv1) for n, m in blocks}
    else:
        found = {n: m.act_quant for n, m in quant_layers(net).items()}
    return {n: q for n, q in found.items() if is_daq(q)}


class AlignQ(DomainAdaptation):
    name = "alignq"
    da = "dann"
    crp: dict[str, CrpTerm] = {}  # set by quantize(): one CRP term per chosen DAQ activation quantizer
    approx_layers: list[nn.Module] = []  # set by quantize(): the layers whose gradients are reshaped
    requires_target = False  # without --source/--target: DAQ + gradient approximation + CRP, no DA loss

    def wants_quant(self) -> bool:
        return True

    @property
    def grad_approx(self) -> str:
        """chain, legacy or off (hparams; a Python True / False from before the modes: chain / off)."""
        mode = self.hparams.get("grad_approx", "chain")
        return mode if isinstance(mode, str) else ("chain" if mode else "off")

    def quantize(self) -> None:
        super().quantize()
        hp = self.hparams
        layers = quant_layers(self.network)
        for m in layers.values():
            if is_daq(m.act_quant):
                m.act_quant.act_range.fill_(float(hp.get("act_range", 2.0)))
        # Gradient approximation: DAQ weights of every quantized conv but the network's first conv.
        first = next(n for n, m in self.network.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        self.approx_layers = [
            m for n, m in layers.items() if n != first and isinstance(m, nn.Conv2d) and is_daq(m.weight_quant)
        ]
        if self.grad_approx == "chain":
            for m in self.approx_layers:
                m.weight_quant.round_fn = approx_round(hp.get("lam", 1.0), hp.get("lam2", 4.0))
        self.crp = {}
        if hp.get("crp", True):
            for name, q in crp_quantizers(self.network).items():
                self.crp[name] = CrpTerm(q, hp.get("mu", 0.2), hp.get("rho", 0.3))

    def extra_loss(self):
        if not self.crp:
            return 0.0, {}
        total = 0.0
        for term in self.crp.values():
            for d in term.relations:
                total = total + term.state.loss(d)
        return total, {"crp": float(total.detach()) if torch.is_tensor(total) else total}

    def step_optimizer(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        if self.grad_approx == "legacy":
            self.reshape_gradients()
        self.optimizer_step()
        for term in self.crp.values():
            if term.relations:
                term.state.update(term.relations[-1])
            term.relations.clear()

    def extra_state(self) -> dict:
        """The ADMM variables of each CRP term (not module state)."""
        return {name: {"a": t.state.a, "gamma": t.state.gamma} for name, t in getattr(self, "crp", {}).items()}

    def load_extra_state(self, state: dict) -> None:
        move = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        for name, s in state.items():
            self.crp[name].state.a, self.crp[name].state.gamma = move(s["a"]), move(s["gamma"])

    @torch.no_grad()
    def reshape_gradients(self):
        hp = self.hparams
        for m in self.approx_layers:
            if m.weight.grad is not None:
                m.weight.grad.mul_(
                    grad_approx_factor(m.weight, m.weight_quant.spec.bits, hp.get("lam", 1.0), hp.get("lam2", 4.0))
                )
