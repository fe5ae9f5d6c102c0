"""Runtimes behind one small interface, auto-detected.

    rt = get_runtime("ort-cpu")
    ok, why = rt.available()            # can this machine run it at all?
    ok, why = rt.applies(artifact)      # can it run this artifact?
    session = rt.load(artifact, threads=2)
    logits = session.run(batch)         # np.float32 NCHW in, logits out; returns when the result is ready

| name      | runs                                   | takes                         |
|-----------|----------------------------------------|-------------------------------|
| torch-fp32| the float network (quantizers removed) | a run directory               |
| torch-fq  | the fake-quant network of a quantized run | a quantized run directory  |
| ort-cpu   | ONNX Runtime, CPU execution provider   | .onnx (or RUN_DIR/model.onnx) |
| ort-cuda  | ONNX Runtime, CUDA execution provider  | .onnx                         |
| ort-trt   | ONNX Runtime, TensorRT EP + engine cache | .onnx                       |
| trt       | native TensorRT engine                 | .engine (or RUN_DIR/model.engine) |

`Session.copies` says whether host↔device copies are inside the timed `run`: "included", "excluded" or
"none" (a CPU runtime: input and output already live in host memory).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..errors import QdgError
from .artifacts import Artifact, onnx_input_dims, onnx_size

COPIES_NONE, COPIES_INCLUDED, COPIES_EXCLUDED = "none", "included", "excluded"


class Session:
    """A loaded artifact on one runtime. `run` is what is timed; `predict` computes logits for accuracy."""

    runtime: str = ""
    copies: str = COPIES_NONE
    file: Path | None = None
    fixed_batch: int | None = None   # the only batch size the artifact accepts, if it has one
    threads: int | None = None
    info: dict = {}

    def run(self, x: np.ndarray):
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.run(x))

    def size(self) -> dict:
        """{"file", "file_bytes", "packed_bytes", "params"} of what this session loaded."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Runtime:
    name: str = ""
    description: str = ""

    def available(self) -> tuple[bool, str]:
        """(True, details) when this machine can run it, else (False, why not)."""
        raise NotImplementedError

    def applies(self, artifact: Artifact) -> tuple[bool, str]:
        """(True, "") when this runtime can run `artifact`, else (False, why not)."""
        raise NotImplementedError

    def load(self, artifact: Artifact, *, threads: int | None = None, copies: bool = True) -> Session:
        raise NotImplementedError

    def versions(self) -> dict:
        return {}


RUNTIMES: dict[str, Runtime] = {}


def register_runtime(rt: Runtime) -> Runtime:
    RUNTIMES[rt.name] = rt
    return rt


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise QdgError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}") from None


def list_runtimes() -> list[dict]:
    """[{name, description, available, reason, versions}] for every registered runtime."""
    rows = []
    for rt in RUNTIMES.values():
        try:
            ok, why = rt.available()
        except Exception as e:  # detection must never take the command down
            ok, why = False, f"detection failed: {type(e).__name__}: {e}"
        rows.append({"name": rt.name, "description": rt.description, "available": ok, "reason": why,
                     "versions": rt.versions() if ok else {}})
    return rows


# ---------------------------------------------------------------- GPU detection (shared)

def cuda_device_name() -> str | None:
    """Name of CUDA device 0, or None where there is none (torch first, then nvidia-smi)."""
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=10)
            names = [s.strip() for s in r.stdout.splitlines() if s.strip()]
            if r.returncode == 0 and names:
                return names[0]
        except Exception:
            pass
    if Path("/etc/nv_tegra_release").exists():  # Jetson: integrated GPU, no nvidia-smi
        return "NVIDIA Jetson (integrated GPU)"
    return None


# ---------------------------------------------------------------- torch

class TorchSession(Session):
    def __init__(self, runtime: str, model, file: Path, size: dict, threads: int | None):
        import torch

        self.runtime, self.file, self._size, self.threads = runtime, file, size, threads
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._torch = torch
        self.info = {"device": "cpu", "torch_threads": threads or torch.get_num_threads()}

    def run(self, x: np.ndarray):
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(x)).numpy()

    def size(self) -> dict:
        return dict(self._size)


def float_network(artifact: Artifact):
    """The run's architecture with float weights: for a quantized run the same weights with the
    quantizers removed (quantizer tensors dropped from the state dict), for a float run the network."""
    from safetensors.torch import load_file

    from ..runs import WEIGHTS, build_run_model

    rec = artifact.config["model"]
    net = build_run_model(rec, float_only=True)  # an ensemble: every member float
    state = load_file(str(artifact.run_dir / WEIGHTS))
    state = {k: v for k, v in state.items() if ".weight_quant." not in k and ".act_quant." not in k}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise QdgError(f"{artifact.run_dir / WEIGHTS}: float weights do not fit {rec['arch']}: "
                       f"{str(e).splitlines()[0]}") from None
    return net.eval()


class _TorchRuntime(Runtime):
    def available(self):
        try:
            import torch
        except ImportError as e:
            return False, f"torch not importable: {e}"
        return True, f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads"

    def versions(self):
        import torch
        return {"torch": torch.__version__}

    def _needs_run(self, artifact: Artifact) -> tuple[bool, str]:
        if artifact.kind != "run":
            return False, f"{self.name} takes a run directory, not an .{artifact.kind} file"
        return True, ""

    def _session(self, artifact, model, threads):
        import torch

        from ..quant import model_size
        from ..runs import WEIGHTS

        if threads:
            torch.set_num_threads(threads)
        weights = artifact.run_dir / WEIGHTS
        sz = model_size(model)
        size = {"file": str(weights), "file_bytes": weights.stat().st_size, "packed_bytes": sz["packed_bytes"],
                "params": sz["params"]}
        return TorchSession(self.name, model, weights, size, threads)


class TorchFP32(_TorchRuntime):
    name = "torch-fp32"
    description = "PyTorch eager, float network (a quantized run's weights with quantizers removed)"

    def applies(self, artifact):
        return self._needs_run(artifact)

    def load(self, artifact, *, threads=None, copies=True):
        if artifact.quantized:
            model = float_network(artifact)
        else:
            from ..runs import load_run
            model = load_run(artifact.run_dir).model
        return self._session(artifact, model, threads)


class TorchFQ(_TorchRuntime):
    name = "torch-fq"
    description = "PyTorch eager, fake-quant network of a quantized run"

    def applies(self, artifact):
        ok, why = self._needs_run(artifact)
        if ok and not artifact.quantized:
            return False, "not applicable: the run is not quantized (its float network is torch-fp32)"
        return ok, why

    def load(self, artifact, *, threads=None, copies=True):
        from ..runs import load_run
        return self._session(artifact, load_run(artifact.run_dir).model, threads)


# ---------------------------------------------------------------- ONNX Runtime

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
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 0   # 0: ONNX Runtime's default (one per physical core)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(str(path), so, providers=providers)
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

class TrtSession(Session):
    """A deserialized engine; buffers are torch CUDA tensors, execution is `execute_async_v3` on a torch
    stream. With copies, the timed call copies pinned host input → device and output → pinned host."""

    def __init__(self, path: Path, artifact: Artifact, copies: bool):
        import tensorrt as trt
        import torch

        self._trt, self._torch, self.file, self._artifact = trt, torch, path, artifact
        self.runtime = "trt"
        self.copies = COPIES_INCLUDED if copies else COPIES_EXCLUDED
        logger = trt.Logger(trt.Logger.WARNING)
        self._rt = trt.Runtime(logger)
        self.engine = self._rt.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise QdgError(f"TensorRT {trt.__version__} cannot deserialize {path} (built by another version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise QdgError(f"{path}: expected one input and one output tensor, found {len(ins)} and {len(outs)}")
        self.in_name, self.out_name = ins[0], outs[0]
        b = self.engine.get_tensor_shape(self.in_name)[0]
        self.fixed_batch = int(b) if b > 0 else None
        chw = [int(d) for d in self.engine.get_tensor_shape(self.in_name)[1:]]
        if any(d <= 0 for d in chw):  # dynamic C/H/W: the largest shape of profile 0
            chw = [int(d) for d in self.engine.get_tensor_profile_shape(self.in_name, 0)[2][1:]]
        self.input_shape = chw
        self.stream = torch.cuda.Stream()
        self._buffers: dict[tuple, tuple] = {}
        self.info = {"device": torch.cuda.get_device_name(0), "tensorrt": trt.__version__}
        self.run = self._run_copies if copies else self._run_on_device

    def _dtype(self, name):
        return {self._trt.float32: self._torch.float32, self._trt.float16: self._torch.float16,
                self._trt.int8: self._torch.int8, self._trt.int32: self._torch.int32}[self.engine.get_tensor_dtype(name)]

    def _prepare(self, shape: tuple):
        """Device and pinned host buffers for one input shape, bound to the context (cached)."""
        if shape not in self._buffers:
            torch = self._torch
            self.context.set_input_shape(self.in_name, shape)
            out_shape = tuple(self.context.get_tensor_shape(self.out_name))
            d_in = torch.empty(shape, dtype=self._dtype(self.in_name), device="cuda")
            d_out = torch.empty(out_shape, dtype=self._dtype(self.out_name), device="cuda")
            h_in = torch.empty(shape, dtype=d_in.dtype, pin_memory=True)
            h_out = torch.empty(out_shape, dtype=d_out.dtype, pin_memory=True)
            self._buffers[shape] = (d_in, d_out, h_in, h_out)
        d_in, d_out, h_in, h_out = self._buffers[shape]
        self.context.set_input_shape(self.in_name, shape)
        self.context.set_tensor_address(self.in_name, d_in.data_ptr())
        self.context.set_tensor_address(self.out_name, d_out.data_ptr())
        return d_in, d_out, h_in, h_out

    def _run_copies(self, x: np.ndarray):
        d_in, d_out, h_in, h_out = self._prepare(x.shape)
        h_in.numpy()[...] = x
        with self._torch.cuda.stream(self.stream):
            d_in.copy_(h_in, non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise QdgError("TensorRT execute_async_v3 failed")
            h_out.copy_(d_out, non_blocking=True)
        self.stream.synchronize()
        return h_out.numpy().astype(np.float32, copy=True)

    def _run_on_device(self, x: np.ndarray):
        d_in, d_out, h_in, _ = self._prepare(x.shape)
        if getattr(self, "_staged", None) is not x:  # stage each new input once, outside the timing loop
            d_in.copy_(self._torch.from_numpy(np.ascontiguousarray(x)).to(d_in.dtype))
            self._staged = x
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise QdgError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return None

    def predict(self, x):
        return self._run_copies(x)

    def size(self):
        size = {"file": str(self.file), "file_bytes": self.file.stat().st_size, "packed_bytes": None, "params": None}
        rep = self._artifact.export_report(self.file) or {}
        for k in ("packed_bytes", "params"):
            if isinstance(rep.get(k), (int, float)):
                size[k] = int(rep[k])
        return size


class TrtRuntime(Runtime):
    name = "trt"
    description = "native TensorRT engine (execute_async_v3, torch CUDA buffers)"

    def available(self):
        try:
            import tensorrt as trt
        except ImportError:
            return False, "the tensorrt Python package is not installed"
        try:
            import torch
            cuda = torch.cuda.is_available()
        except ImportError:
            cuda = False
        if not cuda:
            return False, f"tensorrt {trt.__version__} found but torch sees no CUDA GPU (buffers are torch CUDA tensors)"
        return True, f"tensorrt {trt.__version__}, {torch.cuda.get_device_name(0)}"

    def versions(self):
        import tensorrt as trt
        return {"tensorrt": trt.__version__}

    def applies(self, artifact):
        if artifact.engine_path is None:
            if artifact.kind == "run":
                return False, "no model.engine in the run directory (build one with the TensorRT export)"
            return False, f"trt takes an .engine file, not an .{artifact.kind} file"
        return True, ""

    def load(self, artifact, *, threads=None, copies=True):
        return TrtSession(artifact.engine_path, artifact, copies)


for _rt in (TorchFP32(), TorchFQ(), OrtCPU(), OrtCUDA(), OrtTRT(), TrtRuntime()):
    register_runtime(_rt)
