"""The ops of mobile CNNs (quant/mobile.py, export/lower_mobile.py): torchvision's MobileNetV3, EfficientNet, RegNet
and ResNet-50 and timm's MobileNetV3 (random init, width-reduced where the libraries allow, 32 px) quantized with
each scheme, calibrated with each observer, exported for both targets: ONNX Runtime CPU returns the torch model's
logits bit for bit, TensorRT's rules hold, and the `ort` exports run their convolutions as integer kernels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper
from torch import nn

import qdg_deploy
from qdg_deploy.errors import QdgError
from qdg_deploy.export.check import check_tensorrt_rules
from qdg_deploy.export.supported import unsupported_op
from qdg_deploy.ort_session import ort_session
from qdg_deploy.quant import activations, mobile, strip_quantizers

SIZE = 32


def _efficientnet_b0_small():
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return EfficientNet(setting, dropout=0.2, last_channel=last, num_classes=7)


def _regnet_y_small():
    from torchvision.models.regnet import BlockParams, RegNet

    return RegNet(
        BlockParams.from_init_params(depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25), num_classes=7
    )


def _resnet50_small():
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=7, width_per_group=8)


def _timm_mobilenetv3():
    timm = pytest.importorskip("timm")
    return timm.create_model("mobilenetv3_large_100", num_classes=7)


NETS = {
    "tv:mobilenet_v3_large": lambda: torchvision.models.get_model(
        "mobilenet_v3_large", weights=None, num_classes=7, width_mult=0.25
    ),
    "tv:efficientnet_b0": _efficientnet_b0_small,
    "tv:regnet_y_400mf": _regnet_y_small,
    "tv:resnet50": _resnet50_small,
    "timm:mobilenetv3_large_100": _timm_mobilenetv3,
}

# (net, scheme, observer): every net with the W8A8 schemes, every observer at least once, `paper` on two nets
CASES = [
    ("tv:mobilenet_v3_large", "ort", "percentile"),
    ("tv:mobilenet_v3_large", "trt", "entropy"),
    ("tv:mobilenet_v3_large", "paper", "minmax"),
    ("tv:efficientnet_b0", "ort", "mse"),
    ("tv:efficientnet_b0", "trt", "minmax"),
    ("tv:efficientnet_b0", "paper", "percentile"),
    ("tv:regnet_y_400mf", "ort", "minmax"),
    ("tv:regnet_y_400mf", "trt", "percentile"),
    ("tv:resnet50", "ort", "entropy"),
    ("tv:resnet50", "trt", "mse"),
    ("timm:mobilenetv3_large_100", "ort", "minmax"),
    ("timm:mobilenetv3_large_100", "trt", "percentile"),
]


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, SIZE, SIZE, generator=g) * 1.5 for _ in range(2)]


def _agreement(model, proto, x):
    with torch.no_grad():
        ref = model(x).numpy()
    s = ort_session(proto)
    got = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
    return float((ref.argmax(1) == got.argmax(1)).mean()), float(np.abs(ref - got).max())


@pytest.mark.slow
@pytest.mark.parametrize("net,scheme,observer", CASES, ids=["-".join(c) for c in CASES])
def test_mobile_nets_export_exactly(tmp_path, net, scheme, observer):
    torch.manual_seed(0)
    model = qdg_deploy.quantize(NETS[net]().eval(), scheme)
    batches = _batches()
    qdg_deploy.calibrate(model, batches, observer)
    x = torch.cat(_batches(seed=1))
    target = "tensorrt" if scheme == "trt" else "ort"
    info = qdg_deploy.export_onnx(model, (3, SIZE, SIZE), tmp_path / "m.onnx", target=target)
    agree, max_diff = _agreement(model, info["proto"], x)
    assert agree == 1.0
    if scheme == "paper":  # weight-only: float convolutions in both, summed in different orders
        assert max_diff < 1e-3
    else:  # every op is an integer kernel or computed from the same float32 values in the same IEEE ops
        assert max_diff == 0.0
    if scheme == "trt":
        assert check_tensorrt_rules(info["proto"]) == []
    if scheme == "ort":  # ORT runs most convolutions as QLinearConv (not yet: those before a float residual Add)
        fused, unfused = info["ort_fused_layers"], info["ort_unfused_layers"]
        assert len(fused) > len(unfused), unfused


def test_eval_matched_activations_equal_onnx_runtime_bit_for_bit():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 6
    for cls, kind in (
        (activations.ExactHardswish, "hardswish"),
        (activations.ExactHardsigmoid, "hardsigmoid"),
        (activations.ExactSigmoid, "sigmoid"),
        (activations.ExactSiLU, "silu"),
        (nn.ReLU6, "relu6"),
    ):
        model = _float_act_graph(cls(), kind)
        s = ort_session(model)
        got = s.run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            ref = cls().eval()(x).numpy()
        assert (got == ref).all(), kind


def _float_act_graph(m, kind):
    from qdg_deploy.export.graph_builder import GraphBuilder, Settings
    from qdg_deploy.export.lower_mobile import activation

    g = GraphBuilder(Settings("ort", 17, False, False, False, "exact"))
    y = activation(g, "x", "act", kind, exact=True)
    g.add("Identity", [y], "y")
    graph = helper.make_graph(
        g.nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        g.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_timm_adaptation_keeps_state_dict_keys_and_outputs():
    timm = pytest.importorskip("timm")
    net = timm.create_model("mobilenetv3_small_050", num_classes=5).eval()
    keys = list(net.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = net(x)
    assert unsupported_op(net) is None  # asked of the adapted copy
    assert type(net.bn1).__name__ == "BatchNormAct2d"  # the check leaves the model as it was
    assert mobile.adapt_timm(net) > 0
    assert list(net.state_dict()) == keys
    assert unsupported_op(net) is None
    with torch.no_grad():
        assert torch.equal(net(x), ref)
    net.load_state_dict(timm.create_model("mobilenetv3_small_050", num_classes=5).state_dict())  # same keys load


def test_own_mobilenet_v3_state_dict_through_python_api(tmp_path):
    """A user's saved torchvision MobileNetV3 state dict: load, quantize, calibrate, export exactly."""

    def make():
        return torchvision.models.mobilenet_v3_large(weights=None, num_classes=4, width_mult=0.25)

    torch.save(make().state_dict(), tmp_path / "mine.pt")
    net = make()
    net.load_state_dict(torch.load(tmp_path / "mine.pt", weights_only=True))
    qnet = qdg_deploy.quantize(net.eval(), "ort")
    qdg_deploy.calibrate(qnet, [(b, torch.zeros(len(b))) for b in _batches()], "percentile")
    info = qdg_deploy.export_onnx(qnet, (3, SIZE, SIZE), tmp_path / "mine.onnx", target="ort")
    proto = onnx.load(str(tmp_path / "mine.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert _agreement(qnet, proto, torch.cat(_batches(seed=2))) == (1.0, 0.0)
    assert info["ort_fused_layers"]
    float_net = strip_quantizers(qnet)  # back to torchvision's own classes, the user's keys
    assert set(float_net.state_dict()) == set(make().state_dict())
    assert type(float_net.features[1].block[0][2]) is nn.ReLU


def test_unsupported_op_is_refused_before_any_work():
    net = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=3, width_mult=0.25)
    net.features[1].block[0][2] = nn.ELU()  # an activation the exporter does not lower
    with pytest.raises(QdgError, match="ELU"):
        qdg_deploy.quantize(net, "ort")
    assert not any(type(m).__module__.startswith("qdg_deploy") for m in net.modules())


@pytest.mark.slow
def test_qat_steps_on_mobilenet_v3_then_exact_export(tmp_path, monkeypatch):
    """A few QT-DoG (LSQ) training steps through the algorithm `train` runs, on MobileNetV3 (BatchNorm, in-place
    Hardswish, SE), then an exact export."""
    from qdg_deploy import models
    from qdg_deploy.train.algorithms import QTDoG
    from qdg_deploy.train.hparams import default_hparams

    monkeypatch.setitem(
        models.MODELS,
        "tv-mobilenet-v3-test",
        lambda c, n: torchvision.models.mobilenet_v3_large(weights=None, num_classes=n, width_mult=0.25),
    )
    hp = {
        **default_hparams("pacs"),
        "arch": "tv-mobilenet-v3-test",
        "method": "qtdog",
        "quant": True,
        "q_steps": 0,
        "scheme": "ort",
        "lr": 1e-3,
        "q_lr": 1e-4,
    }
    torch.manual_seed(0)
    algo = QTDoG((3, SIZE, SIZE), 3, 2, hp)
    before = {k: v.clone() for k, v in algo.network.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        mb = [(torch.randn(4, 3, SIZE, SIZE, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(2)]
        out = algo.update(mb, step)
        assert np.isfinite(out["loss"])
    after = algo.network.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith(".scale") or "step" in k)
    net = algo.network.eval()
    info = qdg_deploy.export_onnx(net, (3, SIZE, SIZE), tmp_path / "qat.onnx", target="ort")
    assert _agreement(net, info["proto"], torch.cat(_batches(seed=3))) == (1.0, 0.0)
