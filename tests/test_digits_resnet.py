"""The embedded network, digits-resnet: rotated-MNIST's default; its BatchNorms fold into the convs; every conv and
residual Add runs as an integer kernel on ONNX Runtime (ort scheme); its trt export follows TensorRT's rules; both
exports agree with torch on every sample of a briefly trained run."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from qdg_deploy.export import check_tensorrt_rules, export_run_dir
from qdg_deploy.models import build_model
from qdg_deploy.quant.plan import add_plans
from qdg_deploy.runs import load_run
from qdg_deploy.train import resolve_hparams, train_one

ARCH = "digits-resnet"


def _names(net: nn.Module, cls) -> list[str]:
    return [n for n, m in net.named_modules() if type(m) is cls]


def test_default_for_rotated_mnist_and_built_from_torchvision_blocks():
    assert resolve_hparams("rotated-mnist")["arch"] == ARCH
    assert resolve_hparams("rotated-mnist", arch="mnist-cnn")["arch"] == "mnist-cnn"  # kept for DomainBed parity
    net = build_model(ARCH, 1, 10)
    assert _names(net, BasicBlock) == ["layer1", "layer2", "layer3"]  # exact type: residual quantization applies
    assert len(_names(net, nn.BatchNorm2d)) == len(_names(net, nn.Conv2d)) == 9  # one BatchNorm after each conv
    assert all(m.out_channels % 16 == 0 for m in net.modules() if isinstance(m, nn.Conv2d))
    net.eval()
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    stem = net.relu(net.bn1(net.conv1(torch.rand(2, 1, 28, 28))))
    assert net.layer3(net.layer2(net.layer1(stem))).shape == (2, 128, 7, 7)  # 28 → 14 → 7, then the global pool


@pytest.fixture(scope="module")
def trt_run(tmp_path_factory):
    """A run directory of the default network, scheme trt, trained briefly (quantized from step 2)."""
    out = tmp_path_factory.mktemp("runs") / "trt"
    hp = resolve_hparams(
        "rotated-mnist",
        method="qtdog",
        scheme="trt",
        steps=4,
        q_steps=2,
        checkpoint_freq=2,
        batch_size=8,
        test_env="75",
        swad=False,
    )
    train_one(hp, out)
    return out


def test_ort_export_runs_every_conv_and_add_as_an_integer_kernel(tiny_run, tmp_path):
    run = load_run(tiny_run[0])  # conftest: a QT-DoG ort run of the default network
    assert run.config["model"]["arch"] == ARCH
    convs = _names(build_model(ARCH, 1, 10), nn.Conv2d)
    r = export_run_dir(tiny_run[0], target="ort", out=tmp_path / "m.onnx", max_samples=50)
    assert set(convs) <= set(r["ort_kernel_layers"]) and set(convs) <= set(r["ort_fused_layers"])
    assert r["ort_unfused_layers"] == [] and "ort_kernel_mismatch" not in r
    assert len(r["bn_folded"]) == 9
    assert len(add_plans(run.model)) == 3  # every block's Add is a QLinearAdd, the last one's too (pool quantizer)
    assert r["top1_agreement"] == 1.0 and r["max_abs_diff"] == 0.0


def test_trt_export_follows_tensorrt_rules_and_is_exact(trt_run, tmp_path):
    path = tmp_path / "t.onnx"
    r = export_run_dir(trt_run, target="tensorrt", out=path, max_samples=50)
    assert check_tensorrt_rules(path) == []
    assert r["weight_only_layers"] == [] and len(r["bn_folded"]) == 9  # every conv INT8 (its input quantized too)
    assert all(q["exact"] for q in r["residual_quantizers"]) and "requantized_note" not in r
    assert r["top1_agreement"] == 1.0 and r["max_abs_diff"] == 0.0
