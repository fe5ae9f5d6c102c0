"""bench runtimes ort-cpu, ort-cuda and ort-trt: ONNX Runtime with one execution provider each."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import QdgError
from ..ort_session import ort_session
from .artifacts import Artifact, onnx_input_dims, onnx_size
from .session import COPIES_EXCLUDED, COPIES_INCLUDED, COPIES_NONE, Runtime, Session, cuda_device_name, in_batches


def _ort():
    import onnxruntime

    return onnxruntime


def onnx_file_size(path: Path, artifact: Artifact) -> dict:
    """File bytes; packed bytes and params from the exporter's report when it wrote one for this file,
    else from the ONNX initializers as stored."""
    size = {"file": str(path), "file_bytes": path.stat().st_size, **onnx_size(path)}
    rep = artifact.export_report(path)
    if rep:
        for k in ("packed_bytes", "params"):
            if isinstance(rep.get(k), (int, float)):
                size[k] = int(rep[k])
    return size


ORT_PACKAGES = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
    "ort-nightly",
    "ort-nightly-gpu",
)


def installed_ort_packages() -> list[str]:
    """The ONNX Runtime distributions pip installed here (each provides the one `onnxruntime` module)."""
    from importlib import metadata

    found = []
    for name in ORT_PACKAGES:
        try:
            metadata.version(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def ort_conflict(packages: list[str]) -> str | None:
    """Why the GPU providers may be missing when several ORT distributions share the `onnxruntime` folder (the
    last one installed wins, uninstalling one breaks the other), and the fix; None with one distribution."""
    if len(packages) < 2:
        return None
    return (
        f"{' and '.join(packages)} are all installed and overwrite each other's onnxruntime module: "
        f"pip uninstall -y {' '.join(packages)} && pip install onnxruntime-gpu"
    )


class OrtSession(Session):
    def __init__(
        self,
        runtime: str,
        path: Path,
        artifact: Artifact,
        providers: list,
        threads: int | None,
        device: str,
        copies: bool,
    ):
        try:  # threads 0: ONNX Runtime's default (one per physical core)
            self.sess = ort_session(path, threads=threads or 0, providers=providers)
        except Exception as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise QdgError(f"{runtime} cannot load {path}: {why}") from None
        self.runtime, self.file, self.threads, self._artifact = runtime, path, threads, artifact
        self.device = device
        self.in_name = self.sess.get_inputs()[0].name
        self.out_name = self.sess.get_outputs()[0].name
        b = onnx_input_dims(path)[0]
        self.fixed_batch = b if isinstance(b, int) and b > 0 else None
        self.info = {"providers": self.sess.get_providers(), "intra_op_threads": threads or "default"}
        if device == "cpu":
            self.copies = COPIES_NONE
            out_names = [self.out_name]
            feed_name, sess = self.in_name, self.sess
            self.run = lambda x: sess.run(out_names, {feed_name: x})[0]
        else:
            self.copies = COPIES_INCLUDED if copies else COPIES_EXCLUDED
            self.info["io_binding"] = True
            self._binding = self.sess.io_binding()
            self._bound = None
            self.run = self._run_copies if copies else self._run_on_device

    def _run_copies(self, x):
        """Host input → device → host output inside the timed call (what trtexec's latency includes)."""
        b = self._binding
        b.bind_cpu_input(self.in_name, x)
        b.bind_output(self.out_name, "cuda")
        self.sess.run_with_iobinding(b)
        return b.copy_outputs_to_cpu()[0]

    def _run_on_device(self, x):
        """Input copied to the device once per batch shape and output left there: compute only."""
        if self._bound is None or self._bound[0] is not x:
            dev = _ort().OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            self._binding.bind_ortvalue_input(self.in_name, dev)
            self._binding.bind_output(self.out_name, "cuda")
            self._bound = (x, dev)
        self.sess.run_with_iobinding(self._binding)
        self._binding.synchronize_outputs()
        return None

    def predict(self, x):
        return in_batches(lambda b: self.sess.run([self.out_name], {self.in_name: b})[0], x, self.batch_limits)

    def size(self):
        return onnx_file_size(self.file, self._artifact)


class _OrtRuntime(Runtime):
    provider = ""
    device = "cpu"

    def available(self):
        try:
            ort = _ort()
        except ImportError as e:
            return False, f"onnxruntime not importable: {e}"
        provs = ort.get_available_providers()
        if self.provider not in provs:
            pkg = "onnxruntime-gpu" if self.device != "cpu" else "onnxruntime"
            return False, (
                f"onnxruntime {ort.__version__} has no {self.provider} (has {', '.join(provs)}); "
                + (ort_conflict(installed_ort_packages()) or f"install {pkg}")
            )
        if self.device != "cpu":
            gpu = cuda_device_name()
            if gpu is None:
                return False, f"{self.provider} is built in but no CUDA GPU was found"
            return True, f"onnxruntime {ort.__version__}, {gpu}"
        return True, f"onnxruntime {ort.__version__}, {os.cpu_count()} CPUs"

    def versions(self):
        return {"onnxruntime": _ort().__version__}

    def applies(self, artifact):
        if artifact.onnx_path is None:
            if artifact.kind == "run":
                return False, (
                    f"no model.onnx / model.fp32.onnx in the run directory (run `qdg-deploy export {artifact.path}`)"
                )
            return False, f"{self.name} takes an .onnx file, not an .{artifact.kind} file"
        return True, ""

    def providers(self, path: Path) -> list:
        return [self.provider]

    def load(self, artifact, *, threads=None, copies=True):
        path = artifact.onnx_path
        return OrtSession(self.name, path, artifact, self.providers(path), threads, self.device, copies)


class OrtCPU(_OrtRuntime):
    name, provider, device = "ort-cpu", "CPUExecutionProvider", "cpu"
    description = "ONNX Runtime, CPU execution provider"


class OrtCUDA(_OrtRuntime):
    name, provider, device = "ort-cuda", "CUDAExecutionProvider", "cuda"
    description = "ONNX Runtime, CUDA execution provider (IO binding)"

    def providers(self, path):
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]


def ort_trt_options(
    input_name: str,
    chw: list[int],
    batch_range: tuple[int, int, int],
    cache: Path,
    *,
    int8: bool,
    fp16: bool,
    opt_level: int | None = None,
) -> dict:
    """TensorRT EP options: engine and timing caches in `cache`, an explicit optimization profile over the batch
    range (so the EP builds one engine for every benched batch, like `export --format tensorrt`), and the
    precision flags TensorRT 10 needs (INT8 for Q/DQ graphs: explicit quantization runs in INT8 only with it)."""
    shapes = ["x".join(str(d) for d in (b, *chw)) for b in batch_range]
    opts = {
        "device_id": 0,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_int8_enable": int8,
        "trt_fp16_enable": fp16,
        "trt_profile_min_shapes": f"{input_name}:{shapes[0]}",
        "trt_profile_opt_shapes": f"{input_name}:{shapes[1]}",
        "trt_profile_max_shapes": f"{input_name}:{shapes[2]}",
    }
    if opt_level is not None:
        opts["trt_builder_optimization_level"] = opt_level
    return opts


def report_onnx(rep: dict, rep_path: Path) -> Path:
    """The ONNX an engine report names, absolute: a relative name (older reports stored it as typed) is taken
    from the report's folder, not from bench's working directory."""
    onnx_path = Path(rep["onnx"])
    return (onnx_path if onnx_path.is_absolute() else rep_path.parent / onnx_path).resolve()


def engine_settings(path: Path) -> dict:
    """The batch range, FP16 choice and optimization level of the engine `export --format tensorrt` built from
    this ONNX (its model.engine.json beside it), so ort-trt builds the same; defaults where there is none."""
    from ..export.trt_plan import DEFAULT_BATCH_RANGE, parse_batch_range
    from ..io import read_json

    found = {"batch_range": parse_batch_range(DEFAULT_BATCH_RANGE), "fp16": False, "opt_level": None}
    for rep_path in path.parent.glob("*.engine.json"):
        try:
            rep = read_json(rep_path)
            if report_onnx(rep, rep_path) == path.resolve():
                prof = rep["profiles"][0]
                # fp16_remainder: FP16 on both majors (fp16_flag is always False on TensorRT 11's typed networks)
                return {
                    "batch_range": (prof["min"][0], prof["opt"][0], prof["max"][0]),
                    "fp16": bool(rep["precision"]["fp16_remainder"]),
                    "opt_level": rep["builder_optimization_level"],
                }
        except (ValueError, KeyError, IndexError, TypeError, OSError):
            continue
    return found


class OrtTRT(_OrtRuntime):
    name, provider, device = "ort-trt", "TensorrtExecutionProvider", "cuda"
    description = "ONNX Runtime, TensorRT execution provider with engine cache and profile (IO binding)"

    def providers(self, path):
        import onnx

        from ..export.check import has_qdq

        cache = path.parent / "trt_cache"
        cache.mkdir(parents=True, exist_ok=True)
        model = onnx.load(str(path), load_external_data=False)
        chw = [d if isinstance(d, int) else -1 for d in onnx_input_dims(path)[1:]]
        es = engine_settings(path)
        opts = ort_trt_options(
            model.graph.input[0].name,
            chw,
            es["batch_range"],
            cache,
            int8=has_qdq(model),
            fp16=es["fp16"],
            opt_level=es["opt_level"],
        )
        return [
            ("TensorrtExecutionProvider", opts),
            ("CUDAExecutionProvider", {"device_id": 0}),
            "CPUExecutionProvider",
        ]

    def load(self, artifact, *, threads=None, copies=True):
        session = super().load(artifact, threads=threads, copies=copies)
        if session.fixed_batch is None:
            lo, _, hi = engine_settings(artifact.onnx_path)["batch_range"]
            session.batch_limits = (lo, hi)
        return session


# ---------------------------------------------------------------- native TensorRT
