"""Resume: a run killed with SIGKILL at three random steps, resumed each time, ends with the unbroken run's weights."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

# QT-DoG (quantized from step 4, SWAD with a short valley) so the checkpoint carries quantizer and SWAD state
ARGS = [
    "train",
    "--method",
    "qtdog",
    "--test-env",
    "75",
    "--steps",
    "16",
    "--q-steps",
    "4",
    "--checkpoint-freq",
    "2",
    "--batch-size",
    "8",
    "--swad-bn-steps",
    "3",
    "--swad-n-converge",
    "2",
    "--swad-n-tolerance",
    "2",
    "--threads",
    "1",
    "--deterministic",
]


def ckpt_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["step"]  # no pickled code: weights_only
    except (OSError, RuntimeError, EOFError, KeyError):
        return 0


# The child: the real CLI, whose checkpoint writer SIGKILLs the process right after it has written the checkpoint of
# step STOP or later. Polling for last.ckpt from here instead raced the run: a fast child could pass STOP and
# finish (a finished run deletes last.ckpt) between two polls.
KILLED_AT = """
import os, signal, sys
import qdg_deploy.train.loop as loop
save, stop = loop.save_checkpoint, int(sys.argv.pop(1))
def save_then_die(path, algo, fit, step, hp):
    save(path, algo, fit, step, hp)
    if step >= stop:
        os.kill(os.getpid(), signal.SIGKILL)
loop.save_checkpoint = save_then_die
from qdg_deploy.cli import main
main()
"""


def kill_after(out: Path, step: int) -> None:
    """Start (or resume) the run and SIGKILL it once it has written its last.ckpt at `step` or later."""
    cmd = [sys.executable, "-c", KILLED_AT, str(step), *ARGS, "--out", str(out), "--resume"]
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()  # killed, not finished or failed


@pytest.mark.slow
def test_kill_and_resume_gives_the_unbroken_weights(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    r = run_cli(*ARGS, "--out", whole)
    assert r.returncode == 0, r.stderr
    assert not (whole / "last.ckpt").exists()  # a finished run keeps no checkpoint
    steps = sorted(random.Random(os.getpid()).sample(range(2, 15, 2), 3))
    for step in steps:
        kill_after(broken, step)
        assert ckpt_step(broken / "last.ckpt") >= step, steps
    r = run_cli(*ARGS, "--out", broken, "--resume")
    assert r.returncode == 0, r.stderr
    a, b = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (k, steps)  # exact: same arithmetic in the same order
    ma, mb = (Path(p / "metrics.json").read_text() for p in (whole, broken))
    assert ma == mb, steps


def test_resume_refuses_other_options(tmp_path, cli):
    out = tmp_path / "run"
    kill_after(out, 2)
    r = cli(*ARGS[:-1], "--lr", "0.01", "--out", out, "--resume")  # --deterministic dropped: allowed
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: --resume:") and "lr" in r.stderr, r.stderr
    r = cli(*ARGS, "--out", out)  # without --resume a killed run's folder is not silently replaced
    assert r.returncode == 2 and "--resume" in r.stderr, r.stderr
    assert (out / "last.ckpt").is_file()
    short = [*ARGS[: ARGS.index("--steps") + 1], "6", *ARGS[ARGS.index("--steps") + 2 :]]  # a new run: any length
    r = run_cli(*short, "--out", out, "--overwrite")  # as its error line says: --overwrite starts anew
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["device"]["resumed_at_step"] is None  # a new run


def test_deterministic_is_restored_after_the_run(tmp_path):
    from qdg_deploy.train import resolve_hparams, train_one

    assert not torch.are_deterministic_algorithms_enabled()
    hp = resolve_hparams(
        "rotated-mnist",
        method="erm",
        test_env="75",
        steps=2,
        checkpoint_freq=2,
        batch_size=8,
        threads=1,
        deterministic=True,
    )
    train_one(hp, tmp_path / "run")
    assert not torch.are_deterministic_algorithms_enabled()  # process-wide: set for the run only
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG")  # what CUDA's deterministic cuBLAS needs (kept for the process)


def test_loader_workers_default():
    from torch.utils.data import TensorDataset

    from qdg_deploy.train.loop import loader_workers

    folder, cpu, gpu = object(), torch.device("cpu"), torch.device("cuda", 0)
    assert loader_workers({}, folder, cpu, 3) == 0  # on the CPU workers compete with the training for the cores
    assert loader_workers({"workers": 2}, folder, cpu, 3) == 2
    assert 1 <= loader_workers({}, folder, gpu, 3) <= max(1, 4 // 3)  # a modest share per stream on a GPU
    assert loader_workers({"workers": 2}, TensorDataset(torch.zeros(1)), gpu, 3) == 0  # in memory: none


def test_discard_checkpoint_takes_a_left_temporary(tmp_path):
    from qdg_deploy.train.loop import discard_checkpoint

    out = tmp_path / "run"
    out.mkdir()
    (out / "last.ckpt").write_bytes(b"x")
    (out / ".last.ckpt.abc123.tmp").write_bytes(b"")  # as an interrupted atomic_path leaves it
    discard_checkpoint(out, fresh=True)
    assert not out.exists()
