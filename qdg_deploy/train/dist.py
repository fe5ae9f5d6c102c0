"""Data parallel training under torchrun: DistributedDataParallel, NCCL on GPUs and gloo on the CPU.

`qdg-deploy train …` run by `torchrun --nproc-per-node N` finds WORLD_SIZE / RANK / LOCAL_RANK in its environment.
Every rank draws the same global batch of each domain (same seeds) and keeps its own slice of it, so the global batch
is the one asked for and N processes compute what one would (up to the order of float sums in the all-reduce), with
two exceptions: MixStyle mixes the statistics of the samples within each rank's slice (its shuffle never crosses
ranks), so its mixing partners differ from one process's; and with --no-sync-bn BatchNorm normalizes each rank's
slice with its own statistics (syncbn.py). Only rank 0 evaluates, selects, averages (SWAD) and
writes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as td
from torch import nn

from ..device import resolve_device
from ..errors import QdgError

# The process group's timeout for a collective: rank 0 evaluates (and writes last.ckpt) every --checkpoint-freq
# steps while the other ranks wait in the next all-reduce; on a large data set that is far longer than NCCL's
# default 10 minutes, which would end the run.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch_size: int) -> slice:
        """This rank's rows of a global batch (equal slices: the all-reduce's mean is then the global batch's)."""
        n = batch_size // self.world
        return slice(self.rank * n, (self.rank + 1) * n)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's slice, in rank order: the global batch (x itself in one process)."""
        if self.world == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        td.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def broadcast(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        if self.world == 1:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                td.broadcast(t.data, 0)


SINGLE = Dist()

# Methods whose loss runs the whole network's forward (what DistributedDataParallel synchronizes gradients on);
# CORAL and the domain-adaptation methods call the network in parts.
DDP_METHODS = ("erm", "qtdog", "mixstyle")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_distributed(hp: dict) -> None:
    """Up-front checks of a torchrun launch (QdgError before anything is read)."""
    world = world_size()
    if world == 1:
        return
    if hp["method"] not in DDP_METHODS or hp.get("source") is not None:
        raise QdgError(
            f"under torchrun, --method {hp['method']} does not train data parallel (its loss calls the "
            f"network in parts); methods that do: {', '.join(DDP_METHODS)}"
        )
    if hp["batch_size"] % world:
        raise QdgError(
            f"--batch-size {hp['batch_size']} does not split into {world} equal per-rank slices: "
            f"use a multiple of {world}"
        )
    if str(hp["test_env"]) == "all":
        raise QdgError("under torchrun, give one --test-env (launch one torchrun per held-out domain)")
    if re.fullmatch(r"cuda:\d+", str(hp.get("device") or "").strip().lower()):
        raise QdgError(
            f"under torchrun, --device {hp['device']}: each rank uses cuda:LOCAL_RANK; give --device cuda or auto"
        )


def init_dist(spec: str | None) -> tuple[Dist, torch.device]:
    """The run's device (`--device` `spec`; under torchrun the process's LOCAL_RANK GPU) and process group (NCCL
    for CUDA, gloo for the CPU); SINGLE outside torchrun."""
    world = world_size()
    if world == 1:
        return SINGLE, resolve_device(spec)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(spec, local_rank=local_rank)
    if device.type == "cuda":  # before NCCL starts: its communicator (and any bare "cuda" tensor) is on this GPU
        torch.cuda.set_device(device)
    if not td.is_initialized():
        td.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return Dist(td.get_rank(), world, local_rank), device


def close_dist(dist: Dist) -> None:
    if dist.world > 1 and td.is_initialized():
        td.destroy_process_group()


def wrap(network: nn.Module, dist: Dist, device: torch.device) -> nn.Module | None:
    """DistributedDataParallel around `network` (None in one process). Built again whenever the network's set of
    parameters changes (quantization swaps layers in)."""
    if dist.world == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids)
