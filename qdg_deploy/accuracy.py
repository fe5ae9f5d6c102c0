"""Evaluation shared by train, export verify and bench: batches, accuracy, per-domain accuracy, the progress bar."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .device import module_device


def iter_batches(dataset: Dataset, batch_size: int = 256, workers: int = 0):
    """Yield (x, y) batches in order; in-memory TensorDatasets are sliced directly."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[:2]
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
    else:
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


@torch.no_grad()
def predictions(predict, dataset: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) for the whole data set, on the CPU; a module's batches go to its device."""
    where = module_device(predict)
    outs, ys = [], []
    for x, y in iter_batches(dataset, batch_size):
        outs.append(predict(x if where is None else x.to(where, non_blocking=True)).float().cpu())
        ys.append(torch.as_tensor(y))
    return torch.cat(outs), torch.cat(ys)


def accuracy(predict, dataset: Dataset, batch_size: int = 256) -> float:
    if len(dataset) == 0:
        return float("nan")
    logits, y = predictions(predict, dataset, batch_size)
    return (logits.argmax(1) == y).float().mean().item()


def accuracy_and_loss(predict, dataset: Dataset, batch_size: int = 256) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy."""
    if len(dataset) == 0:
        return float("nan"), float("nan")
    logits, y = predictions(predict, dataset, batch_size)
    return (logits.argmax(1) == y).float().mean().item(), F.cross_entropy(logits, y).item()


def domain_metrics(predict, splits, test_index: int) -> dict:
    """Per-domain in/out accuracy, the held-out domain's accuracy over all of it, and the validation
    accuracy (mean `out` accuracy of the training domains) — DomainBed's training-domain validation."""
    per_domain = {s.name: {"in_acc": accuracy(predict, s.in_eval), "out_acc": accuracy(predict, s.out_eval)}
                  for s in splits}
    t = splits[test_index]
    n_in, n_out = len(t.in_eval), len(t.out_eval)
    test_acc = (per_domain[t.name]["in_acc"] * n_in + per_domain[t.name]["out_acc"] * n_out) / (n_in + n_out)
    train = [s.name for i, s in enumerate(splits) if i != test_index]
    val_acc = sum(per_domain[d]["out_acc"] for d in train) / len(train)
    return {"per_domain": per_domain, "test_env": t.name, "test_acc": test_acc, "val_acc": val_acc}


def count_correct(predict, dataset: Dataset, batch: int, fixed_batch: int | None = None) -> tuple[int, int]:
    """(correct, total) of `predict` (float32 NCHW numpy in, logits out) over `dataset`; with `fixed_batch`,
    every call gets exactly that many rows (the last chunk zero-padded, its real rows scored)."""
    correct = total = 0
    for x, y in iter_batches(dataset, fixed_batch or batch):
        x = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        n = len(x)
        if fixed_batch and n < fixed_batch:
            x = np.concatenate([x, np.zeros((fixed_batch - n, *x.shape[1:]), np.float32)])
        logits = np.asarray(predict(x))[:n]
        correct += int((logits.argmax(1) == np.asarray(y)).sum())
        total += n
    return correct, total


def domain_counts(predict, splits, test_index: int, batch: int, fixed_batch: int | None = None) -> dict:
    """Per domain {acc, n, split, held_out}: a training domain on its `out` split (validation), the held-out domain
    on all of it; plus test_env, test_acc and val_acc — bench's record of what `domain_metrics` gives training."""
    per_domain = {}
    for i, s in enumerate(splits):
        held = i == test_index
        c = t = 0
        for part in ([s.in_eval, s.out_eval] if held else [s.out_eval]):
            ci, ti = count_correct(predict, part, batch, fixed_batch)
            c, t = c + ci, t + ti
        per_domain[s.name] = {"acc": c / t if t else float("nan"), "n": t, "split": "all" if held else "out",
                              "held_out": held}
    train = [d for d, r in per_domain.items() if not r["held_out"]]
    test = splits[test_index].name
    return {"test_env": test, "per_domain": per_domain, "test_acc": per_domain[test]["acc"],
            "val_acc": float(np.mean([per_domain[d]["acc"] for d in train])) if train else float("nan")}


def make_progress(console: Console | None = None, transient: bool = False, elapsed: bool = False) -> Progress:
    """The progress bar every verb shows: time remaining, or (elapsed=True, for runs of unknown length) elapsed."""
    clock = TimeElapsedColumn() if elapsed else TimeRemainingColumn()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), clock, console=console, transient=transient)
