"""Training algorithms, DomainBed style: one short class each, `update()` and `predict()`, found by name."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..calibrate.core import calibrate_model
from ..device import autocast, place_model, to_device
from ..models import build_model
from ..quant import Quantizer, get_scheme, is_quantized, quant_layers, quantize_model
from .dist import SINGLE, Dist, wrap
from .syncbn import synced, use_sync_bn


def scheme_from_hparams(hp: dict):
    return get_scheme(hp["scheme"], bits=hp.get("bits"), act_bits=hp.get("act_bits"), quantizer=hp.get("quantizer"))


def lr_scale(hp: dict, step: int) -> float:
    """`lr_schedule` "step": the AlignQ reference's MultiStepLR (gamma 0.1 at epochs 80 and 120 of 100) as fractions
    of the run, i.e. x0.1 from 80 % of `steps` (120 % lies past the end); "none": 1."""
    return 0.1 if hp.get("lr_schedule") == "step" and step >= 0.8 * hp["steps"] else 1.0


def quantizer_params(module: nn.Module) -> list[nn.Parameter]:
    """The parameters the quantizers own (LSQ step sizes, learned zero points)."""
    return [p for m in module.modules() if isinstance(m, Quantizer) for p in m.parameters(recurse=False)]


class Algorithm(nn.Module):
    """A network plus how it learns. `minibatches` is a list of (x, y), one per training domain, on `device`."""

    name = "base"
    quantizes = False  # whether the selected model must be a quantized one
    # Where it trains (`place`): the device, autocast (--amp), channels-last, the data-parallel group.
    device = torch.device("cpu")
    amp = "off"
    channels_last = False
    dist = SINGLE
    scaler = None  # fp16: the gradient scaler
    # Under torchrun: DistributedDataParallel over `network` (set by `replaced`, with object.__setattr__ so that it
    # stays out of the module tree and the state dict); None in one process.
    ddp = None
    sync_bn = False  # under torchrun: the training forward normalizes with the global batch's statistics (syncbn.py)

    def __init__(self, input_shape, num_classes: int, num_domains: int, hparams: dict):
        super().__init__()
        self.hparams = hparams
        self.num_classes = num_classes
        self.network = build_model(
            hparams["arch"],
            input_shape[0],
            num_classes,
            hparams.get("weights"),
            pretrained=bool(hparams.get("pretrained")),
        )
        self.optimizer = self.make_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam, or SGD with momentum (`optimizer`); the quantizers' step sizes and zero points in a group of their
        own at `q_lr` (Adam moves every parameter by about its learning rate per step, whatever the gradient's
        scale, so step sizes of ~1e-3 need a smaller rate than the weights), without weight decay."""
        hp = self.hparams
        qids = {id(p) for p in quantizer_params(self)}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in qids]
        if hp.get("optimizer") == "sgd":
            opt = torch.optim.SGD(rest, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
        else:
            opt = torch.optim.Adam(rest, lr=hp["lr"], weight_decay=hp["weight_decay"])
        self.add_quantizer_group(opt)
        return opt

    def schedule_lr(self, step: int) -> None:
        """Set every group's rate for `step` (`lr_scale`), from the rate it was created with."""
        scale = lr_scale(self.hparams, step)
        for group in self.optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * scale

    def add_quantizer_group(self, opt: torch.optim.Optimizer) -> None:
        params = [p for p in quantizer_params(self) if p.requires_grad]
        if params:
            lr = self.hparams.get("q_lr") or self.hparams["lr"] / 100
            opt.add_param_group({"params": params, "lr": lr, "weight_decay": 0.0})

    def place(self, device: torch.device, amp: str = "off", channels_last: bool = False, dist: Dist = SINGLE):
        """Move to `device` (parameters keep their identity, so the optimizer keeps them) and wrap the network in
        DistributedDataParallel under torchrun."""
        self.device, self.amp, self.channels_last, self.dist = device, amp, channels_last, dist
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        self.sync_bn = use_sync_bn(self.network, self.hparams, dist.world)
        self.replaced()

    def replaced(self) -> None:
        """After `place` or a layer swap: every module on the device, and a DDP wrapper over the current parameters
        (kept out of the module tree: the state dict stays the network's)."""
        place_model(self, self.device, self.channels_last)
        object.__setattr__(self, "ddp", wrap(self.network, self.dist, self.device))

    def forward_train(self, x: torch.Tensor) -> torch.Tensor:
        """The network's training forward: through DDP (which all-reduces the gradients) when there is one, with
        BatchNorm synchronized across the ranks under `sync_bn`."""
        with synced(self.network, self.sync_bn):
            return (self.ddp or self.network)(x)

    def autocast(self):
        return autocast(self.device, self.amp)

    def update(self, minibatches, step: int, unlabeled=None) -> dict:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(to_device(x, self.device, self.channels_last))

    def extra_state(self) -> dict:
        """State beyond the modules' state dict that a resumed run needs (tensors, numbers)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

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

    def averaging_start(self) -> int:
        """The first step whose iterate weight averaging (SWAD, SMA) may take: a quantizing method averages
        quantized iterates only."""
        return self.hparams.get("q_steps", 0) if self.quantizes and not self.hparams.get("init") else 0

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward() outside autocast; under fp16 the loss scaled (GradScaler)."""
        with torch.autocast(self.device.type, enabled=False):
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips a step whose gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()

    def step_optimizer(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer_step()


class ERM(Algorithm):
    """Empirical risk minimization; with `quant` (`--quant`, what `qtdog` means) the network becomes the quantized
    network after `q_steps` float steps (QT-DoG). The quantizers' parameters then join the optimizer (the float
    weights keep their Adam moments), so quantized weights and step sizes keep training, as the paper describes.
    `freeze_after_swap` reproduces the reference code instead: there the optimizer is not told about the swapped
    layers, so quantized weights and step sizes stop training and only the rest (norm layers, classifier) trains.
    """

    name = "erm"
    calibrate_pending = False  # --q-init other than lsq: calibrate the quantizers at the next update

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.quantizes = bool(hparams.get("quant"))
        self.scheme = scheme_from_hparams(hparams) if self.quantizes else None
        if self.quantizes:  # an op the exporter cannot lower (timm swin's shifted windows) refused before training
            from ..export.supported import check_supported

            check_supported(self.network)
        if self.quantizes and (hparams["q_steps"] <= 0 or hparams.get("init")):
            self.quantize()

    def quantize(self):
        quantize_model(self.network, self.scheme)
        self.replaced()
        self.calibrate_pending = self.hparams.get("q_init", "lsq") != "lsq"
        if self.hparams.get("freeze_after_swap"):
            for m in quant_layers(self.network).values():
                for p in m.parameters():
                    p.requires_grad_(False)
        else:
            self.add_quantizer_group(self.optimizer)

    def maybe_quantize(self, step: int) -> None:
        if self.quantizes and step >= self.hparams["q_steps"] and not is_quantized(self.network):
            self.quantize()

    def loss(self, minibatches) -> tuple[torch.Tensor, dict]:
        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        loss = F.cross_entropy(self.forward_train(x), y)
        return loss, {}

    def update(self, minibatches, step, unlabeled=None):
        self.maybe_quantize(step)
        if self.calibrate_pending or (self.dist.world > 1 and uninitialized(self.network)):
            self.init_quantizers(self.dist.gather(torch.cat([x for x, _ in minibatches])))
        with self.autocast():
            loss, info = self.loss(minibatches)
        self.step_optimizer(loss)
        return {"loss": loss.item(), **info}

    def init_quantizers(self, x: torch.Tensor) -> None:
        """The fresh quantizers' ranges from this step's global batch `x`: --q-init's calibration, or (data parallel)
        LSQ's init from a forward of the whole batch, so every rank starts from the steps one process would have;
        rank 0's then broadcast, identical on every rank whatever the reduction order of their kernels."""
        if self.calibrate_pending:
            q_init = self.hparams["q_init"]
            calibrate_model(self.network, [x], q_init, weight_method="mse" if q_init == "mse" else "minmax")
            self.calibrate_pending = False
        else:
            with torch.no_grad(), keep_buffers(self.network):  # BatchNorm statistics: the training forward's only
                self.network(x)
        self.dist.broadcast(self.network)


def uninitialized(net: nn.Module) -> bool:
    return any(isinstance(m, Quantizer) and not m.initialized for m in net.modules())


@contextmanager
def keep_buffers(net: nn.Module):
    """Undo, on exit, what a forward did to the buffers (BatchNorm statistics; quantizers keep their init flags)."""
    saved = {n: b.clone() for n, b in net.named_buffers() if b.dtype != torch.bool}
    yield
    bufs = dict(net.named_buffers())
    for n, b in saved.items():
        bufs[n].copy_(b)


class QTDoG(ERM):
    """QT-DoG: `erm --quant` (LSQ quantization after `q_steps` float steps; SWAD on by default)."""

    name = "qtdog"

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, {**hparams, "quant": True})
