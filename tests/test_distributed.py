"""Data parallel training under torchrun (gloo on the CPU): 2 processes give 1 process's weights."""

import json
import os
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
ARGS = ["train", "--arch", "mnist-cnn", "--method", "qtdog", "--scheme", "trt", "--optimizer", "sgd", "--test-env",
        "75", "--steps", "8", "--q-steps", "3", "--checkpoint-freq", "4", "--batch-size", "8", "--threads", "1",
        "--swad-bn-steps", "2"]
# The two runs differ only in the order of float sums: the all-reduce adds two half-batch gradients where one process
# sums the whole batch. That is ~1e-7 relative per gradient, more where per-sample terms cancel, and a few 8-bit codes
# that sit on a rounding boundary flip; measured 9e-5 (max |w| difference over every tensor, 8 steps). A wrong shard
# (one rank's rows only, or each rank another batch) moves weights by ~1.5e-2 here.
TOLERANCE = 5e-4


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = run_cli(*ARGS, "--out", one)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "qdg_deploy.cli", *ARGS, "--out", str(two)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in two.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    assert json.loads((two / "config.json").read_text())["device"]["world_size"] == 2
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst <= TOLERANCE, worst
    assert all(torch.equal(a[k], b[k]) for k in a if not a[k].is_floating_point())


def test_torchrun_refusals(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for kwargs, words in [(dict(method="coral"), "--method coral"), (dict(batch_size=7), "multiple of 2"),
                          (dict(test_env="all"), "one --test-env"), (dict(device="cuda:1"), "cuda:LOCAL_RANK")]:
        with pytest.raises(QdgError, match=words):
            resolve_hparams("rotated-mnist", **{"method": "erm", "test_env": "0", **kwargs})
