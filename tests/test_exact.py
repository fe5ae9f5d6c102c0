"""Exact eval arithmetic (quant/kernels.py) against ONNX Runtime CPU: snapped layers, and the integer kernels ORT
fuses (QLinearConv, QLinearAdd, QLinearGlobalAveragePool) computed bit for bit — including the near-ties where a plain float computation
of the same formula picks the other code."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qdg_deploy.export import export_onnx, ort_session
from qdg_deploy.quant import get_scheme, quantize_model, strip_quantizers
from qdg_deploy.quant.kernels import fused_add, fused_global_pool
from qdg_deploy.quant.layers import is_exact
from qdg_deploy.quant.norms import FoldedBatchNorm2d
from qdg_deploy.quant.plan import Mode


def _x86_vnni() -> bool:
    """x86 with VNNI, where ORT's U8S8 kernels sum exactly in int32 (this is where the kernels were measured; on
    AVX2 without VNNI they pair products into saturating int16, ORT's documented reduce-range issue)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_vnni", "avx_vnni"})


x86_only = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="ORT's x86 kernel arithmetic (its ARM kernels requantize in fixed point)",
)
kernels_measured = pytest.mark.skipif(
    not _x86_vnni(),
    reason="the integer-kernel arithmetic was measured on ORT's "
    "x86 VNNI kernels; this CPU runs other ones (AVX2 without VNNI can saturate)",
)


def _run(proto, x):
    s = ort_session(proto, level="all")
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


def _bn_chain(scheme, c_in=8, c=16, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(c_in, c, 3, padding=1),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.Conv2d(c, c, 1),
        nn.BatchNorm2d(c),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(c, 5),
    )
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_(1, 0.5)  # some negative gammas: the codes' sign flips
            bn.bias.normal_(0, 0.3)
    quantize_model(m, get_scheme(scheme)).eval()
    with torch.no_grad():
        m(torch.randn(16, c_in, 12, 12))
    return m


@pytest.mark.parametrize("target", ["ort", "tensorrt"])
def test_snapped_layers_give_bit_identical_outputs(tmp_path, target):
    m = _bn_chain("trt")
    assert all(is_exact(m[i]) for i in (0, 3, 8)) and isinstance(m[1], FoldedBatchNorm2d)
    info = export_onnx(m, (8, 12, 12), tmp_path / "m.onnx", target=target)
    assert [e["layer"] for e in info["layers"] if "exact" in e] == ["0", "3", "8"]
    x = torch.randn(64, 8, 12, 12)
    with torch.no_grad():
        assert np.array_equal(m(x).numpy(), _run(info["proto"], x))


def test_folded_batchnorm_is_identity_only_in_eval_with_its_layer_quantized():
    m = _bn_chain("trt")
    x = torch.randn(4, 16, 12, 12)
    bn = m[1]
    with torch.no_grad():
        assert torch.equal(bn(x), x)  # eval: the conv has folded it
        bn.train()
        assert not torch.allclose(bn(x), x)
        bn.eval()
        float_bn = strip_quantizers(m)[1]  # the FP32 baseline: no conv folds it any more
        assert type(float_bn) is torch.nn.BatchNorm2d and not torch.allclose(float_bn(x), x)


def test_snap_recovers_the_integer_accumulator_where_float_sums_differ():
    """torch's float conv and the snapped one: the raw float output differs from acc·unit in its last bits,
    the snapped one is acc·unit exactly."""
    m = _bn_chain("trt", c_in=64, c=64)
    conv = m[0]
    x = torch.randn(8, 64, 12, 12)
    with torch.no_grad():
        xq, wq = conv.act_quant(x), conv.weight_quant(conv.weight)
        raw = torch.nn.functional.conv2d(xq, wq, padding=1)
        unit = (conv.act_quant.scale() * conv.weight_quant.scale().reshape(-1)).double()
        codes_x = torch.round(xq.double() / conv.act_quant.scale().double())
        codes_w = torch.round(wq.double() / conv.weight_quant.scale().double())
        acc = torch.nn.functional.conv2d(codes_x, codes_w, padding=1)  # exact in float64
        snapped = torch.round(raw.double() / unit.reshape(-1, 1, 1))
    assert torch.equal(snapped, acc)
    assert not torch.equal(raw.double(), (acc * unit.reshape(-1, 1, 1)).float().double())  # float noise was there


@kernels_measured
def test_fused_conv_computes_as_ort_qlinearconv(tmp_path):
    """Scheme ort: conv0 → ReLU → conv1's uint8 zero-point-0 quantizer is one QLinearConv in ORT; ~1 M of its
    codes (zero point, int32 bias, ReLU saturation, per-channel requantization) must equal the model's, seen
    through conv1 (a 1x1 conv over all 64 channels: any code that moves changes the output's bits)."""
    torch.manual_seed(9)
    m = nn.Sequential(nn.Conv2d(32, 64, 1), nn.ReLU(), nn.Conv2d(64, 3, 1))
    quantize_model(m, get_scheme("ort")).eval()
    x = torch.rand(64, 32, 16, 16) * 2 - 0.5
    with torch.no_grad():
        m(x)
    conv = m[0]
    assert conv.plan.mode is Mode.ORT_KERNEL and conv.plan.out_quant is m[2].act_quant
    assert conv.act_quant.zero_point_int() != 0
    info = export_onnx(m, (32, 16, 16), tmp_path / "f.onnx", target="ort")
    assert info["ort_fused_layers"][:1] == ["0"]
    with torch.no_grad():
        assert conv(x).numel() > 10**6
        assert np.array_equal(m(x).numpy(), _run(info["proto"], x))


def _qadd_graph(sa, za, sb, zb, sc, zc):
    inits = [
        numpy_helper.from_array(v, k)
        for k, v in (
            ("sa", np.float32(sa)),
            ("sb", np.float32(sb)),
            ("sc", np.float32(sc)),
            ("za", np.uint8(za)),
            ("zb", np.uint8(zb)),
            ("zc", np.uint8(zc)),
        )
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["qa"]),
        helper.make_node("DequantizeLinear", ["qa", "sa", "za"], ["da"]),
        helper.make_node("QuantizeLinear", ["b", "sb", "zb"], ["qb"]),
        helper.make_node("DequantizeLinear", ["qb", "sb", "zb"], ["db"]),
        helper.make_node("Add", ["da", "db"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "sc", "zc"], ["qc"]),
        helper.make_node("DequantizeLinear", ["qc", "sc", "zc"], ["y"]),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b")]
    g = helper.make_graph(nodes, "qadd", vi, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


class _Q:  # the quantizer interface fused_add reads
    def __init__(self, s, z):
        self.s, self.z, self.qmin, self.qmax = torch.tensor(np.float32(s)), z, 0, 255

    def scale(self):
        return self.s

    def zero_point_int(self):
        return self.z


@kernels_measured
def test_fused_add_computes_as_ort_qlinearadd_over_every_code_pair():
    rng = np.random.default_rng(0)
    ka, kb = (t.ravel() for t in np.meshgrid(np.arange(256), np.arange(256)))
    bad = naive_bad = 0
    for _ in range(60):
        za, zb = (int(v) for v in rng.integers(0, 256, 2))
        sa, sb, sc = (
            np.float32(rng.uniform(0.01, 0.1)),
            np.float32(rng.uniform(0.01, 0.1)),
            np.float32(rng.uniform(0.02, 0.2)),
        )
        a = torch.from_numpy(((ka - za).astype(np.float32) * sa).astype(np.float32))
        b = torch.from_numpy(((kb - zb).astype(np.float32) * sb).astype(np.float32))
        proto = _qadd_graph(sa, za, sb, zb, sc, 0)
        s = ort_session(proto, level="all")
        got = s.run(None, {"a": a.numpy(), "b": b.numpy()})[0]
        ours = fused_add(_Q(sa, za), _Q(sb, zb), _Q(sc, 0), a, b).numpy()
        bad += int((ours != got).sum())
        naive = np.clip(np.round((a.double() + b.double()).numpy() / np.float64(sc)), 0, 255) * sc
        naive_bad += int((naive.astype(np.float32) != got).sum())
    assert bad == 0
    assert naive_bad > 0  # the test set holds near-ties the exact sum rounds differently


def _qgap_graph(sx, zx, sy, zy):
    inits = [
        numpy_helper.from_array(v, k)
        for k, v in (("sx", np.float32(sx)), ("sy", np.float32(sy)), ("zx", np.uint8(zx)), ("zy", np.uint8(zy)))
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["qx"]),
        helper.make_node("DequantizeLinear", ["qx", "sx", "zx"], ["dx"]),
        helper.make_node("GlobalAveragePool", ["dx"], ["m"]),
        helper.make_node("QuantizeLinear", ["m", "sy", "zy"], ["qy"]),
        helper.make_node("DequantizeLinear", ["qy", "sy", "zy"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "qgap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@x86_only
def test_fused_global_pool_computes_as_ort_qlinearglobalaveragepool():
    """Random codes over several image sizes (1×1, 5×5, 7×7, 14×14) and grids, half of them full of ties."""
    rng = np.random.default_rng(1)
    bad = naive_bad = total = 0
    for hw in (1, 5, 7, 14):
        for trial in range(12):
            zx, zy = (int(v) for v in rng.integers(0, 40, 2))
            sx, sy = np.float32(rng.uniform(0.01, 0.1)), np.float32(rng.uniform(0.002, 0.05))
            if trial % 2:  # s_y = 2·s_x / (H·W): every odd sum of codes is a tie, decided by the float rounding
                sy = np.float32(2 * sx / (hw * hw))
            k = rng.integers(0, 256, (16, 64, hw, hw))
            x = torch.from_numpy(((k - zx).astype(np.float32) * sx).astype(np.float32))
            proto = _qgap_graph(sx, zx, sy, zy)
            got = ort_session(proto, level="all").run(None, {"x": x.numpy()})[0]
            ours = fused_global_pool(_Q(sx, zx), _Q(sy, zy), x).numpy()
            bad += int((ours != got).sum())
            total += got.size
            mean = x.double().mean(dim=(2, 3), keepdim=True).numpy()  # the float64 pool, then Q/DQ
            naive = (np.clip(np.round(mean / np.float64(sy)) + zy, 0, 255) - zy) * sy
            naive_bad += int((naive.astype(np.float32) != got).sum())
    assert total == 4 * 12 * 16 * 64 and bad == 0
    assert naive_bad > 0  # ORT's float32 requantization picks another code than the exact mean on some channels


@kernels_measured  # its convolutions run as QLinearConv
def test_pool_plan_fuses_resnet_pool_into_qlinearglobalaveragepool(tmp_path):
    """Scheme ort on a ResNet: the pool before the classifier becomes ORT's QLinearGlobalAveragePool, the exact
    graph writes DQ → GlobalAveragePool → Q (no float64 mean) and the classifier as the QGemm with float output
    ORT runs (no snap ops), and torch and ORT agree bit for bit."""
    from qdg_deploy.models import build_model
    from qdg_deploy.quant.plan import pool_plans

    torch.manual_seed(3)
    m = quantize_model(build_model("digits-resnet", 1, 10), get_scheme("ort"))
    x = torch.rand(32, 1, 28, 28)
    m.train()
    m(x)  # LSQ init
    m.eval()
    assert [p.out for p in pool_plans(m)] == [m.fc.act_quant]
    info = export_onnx(m, (1, 28, 28), tmp_path / "m.onnx", target="ort")
    ops = [n.op_type for n in info["proto"].graph.node]
    assert "ReduceMean" not in ops and ops.count("GlobalAveragePool") == 1
    assert "Round" not in ops and ops[-3:-1] == ["Gemm", "Add"] and "fc" in info["ort_fused_layers"]
    assert info["ort_fused_pools"] == info["ort_kernel_pools"] == 1
    with torch.no_grad():
        assert np.array_equal(m(x).numpy(), _run(info["proto"], x))


def test_calibration_in_eval_mode_sees_the_float_path_before_the_next_quantizer_is_set():
    """An eval-mode calibration forward: a fused layer's output quantizer is not initialized yet, so the layer
    computes its snapped float output and that quantizer takes its range from it (not from codes on an unset grid)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    quantize_model(m, get_scheme("ort")).eval()
    q = m[2].act_quant
    assert m[0].plan.out_quant is q and not bool(q.initialized) and not q.learned_zp
    x = torch.randn(16, 3, 10, 10)
    with torch.no_grad():
        m(x)
        conv = m[0]
        y = torch.relu(conv._conv_forward(conv.act_quant(x), conv.weight_quant(conv.weight), conv.bias))
    expected = 2 * y.abs().mean() / 255**0.5  # LSQ's init on the float output
    assert torch.allclose(q.step, expected, rtol=1e-2)  # the integer bias moves the mean a little
