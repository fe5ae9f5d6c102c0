import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


def run_cli(*args, timeout=300):
    """Run the real console entry point in a subprocess; returns CompletedProcess."""
    return subprocess.run([sys.executable, "-c", "from qdg_deploy.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run dir, metrics) of a tiny QT-DoG `ort` run on rotated-MNIST's default network (test_train.py,
    test_digits_resnet.py); read-only."""
    from qdg_deploy.train import resolve_hparams, train_one

    out = tmp_path_factory.mktemp("runs") / "qt"
    hp = resolve_hparams("rotated-mnist", method="qtdog", scheme="ort", steps=6, q_steps=2, checkpoint_freq=2,
                         batch_size=8, test_env="75", swad=False)  # selection by validation (SWAD: test_swad.py)
    metrics = train_one(hp, out)
    return out, metrics


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
