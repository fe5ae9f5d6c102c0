"""Endless random minibatches, on the training device, resumable and sharded across data-parallel ranks.

Each batch is `batch_size` indices drawn with replacement from the stream's own generator (DomainBed's
InfiniteDataLoader draws the same way). The generator is the whole sampler state: a resumed run draws (and discards)
the indices of the batches it already used, without loading them, and continues where the killed run was. Under
torchrun every rank draws the same indices and loads only its slice (`Dist.shard`)."""

from __future__ import annotations

import signal

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..device import move_batch, pin
from .dist import SINGLE, Dist


class IndexBatches:
    """The endless index batches of a stream (this rank's slice of each), after skipping `skip` batches."""

    def __init__(self, n: int, batch_size: int, seed: int, part: slice, skip: int = 0):
        self.n, self.batch_size, self.part = n, batch_size, part
        self.g = torch.Generator().manual_seed(seed)
        for _ in range(skip):
            self.draw()

    def draw(self) -> torch.Tensor:
        return torch.randint(self.n, (self.batch_size,), generator=self.g)

    def __iter__(self):
        while True:
            yield self.draw()[self.part].tolist()


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops them: a terminal's SIGINT reaches the whole
    process group and would otherwise interrupt each worker wherever it is (start-up included), with its traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def infinite_batches(
    dataset,
    batch_size: int,
    seed: int,
    workers: int = 0,
    *,
    dist: Dist = SINGLE,
    device: torch.device = torch.device("cpu"),
    channels_last: bool = False,
    skip: int = 0,
):
    """Endless (x, y) batches of `dataset` on `device`; in-memory TensorDatasets are indexed directly, folder data
    sets load through DataLoader workers (into pinned memory when the device is a GPU)."""
    indices = IndexBatches(len(dataset), batch_size, seed, dist.shard(batch_size), skip)
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[:2]
        while True:
            idx = indices.draw()[indices.part]
            yield move_batch((pin(x[idx], device), pin(y[idx], device)), device, channels_last)
    # Its own generator: the loader's base seed (the workers' RNG seeds) then comes from the stream's seed, and
    # starting the loader draws nothing from the global RNG (which a resumed run restores from last.ckpt).
    loader = DataLoader(
        dataset,
        batch_sampler=indices,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=ignore_sigint if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )
    batches = iter(loader)
    try:
        for batch in batches:
            yield move_batch(batch, device, channels_last)
    finally:  # closed by the loop (or at a Ctrl-C / failure): the workers stop now, not at garbage collection
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
