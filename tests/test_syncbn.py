"""`train --sync-bn`'s BatchNorm (train/syncbn.py): 2 gloo processes compute one BatchNorm over the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp
from torch import nn

from qdg_deploy.errors import QdgError
from qdg_deploy.models import build_model
from qdg_deploy.quant import get_scheme, quantize_model
from qdg_deploy.quant.norms import FoldedBatchNorm2d
from qdg_deploy.train import resolve_hparams
from qdg_deploy.train.syncbn import GlobalBatchNorm, sync_note, synced, use_sync_bn


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))


def _rank(rank: int, port: int, x: torch.Tensor, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    td.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        net = _net().train()
        part = x[rank * 4 : (rank + 1) * 4].clone().requires_grad_()
        with synced(net):
            kinds = {type(m) for m in net.modules()}
            out = net(part)
        (out.pow(2).mean() / 2).backward()  # this rank's share of the global batch's mean
        grads = {n: p.grad for n, p in net.named_parameters()}
        for g in grads.values():
            td.all_reduce(g)
        arrays = {n: t.detach().numpy() for n, t in net.named_buffers()}  # by value: this process ends first
        queue.put(
            (
                rank,
                out.detach().numpy(),
                part.grad.numpy(),
                {n: g.numpy() for n, g in grads.items()},
                arrays,
                GlobalBatchNorm in kinds,
                type(net[1]) is nn.BatchNorm2d,
            )
        )
    finally:
        td.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_compute_the_whole_batchs_batchnorm():
    x = torch.randn(8, 3, 6, 6) * 3 + 1
    ref = _net().train()
    xr = x.clone().requires_grad_()
    out = ref(xr)
    out.pow(2).mean().backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_rank, args=(r, port, x, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {r[0]: r[1:] for r in (queue.get(), queue.get())}
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    got = torch.cat([torch.from_numpy(results[r][0]) for r in range(2)])
    assert (got - out.detach()).abs().max() < 1e-5  # the global batch's normalization, not each half's
    grad_x = torch.cat([torch.from_numpy(results[r][1]) for r in range(2)])
    assert (grad_x - xr.grad).abs().max() < 1e-6 * xr.grad.abs().max()
    for r in range(2):
        _, _, grads, buffers, swapped, restored = results[r]
        grads, buffers = ({k: torch.from_numpy(v) for k, v in d.items()} for d in (grads, buffers))
        assert swapped and restored  # stand-ins inside `synced`, the network's own BatchNorm after it
        for n, p in ref.named_parameters():
            if n != "0.bias":  # a conv bias before BatchNorm has no gradient (both are round-off)
                assert (grads[n] - p.grad).abs().max() <= 1e-5 * p.grad.abs().max(), n
        for n, b in ref.named_buffers():
            assert torch.allclose(buffers[n].to(b.dtype), b, rtol=1e-6, atol=1e-7), n


def test_synced_swaps_the_batchnorms_of_a_quantized_network_and_puts_the_same_objects_back():
    net = build_model("digits-resnet", 1, 10)
    quantize_model(net, get_scheme("trt"))
    before = dict(net.named_modules())
    folded = [m for m in before.values() if type(m) is FoldedBatchNorm2d]
    plain = [m for m in before.values() if type(m) is nn.BatchNorm2d]
    assert folded  # the snapped convs fold their BatchNorm: those are found too
    net.train()
    with synced(net):
        inside = dict(net.named_modules())
        assert not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, GlobalBatchNorm)
            for m in inside.values()
        )
        assert sum(isinstance(m, GlobalBatchNorm) for m in inside.values()) == len(folded) + len(plain)
        twin = next(m for m in inside.values() if isinstance(m, GlobalBatchNorm))
        orig = before[next(n for n, m in inside.items() if m is twin)]
        assert twin.weight is orig.weight and twin.running_var is orig.running_var
        net(torch.randn(4, 1, 28, 28))  # one process: plain BatchNorm (nothing to synchronize)
    after = dict(net.named_modules())
    assert after.keys() == before.keys() and all(after[n] is m for n, m in before.items())
    with synced(net.eval()):  # eval: nothing is swapped
        assert all(m is before[n] for n, m in net.named_modules())


def test_when_it_synchronizes(monkeypatch):
    bn, gn = build_model("digits-resnet", 1, 10), build_model("mnist-cnn", 1, 10)
    hp = resolve_hparams("rotated-mnist", method="qtdog")
    assert hp["sync_bn"] is None and not use_sync_bn(bn, hp, 1) and sync_note(bn, hp, 1) is None
    assert use_sync_bn(bn, hp, 2) and "global batch" in sync_note(bn, hp, 2)
    assert not use_sync_bn(bn, {**hp, "sync_bn": False}, 2) and "--no-sync-bn" in sync_note(
        bn, {**hp, "sync_bn": False}, 2
    )
    frozen = {**hp, "freeze_bn": True, "sync_bn": True}
    assert not use_sync_bn(bn, frozen, 2) and "frozen, nothing to synchronize" in sync_note(bn, frozen, 2)
    assert not use_sync_bn(gn, hp, 2) and "no BatchNorm" in sync_note(gn, {**hp, "arch": "mnist-cnn"}, 2)
    with pytest.raises(QdgError, match="--sync-bn applies to --method"):
        resolve_hparams("rotated-mnist", method="coral", sync_bn=True)
