import os
import subprocess
import sys
import traceback

import pytest
from PIL import Image


def pytest_configure(config):
    # Under pytest-xdist (make test: -n 2) each worker is one of N processes sharing the cores: the CLI processes the
    # tests start take one torch thread each, as the tests in the workers do (test_export.py sets 1 for the session),
    # instead of each starting one per core.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_cli(*args, timeout=300):
    """Run the real console entry point in a subprocess; returns CompletedProcess. For what needs a process of its
    own: signals, torchrun, a run whose process-wide settings (threads, determinism) must not leak into the tests."""
    return subprocess.run(
        [sys.executable, "-c", "from qdg_deploy.cli import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_here(capsys, *args) -> subprocess.CompletedProcess:
    """Run `qdg-deploy ARGS` through main() in this process, as run_cli does in a child (same exit code, stdout,
    stderr; an exception main lets through is what Python would print: its traceback, exit 1). Refusals cost no
    interpreter start this way."""
    import torch

    import qdg_deploy.cli as C

    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = ["qdg-deploy", *map(str, args)]
    capsys.readouterr()  # what the test printed before is not this command's output
    try:
        C.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)  # --threads sets it process-wide
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["qdg-deploy", *map(str, args)], code, out, err)


@pytest.fixture
def cli(capsys):
    """`cli(*args)`: the in-process run_cli (see cli_here)."""
    return lambda *args: cli_here(capsys, *args)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run dir, metrics) of a tiny QT-DoG `ort` run on rotated-MNIST's default network (test_train.py,
    test_digits_resnet.py); read-only."""
    from qdg_deploy.train import resolve_hparams, train_one

    out = tmp_path_factory.mktemp("runs") / "qt"
    hp = resolve_hparams(
        "rotated-mnist",
        method="qtdog",
        scheme="ort",
        steps=6,
        q_steps=2,
        checkpoint_freq=2,
        batch_size=8,
        test_env="75",
        swad=False,
    )  # selection by validation (SWAD: test_swad.py)
    metrics = train_one(hp, out)
    return out, metrics


@pytest.fixture(scope="session")
def folder_runs(tmp_path_factory):
    """test_bench's folder data set and two tiny QT-DoG `trt` runs on it (seeds 0 and 1, held-out d2), built once:
    test_ensemble's members, test_flatness's run; read-only."""
    from tests.test_bench import write_folder_dataset
    from tests.test_ensemble import tiny_train

    root = tmp_path_factory.mktemp("folder_runs")
    data = write_folder_dataset(root / "data")
    return {"data": data, "runs": {s: tiny_train(root / f"q{s}", data, seed=s) for s in (0, 1)}}


@pytest.fixture
def image_tree(tmp_path):
    """A DomainBed-layout folder: two domains × three classes × 4 small PNGs."""
    root = tmp_path / "tree"
    for d, shade in (("art", 40), ("photo", 200)):
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 255, 0)), ("fox", (0, 0, 255))):
            folder = root / d / c
            folder.mkdir(parents=True)
            for i in range(4):
                px = tuple(min(255, v // 2 + shade // 2 + 5 * i) for v in color)
                Image.new("RGB", (20, 20), px).save(folder / f"{i}.png")
    return root
