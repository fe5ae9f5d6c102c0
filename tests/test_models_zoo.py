"""Issue 29: torchvision / timm backbones by name, --pretrained through each library's own cache (files made here and
put where the library looks: no mock of the loader), the backbone's input pipeline, ONNX metadata, `models`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from test_bad_inputs import cli, make_tree, one_error_line, snapshot
from torch import nn

from qdg_deploy.errors import QdgError
from qdg_deploy.models import build_model, zoo

SIZE = 32  # folder images are resized to this: tiny, and large enough for every network below


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, offline: nothing is downloaded, whatever the machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def torch_hub_file(name: str, state: dict) -> Path:
    """`state` saved where torch.hub looks for torchvision's DEFAULT weights of `name`: $TORCH_HOME/hub/checkpoints/
    <the file name of the weights' URL> (written here from the URL, not from the code under test)."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def hf_cache_file(repo: str, state: dict) -> Path:
    """`state` as model.safetensors in the Hugging Face hub cache's layout: models--ORG--NAME/refs/main holding a
    commit hash, snapshots/<hash>/model.safetensors."""
    from safetensors.torch import save_file

    folder = Path(os.environ["HF_HUB_CACHE"]) / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    path = folder / "snapshots" / commit / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# ---------------------------------------------------------------- building


def test_short_names_build_what_they_built_before():
    """resnet18 / resnet50 keep their construction (ImageNet builder, then fc and conv1 replaced): same weights
    from the same seed."""
    torch.manual_seed(0)
    net = build_model("resnet18", 1, 5)
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    ref.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    ref.fc = nn.Linear(512, 5)
    assert net.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize(
    "arch",
    [
        "tv:resnet18",
        "tv:mobilenet_v3_small",
        "tv:efficientnet_b0",
        "tv:regnet_y_400mf",
        "tv:mnasnet0_5",
        "tv:shufflenet_v2_x0_5",
        "tv:squeezenet1_1",
        "timm:test_resnet",
        "timm:test_efficientnet",
    ],
)
def test_backbone_takes_the_data_sets_channels_and_classes(arch):
    net = build_model(arch, 1, 5).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, SIZE, SIZE)).shape == (2, 5)
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1


@pytest.mark.parametrize(
    "name, fragments",
    [
        ("tv:nope", ["unknown torchvision model 'tv:nope'", "closest: tv:"]),
        ("tv:resnet5", ["closest: tv:resnet50"]),
        ("timm:nope", ["unknown timm model 'timm:nope'", "closest: timm:"]),
        ("timm:mobilenetv3_large_10", ["closest: timm:mobilenetv3_large_100"]),
        ("nope", ["unknown model 'nope'", "closest:"]),
        ("mobilenet_v3_large", ["tv:mobilenet_v3_large"]),
    ],
)
def test_unknown_names_list_the_closest(name, fragments):
    with pytest.raises(QdgError) as e:
        build_model(name, 3, 5)
    for f in fragments:
        assert f in str(e.value)


# ---------------------------------------------------------------- --pretrained from the libraries' caches


def test_torchvision_pretrained_from_torch_hub_cache(caches):
    ref = torchvision.models.squeezenet1_1().state_dict()  # random values, ImageNet's shapes (1000 classes)
    torch_hub_file("squeezenet1_1", ref)
    net = build_model("tv:squeezenet1_1", 1, 5, pretrained=True)
    own = net.state_dict()
    differ = sorted(k for k in own if not (own[k].shape == ref[k].shape and torch.equal(own[k], ref[k])))
    # the classifier (a 1x1 conv to 1000 classes there) and the stem (3 channels there) keep their own init
    assert differ == ["classifier.1.bias", "classifier.1.weight", "features.0.weight"]
    assert own["classifier.1.weight"].shape[0] == 5 and own["features.0.weight"].shape[1] == 1


def test_timm_pretrained_from_hugging_face_cache(caches):
    import timm

    ref = timm.create_model("test_resnet").state_dict()
    hf_cache_file("timm/test_resnet.r160_in1k", ref)
    net = build_model("timm:test_resnet", 3, 5, pretrained=True)
    own = net.state_dict()
    assert sorted(k for k in own if not (own[k].shape == ref[k].shape and torch.equal(own[k], ref[k]))) == [
        "fc.bias",
        "fc.weight",
    ]
    gray = build_model("timm:test_resnet", 1, 5, pretrained=True).state_dict()
    # timm's own stem adaptation: one channel holds the sum of the RGB filters
    assert torch.allclose(gray["conv1.0.weight"], ref["conv1.0.weight"].sum(1, keepdim=True))
    assert torch.equal(gray["layer1.0.conv1.weight"], ref["layer1.0.conv1.weight"])


def test_pretrained_weights_of_another_architecture_are_refused(caches):
    torch_hub_file("squeezenet1_1", torchvision.models.resnet18().state_dict())
    with pytest.raises(QdgError, match="lacks .* tensors"):
        build_model("tv:squeezenet1_1", 3, 5, pretrained=True)


# ---------------------------------------------------------------- bad input through the CLI (in-process)


def _tree(tmp_path) -> Path:
    return make_tree(tmp_path / "tree", {"art": ("cat", "dog"), "photo": ("cat", "dog")})


TRAIN = [
    "train",
    "--method",
    "erm",
    "--image-size",
    str(SIZE),
    "--steps",
    "1",
    "--batch-size",
    "2",
    "--threads",
    "1",
    "--test-env",
    "photo",
    "--checkpoint-freq",
    "1",
]


@pytest.mark.parametrize(
    "arch, fragments",
    [
        (
            "tv:squeezenet1_1",
            ["--pretrained", "torch's hub cache", "hub/checkpoints", "squeezenet1_1-", "--weights FILE"],
        ),
        (
            "timm:test_resnet",
            [
                "--pretrained",
                "Hugging Face cache",
                "models--timm--test_resnet.r160_in1k",
                "HF_HUB_OFFLINE",
                "--weights FILE",
            ],
        ),
    ],
)
def test_pretrained_offline_without_cache_is_one_line(arch, fragments, caches, capsys):
    tree = _tree(caches)
    ws = caches / "ws"
    ws.mkdir()
    before = snapshot(ws, tree)
    code, _, err = cli(
        capsys, *TRAIN, "--dataset", f"folder:{tree}", "--arch", arch, "--pretrained", "--out", ws / "out"
    )
    assert code == 2
    one_error_line(code, err, fragments, ["Downloading"])
    assert snapshot(ws, tree) == before  # no run directory, nothing else


def test_timm_pretrained_online_setting_without_network_fails_fast(caches, monkeypatch):
    """Not offline, but the hub unreachable (an endpoint nobody listens on): one connection attempt, no retries."""
    import time

    import huggingface_hub  # noqa: F401  (imports are not what is timed)
    import timm  # noqa: F401

    build_model("timm:test_resnet", 3, 5)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(QdgError, match="cannot reach 127.0.0.1:9.*--weights FILE"):
        build_model("timm:test_resnet", 3, 5, pretrained=True)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--arch", "tv:nope"], ["unknown torchvision model 'tv:nope'", "closest: tv:"]),
        (["--arch", "timm:nope"], ["unknown timm model 'timm:nope'", "closest: timm:"]),
        (
            ["--arch", "mnist-cnn", "--weights", "IMAGENET1K_V1"],
            ["IMAGENET1K_V1", "torchvision weights name", "--pretrained"],
        ),
        (["--arch", "resnet18", "--pretrained"], ["--pretrained", "tv:resnet18"]),
        (["--arch", "tv:resnet18", "--pretrained", "--weights", "w.pt"], ["choose one"]),
    ],
)
def test_bad_backbone_options(args, fragments, tmp_path, capsys):
    tree = _tree(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *TRAIN, "--dataset", f"folder:{tree}", *args, "--out", tmp_path / "out")
    one_error_line(code, err, fragments, [])
    assert code == 2 and snapshot(tmp_path) == before


# ---------------------------------------------------------------- input pipeline, warning, metadata, eval of a bare .onnx


def test_folder_data_take_the_backbones_pipeline(tmp_path):
    from qdg_deploy.data import get_dataset

    tree = _tree(tmp_path)
    cfg = zoo.input_config("tv:efficientnet_b0")  # torchvision: resize 256 bicubic, crop 224, ImageNet mean/std
    assert (cfg["size"], cfg["resize"], cfg["interpolation"]) == (224, 256, "bicubic")
    small = zoo.input_config("tv:efficientnet_b0", SIZE)
    assert (small["size"], small["resize"], small["interpolation"]) == (SIZE, round(SIZE * 256 / 224), "bicubic")
    ds = get_dataset(f"folder:{tree}", image_size=SIZE, input_cfg=small)
    assert ds.input_shape == (3, SIZE, SIZE) and ds.pipeline["crop"] == SIZE
    ev = ds.eval_tf.transforms
    assert [type(t).__name__ for t in ev] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert ev[0].size == small["resize"] and ev[0].interpolation.value == "bicubic"
    timm_cfg = zoo.input_config("timm:test_resnet")  # timm's pretrained_cfg: 160, crop_pct 0.95, mean/std 0.5
    assert (timm_cfg["size"], timm_cfg["resize"], timm_cfg["mean"]) == (160, int(160 / 0.95), [0.5] * 3)
    assert zoo.input_config("resnet50") is None  # the short names keep DomainBed's pipeline


def test_random_init_warning():
    from qdg_deploy.train.loop import random_init_warning

    base = {"dataset": "PACS", "arch": "resnet50"}
    assert "--pretrained" in random_init_warning(base)
    assert random_init_warning({**base, "pretrained": True}) is None
    assert random_init_warning({**base, "weights": "w.pt"}) is None
    assert random_init_warning({"dataset": "rotated-mnist", "arch": "tv:resnet18"}) is None
    assert random_init_warning({"dataset": "folder:x", "arch": "mnist-cnn"}) is None


def test_pretrained_train_export_metadata_and_bare_onnx_eval(caches, capsys):
    """--pretrained from a filled cache trains; config.json records the backbone's pipeline; the export carries
    its metadata; `eval` of the bare .onnx (copied away from its run) gives the run's own accuracies."""
    import shutil

    from qdg_deploy.export.metadata import read_metadata

    torch_hub_file("resnet18", torchvision.models.resnet18().state_dict())
    tree = _tree(caches)
    run = caches / "run"
    code, _, err = cli(
        capsys, *TRAIN, "--dataset", f"folder:{tree}", "--arch", "tv:resnet18", "--pretrained", "--out", run
    )
    assert code == 0, err
    assert "warning:" not in err
    config = json.loads((run / "config.json").read_text())
    assert config["hparams"]["pretrained"] is True
    pipeline = config["input"]
    assert (pipeline["size"], pipeline["crop"], pipeline["mean"]) == (SIZE, SIZE, [0.485, 0.456, 0.406])
    code, _, err = cli(capsys, "export", run, "--format", "onnx-fp32")
    assert code == 0, err
    meta = read_metadata(run / "model.fp32.onnx")
    assert meta["classes"] == ["cat", "dog"] and meta["domains"] == ["art", "photo"]
    assert meta["input_size"] == [3, SIZE, SIZE] and meta["mean"] == pipeline["mean"]
    assert meta["std"] == pipeline["std"] and meta["channel_order"] == "RGB"
    assert (meta["method"], meta["scheme"], meta["bits"], meta["test_env"]) == ("erm", "None", "32", "photo")
    from qdg_deploy import __version__

    assert meta["toolkit_version"] == __version__
    bare = caches / "elsewhere" / "net.onnx"
    bare.parent.mkdir()
    shutil.copy(run / "model.fp32.onnx", bare)
    code, out, err = cli(capsys, "eval", bare)
    assert code == 0, err
    got = json.loads((bare.parent / "net.eval.json").read_text())
    code, _, err = cli(capsys, "eval", run)
    want = json.loads((run / "eval.json").read_text())
    assert got["per_domain"] == want["per_domain"] and got["test_env"] == "photo"
    from qdg_deploy import (
        bench as B,  # bench of the bare file scores it on the data set its metadata names
    )

    rec = B.bench([bare], ["ort-cpu"], [1], warmup_ms=0, duration_s=0.01, min_iters=1, threads=1)["records"][0]
    assert rec["accuracy"]["per_domain"]["photo"]["acc"] == pytest.approx(want["test_acc"])


def test_random_init_on_folder_data_warns_once(tmp_path, capsys):
    tree = _tree(tmp_path)
    code, _, err = cli(capsys, *TRAIN, "--dataset", f"folder:{tree}", "--arch", "resnet18", "--out", tmp_path / "run")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "assumes ImageNet weights" in warnings[0] and "--pretrained" in warnings[0]


def test_every_export_carries_metadata(tmp_path):
    """A run written before config.json recorded its pipeline (the committed golden run): rotated-MNIST's."""
    from qdg_deploy.export import export_run_dir
    from qdg_deploy.export.metadata import read_metadata

    run = Path(__file__).parent / "data" / "golden" / "ort"
    export_run_dir(run, out=tmp_path / "m.onnx", verify=False, target="tensorrt")
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["classes"] == [str(c) for c in range(10)] and meta["channel_order"] == "gray"
    assert (meta["input_size"], meta["mean"], meta["std"]) == ([1, 28, 28], [0.0], [1.0])
    assert (meta["scheme"], meta["bits"], meta["act_bits"], meta["target"]) == ("ort", "8", "8", "tensorrt")
    assert meta["domains"] == ["0", "15", "30", "45", "60", "75"] and meta["test_env"] == "0"
    assert meta["method"] == "qtdog" and meta["data"]["dataset"] == "rotated-mnist"


# ---------------------------------------------------------------- qdg-deploy models


def test_models_lists_and_checks(capsys):
    code, out, err = cli(capsys, "models", "--filter", "mobilenet_v3_sm", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["arch"] for r in rows] == ["tv:mobilenet_v3_small"] and rows[0]["export"] is None
    code, out, err = cli(capsys, "models", "--filter", "tv:resnet18", "--check", "--json")
    assert json.loads(out) == [{"arch": "tv:resnet18", "library": "torchvision", "pretrained": True, "export": "yes"}]
    code, out, err = cli(capsys, "models", "--filter", "timm:test_res")
    assert code == 0 and "timm:test_resnet" in out
    code, _, err = cli(capsys, "models", "--filter", "zzzz")
    assert code == 2 and "no model name contains" in err
