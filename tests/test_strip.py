"""strip_quantizers: one float copy of a quantized network for export --format onnx-fp32 and bench's torch-fp32.

The regression it fixes: both used to remove only the layers' quantizers and missed the residual ones, so a
trt/ort ResNet run failed to export as onnx-fp32 ("'QBasicBlock' object has no attribute 'id_quant'") and
bench --runtime torch-fp32 skipped it with a state-dict error.
"""

import hashlib

import numpy as np
import pytest
import torch
from torchvision.models.resnet import BasicBlock

from qdg_deploy import bench as B
from qdg_deploy.export import lower_to_onnx
from qdg_deploy.export.metadata import without_metadata
from qdg_deploy.models import build_model
from qdg_deploy.quant import Quantizer, get_scheme, quantize_model, strip_quantizers
from qdg_deploy.runs import load_run, model_record, save_run
from qdg_deploy.train import resolve_hparams


def lowered(model, shape, **kw):
    """The in-memory ONNX and its lowering info (what `build_onnx` returned before it was folded into
    `lower_to_onnx`)."""
    low = lower_to_onnx(model, shape, **kw)
    return low.proto, low.info()


SHAPE = (1, 28, 28)


def float_twin(run_dir):
    """The run's architecture as build_model makes it, loaded with the run's float tensors only."""
    net = build_model("resnet18", 1, 10)
    state = load_run(run_dir).model.state_dict()
    net.load_state_dict({k: v for k, v in state.items() if k in net.state_dict()}, strict=True)
    return net.eval()


@pytest.fixture(scope="module", params=["trt", "ort"])
def resnet_run(request, tmp_path_factory):
    """A resnet18 run directory on rotated-mnist with the scheme's residual quantizers, calibrated."""
    scheme = get_scheme(request.param)
    torch.manual_seed(0)
    net = quantize_model(build_model("resnet18", 1, 10), scheme).eval()
    with torch.no_grad():
        net(torch.rand(8, *SHAPE))
    assert any(n.endswith("id_quant") for n, _ in net.named_modules())
    out = tmp_path_factory.mktemp("resnet") / request.param
    hp = resolve_hparams("rotated-mnist", method="qtdog", scheme=request.param, arch="resnet18", test_env="0")
    config = {
        "hparams": hp,
        "dataset": hp["dataset"],
        "domains": ["0", "15", "30", "45", "60", "75"],
        "test_env_index": 0,
        "classes": [str(i) for i in range(10)],
        "model": model_record("resnet18", SHAPE, 10, scheme),
    }
    save_run(out, config, net.state_dict(), {"method": "qtdog", "bits": 8, "scheme": request.param})
    return out


def test_strip_quantizers_gives_the_float_architecture_with_the_same_weights(resnet_run):
    net = strip_quantizers(load_run(resnet_run).model)
    assert not any(isinstance(m, Quantizer) for m in net.modules())
    assert all(type(m) is BasicBlock for m in net.modules() if isinstance(m, BasicBlock))
    twin = float_twin(resnet_run)
    assert net.state_dict().keys() == twin.state_dict().keys()
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(net(x), twin(x))


def test_onnx_fp32_export_of_a_residual_run(resnet_run, tmp_path, cli):
    out = tmp_path / "fp32.onnx"
    r = cli("export", resnet_run, "--format", "onnx-fp32", "--out", out, "--max-samples", "8")
    assert r.returncode == 0, r.stderr
    report = load_report(out)
    assert report["format"] == "onnx-fp32" and report["scheme"] is None and report["top1_agreement"] == 1.0
    proto, _ = lowered(float_twin(resnet_run), SHAPE, fp32=True)  # the float network's own graph
    # the file is the float network's own graph plus the export's metadata_props (export/metadata.py)
    graph = without_metadata(out.read_bytes())
    assert hashlib.sha256(graph).digest() == hashlib.sha256(proto.SerializeToString()).digest()


def test_bench_torch_fp32_runs_a_residual_run(resnet_run):
    result = B.bench(
        [resnet_run],
        runtimes=["torch-fp32"],
        batches=[1],
        accuracy=False,
        warmup_ms=1,
        duration_s=0.01,
        min_iters=2,
        threads=1,
    )
    assert result["skipped"] == [] and [r["runtime"] for r in result["records"]] == ["torch-fp32"]


def test_the_float_copy_leaves_the_quantized_model_as_it_was(resnet_run):
    model = load_run(resnet_run).model
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        before = model(x)
        strip_quantizers(model)
        assert torch.equal(model(x), before)


def load_report(path):
    import json

    return json.loads(path.with_name(path.stem + ".export.json").read_text())


def test_fp32_outputs_match_the_quantized_runs_float_path():
    """A paper (weight-only) model: stripped, it is the float network the quantizers were added to."""
    torch.manual_seed(0)
    float_net = build_model("mnist-cnn", 1, 10).eval()
    q = quantize_model(build_model("mnist-cnn", 1, 10), get_scheme("paper"))
    q.load_state_dict(float_net.state_dict(), strict=False)
    x = torch.rand(3, *SHAPE)
    with torch.no_grad():
        assert np.array_equal(strip_quantizers(q)(x).numpy(), float_net(x).numpy())
