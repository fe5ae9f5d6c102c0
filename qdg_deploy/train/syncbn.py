"""`train --sync-bn`: under torchrun, BatchNorm normalizes with the global batch's statistics, as one process does.

Each rank holds batch_size / N rows of every batch; a plain BatchNorm normalizes them with their own mean and variance,
so N processes train another network than one process at the same global batch. Synchronized, the training forward
uses the statistics of the whole global batch, and its backward carries their gradient across the ranks.

Scope: the network keeps its own BatchNorm modules. Only the training forward (`synced`, around DDP's forward) runs
with stand-ins that share their Parameters and buffers; evaluation, SWAD's BatchNorm recompute (rank 0 alone),
quantization's layer swap and BatchNorm folding (its plans hold the BatchNorm objects), checkpoints, the run
directory and export see the plain modules, so the saved network is the one a run without it would save.

torch 2.14's torch.nn.SyncBatchNorm refuses CPU tensors ("SyncBatchNorm expected input tensor to be on GPU"), and
its statistics kernels are GPU ones. The stand-in is a SyncBatchNorm subclass: on a GPU it runs torch's forward
(NCCL); on the CPU (gloo) it sums each channel's values and squared deviations on every rank and all-reduces the
sums, which gives the global batch's mean and biased variance; the all-reduce's backward all-reduces the gradients,
as torch's SyncBatchNorm backward does."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as td
from torch import nn

from ..quant.norms import FoldedBatchNorm2d
from ..quant.swap import recast, replace_module

# The BatchNorm classes whose training forward is plain BatchNorm (a folded one normalizes in training as usual).
SYNCABLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, FoldedBatchNorm2d)


class AllReduceSum(torch.autograd.Function):
    """The sum over ranks; its gradient is the sum over ranks of the gradients (each rank's loss reads the sum)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = x.clone()
        td.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad):
        g = grad.contiguous().clone()
        td.all_reduce(g, group=ctx.group)
        return g, None


class GlobalBatchNorm(nn.SyncBatchNorm):
    """SyncBatchNorm that also runs on CPU tensors over gloo (see the module docstring)."""

    def forward(self, x):
        group = self.process_group or td.group.WORLD
        if not (
            self.training
            and x.device.type == "cpu"
            and td.is_available()
            and td.is_initialized()
            and td.get_world_size(group) > 1
        ):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        # float64 sums: the global statistics then do not depend on how the batch is split (to float32 precision)
        local = torch.cat([xf.sum(dims, dtype=torch.float64), xf.new_full((1,), x.numel() // c, dtype=torch.float64)])
        total = AllReduceSum.apply(local, group)
        count = total[c].detach()
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(count)} in all")
        mean = total[:c] / count
        d = xf - mean.to(xf.dtype).reshape(shape)
        var = AllReduceSum.apply((d * d).sum(dims, dtype=torch.float64), group) / count
        rstd = torch.rsqrt(var + self.eps).to(xf.dtype)
        y = d * rstd.reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running(mean.detach(), var.detach() * count / (count - 1))
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """What F.batch_norm does to the buffers in training (in place: they are the network's own)."""
        self.num_batches_tracked.add_(1)
        f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
        self.running_var.mul_(1 - f).add_(unbiased_var.to(self.running_var.dtype), alpha=f)


def has_batchnorm(net: nn.Module) -> bool:
    return any(type(m) in SYNCABLE for m in net.modules())


def use_sync_bn(net: nn.Module, hp: dict, world: int) -> bool:
    """Whether the training forward synchronizes BatchNorm: under torchrun, not opted out (--no-sync-bn), BatchNorm
    statistics not frozen, and the network has BatchNorm."""
    return world > 1 and hp.get("sync_bn") is not False and not hp.get("freeze_bn") and has_batchnorm(net)


def sync_note(net: nn.Module, hp: dict, world: int) -> str | None:
    """The log line of a torchrun launch about BatchNorm synchronization (None in one process)."""
    if world == 1:
        return None
    if not has_batchnorm(net):
        return f"{hp['arch']} has no BatchNorm: nothing to synchronize across the {world} ranks"
    if hp.get("freeze_bn"):
        return (
            f"--freeze-bn: BatchNorm statistics are frozen, nothing to synchronize across the {world} ranks "
            f"(no SyncBatchNorm)"
        )
    if hp.get("sync_bn") is False:
        return f"--no-sync-bn: each of the {world} ranks normalizes with its own slice's BatchNorm statistics"
    return f"SyncBatchNorm: BatchNorm statistics of the global batch across the {world} ranks (--no-sync-bn: per rank)"


@contextmanager
def synced(net: nn.Module, on: bool = True):
    """Within: every training-mode BatchNorm of `net` replaced by a GlobalBatchNorm sharing its Parameters and
    buffers; on exit the original modules are back (the same objects)."""
    swaps = [(n, m) for n, m in net.named_modules() if n and type(m) in SYNCABLE and m.training] if on else []
    for name, m in swaps:
        twin = recast(m, GlobalBatchNorm)
        twin.process_group = None  # the whole world
        replace_module(net, name, twin)
    try:
        yield
    finally:
        for name, m in swaps:
            replace_module(net, name, m)
