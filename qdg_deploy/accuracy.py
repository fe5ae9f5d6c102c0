"""Evaluation shared by train, export verify and bench: batches, accuracy, per-domain accuracy, the progress bar."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .data.splits import Splits
from .device import module_device


def iter_batches(dataset: Dataset, batch_size: int = 256, workers: int = 0):
    """Yield (x, y) batches in order; in-memory TensorDatasets are sliced directly."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[:2]
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]
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


def correct_torch(predict, batch_size: int = 256):
    """A counter for a torch predictor (a module, or a callable on tensors): dataset -> (correct, total)."""

    def count(dataset: Dataset) -> tuple[int, int]:
        if len(dataset) == 0:
            return 0, 0
        logits, y = predictions(predict, dataset, batch_size)
        return int((logits.argmax(1) == y).sum()), len(y)

    return count


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


def _ratio(c: int, n: int) -> float:
    return c / n if n else float("nan")


def domain_scores(count, data: Splits, training_in: bool = True) -> dict[str, dict[str, tuple[int, int]]]:
    """The one per-domain accuracy: (correct, total) per domain and part ("in", "out"), counted by
    `count(dataset)`. The held-out domain is counted on both parts (all of it); a training domain on its `out`
    part (validation), and on its `in` part too with `training_in`."""
    return {
        s.name: {
            part: count(d)
            for part, d in (("in", s.in_eval), ("out", s.out_eval))
            if part == "out" or training_in or i == data.test
        }
        for i, s in enumerate(data.domains)
    }


def _test_and_val(scores: dict, data: Splits) -> tuple[float, float]:
    """The held-out domain's accuracy over all of it; the mean of the training domains' `out` accuracies."""
    held = scores[data.heldout.name]
    test_acc = _ratio(sum(c for c, _ in held.values()), sum(n for _, n in held.values()))
    val = [_ratio(*scores[name]["out"]) for name in data.training_names]
    return test_acc, (sum(val) / len(val) if val else float("nan"))


def domain_metrics(predict, data: Splits, batch_size: int = 256) -> dict:
    """A run's metrics.json figures (torch predictor): per-domain in/out accuracy, the held-out domain's accuracy
    over all of it, and the validation accuracy (mean `out` accuracy of the training domains) — DomainBed's
    training-domain validation."""
    scores = domain_scores(correct_torch(predict, batch_size), data)
    test_acc, val_acc = _test_and_val(scores, data)
    per_domain = {d: {"in_acc": _ratio(*p["in"]), "out_acc": _ratio(*p["out"])} for d, p in scores.items()}
    return {"per_domain": per_domain, "test_env": data.heldout.name, "test_acc": test_acc, "val_acc": val_acc}


def domain_counts(predict, data: Splits, batch: int, fixed_batch: int | None = None) -> dict:
    """bench's record of the same figures (numpy predictor, training domains on their `out` part only): per
    domain {acc, n, split, held_out}; plus test_env, test_acc and val_acc."""
    scores = domain_scores(lambda d: count_correct(predict, d, batch, fixed_batch), data, training_in=False)
    test_acc, val_acc = _test_and_val(scores, data)
    per_domain = {}
    for d, parts in scores.items():
        held = d == data.heldout.name
        c, n = sum(c for c, _ in parts.values()), sum(n for _, n in parts.values())
        per_domain[d] = {"acc": _ratio(c, n), "n": n, "split": "all" if held else "out", "held_out": held}
    return {"test_env": data.heldout.name, "per_domain": per_domain, "test_acc": test_acc, "val_acc": val_acc}


def make_progress(console: Console | None = None, transient: bool = False, elapsed: bool = False) -> Progress:
    """The progress bar every verb shows: time remaining, or (elapsed=True, for runs of unknown length) elapsed."""
    clock = TimeElapsedColumn() if elapsed else TimeRemainingColumn()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        clock,
        console=console,
        transient=transient,
    )
