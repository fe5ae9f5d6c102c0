"""TensorRT without TensorRT: version dispatch, the FP16 float-remainder pass (checked on ORT CPU), the inspector
parser on a hand-written sample (tests/data/trt/README.md), the engine report's schema, the CLI's refusal where
TensorRT is missing; and, where TensorRT and a GPU exist, a real build."""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qdg_deploy.errors import QdgError
from qdg_deploy.export import check_tensorrt_rules, export_run_dir, float_layers
from qdg_deploy.export.check import has_qdq, quantized_layers
from qdg_deploy.export.fp16 import convert_float_remainder
from qdg_deploy.export.trt_plan import build_plan, parse_batch_range, parse_version, profile_batches, profile_shapes
from qdg_deploy.export.trt_report import engine_report, not_int8, parse_layers, schema_errors
from qdg_deploy.ort_session import ort_session

DATA = Path(__file__).parent / "data"
SAMPLE = json.loads((DATA / "trt" / "inspector_v10_alignq.json").read_text())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The committed golden runs' --target tensorrt exports (both graphs): AlignQ (float first conv and
    classifier) and trt (W8A8, GroupNorm in float)."""
    d = tmp_path_factory.mktemp("trt")
    out = {}
    for name in ("alignq", "trt"):
        for graph in ("exact", "lean"):
            p = d / f"{name}_{graph}.onnx"
            export_run_dir(DATA / "golden" / name, target="tensorrt", out=p, verify=False, graph=graph)
            out[name, graph] = p
    return out


# ---------------------------------------------------------------- version dispatch (pure)


@pytest.mark.parametrize(
    "version,parsed",
    [("10.7.0", (10, 7, 0)), ("11.0.0.12", (11, 0, 0)), ("10.3.0.post1", (10, 3, 0)), ("11", (11, 0, 0))],
)
def test_parse_version(version, parsed):
    assert parse_version(version) == parsed


def test_tensorrt_10_sets_int8_and_fp16_flags_and_keeps_the_graph():
    p = build_plan("10.7.0", has_qdq=True, fp16=True)
    assert p.builder_flags == ("INT8", "FP16") and not p.strongly_typed and not p.convert_fp16
    assert "network_flags" not in p.to_dict()  # create_network(0) on both majors: no creation flag to report
    assert build_plan("10.7.0", has_qdq=True, fp16=False).builder_flags == ("INT8",)
    assert build_plan("10.0.1", has_qdq=False, fp16=True).builder_flags == ("FP16",)


def test_tensorrt_11_is_strongly_typed_no_precision_flags_fp16_by_conversion():
    p = build_plan("11.0.0", has_qdq=True, fp16=True)
    assert p.strongly_typed and p.builder_flags == () and p.convert_fp16
    assert not build_plan("11.4.1", has_qdq=True, fp16=False).convert_fp16


def test_dla_plans():
    p10 = build_plan("10.3.0", has_qdq=True, fp16=False, dla_core=1, gpu_fallback=True)
    assert p10.device == "DLA" and p10.builder_flags == ("INT8", "FP16", "GPU_FALLBACK")  # DLA: FP16/INT8 only
    p11 = build_plan("11.4.1", has_qdq=True, fp16=False, dla_core=0, gpu_fallback=True)
    assert p11.builder_flags == ("GPU_FALLBACK",) and p11.convert_fp16


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0", "12.0.0", "abc"])
def test_unsupported_versions_are_refused(version):
    with pytest.raises(QdgError):
        build_plan(version, has_qdq=True, fp16=True)


def test_batch_range():
    assert parse_batch_range("1,8,32") == (1, 8, 32) and parse_batch_range("4") == (4, 4, 4)
    for bad in ("8,1,32", "0,1,2", "1,2", "a,b,c"):
        with pytest.raises(QdgError, match="--batch-range"):
            parse_batch_range(bad)


def test_profile_follows_the_input_batch():
    """A dynamic batch takes --batch-range (default 1,8,32); a fixed batch b takes b,b,b (TensorRT refuses any
    other profile for a static dimension), and a --batch-range that disagrees is refused."""
    assert profile_shapes("input", [-1, 3, 32, 32], None) == {
        "input": "input",
        "min": [1, 3, 32, 32],
        "opt": [8, 3, 32, 32],
        "max": [32, 3, 32, 32],
    }
    assert profile_shapes("input", [-1, 3, 32, 32], "2,4,16")["max"] == [16, 3, 32, 32]
    static = profile_shapes("input", [1, 3, 32, 32], None)
    assert static["min"] == static["opt"] == static["max"] == [1, 3, 32, 32]
    assert profile_batches(4, "4") == (4, 4, 4) and profile_batches(1, "1,1,1") == (1, 1, 1)
    with pytest.raises(QdgError, match="disagrees with the ONNX input's fixed batch 1"):
        profile_batches(1, "1,8,32")
    with pytest.raises(QdgError, match="dynamic dimension besides the batch"):
        profile_shapes("input", [-1, 3, -1, 32], None)


# ---------------------------------------------------------------- FP16 float remainder


def _qdq_params(model):
    """Every Q/DQ node's inputs with their initializer values: must survive the pass byte for byte."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        n.name: [(t, inits[t].dtype.str, inits[t].tobytes()) for t in n.input if t in inits]
        for n in model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    }


@pytest.mark.parametrize("name,graph", [("alignq", "lean"), ("alignq", "exact"), ("trt", "lean"), ("trt", "exact")])
def test_fp16_remainder_keeps_qdq_and_agrees_with_fp32_on_ort_cpu(exports, name, graph):
    model = onnx.load(str(exports[name, graph]))
    half, summary = convert_float_remainder(model)
    onnx.checker.check_model(half, full_check=True)
    assert _qdq_params(half) == _qdq_params(model)  # scales and zero points identical, same Q/DQ nodes
    assert summary["fp16_nodes"] > 0 and summary["fp16_initializers"] > 0
    types = {t.data_type for t in half.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    # the Q/DQ chains untouched: every node reading a DequantizeLinear keeps its inputs' names
    producer = {o: n for n in model.graph.node for o in n.output}
    before = {
        n.name: list(n.input)
        for n in model.graph.node
        if any(getattr(producer.get(t), "op_type", "") == "DequantizeLinear" for t in n.input)
    }
    after = {n.name: list(n.input) for n in half.graph.node if n.name in before}
    assert after == before
    # FP32 in, FP32 out; logits within FP16's precision of the FP32 graph (rtol 2e-2, atol 5e-2 on logits
    # of magnitude ~2: measured max |Δ| 0.005-0.018), same top-1 on 32 inputs
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [onnx.TensorProto.FLOAT]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.RandomState(0).rand(32, *dims).astype(np.float32)
    feed = {model.graph.input[0].name: x}
    a = ort_session(model).run(None, feed)[0]
    b = ort_session(half).run(None, feed)[0]
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, a, rtol=2e-2, atol=5e-2)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95


SNAP_SUCCESSORS = ("Div", "Round", "Mul", "Add", "Relu", "Identity")


def _snap_chains(graph):
    """Nodes of `graph` from an op reading a DequantizeLinear through its Div/Round/Mul/Add/Relu successors (a plain
    walk per DQ; the exact graph's snapped accumulators and what TensorRT fuses after them)."""
    consumers = {}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    found = set()
    todo = [c for n in graph.node if n.op_type == "DequantizeLinear" for c in consumers.get(n.output[0], [])]
    while todo:
        n = todo.pop()
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and n.name not in found:
            found.add(n.name)
            todo += [c for c in consumers.get(n.output[0], []) if c.op_type in SNAP_SUCCESSORS]
    return found


@pytest.mark.parametrize("name", ["alignq", "trt"])
def test_fp16_remainder_keeps_whole_qdq_chains_fp32(exports, name):
    """The exact graph's snapped layers (Conv → Div → Round → Mul → Add → Relu): no Cast inside a chain, every
    chain node reads and writes float32 (TensorRT 11 fuses the chain into INT8 only without a Cast; Round of an
    accumulator in float16 is inexact above 2048)."""
    model = onnx.load(str(exports[name, "exact"]))
    assert any(n.op_type == "Round" for n in model.graph.node)  # the snap ops are there to keep
    half, _ = convert_float_remainder(model)
    chain = _snap_chains(half.graph)
    assert {"Conv", "Round", "Div", "Mul", "Add", "Relu"} <= {n.op_type for n in half.graph.node if n.name in chain}
    assert not [n.name for n in half.graph.node if n.name in chain and n.op_type == "Cast"]
    inferred = onnx.shape_inference.infer_shapes(half).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *inferred.input, *inferred.output)}
    types.update({t.name: t.data_type for t in half.graph.initializer})
    half_tensors = [
        (n.name, t)
        for n in half.graph.node
        if n.name in chain
        for t in (*n.input, *n.output)
        if types.get(t) == onnx.TensorProto.FLOAT16
    ]
    assert half_tensors == []
    assert _snap_chains(model.graph) == chain  # the same chains as before the pass


def test_fp16_remainder_io_in_fp16_when_asked(exports):
    half, summary = convert_float_remainder(onnx.load(str(exports["trt", "lean"])), keep_io=False)
    onnx.checker.check_model(half)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 and not summary["io_fp32"]
    x = np.random.RandomState(1).rand(4, 1, 28, 28).astype(np.float16)
    assert ort_session(half).run(None, {half.graph.input[0].name: x})[0].dtype == np.float16


# ---------------------------------------------------------------- inspector JSON, not-INT8 list, report schema


def test_inspector_sample_parsed_and_matched_to_the_onnx(exports):
    layers = parse_layers(json.dumps(SAMPLE))
    assert [r["precision"] for r in layers] == ["FP16", "FP16", "INT8", "FP32", "FP16"]
    assert layers[2]["onnx"] == ["conv2.weight_dq", "conv2.act.dq", "conv2.conv"]
    assert layers[2]["tactic"].startswith("sm80_xmma_fprop_implicit_gemm_interleaved_i8i8")
    quantized = quantized_layers(exports["alignq", "lean"])
    assert quantized == [("Conv", "conv2.conv"), ("Conv", "conv3.conv"), ("Conv", "conv4.conv")]
    missing = not_int8(quantized, layers)
    assert [(m["onnx_node"], m["precision"]) for m in missing] == [("conv3.conv", "FP32"), ("conv4.conv", None)]
    assert missing[0]["reason"] == "input format: Row major linear FP32 format"
    assert "no engine layer names this node" in missing[1]["reason"]


def test_inspector_11_layout_and_names_only():
    v11 = copy.deepcopy(SAMPLE)
    del v11["Bindings"]
    v11["I/O Tensors"] = [{"Name": "input", "IOMode": "Input", "DataType": "Float"}]
    for layer in v11["Layers"]:
        for t in layer["Inputs"]:
            fmt = t.pop("Format/Datatype")
            t["Format"], t["DataType"] = fmt, "Int8" if "INT8" in fmt else "Half" if "FP16" in fmt else "Float"
    assert [r["precision"] for r in parse_layers(v11)] == ["FP16", "FP16", "INT8", "FP32", "FP16"]
    names_only = parse_layers({"Layers": ["conv2.weight_dq + conv2.act.dq + conv2.conv"], "Bindings": []})
    assert names_only[0]["onnx"] == ["conv2.weight_dq", "conv2.act.dq", "conv2.conv"]
    assert names_only[0]["precision"] is None


def test_engine_report_schema(exports):
    onnx_path = exports["alignq", "lean"]
    plan = build_plan("10.7.0", has_qdq=True, fp16=True).to_dict()
    rep = engine_report(
        engine="m.engine",
        onnx=str(onnx_path),
        engine_bytes=1234,
        plan=plan,
        gpu={"name": "NVIDIA H100", "compute_capability": "9.0"},
        profiles=[{"input": "input", "min": [1, 1, 28, 28], "opt": [8, 1, 28, 28], "max": [32, 1, 28, 28]}],
        workspace_gb=2.0,
        opt_level=None,
        timing_cache=None,
        build_seconds=12.3456,
        fp16_conversion=None,
        inspector_json=json.dumps(SAMPLE),
        quantized=quantized_layers(onnx_path),
        float_notes=float_layers(onnx_path),
    )
    assert schema_errors(rep) == []
    assert rep["precision"] == {
        "strongly_typed": False,
        "int8_flag": True,
        "fp16_flag": True,
        "fp16_remainder": True,
        "device": "GPU",
        "gpu_fallback": False,
    }
    assert rep["layer_precisions"] == {"FP16": 3, "INT8": 1, "FP32": 1} and rep["quantized_layers"] == 3
    assert len(rep["not_int8"]) == 2 and len(rep["float_layers"]) == 2
    json.dumps(rep)  # writable as model.engine.json
    broken = dict(rep, gpu={"name": "x"}, build_seconds="slow")
    del broken["tensorrt"]
    assert set(schema_errors(broken)) == {"tensorrt: missing", "build_seconds: str", "gpu.compute_capability: missing"}


def test_has_qdq(exports, tmp_path):
    """One check for "explicitly quantized" (the builder's INT8 flag on TensorRT 10, ort-trt's trt_int8_enable)."""
    model = onnx.load(str(exports["trt", "lean"]))
    assert has_qdq(model)
    fp32 = tmp_path / "fp32.onnx"
    export_run_dir(DATA / "golden" / "trt", fmt="onnx-fp32", out=fp32, verify=False)
    assert not has_qdq(onnx.load(str(fp32)))


# ---------------------------------------------------------------- check --target tensorrt (issue item 6)


def test_alignq_tensorrt_export_has_notes_not_violations(exports):
    """AlignQ's first conv (float input) and classifier (no Q/DQ) run in float on purpose: notes, no violation."""
    path = exports["alignq", "lean"]
    assert check_tensorrt_rules(path) == []
    notes = float_layers(path)
    assert len(notes) == 2 and "conv1.conv" in notes[0] and "fc.gemm" in notes[1]


# ---------------------------------------------------------------- the CLI without TensorRT


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401

        return True
    except ImportError:
        return False


@pytest.mark.skipif(_has_tensorrt(), reason="TensorRT is installed: the missing-TensorRT error cannot happen")
def test_export_tensorrt_without_tensorrt_is_one_error_line_and_no_file(tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(DATA / "golden" / "trt", run)
    before = sorted(p.name for p in run.iterdir())
    for extra in ([], ["--fp16", "--batch-range", "1,4,8", "--strict-int8", "--onnx", str(run / "nope.onnx")]):
        r = cli("export", run, "--format", "tensorrt", *extra)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: TensorRT is not installed")
        assert "pip install" in lines[0] and "tensorrt" in lines[0]
        assert sorted(p.name for p in run.iterdir()) == before  # no model.onnx, model.engine or report
    # bad TensorRT options are refused before TensorRT is looked for: rows in test_bad_inputs.py


def test_timing_cache_folder_checked_up_front(tmp_path):
    from qdg_deploy.export.tensorrt import TrtOptions

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(QdgError, match="--timing-cache .*cannot write in"):
        TrtOptions(timing_cache=str(blocker / "trt.cache")).check()
    TrtOptions(timing_cache=str(tmp_path / "new" / "trt.cache")).check()  # a folder still to be made is fine


def test_engine_files_written_together(tmp_path):
    """build_engine writes nothing; write_engine_files puts the engine, its report and the timing cache in place."""
    from qdg_deploy.export.tensorrt import engine_report_path, write_engine_files

    engine, cache = tmp_path / "m.engine", tmp_path / "cache" / "trt.cache"
    write_engine_files(engine, (b"engine", {"engine_bytes": 6}, b"cache"), str(cache))
    assert engine.read_bytes() == b"engine" and cache.read_bytes() == b"cache"
    assert json.loads(engine_report_path(engine).read_text()) == {"engine_bytes": 6}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "m.engine", "m.engine.json"]  # no temporaries
    write_engine_files(tmp_path / "n.engine", (b"e", {}, None), None)  # no --timing-cache: no cache file
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cache",
        "m.engine",
        "m.engine.json",
        "n.engine",
        "n.engine.json",
    ]


# ---------------------------------------------------------------- a real build (TensorRT and a GPU)


def test_real_engine_build(exports, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="needs the tensorrt package (and a CUDA GPU)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (tensorrt is installed)")
    from qdg_deploy.export.tensorrt import TrtOptions, build_engine, engine_report_path, write_engine_files

    engine = tmp_path / "m.engine"
    opts = TrtOptions(batch_range="1,4,8", timing_cache=str(tmp_path / "cache.bin"))
    built = build_engine(exports["trt", "lean"], engine, opts)
    assert not engine.exists()  # nothing written until the caller commits
    write_engine_files(engine, built, opts.timing_cache)
    rep = built[1]
    assert engine.stat().st_size == rep["engine_bytes"] > 0 and (tmp_path / "cache.bin").is_file()
    assert schema_errors(json.loads(engine_report_path(engine).read_text())) == []
    assert rep["tensorrt"] == trt.__version__ and rep["layers"] and rep["quantized_layers"] == 5
    assert any(r["precision"] == "INT8" for r in rep["layers"])


# ---------------------------------------------------------------- runtimes' pure parts, Jetson facts


def test_in_batches_chunks_within_the_profile():
    from qdg_deploy.bench.session import in_batches

    calls = []

    def fn(b):
        calls.append(len(b))
        assert 2 <= len(b) <= 4
        return b.reshape(len(b), -1).sum(1, keepdims=True)

    x = np.arange(9 * 2, dtype=np.float32).reshape(9, 2)
    out = in_batches(fn, x, (2, 4))
    assert calls == [4, 4, 2] and out.shape == (9, 1)  # the last row padded to 2, the padding dropped
    np.testing.assert_array_equal(out[:, 0], x.sum(1))
    assert in_batches(lambda b: b, x, None) is not None


def test_ort_trt_options_carry_the_profile_and_caches(tmp_path):
    from qdg_deploy.bench.runtime_ort import engine_settings, ort_trt_options

    o = ort_trt_options("input", [3, 32, 32], (1, 8, 32), tmp_path, int8=True, fp16=True, opt_level=4)
    assert o["trt_profile_min_shapes"] == "input:1x3x32x32" and o["trt_profile_max_shapes"] == "input:32x3x32x32"
    assert o["trt_profile_opt_shapes"] == "input:8x3x32x32" and o["trt_int8_enable"] and o["trt_fp16_enable"]
    assert o["trt_engine_cache_enable"] and o["trt_timing_cache_path"] == str(tmp_path)
    assert o["trt_builder_optimization_level"] == 4
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"")
    assert engine_settings(onnx_path)["batch_range"] == (1, 8, 32)  # no engine report: the default range
    # a TensorRT 11 report: FP16 by conversion, fp16_flag False; the ONNX named relative to the report's folder
    rep = {
        "onnx": "model.onnx",
        "profiles": [{"input": "input", "min": [2, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]}],
        "precision": {"fp16_flag": False, "fp16_remainder": True},
        "builder_optimization_level": 5,
    }
    (tmp_path / "model.engine.json").write_text(json.dumps(rep))
    assert engine_settings(onnx_path) == {"batch_range": (2, 4, 16), "fp16": True, "opt_level": 5}
    (tmp_path / "model.engine.json").write_text(json.dumps(dict(rep, onnx=str(onnx_path.resolve()))))
    assert engine_settings(onnx_path)["batch_range"] == (2, 4, 16)  # as export writes it now: absolute


def _jetson_tree(root: Path, *, clocks: bool) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    (root / "etc/nvpmodel.conf").write_text("< POWER_MODEL ID=0 NAME=MAXN >\n< POWER_MODEL ID=2 NAME=30W >\n")
    (root / "var/lib/nvpmodel").mkdir(parents=True)
    (root / "var/lib/nvpmodel/status").write_text("pmode:0002 fmode:quiet\n")
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    for i in range(2):
        d = root / f"sys/devices/system/cpu/cpu{i}/cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_max_freq").write_text("2201600\n")
        (d / "scaling_min_freq").write_text("2201600\n" if clocks else "729600\n")
    g = root / "sys/class/devfreq/17000000.ga10b"
    g.mkdir(parents=True)
    (g / "max_freq").write_text("1300500000\n")
    (g / "min_freq").write_text("1300500000\n")
    return root


def test_jetson_facts_from_sysfs(tmp_path):
    from qdg_deploy.bench.env import jetson_info
    from qdg_deploy.bench.results import jetson_note

    on = jetson_info(_jetson_tree(tmp_path / "a", clocks=True))
    assert on == {"board": "NVIDIA Jetson AGX Orin Developer Kit", "nvpmodel_mode": "30W (2)", "jetson_clocks": True}
    assert jetson_note(on) == "; NVIDIA Jetson AGX Orin Developer Kit, nvpmodel 30W (2), jetson_clocks on"
    assert jetson_info(_jetson_tree(tmp_path / "b", clocks=False))["jetson_clocks"] is False


def test_jetson_facts_absent_or_unreadable_refuse_nothing(tmp_path):
    from qdg_deploy.bench.env import jetson_info
    from qdg_deploy.bench.results import jetson_note

    assert jetson_info(tmp_path) is None and jetson_note(None) == ""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("")
    bare = jetson_info(tmp_path)  # a Jetson whose sysfs we cannot read: every fact None, no error
    assert bare == {"board": None, "nvpmodel_mode": None, "jetson_clocks": None} and jetson_note(bare) == ""


def test_two_onnxruntime_packages_are_named_with_the_fix():
    from qdg_deploy.bench.runtime_ort import installed_ort_packages, ort_conflict

    assert ort_conflict(["onnxruntime-gpu"]) is None and ort_conflict([]) is None
    line = ort_conflict(["onnxruntime", "onnxruntime-gpu"])
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in line
    assert "onnxruntime" in installed_ort_packages()  # this machine: the CPU package only
