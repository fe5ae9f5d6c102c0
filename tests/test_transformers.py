"""Transformers (issue 30): timm ViT and ConvNeXt quantized with paper / trt / ort, exported for ORT and TensorRT,
trained with QT-DoG + SWAD, calibrated, and probed with flatness and sensitivity — all on tiny models."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

from qdg_deploy.errors import QdgError
from qdg_deploy.export.check import check_tensorrt_rules
from qdg_deploy.export.onnx_writer import lower_to_onnx
from qdg_deploy.export.supported import check_supported
from qdg_deploy.ort_session import ort_session
from qdg_deploy.quant import get_scheme, quant_layers, quantize_model, strip_quantizers
from qdg_deploy.quant.transformer import QMatMul, is_quantized_attention


def lowered(model, shape, **kw):
    """The in-memory ONNX and its lowering info."""
    low = lower_to_onnx(model, shape, **kw)
    return low.proto, low.info()


def tiny_vit(in_chans: int = 1, num_classes: int = 5, img: int = 32, **kw) -> nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224",
        img_size=img,
        patch_size=img // 4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=num_classes,
        in_chans=in_chans,
        **kw,
    )


def tiny_convnext() -> nn.Module:
    return timm.create_model("convnext_atto", num_classes=5, in_chans=1, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))


def _quantized(build, scheme: str) -> nn.Module:
    torch.manual_seed(0)
    m = quantize_model(build(), get_scheme(scheme))
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 1, 32, 32))  # LSQ's first forward sets the steps
    return m.eval()


def _agreement(m: nn.Module, proto: onnx.ModelProto, x: torch.Tensor) -> tuple[float, float]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = m(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    return float((ref.argmax(1) == got.argmax(1)).mean()), float(np.abs(ref - got).max())


def test_paper_quantizes_every_linear_and_the_patch_embedding_at_7_bits_head_float():
    m = quantize_model(tiny_vit(), get_scheme("paper"))
    layers = quant_layers(m)
    linears = [n for n, x in m.named_modules() if isinstance(x, nn.Linear) and n != "head"]
    assert set(layers) == {"patch_embed.proj", *linears}
    assert all(x.weight_quant.spec.bits == 7 and x.act_quant is None for x in layers.values())
    assert type(m.head) is nn.Linear  # the classifier float, as the CNN paper scheme leaves it
    assert not any(isinstance(x, QMatMul) for x in m.modules())  # activations float: attention untouched
    assert all(not x.fused_attn for x in m.modules() if hasattr(x, "fused_attn"))


def test_w8a8_quantizes_linear_inputs_and_both_attention_matmuls_norms_float():
    m = quantize_model(tiny_vit(), get_scheme("trt"))
    assert all(x.act_quant is not None for x in quant_layers(m).values())
    attn = [x for x in m.modules() if is_quantized_attention(x)]
    assert len(attn) == 2 and all(isinstance(a.qk, QMatMul) and isinstance(a.av, QMatMul) for a in attn)
    float_m = strip_quantizers(m)  # back to timm's own Attention class, no quantizer left
    assert not quant_layers(float_m) and not any(isinstance(x, QMatMul) for x in float_m.modules())
    assert set(float_m.state_dict()) == set(tiny_vit().state_dict())


@pytest.mark.parametrize("build", [tiny_vit, tiny_convnext], ids=["vit", "convnext"])
@pytest.mark.parametrize("scheme", ["trt", "ort", "paper"])
def test_exports_agree_with_torch_and_pass_the_tensorrt_check(build, scheme):
    m = _quantized(build, scheme)
    x = torch.randn(32, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = ("ort", "tensorrt") if scheme != "ort" else ("ort",)
    for target in targets:
        proto, _ = lowered(m, (1, 32, 32), target=target)
        agree, diff = _agreement(m, proto, x)
        assert agree == 1.0, (scheme, target)
        if scheme == "paper":  # float activations: float32 round-off only
            assert diff < 1e-4
        else:  # every quantized layer and matmul snapped to its integer accumulator: the same float32 logits
            assert diff == 0.0, (scheme, target, diff)
        if target == "tensorrt":
            assert check_tensorrt_rules(proto) == []


def test_float_export_of_a_fused_attention_model_lowers_sdpa():
    torch.manual_seed(0)
    m = tiny_vit(global_pool="avg", class_token=False).eval()  # fused attention, mean pooling over tokens
    assert any(getattr(x, "fused_attn", False) for x in m.modules())
    proto, _ = lowered(m, (1, 32, 32), fp32=True)
    agree, diff = _agreement(m, proto, torch.randn(16, 1, 32, 32))
    assert agree == 1.0 and diff < 1e-4
    ops = {n.op_type for n in proto.graph.node}
    assert {"LayerNormalization", "Softmax", "MatMul", "Erf", "ReduceMean"} <= ops


def test_ort_runs_the_linears_as_qgemm_and_the_attention_matmuls_as_integer_kernels():
    m = _quantized(tiny_vit, "ort")
    proto, _ = lowered(m, (1, 32, 32), target="ort")
    with tempfile.TemporaryDirectory() as d:
        ort_session(proto, level="extended", optimized_path=str(Path(d) / "opt.onnx"))
        ops = collections.Counter(n.op_type for n in onnx.load(str(Path(d) / "opt.onnx")).graph.node)
    linears = sum(isinstance(x, nn.Linear) for x in m.modules())
    assert ops["QGemm"] == linears and ops["Gemm"] == 0
    assert ops["MatMulIntegerToFloat"] == 4 and ops["MatMul"] == 0  # q·kᵀ and softmax·v in both blocks


def test_tensorrt_check_counts_no_float_norm_or_softmax_and_sees_int8_matmuls():
    m = _quantized(tiny_vit, "trt")
    proto, _ = lowered(m, (1, 32, 32), target="tensorrt")
    from qdg_deploy.export.check import quantized_layers

    kinds = collections.Counter(op for op, _ in quantized_layers(proto))
    assert kinds["MatMul"] == 4 and kinds["Gemm"] == 9 and kinds["Conv"] == 1
    assert check_tensorrt_rules(proto) == []


def test_window_shifted_attention_is_refused_before_any_work_naming_it():
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=56, embed_dim=24, depths=(1, 1), num_heads=(1, 2), num_classes=3
    )
    with pytest.raises(QdgError, match="window-shifted attention"):
        check_supported(swin)
    check_supported(tiny_vit())  # a plain ViT passes


def test_ptq_calibration_and_sensitivity_on_a_tiny_vit():
    from torch.utils.data import TensorDataset

    from qdg_deploy.calibrate.core import calibrate_model
    from qdg_deploy.calibrate.sensitivity import layer_sensitivity

    torch.manual_seed(0)
    m = quantize_model(tiny_vit(), get_scheme("trt")).eval()
    batches = [torch.randn(8, 1, 32, 32) for _ in range(2)]
    done = calibrate_model(m, batches, "percentile")
    assert done["activation_quantizers"] >= 9 + 8  # every Linear's input and both operands of 4 matmuls
    proto, _ = lowered(m, (1, 32, 32), target="tensorrt")
    assert _agreement(m, proto, torch.randn(16, 1, 32, 32)) == (1.0, 0.0)
    data = TensorDataset(torch.randn(16, 1, 32, 32), torch.randint(0, 5, (16,)))
    report = layer_sensitivity(m, [data])
    assert len(report["layers"]) == len(quant_layers(m))


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    """A tiny ViT trained with QT-DoG (paper W7, SWAD) through train_one, the `train` command's function."""
    from qdg_deploy.train import resolve_hparams, train_one

    out = tmp_path_factory.mktemp("runs") / "vit"
    hp = resolve_hparams(
        "rotated-mnist",
        method="qtdog",
        arch="vit-mnist",
        steps=6,
        q_steps=2,
        checkpoint_freq=3,
        batch_size=8,
        test_env="75",
        swad_n_converge=2,
        swad_n_tolerance=2,
        swad_tolerance_ratio=1.0,
    )
    return out, train_one(hp, out)


def test_qtdog_swad_trains_a_tiny_vit_and_flatness_runs_on_it(vit_run):
    from torch.utils.data import TensorDataset

    from qdg_deploy.runs import load_run
    from qdg_deploy.workflows.flatness import loss_curve

    out, metrics = vit_run
    assert "test_acc" in metrics
    run = load_run(out)
    layers = quant_layers(run.model)
    assert layers and all(x.weight_quant.spec.bits == 7 for x in layers.values())
    data = TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    curve = loss_curve(run.model, data, [0.0, 0.5], directions=2)
    assert len(curve["radii"]) == 2
    proto, _ = lowered(run.model, (1, 28, 28), target="ort")
    agree, diff = _agreement(run.model, proto, torch.randn(16, 1, 28, 28))
    assert agree == 1.0 and diff < 1e-4
