"""bench runtimes ort-cpu, ort-cuda and ort-trt: ONNX Runtime with one execution provider each."""

from __future__ import annotations

import os
from pathlib import Path


from ..errors import QdgError
from ..ort_session import ort_session
from .artifacts import Artifact, onnx_input_dims, onnx_size
from .session import COPIES_EXCLUDED, COPIES_INCLUDED, COPIES_NONE, Runtime, Session, cuda_device_name


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


class OrtSession(Session):
    def __init__(self, runtime: str, path: Path, artifact: Artifact, providers: list, threads: int | None,
                 device: str, copies: bool):
        try:  # threads 0: ONNX Runtime's default (one per physical core)
            self.sess = ort_session(path, threads=threads or 0, providers=providers)
        except Exception as e:
            raise QdgError(f"{runtime} cannot load {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
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
        return self.sess.run([self.out_name], {self.in_name: x})[0]

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
            return False, (f"onnxruntime {ort.__version__} has no {self.provider} (has {', '.join(provs)}); "
                           f"install {pkg}")
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
                return False, (f"no model.onnx / model.fp32.onnx in the run directory "
                               f"(run `qdg-deploy export {artifact.path}`)")
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


def _has_qdq(path: Path) -> bool:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


class OrtTRT(_OrtRuntime):
    name, provider, device = "ort-trt", "TensorrtExecutionProvider", "cuda"
    description = "ONNX Runtime, TensorRT execution provider with engine cache (IO binding)"

    def providers(self, path):
        cache = path.parent / "trt_cache"
        cache.mkdir(parents=True, exist_ok=True)
        opts = {"device_id": 0, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                "trt_fp16_enable": False,
                # TensorRT 10 honours Q/DQ nodes only with the INT8 flag set (explicit quantization).
                "trt_int8_enable": _has_qdq(path)}
        return [("TensorrtExecutionProvider", opts), ("CUDAExecutionProvider", {"device_id": 0}),
                "CPUExecutionProvider"]


# ---------------------------------------------------------------- native TensorRT
