"""One splits object (training / validation / held-out per domain) and one per-domain accuracy."""

import pytest
import torch

from qdg_deploy.accuracy import domain_counts, domain_metrics
from qdg_deploy.data import Splits, split_domains
from qdg_deploy.data.base import TensorDGDataset


def _data(test=1):
    g = torch.Generator().manual_seed(0)
    tensors = [(torch.rand(n, 2, 3, 3, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (20, 30, 10)]
    ds = TensorDGDataset("toy", ["a", "b", "c"], ["x", "y", "z"], tensors)
    return Splits(ds, split_domains(ds, 0.3, 0), test)


def test_training_validation_and_heldout():
    data = _data(test=1)
    assert data.heldout.name == "b" and data.training_names == ["a", "c"]
    assert list(data.validation()) == ["a", "c"]
    assert len(data.heldout_data()) == 30  # all of it: in + out
    sets = data.scored_sets()
    assert list(sets) == ["heldout:b", "out:a", "out:c"] and len(sets["out:a"]) == 6
    assert [len(v) for v in data.scored_sets(max_samples=5).values()] == [5, 5, 3]


class _Net(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :3] * torch.tensor([1.0, 2.0, 3.0])


def test_metrics_and_bench_counts_are_the_same_figures():
    data, net = _data(test=2), _Net()
    m = domain_metrics(net, data, batch_size=4)
    c = domain_counts(lambda x: net(torch.from_numpy(x)).numpy(), data, batch=4, fixed_batch=None)
    assert m["test_env"] == c["test_env"] == "c"
    assert m["test_acc"] == pytest.approx(c["test_acc"]) and m["val_acc"] == pytest.approx(c["val_acc"])
    for d in ("a", "b"):
        assert m["per_domain"][d]["out_acc"] == pytest.approx(c["per_domain"][d]["acc"])
        assert c["per_domain"][d]["split"] == "out" and not c["per_domain"][d]["held_out"]
    assert c["per_domain"]["c"] == {"acc": pytest.approx(m["test_acc"]), "n": 10, "split": "all", "held_out": True}
    # the held-out accuracy over all of it, counted by hand
    x = torch.cat([data.heldout.in_eval.tensors[0], data.heldout.out_eval.tensors[0]])
    y = torch.cat([data.heldout.in_eval.tensors[1], data.heldout.out_eval.tensors[1]])
    assert m["test_acc"] == pytest.approx((net(x).argmax(1) == y).float().mean().item())
