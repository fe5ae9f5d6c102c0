"""Accuracy of a prediction function over a data set, fast for in-memory tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset


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
    """(logits, labels) for the whole data set."""
    outs, ys = [], []
    for x, y in iter_batches(dataset, batch_size):
        outs.append(predict(x).float())
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
