"""Tests for `qdg-deploy bench`: runtimes, the timing harness's statistics, accuracy, size, JSON, plots, compare.

Every available runtime runs on real (small) models: DomainBed's MNIST CNN as a float run and as an 8-bit
(ORT scheme) fake-quant run, their float ONNX (torch's exporter) and an 8-bit QDQ ONNX (ORT quantize_static).
Weights are untrained (seeded), which is enough for speed, size and for checking that runtimes agree.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from qdg_deploy.data import get_dataset
from qdg_deploy.quant import get_scheme, model_size
from qdg_deploy.runs import build_run_model, model_record, save_run

DOMAINS = ("d0", "d1", "d2")
CLASSES = ("a", "b", "c")
IMAGE = 16


def write_folder_dataset(root: Path, per_class: int = 5) -> Path:
    """DOMAINS × CLASSES × per_class PNGs; the class decides the dominant colour, the domain the noise."""
    rng = np.random.default_rng(0)
    for di, d in enumerate(DOMAINS):
        for ci, c in enumerate(CLASSES):
            folder = root / d / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 60 + 40 * di, (IMAGE, IMAGE, 3)).astype(np.uint8)
                arr[..., ci] = 200
                Image.fromarray(arr).save(folder / f"{i}.png")
    return root


def make_run(
    out: Path,
    data_root: Path,
    *,
    arch: str = "mnist-cnn",
    scheme: str | None = None,
    test_env_index: int = 1,
    seed: int = 0,
) -> Path:
    """A run directory as `qdg-deploy train` writes it, with untrained (seeded) weights."""
    torch.manual_seed(seed)
    dataset = f"folder:{data_root}"
    ds = get_dataset(dataset, image_size=IMAGE)
    sch = get_scheme(scheme) if scheme else None
    record = model_record(arch, ds.input_shape, ds.num_classes, sch)
    net = build_run_model(record)
    if sch is not None:  # activation quantizers initialize from the first real batch they see
        x = torch.stack([ds.domain_dataset(0, train=False)[i][0] for i in range(8)])
        with torch.no_grad():
            net(x)
    net.eval()
    hp = {
        "dataset": dataset,
        "data_dir": None,
        "image_size": IMAGE,
        "holdout_fraction": 0.2,
        "seed": 0,
        "method": "qtdog" if sch else "erm",
        "arch": arch,
        "scheme": scheme,
    }
    config = {
        "hparams": hp,
        "dataset": dataset,
        "domains": ds.domains,
        "test_env_index": test_env_index,
        "classes": ds.classes,
        "model": record,
        "size": model_size(net),
    }
    metrics = {"method": hp["method"], "bits": 8 if sch else 32, "scheme": scheme}
    save_run(out, config, net.state_dict(), metrics)
    return out


def export_float_onnx(net: torch.nn.Module, path: Path, input_shape) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            torch.zeros(1, *input_shape),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def quantize_onnx(fp32: Path, out: Path, input_shape, n_calib: int = 8) -> Path:
    """8-bit QDQ ONNX (uint8 activations, int8 per-channel weights: ORT's x86 U8S8 path).

    Pre-processed first: the Identity nodes torch's exporter puts on folded weights otherwise keep ORT
    from fusing most DQ→Conv→Q into QLinearConv (measured on resnet18: 4 of 20 convs fused, INT8 slower
    than FP32; pre-processed: 20 of 20)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre))

    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": rng.random((1, *input_shape), dtype=np.float32)} for _ in range(n_calib)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    pre.unlink()
    return out


import json
import shutil
import time

import pytest

from qdg_deploy import bench as B
from qdg_deploy.accuracy import accuracy
from qdg_deploy.bench.runtimes import COPIES_NONE
from qdg_deploy.data import split_domains
from qdg_deploy.errors import QdgError
from qdg_deploy.quant import strip_quantizers
from qdg_deploy.runs import load_run
from qdg_deploy.timing import summarize, time_fn

FAST = dict(warmup_ms=10, duration_s=0.05, min_iters=3, threads=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = write_folder_dataset(root / "data")
    qrun = make_run(root / "qrun", data, scheme="ort")
    frun = make_run(root / "frun", data, seed=1)
    shape = [3, IMAGE, IMAGE]
    export_float_onnx(strip_quantizers(load_run(qrun).model), qrun / "model.onnx", shape)
    export_float_onnx(load_run(frun).model, frun / "model.onnx", shape)
    bare = root / "bare"
    bare.mkdir()
    fp32 = export_float_onnx(load_run(frun).model, bare / "fp32.onnx", shape)
    int8 = quantize_onnx(fp32, bare / "int8.onnx", shape)
    return {"root": root, "data": data, "qrun": qrun, "frun": frun, "fp32": fp32, "int8": int8}


# ---------------------------------------------------------------- runtimes


def test_list_runtimes_cpu_available_gpu_explained():
    rows = {r["name"]: r for r in B.list_runtimes()}
    assert set(rows) >= {"torch-fp32", "torch-fq", "ort-cpu", "ort-cuda", "ort-trt", "trt"}
    for name in ("torch-fp32", "torch-fq", "ort-cpu"):
        assert rows[name]["available"], rows[name]["reason"]
    for name, r in rows.items():
        assert r["reason"], f"{name} gives no details / reason"
    # Where the GPU runtimes are unavailable, the reason names what is missing.
    for name in ("ort-cuda", "ort-trt"):
        if not rows[name]["available"]:
            assert "onnxruntime" in rows[name]["reason"] or "GPU" in rows[name]["reason"]
    if not rows["trt"]["available"]:
        assert "tensorrt" in rows["trt"]["reason"]


def test_cli_list_runtimes(cli, monkeypatch):
    from rich.console import Console

    import qdg_deploy.cli as C

    monkeypatch.setattr(C, "out", Console(width=200))  # no wrapping, so the output can be searched
    res = cli("bench", "--list-runtimes")
    assert res.returncode == 0, res.stderr
    for name in ("torch-fp32", "torch-fq", "ort-cpu", "ort-cuda", "ort-trt", "trt"):
        assert name in res.stdout


# ---------------------------------------------------------------- statistics


def test_summary_percentiles_and_throughput():
    lat_ns = np.random.default_rng(0).permutation(np.arange(1, 101)) * 1_000_000  # 1..100 ms, shuffled
    s = summarize(lat_ns, batch=8)
    assert s.min_ms == 1 and s.max_ms == 100 and s.iterations == 100
    assert s.mean_ms == pytest.approx(50.5)
    assert s.p50_ms == pytest.approx(50.5) and s.p99_ms == pytest.approx(99.01)
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p95_ms <= s.p99_ms <= s.max_ms
    assert s.throughput_ips == pytest.approx(8 / 0.0505)
    assert s.throughput_wall_ips == pytest.approx(8 * 100 / s.wall_s)
    assert s.wall_s == pytest.approx(5.050)


def spin(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


class SpinSession(B.Session):
    """Busy-waits base + per_image × batch: a runtime whose cost is known exactly (never less)."""

    def __init__(self, base_ms: float, per_image_ms: float):
        self.runtime, self.copies, self.info = "spin", COPIES_NONE, {}
        self.base, self.per = int(base_ms * 1e6), int(per_image_ms * 1e6)
        self.calls = 0

    def run(self, x):
        self.calls += 1
        spin(self.base + self.per * len(x))
        return np.zeros((len(x), 3), np.float32)

    def size(self):
        return {"file": None, "file_bytes": 0, "packed_bytes": None, "params": None}


class SpinRuntime(B.Runtime):
    name = "spin-test"
    description = "test runtime with a known cost"

    def __init__(self, base_ms=1.0, per_image_ms=0.25):
        self.base, self.per = base_ms, per_image_ms
        self.sessions = []

    def available(self):
        return True, "always"

    def applies(self, artifact):
        return True, ""

    def load(self, artifact, *, threads=None, copies=True):
        self.sessions.append(SpinSession(self.base, self.per))
        return self.sessions[-1]


@pytest.fixture
def spin_runtime():
    rt = B.register_runtime(SpinRuntime())
    yield rt
    del B.RUNTIMES[rt.name]


def test_known_cost_runtime_gives_expected_latency(world, spin_runtime):
    result = B.bench([world["fp32"]], ["spin-test"], [1, 4], warmup_ms=20, duration_s=0.25, min_iters=5, accuracy=False)
    recs = {r["batch"]: r for r in result["records"]}
    assert set(recs) == {1, 4}
    for b, r in recs.items():
        want = 1.0 + 0.25 * b  # ms
        lat = r["latency_ms"]
        assert want <= lat["min"] <= want + 0.05  # a spin never ends early; the harness adds < 50 µs
        assert lat["p50"] <= 1.5 * want  # room for preemption on a shared CPU
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert r["throughput_ips"] == pytest.approx(b / (lat["mean"] / 1e3), rel=1e-9)
        assert r["throughput_wall_ips"] == pytest.approx(b * r["iterations"] / r["wall_s"], rel=1e-9)
        # Latencies are back-to-back: they add up to the timed wall time, so both throughputs agree.
        assert r["throughput_wall_ips"] == pytest.approx(r["throughput_ips"], rel=1e-6)
        assert r["wall_s"] >= 0.25
        assert r["iterations"] <= 0.3 / (want / 1e3) + 1
    assert recs[4]["throughput_ips"] > recs[1]["throughput_ips"]


def test_min_iters_and_warmup_respected():
    s = SpinSession(0.2, 0.0)
    times, wall, warm = time_fn(s.run, np.zeros((1, 1)), warmup_ms=5, duration_s=0.0, min_iters=7)
    assert len(times) == 7 and warm >= 1 and s.calls == 7 + warm
    assert sum(times) == wall
    s = SpinSession(0.2, 0.0)
    times, _, _ = time_fn(s.run, np.zeros((1, 1)), warmup_ms=0, duration_s=0.05, min_iters=1)
    assert 0.05 <= sum(times) / 1e9 < 0.2 and len(times) > 10


# ---------------------------------------------------------------- real models on every available runtime


@pytest.fixture(scope="module")
def result(world):
    return B.bench([world["qrun"], world["frun"], world["int8"]], None, [1, 4], **FAST)


def by(result, artifact, runtime):
    return {r["batch"]: r for r in result["records"] if r["artifact"] == str(artifact) and r["runtime"] == runtime}


def test_every_available_runtime_runs(world, result):
    avail = {r["name"] for r in B.list_runtimes() if r["available"]}
    measured = {(r["artifact"], r["runtime"]) for r in result["records"]}
    q, f, i8 = str(world["qrun"]), str(world["frun"]), str(world["int8"])
    expected = {(q, "torch-fp32"), (q, "torch-fq"), (f, "torch-fp32"), (q, "ort-cpu"), (f, "ort-cpu"), (i8, "ort-cpu")}
    expected |= {(a, rt) for a in (q, f, i8) for rt in ("ort-cuda", "ort-trt") if rt in avail}
    assert {(a, rt) for a, rt in measured if rt in avail} == expected
    assert len(result["records"]) == 2 * len(expected)  # one per (artifact, runtime, batch)
    skipped = {(s["artifact"], s["runtime"]): s["reason"] for s in result["skipped"]}
    assert "not quantized" in skipped[(f, "torch-fq")]
    for rt in ("ort-cuda", "ort-trt", "trt"):
        if rt not in avail:
            assert skipped[(None, rt)].startswith("unavailable: ")
    for r in result["records"]:
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert r["iterations"] >= FAST["min_iters"] and r["input_shape"] == [r["batch"], 3, IMAGE, IMAGE]
        assert r["copies"] in ("none", "included", "excluded")
    env = result["environment"]
    assert env["cpu"] and env["versions"]["onnxruntime"] and env["versions"]["torch"]
    json.dumps(result)  # JSON-ready as is


def test_runtimes_agree_on_logits(world):
    """Same network on torch-fp32 and on ORT (its float export): same logits; fake-quant close to float."""
    art = B.resolve_artifact(world["qrun"])
    x = np.random.default_rng(1).random((4, 3, IMAGE, IMAGE), dtype=np.float32)
    out = {}
    for name in ("torch-fp32", "torch-fq", "ort-cpu"):
        s = B.get_runtime(name).load(art, threads=1)
        out[name] = s.predict(x)
        assert out[name].shape == (4, 3)
    np.testing.assert_allclose(out["ort-cpu"], out["torch-fp32"], rtol=1e-4, atol=1e-4)
    assert not np.allclose(out["torch-fq"], out["torch-fp32"], atol=1e-6)  # quantizers really removed
    i8 = B.get_runtime("ort-cpu").load(B.resolve_artifact(world["int8"]), threads=1).predict(x)
    f32 = B.get_runtime("ort-cpu").load(B.resolve_artifact(world["fp32"]), threads=1).predict(x)
    assert np.abs(i8 - f32).max() < 0.25 * np.abs(f32).max() + 1e-3


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))],
)
def test_torch_session_copies(world, device):
    """torch-fp32 records host<->device copies as ORT / TensorRT do: none on the CPU; on a GPU included, or excluded
    with --no-copies (the input staged on the device once, the output left there)."""
    art = B.resolve_artifact(world["qrun"])
    x = np.random.default_rng(1).random((4, 3, IMAGE, IMAGE), dtype=np.float32)
    want = B.get_runtime("torch-fp32").load(art, threads=1, device="cpu").predict(x)
    for copies, label in [(True, "included"), (False, "excluded")]:
        s = B.get_runtime("torch-fp32").load(art, threads=1, copies=copies, device=device)
        assert s.copies == ("none" if device == "cpu" else label)
        out = s.run(x)
        assert (out is None) == (device == "cuda" and not copies)
        np.testing.assert_allclose(s.predict(x), want, rtol=1e-3, atol=1e-3)


def test_per_domain_accuracy(world, result):
    q = str(world["qrun"])
    splits = split_domains(get_dataset(f"folder:{world['data']}", image_size=IMAGE), 0.2, 0)
    fq = by(result, q, "torch-fq")[1]["accuracy"]
    assert list(fq["per_domain"]) == list(DOMAINS)
    held = [d for d, v in fq["per_domain"].items() if v["held_out"]]
    assert held == ["d1"] and fq["test_env"] == "d1"
    model = load_run(q).model
    for s in splits:
        info = fq["per_domain"][s.name]
        if s.name == "d1":  # all of the held-out domain
            assert info["n"] == len(CLASSES) * 5 and info["split"] == "all"
            n_in, n_out = len(s.in_eval), len(s.out_eval)
            want = (accuracy(model, s.in_eval) * n_in + accuracy(model, s.out_eval) * n_out) / (n_in + n_out)
        else:
            assert info["n"] == len(s.out_eval) and info["split"] == "out"
            want = accuracy(model, s.out_eval)
        assert info["acc"] == pytest.approx(want)
    # The same float network on torch and on ORT scores the same; records of one pair share it.
    t, o = by(result, q, "torch-fp32"), by(result, q, "ort-cpu")
    for d in DOMAINS:
        assert o[1]["accuracy"]["per_domain"][d]["acc"] == pytest.approx(t[1]["accuracy"]["per_domain"][d]["acc"])
    assert t[1]["accuracy"] == t[4]["accuracy"]
    # A bare .onnx (no run directory around it) is timed and sized, accuracy skipped with a reason.
    i8 = by(result, world["int8"], "ort-cpu")[1]
    assert i8["accuracy"] is None and "no run directory" in i8["accuracy_skipped"]


def test_sizes(world, result):
    q, f = str(world["qrun"]), str(world["frun"])
    fq, fp = by(result, q, "torch-fq")[1]["size"], by(result, q, "torch-fp32")[1]["size"]
    assert fq["packed_bytes"] == load_run(q).config["size"]["packed_bytes"]
    assert fq["packed_bytes"] < 0.3 * fp["packed_bytes"]  # 8-bit weights vs float
    assert fq["params"] == fp["params"] == load_run(q).config["size"]["params"]
    assert fq["file_bytes"] == (world["qrun"] / "model.safetensors").stat().st_size
    o = by(result, f, "ort-cpu")[1]["size"]
    assert o["file_bytes"] == (world["frun"] / "model.onnx").stat().st_size and o["file"].endswith("model.onnx")
    assert abs(o["params"] - fp["params"]) / fp["params"] < 0.01  # same network, as stored in ONNX
    i8 = by(result, world["int8"], "ort-cpu")[1]["size"]
    assert i8["file_bytes"] < 0.4 * o["file_bytes"]
    assert i8["packed_bytes"] < 0.4 * o["packed_bytes"]
    assert abs(i8["params"] - o["params"]) / o["params"] < 0.01


# ---------------------------------------------------------------- GPU runtimes


@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt"])
def test_gpu_onnx_runtimes(world, name):
    ok, why = B.get_runtime(name).available()
    if not ok:
        pytest.skip(why)
    res = B.bench([world["fp32"]], [name], [1, 4], **FAST)
    assert {r["batch"] for r in res["records"]} == {1, 4}
    assert all(r["copies"] == "included" for r in res["records"])


def test_trt_runtime(world, tmp_path):
    """Where TensorRT and a GPU exist: build the engine (export --format tensorrt), bench it within and outside
    its profile, with and without a CUDA graph, and compare its logits with ORT CPU's on the same ONNX."""
    ok, why = B.get_runtime("trt").available()
    if not ok:
        pytest.skip(why)  # e.g. "the tensorrt Python package is not installed"
    from qdg_deploy.export import export_run_dir
    from qdg_deploy.export.tensorrt import TrtOptions
    from qdg_deploy.export.trt_report import schema_errors

    run = tmp_path / "qrun"
    shutil.copytree(world["qrun"], run)
    export_run_dir(run, fmt="tensorrt", verify=False, trt=TrtOptions(batch_range="1,2,4"))
    rep = json.loads((run / "model.engine.json").read_text())
    assert schema_errors(rep) == [] and rep["engine_bytes"] == (run / "model.engine").stat().st_size
    assert rep["profiles"][0]["max"][0] == 4 and rep["layers"]
    res = B.bench([run], ["trt"], [1, 4, 8], **FAST)
    assert {r["batch"] for r in res["records"]} == {1, 4}
    assert any("optimization profile" in s["reason"] for s in res["skipped"] if s["batch"] == 8)
    assert res["records"][0]["accuracy"] is not None  # predict ran the data set in chunks of at most 4
    g = B.bench([run], ["trt"], [2], cuda_graph=True, accuracy=False, **FAST)
    assert g["records"][0]["runtime_info"]["cuda_graph"] and g["records"][0]["iterations"] >= 3
    art = B.resolve_artifact(run)
    x = np.random.default_rng(0).random((8, 3, IMAGE, IMAGE), dtype=np.float32)
    a = B.get_runtime("ort-cpu").load(art, threads=1).predict(x)
    b = B.get_runtime("trt").load(art).predict(x)
    assert b.shape == a.shape and np.isfinite(b).all()
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.75  # INT8/FP16 kernels against ORT's float Q/DQ


# ---------------------------------------------------------------- CLI: JSON, plots, compare, errors


def test_cli_json_plots_compare(world, tmp_path, monkeypatch, cli):
    from rich.console import Console

    import qdg_deploy.cli as C

    monkeypatch.setattr(C, "out", Console(width=200))  # no wrapping, so the output can be searched
    a, p = tmp_path / "a.json", tmp_path / "out.png"
    args = [
        "bench",
        str(world["qrun"]),
        "-r",
        "ort-cpu",
        "-r",
        "torch-fq",
        "--batch",
        "1,2",
        "--duration-s",
        "0.05",
        "--warmup-ms",
        "5",
        "--min-iters",
        "3",
        "--threads",
        "1",
    ]
    res = cli(*args, "--json", str(a), "--plot", str(p))
    assert res.returncode == 0, res.stderr
    data = json.loads(a.read_text())
    assert data["schema"] == B.SCHEMA
    assert sorted((r["runtime"], r["batch"]) for r in data["records"]) == [
        ("ort-cpu", 1),
        ("ort-cpu", 2),
        ("torch-fq", 1),
        ("torch-fq", 2),
    ]
    assert "held-out" in res.stdout and "d1 (held-out)" in res.stdout
    import matplotlib.image as mpimg

    for png in (tmp_path / "out-latency.png", tmp_path / "out-accuracy.png"):
        img = mpimg.imread(png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300 and img[..., :3].std() > 0.05
    res = cli(*args, "--no-accuracy", "--compare", str(a))
    assert res.returncode == 0, res.stderr
    assert "New / old" in res.stdout and "ort-cpu" in res.stdout


# Every key of `bench --json` as it was before the tables were made to fit 80 columns: the JSON must not change.
JSON_KEYS = {"created", "environment", "records", "schema", "settings", "skipped"}
SETTINGS_KEYS = {
    "accuracy",
    "batches",
    "copies",
    "cuda_graph",
    "duration_s",
    "input",
    "latency",
    "min_iters",
    "threads",
    "warmup_ms",
}
RECORD_KEYS = {
    "accuracy",
    "accuracy_skipped",
    "artifact",
    "artifact_kind",
    "artifact_path",
    "batch",
    "copies",
    "input_shape",
    "iterations",
    "latency_ms",
    "run_dir",
    "runtime",
    "runtime_info",
    "size",
    "threads",
    "throughput_ips",
    "throughput_wall_ips",
    "versions",
    "wall_s",
    "warmup_iterations",
    "schema_version",
}
LATENCY_KEYS = {"max", "mean", "min", "p50", "p90", "p95", "p99", "std"}
ACCURACY_KEYS = {"dataset", "per_domain", "seconds", "test_acc", "test_env", "val_acc"}
ENV_KEYS = {
    "cpu",
    "cpu_count",
    "gpu",
    "jetson",
    "jetson_power_mode",
    "platform",
    "threads_requested",
    "torch_threads",
    "versions",
}


def assert_whole(text: str, values, width: int = 80):
    """Every value appears whole in `text` (not cut, not ellipsized, not folded) and no line is wider than `width`."""
    import re

    from rich.cells import cell_len

    assert "…" not in text
    assert max(cell_len(line) for line in text.splitlines()) <= width
    for v in values:
        assert re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])", text), f"{v!r} not whole in the table"


def test_cli_bench_tables_legible_at_80_columns_json_unchanged(world, tmp_path, monkeypatch, cli):
    from rich.console import Console

    import qdg_deploy.cli as C
    from qdg_deploy.bench.results import _count, _ms, _short
    from qdg_deploy.tables import human_bytes, pct

    con = Console(width=80, record=True, file=open(tmp_path / "tty.txt", "w"))
    monkeypatch.setattr(C, "out", con)
    js = tmp_path / "b.json"
    res = cli(
        "bench",
        world["qrun"],
        world["frun"],
        "-r",
        "ort-cpu",
        "-r",
        "torch-fq",
        "-r",
        "torch-fp32",
        "--batch",
        "1,2",
        "--duration-s",
        "0.02",
        "--warmup-ms",
        "2",
        "--min-iters",
        "3",
        "--threads",
        "1",
        "--json",
        js,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(js.read_text())
    assert set(data) == JSON_KEYS and set(data["settings"]) == SETTINGS_KEYS and set(data["environment"]) == ENV_KEYS
    assert len(data["records"]) == 2 * 5  # qrun on 3 runtimes, frun on 2, two batch sizes each
    for r in data["records"]:
        assert set(r) == RECORD_KEYS and set(r["latency_ms"]) == LATENCY_KEYS
        assert set(r["accuracy"]) == ACCURACY_KEYS and set(r["size"]) >= {"file_bytes", "packed_bytes", "params"}
    text = con.export_text()
    values = {"d0 (val)", "d1 (held-out)", "d2 (val)"}
    for r in data["records"]:
        lat, size, acc = r["latency_ms"], r["size"], r["accuracy"]
        values |= {
            _short(r["artifact"]),
            r["runtime"],
            _ms(lat["mean"]),
            _ms(lat["p50"]),
            _ms(lat["p99"]),
            f"{r['throughput_ips']:.0f}",
            human_bytes(size["file_bytes"]),
            human_bytes(size["packed_bytes"]),
            _count(size["params"]),
            pct(acc["test_acc"]),
            pct(acc["val_acc"]),
        }
        values |= {pct(d["acc"]) for d in acc["per_domain"].values()}
    assert_whole(text, values)
    for r in data["records"]:  # a latency row holds its batch's figures side by side
        lat = r["latency_ms"]
        figures = [str(r["batch"]), _ms(lat["mean"]), _ms(lat["p50"]), _ms(lat["p99"]), f"{r['throughput_ips']:.0f}"]
        assert any(
            line.split("│")[3:8] == [f" {v} ".rjust(len(c)) for v, c in zip(figures, line.split("│")[3:8])]
            for line in text.splitlines()
            if line.count("│") == 8
        ), figures


def test_fit_table_stacks_to_the_width_and_keeps_every_cell_whole():
    from rich.console import Console

    from qdg_deploy.tables import FitTable

    cols = [("model", "left")] + [(f"figure number {i} of the long header", "right") for i in range(9)]
    t = FitTable("Wide", cols, keys=1)
    rows = [[f"model-{k}"] + [f"{1000 * k + i}.{i}{i}" for i in range(9)] for k in range(3)]
    for r in rows:
        t.add_row(*r)
    for width in (40, 80):
        con = Console(width=width, record=True, file=open("/dev/null", "w"))
        con.print(t)
        text = con.export_text()
        assert_whole(text, {c for r in rows for c in r} | {"number"}, width)
        n = text.count("Wide (")
        assert n > 1 and f"Wide ({n}/{n})" in text and text.count("model-0") == n  # the key in every part
    con = Console(width=400, record=True, file=open("/dev/null", "w"))
    con.print(t)
    wide = con.export_text()
    assert "Wide (" not in wide and "figure number 8 of the long header" in wide  # one table, headers on one line


def test_compare_ratios_and_single_artifact_matching(world):
    base = {
        "latency_ms": {"mean": 2.0, "p99": 4.0},
        "throughput_ips": 500.0,
        "runtime": "ort-cpu",
        "batch": 1,
        "size": {"file_bytes": 100, "packed_bytes": 80},
        "accuracy": {"test_acc": 0.5},
    }
    old = {"records": [{**base, "artifact": "fp32.onnx"}]}
    new = {
        "records": [
            {
                **base,
                "artifact": "int8.onnx",
                "latency_ms": {"mean": 1.0, "p99": 1.0},
                "throughput_ips": 1000.0,
                "size": {"file_bytes": 25, "packed_bytes": 20},
                "accuracy": {"test_acc": 0.4},
            }
        ]
    }
    (row,) = B.compare(new, old)
    assert row["mean_ratio"] == 0.5 and row["p99_ratio"] == 0.25 and row["throughput_ratio"] == 2.0
    assert row["file_ratio"] == 0.25 and row["packed_ratio"] == 0.25
    assert row["test_acc_delta"] == pytest.approx(-0.1)
    old["records"].append({**base, "artifact": "other.onnx"})  # two artifacts: names must match now
    assert B.compare(new, old) == []


def test_errors(world, tmp_path, cli):
    with pytest.raises(QdgError, match="unknown runtime"):
        B.bench([world["fp32"]], ["nope"], [1])
    with pytest.raises(QdgError, match="not found"):
        B.bench([tmp_path / "missing.onnx"], None, [1])
    with pytest.raises(QdgError, match="unknown artifact type"):
        (tmp_path / "x.txt").write_text("x")
        B.bench([tmp_path / "x.txt"], None, [1])
    with pytest.raises(QdgError, match="takes a run directory"):
        B.bench([world["fp32"]], ["torch-fp32"], [1], **FAST)
    bare_run = tmp_path / "run"
    shutil.copytree(world["frun"], bare_run)
    (bare_run / "model.onnx").unlink()
    with pytest.raises(QdgError, match="no model.onnx"):
        B.bench([bare_run], ["ort-cpu"], [1], **FAST)
    res = cli("bench", str(world["fp32"]), "--batch", "x")
    assert res.returncode == 2 and res.stderr.startswith("error:"), res.stderr


def test_bench_demo_final_table(world, tmp_path):
    from rich.console import Console

    from qdg_deploy.workflows.demo_bench import bench_demo, deployment_artifact

    assert deployment_artifact(world["qrun"]) == world["qrun"] / "model.onnx"
    con = Console(width=200, record=True)
    res = bench_demo(
        {"ERM": world["frun"], "QAT": world["qrun"]},
        tmp_path,
        batches=(1, 2),
        duration_s=0.05,
        warmup_ms=5,
        threads=1,
        out=con,
    )
    text = con.export_text()
    assert "ERM" in text and "QAT" in text and "d1 (held-out) %" in text and "latency b1" in text
    # against the FP32 model (ERM's onnx-fp32 export) on the same runtime, and the export's measured agreement
    rec = {(Path(r["artifact_path"]).parent.name, r["batch"]): r for r in res["records"] if r["runtime"] == "ort-cpu"}
    f, q = rec[(world["frun"].name, 1)], rec[(world["qrun"].name, 1)]
    speed = f["latency_ms"]["mean"] / q["latency_ms"]["mean"]
    row = next(line for line in text.splitlines() if "speed vs FP32 b1" in line)
    assert "1.00×" in row and f"{speed:.2f}×" in row, row
    row = next(line for line in text.splitlines() if "agreement with torch" in line)
    assert "—" in row, row  # these ONNX files have no export report: nothing measured, nothing shown
    from qdg_deploy.tables import human_bytes, pct
    from qdg_deploy.workflows.demo_bench import final_table

    narrow = Console(width=80, record=True, file=open(tmp_path / "tty.txt", "w"))
    narrow.print(
        final_table(
            res,
            {
                "QT-DoG W8A8 (ort) + SWAD": world["frun"] / "model.onnx",
                "EoQ(2) W7 + SWAD": world["qrun"] / "model.onnx",
            },
        )
    )
    values = {"QT-DoG", "W8A8", "(ort)", "EoQ(2)", "model.onnx", "ort-cpu", "latency b2 mean / p99 ms"}
    for r in res["records"]:
        lat = r["latency_ms"]
        values |= {
            f"{lat['mean']:.2f} / {lat['p99']:.2f}",
            f"{r['throughput_ips']:.0f}" if r["batch"] == 2 else "",
            human_bytes(r["size"]["file_bytes"]),
        } | {pct(d["acc"]) for d in r["accuracy"]["per_domain"].values()}
    assert_whole(narrow.export_text(), values - {""})
    assert {r["artifact_path"] for r in res["records"]} == {
        str(world["frun"] / "model.onnx"),
        str(world["qrun"] / "model.onnx"),
    }
    assert json.loads((tmp_path / "bench.json").read_text())["schema"] == B.SCHEMA
    assert (tmp_path / "bench-latency.png").stat().st_size > 0 and (tmp_path / "bench-accuracy.png").stat().st_size > 0


def test_runtimes_declare_what_load_takes():
    """cuda_graph / takes_device are declared on Runtime (False), so bench reads them without getattr defaults."""
    from qdg_deploy.bench.runtimes import RUNTIMES, Runtime

    assert Runtime.cuda_graph is False and Runtime.takes_device is False
    takes = {name: (rt.cuda_graph, rt.takes_device) for name, rt in RUNTIMES.items()}
    assert takes == {
        "torch-fp32": (False, True),
        "torch-fq": (False, True),
        "ort-cpu": (False, False),
        "ort-cuda": (False, False),
        "ort-trt": (False, False),
        "trt": (True, False),
    }
