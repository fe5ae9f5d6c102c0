"""Data parallel training under torchrun: DistributedDataParallel, NCCL on GPUs and gloo on the CPU.

`qdg-deploy train …` run by `torchrun --nproc-per-node N` finds WORLD_SIZE / RANK / LOCAL_RANK in its environment.
Every rank draws the same global batch of each domain (same seeds) and keeps its own slice of it, so the global batch
is the one asked for and N processes compute what one would (up to the order of float sums in the all-reduce).
Only rank 0 evaluates, selects, averages (SWAD) and writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch import nn

from ..errors import QdgError


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
        raise QdgError(f"under torchrun, --method {hp['method']} does not train data parallel (its loss calls the "
                       f"network in parts); methods that do: {', '.join(DDP_METHODS)}")
    if hp["batch_size"] % world:
        raise QdgError(f"--batch-size {hp['batch_size']} does not split into {world} equal per-rank slices: "
                       f"use a multiple of {world}")
    if str(hp["test_env"]) == "all":
        raise QdgError("under torchrun, give one --test-env (launch one torchrun per held-out domain)")


def init_dist(device_type: str) -> Dist:
    """Join the process group torchrun set up (NCCL for CUDA, gloo for the CPU); SINGLE outside torchrun."""
    world = world_size()
    if world == 1:
        return SINGLE
    if not td.is_initialized():
        td.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(td.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


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
