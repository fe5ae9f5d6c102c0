"""An AlignQ (DAQ) network exports to QDQ ONNX with Erf-based CDF transforms and matches torch on ORT-CPU."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qdg_deploy.export import export_onnx, ort_session
from qdg_deploy.models import build_model
from qdg_deploy.quant import get_scheme, quant_layers, quantize_model


@pytest.mark.parametrize("target", ["ort", "tensorrt"])
def test_daq_network_exports_and_agrees(tmp_path, target):
    torch.manual_seed(0)
    net = build_model("mnist-cnn", 1, 10)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):  # normal weights (trained-like) use all 2^k DAQ levels
            torch.nn.init.normal_(m.weight, std=0.05)
    net = quantize_model(net, get_scheme("alignq", bits=4, act_bits=4)).eval()
    for m in quant_layers(net).values():
        if m.act_quant is not None:
            m.act_quant.act_range.fill_(1.5)
    info = export_onnx(net, (1, 28, 28), tmp_path / "m.onnx", target=target)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Erf") == 3 and ops.count("QuantizeLinear") == 3  # conv2..conv4 inputs; the image stays float
    acts = {e["layer"]: e.get("act") for e in info["layers"]}
    assert acts["conv1"] is None and acts["conv2"]["type"] == ("uint8" if target == "ort" else "int8")
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    codes = inits["conv2.weight_q"]
    assert codes.dtype == np.int8 and codes.min() >= -15 and codes.max() <= 15 and (codes % 2 == 1).all()
    assert len(np.unique(codes)) == 16  # 2^4 levels
    x = torch.rand(48, 1, 28, 28)
    onnx_out = ort_session(proto, threads=1, level="all").run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        torch_out = net(x).numpy()
    assert (onnx_out.argmax(1) == torch_out.argmax(1)).mean() == 1.0
    assert np.abs(onnx_out - torch_out).max() < 1e-2


def test_non_uniform_activation_quantizers_are_refused_by_the_exporter(tmp_path):
    """APoT activations are not QuantizeLinear's uniform grid: export must say so, not write a wrong graph."""
    import pytest as _pytest
    import torch as _torch

    from qdg_deploy.errors import QdgError
    from qdg_deploy.export import export_onnx
    from qdg_deploy.models import build_model
    from qdg_deploy.quant import get_scheme, quantize_model

    net = build_model("mnist-cnn", 1, 10)
    quantize_model(net, get_scheme("trt", quantizer="apot", bits=4, act_bits=4))
    net.eval()
    net(_torch.rand(2, 1, 28, 28))
    with _pytest.raises(QdgError, match="non-uniform"):
        export_onnx(net, (1, 28, 28), tmp_path / "m.onnx", target="ort")
    assert not (tmp_path / "m.onnx").exists()
