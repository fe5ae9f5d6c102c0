"""Data parallel training under torchrun (gloo on the CPU): 2 processes give 1 process's weights."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from qdg_deploy.errors import QdgError
from qdg_deploy.train import resolve_hparams

# MNIST-CNN normalizes with GroupNorm (per sample), so a rank's forward on its slice computes exactly what one process
# computes on those rows: with BatchNorm, per-rank batch statistics would differ from the global batch's (SyncBatchNorm
# would be needed). W8A8 (trt) so activation quantizers take LSQ's init from the first quantized batch (gathered,
# then broadcast). SGD: Adam divides by sqrt(v), which turns round-off in near-zero gradients into whole lr steps.
ARGS = [
    "train",
    "--arch",
    "mnist-cnn",
    "--method",
    "qtdog",
    "--scheme",
    "trt",
    "--optimizer",
    "sgd",
    "--test-env",
    "75",
    "--steps",
    "8",
    "--q-steps",
    "3",
    "--checkpoint-freq",
    "4",
    "--batch-size",
    "8",
    "--threads",
    "1",
    "--swad-bn-steps",
    "2",
]
# The two runs differ only in the order of float sums: the all-reduce adds two half-batch gradients where one process
# sums the whole batch. That is ~1e-7 relative per gradient, more where per-sample terms cancel, and a few 8-bit codes
# that sit on a rounding boundary flip; measured 9e-5 (max |w| difference over every tensor, 8 steps). A wrong shard
# (one rank's rows only, or each rank another batch) moves weights by ~1.5e-2 here.
TOLERANCE = 5e-4


def torchrun(*args) -> subprocess.CompletedProcess:
    """`train ...` under torchrun with 2 gloo processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "qdg_deploy.cli",
        *map(str, args),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def worst_difference(one, two) -> float:
    """The largest |difference| over every float tensor of two runs' weights (integer tensors must be equal)."""
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if not a[k].is_floating_point())
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = run_cli(*ARGS, "--out", one)
    assert r.returncode == 0, r.stderr
    torchrun(*ARGS, "--out", two)
    assert sorted(p.name for p in two.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    device = json.loads((two / "config.json").read_text())["device"]
    assert device["world_size"] == 2 and device["sync_bn"] is False  # GroupNorm: nothing to synchronize
    worst = worst_difference(one, two)
    assert worst <= TOLERANCE, worst


def test_torchrun_refusals(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for kwargs, words in [
        (dict(method="coral"), "--method coral"),
        (dict(batch_size=7), "multiple of 2"),
        (dict(test_env="all"), "one --test-env"),
        (dict(device="cuda:1"), "cuda:LOCAL_RANK"),
    ]:
        with pytest.raises(QdgError, match=words):
            resolve_hparams("rotated-mnist", **{"method": "erm", "test_env": "0", **kwargs})


# The default network, digits-resnet, normalizes with BatchNorm: a rank's forward on its slice would use that slice's
# statistics. --sync-bn (the default under torchrun) normalizes with the global batch's, so 2 ranks give one process's
# weights within the GroupNorm run's tolerance (measured 7.9e-5, in a recomputed running variance; the parameters
# 3e-6); --no-sync-bn shows what it fixes (measured 0.13). Float ERM with SWAD, so SWAD's BatchNorm recompute (rank 0
# alone, on the global batches) is compared too. Float, not W8A8: in a BatchNorm network a quantizer code that flips
# at a rounding boundary moves a whole channel's statistics; one process run with --threads 2 instead of 1 (another
# summation order only) already differs by 1e-2 from itself after 8 W8A8 QT-DoG steps.
BN_ARGS = [
    "train",
    "--arch",
    "digits-resnet",
    "--method",
    "erm",
    "--swad",
    "--optimizer",
    "sgd",
    "--test-env",
    "75",
    "--steps",
    "4",
    "--checkpoint-freq",
    "4",
    "--batch-size",
    "8",
    "--threads",
    "1",
    "--swad-bn-steps",
    "2",
]


@pytest.mark.slow
def test_sync_bn_gives_one_process_weights_on_the_default_batchnorm_network(tmp_path):
    one, synced, plain = tmp_path / "one", tmp_path / "sync", tmp_path / "plain"
    r = run_cli(*BN_ARGS, "--out", one)
    assert r.returncode == 0, r.stderr
    r = torchrun(*BN_ARGS, "--sync-bn", "--out", synced)
    assert "SyncBatchNorm: BatchNorm statistics of the global batch across the 2 ranks" in r.stderr
    torchrun(*BN_ARGS, "--no-sync-bn", "--out", plain)
    assert json.loads((synced / "config.json").read_text())["device"]["sync_bn"] is True
    assert json.loads((plain / "config.json").read_text())["device"]["sync_bn"] is False
    assert json.loads((synced / "metrics.json").read_text())["averaging"]["bn_recomputed"] > 0
    with_sync, without = worst_difference(one, synced), worst_difference(one, plain)
    assert with_sync <= TOLERANCE, with_sync
    assert without > TOLERANCE and without > 20 * with_sync, (without, with_sync)


@pytest.mark.slow
def test_a_sync_bn_run_saves_plain_batchnorm_and_exports_exactly(tmp_path):
    """W8A8 QT-DoG on digits-resnet under torchrun (sync on by default): its BatchNorms are folded into the quantized
    convs after the swap. The saved network loads in one process, its export agrees with it on every sample, and it
    is the file a run recorded as trained without --sync-bn, at the same weights, exports."""
    from qdg_deploy.export import export_run_dir

    run = tmp_path / "run"
    r = torchrun(
        "train",
        "--arch",
        "digits-resnet",
        "--method",
        "qtdog",
        "--scheme",
        "trt",
        "--optimizer",
        "sgd",
        "--test-env",
        "75",
        "--steps",
        "4",
        "--q-steps",
        "2",
        "--checkpoint-freq",
        "2",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--swad-bn-steps",
        "2",
        "--out",
        run,
    )
    assert "SyncBatchNorm" in r.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["device"]["sync_bn"] is True and config["hparams"]["sync_bn"] is None  # the default
    report = export_run_dir(run, target="tensorrt", max_samples=40)
    assert report["top1_agreement"] == 1.0
    same = tmp_path / "same"
    shutil.copytree(run, same)
    config["device"].update(world_size=1, sync_bn=False)
    config["hparams"]["sync_bn"] = False
    (same / "config.json").write_text(json.dumps(config))
    (same / "model.onnx").unlink()
    export_run_dir(same, target="tensorrt", verify=False)
    assert (same / "model.onnx").read_bytes() == (run / "model.onnx").read_bytes()
