"""Settings that are process-wide (torch's thread count) come back after the code that changed them, and caches
live no longer than the call that filled them (in-process callers: tests, sweeps, the Python API)."""

import torch
from PIL import Image

from qdg_deploy.bench import core as bench_core
from qdg_deploy.device import torch_threads


def test_torch_threads_restores_the_previous_count():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    try:
        with torch_threads(other):
            raise KeyError
    except KeyError:
        pass
    assert torch.get_num_threads() == before
    with torch_threads(None):  # not asked: left alone
        assert torch.get_num_threads() == before


def test_training_sets_its_threads_inside_train_one_only():
    """train_one sets hp["threads"] through torch_threads (restored on return), not with a bare set_num_threads."""
    import inspect

    from qdg_deploy.train import loop

    src = inspect.getsource(loop)
    assert "torch.set_num_threads" not in src
    assert 'torch_threads(hp.get("threads"))' in inspect.getsource(loop.train_one)


def _tree(root):
    for d, classes in {"a": ["cat", "dog"], "b": ["dog", "kitty"]}.items():
        for c in classes:
            (root / d / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(root / d / c / f"{i}.png")
    return root


def test_bench_splits_are_keyed_by_the_class_map_and_live_for_one_call(tmp_path):
    root = _tree(tmp_path / "data")
    hp = {"dataset": f"folder:{root}", "image_size": 8, "holdout_fraction": 0.5, "seed": 0}
    one = {"hparams": {**hp, "class_map": {"b": {"kitty": "cat"}}}, "test_env_index": 0}
    two = {"hparams": {**hp, "class_map": {"a": {"cat": "kitty"}}}, "test_env_index": 0}
    cache: dict = {}
    a, b = bench_core._splits(one, cache), bench_core._splits(two, cache)
    assert len(cache) == 2 and a.ds.classes == ["cat", "dog"] and b.ds.classes == ["dog", "kitty"]
    assert bench_core._splits(one, cache).domains is a.domains  # the same data set again: read once
    assert not hasattr(bench_core, "_SPLITS")  # no module-level cache outlives a call
