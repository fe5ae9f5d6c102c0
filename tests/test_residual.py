"""Quantized residual Adds (Scheme.residual): the trt/ort schemes quantize both inputs of every ResNet block's Add,
the export writes exact Q/DQ there, and ONNX Runtime fuses every conv into QLinearConv."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from qdg_deploy.export import check_tensorrt_rules, lower_to_onnx, ort_session
from qdg_deploy.models import build_model
from qdg_deploy.quant import Scheme, get_scheme, quantize_model
from qdg_deploy.quant.residual import QBasicBlock, residual_quantizers


def lowered(model, shape, **kw):
    """The in-memory ONNX and its lowering info (what `build_onnx` returned before it was folded into
    `lower_to_onnx`)."""
    low = lower_to_onnx(model, shape, **kw)
    return low.proto, low.info()


torch.set_num_threads(1)
SHAPE = (3, 64, 64)


def resnet(scheme: str, seed: int = 0):
    torch.manual_seed(seed)
    m = build_model("resnet18", 3, 7)
    quantize_model(m, get_scheme(scheme))
    m.eval()
    with torch.no_grad():
        m(torch.rand(8, *SHAPE))  # calibration forward
    return m


def test_scheme_flag_and_old_configs():
    assert get_scheme("ort").residual and get_scheme("trt").residual and not get_scheme("paper").residual
    d = get_scheme("ort").to_dict()
    assert Scheme.from_dict(d).residual
    d.pop("residual")  # a config.json written before the field existed
    assert Scheme.from_dict(d).residual is False


def test_resnet18_residual_quantizers_and_state_dict():
    m = resnet("ort")
    blocks = [b for b in m.modules() if isinstance(b, QBasicBlock)]
    assert len(blocks) == 8
    rq = residual_quantizers(m)
    kinds = Counter(k.rsplit(".", 1)[-1] for k in rq)
    assert kinds == {"add_quant": 8, "id_quant": 3}
    shared = [b for b in blocks if b.downsample is None]
    assert len(shared) == 5 and not any(hasattr(b, "id_quant") for b in shared)
    for b in blocks:
        assert b.add_quant.learned_zp  # pre-ReLU (signed data) in uint8: a learned zero point
        if b.downsample is not None:
            assert b.id_quant.learned_zp and b.downsample[0].act_quant is b.conv1.act_quant
    # load_run: quantize_model on a fresh model, then a strict load of the saved state dict
    fresh = quantize_model(build_model("resnet18", 3, 7), get_scheme("ort"))
    sd = m.state_dict()
    assert not any(k.startswith("layer2.0.downsample.0.act_quant") for k in sd)  # held once, under conv1
    from safetensors.torch import save  # runs.save_weights: refuses tensors that share memory

    save({k: v.contiguous() for k, v in sd.items()})
    fresh.load_state_dict(sd, strict=True)
    fresh.eval()
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(fresh(x), m(x))
    # no residual quantizers for the weight-only scheme
    p = quantize_model(build_model("resnet18", 3, 7), get_scheme("paper"))
    assert not residual_quantizers(p) and not any(isinstance(b, QBasicBlock) for b in p.modules())


def test_resnet18_ort_fuses_every_conv_and_stays_exact(tmp_path):
    m = resnet("ort")
    proto, info = lowered(m, SHAPE, target="ort")
    # 8 main branches, 3 downsample outputs, 5 shared identities, the global pool's input (scheme pool)
    assert len(info["residual_quantizers"]) == 11 + 5 + 1
    assert all(e["exact"] for e in info["residual_quantizers"])
    pool = next(n for n in proto.graph.node if n.op_type == "MaxPool")
    assert pool.input[0].endswith(".dq")  # the stem's Q sits before the MaxPool, so conv1 fuses
    x = torch.rand(32, *SHAPE)
    with torch.no_grad():
        ref = m(x).numpy()
    opt = tmp_path / "opt.onnx"
    for level in ("none", "all"):
        got = ort_session(proto, level=level, optimized_path=str(opt) if level == "all" else None).run(
            None, {"input": x.numpy()}
        )[0]
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 31 / 32, level
    ops = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    # every conv and every residual Add, the last one too (its output is quantized for the pool)
    assert ops["QLinearConv"] == 20 and ops["QLinearAdd"] == 8, ops


def test_pool_quantizer_old_configs_and_strip():
    """Scheme pool: the global pool reads the last block's output through an unsigned zp-0 quantizer; a config
    written before the key loads without it (its state dict has none); strip_quantizers gives the float pool."""
    from qdg_deploy.quant import strip_quantizers
    from qdg_deploy.quant.pool import QAvgPool

    m = resnet("ort")
    assert isinstance(m.avgpool, QAvgPool) and m.avgpool.act_quant.zero_point_int() == 0
    assert not m.avgpool.act_quant.spec.signed
    d = get_scheme("ort").to_dict()
    d.pop("pool")
    old = quantize_model(build_model("resnet18", 3, 7), Scheme.from_dict(d))
    assert type(old.avgpool) is not QAvgPool and not any(k.startswith("avgpool.") for k in old.state_dict())
    f = strip_quantizers(m)
    assert type(f.avgpool) is torch.nn.AdaptiveAvgPool2d and not any(k.startswith("avgpool.") for k in f.state_dict())
    assert not isinstance(quantize_model(build_model("mnist-cnn", 1, 10), get_scheme("ort")).avgpool, QAvgPool)


@pytest.mark.parametrize("scheme", ["trt", "ort"])
def test_resnet18_tensorrt_target(scheme):
    m = resnet(scheme)
    proto, info = lowered(m, SHAPE, target="tensorrt")
    assert check_tensorrt_rules(proto) == []
    assert all(e["exact"] for e in info["residual_quantizers"]) == (scheme == "trt")  # ort: zp requantized
    x = torch.rand(16, *SHAPE)
    with torch.no_grad():
        ref = m(x).numpy()
    got = ort_session(proto, level="none").run(None, {"input": x.numpy()})[0]
    if scheme == "trt":
        np.testing.assert_array_equal(got.argmax(1), ref.argmax(1))


def test_bias_mode_follows_what_the_model_was_trained_for():
    """int32 biases (ORT's fused kernels) only for ort-trained models; trt-trained ones stay exact on ORT."""
    import torch

    from qdg_deploy.export.onnx_writer import trained_for_ort
    from qdg_deploy.models import build_model
    from qdg_deploy.quant import get_scheme, quantize_model

    for scheme, expected in (("ort", True), ("trt", False), ("paper", False)):
        net = build_model("resnet18", 3, 7)
        quantize_model(net, get_scheme(scheme))
        net.eval()
        net(torch.rand(1, 3, 32, 32))
        assert trained_for_ort(net) is expected, scheme
