"""bench runtime trt: a native TensorRT engine (a GPU and the tensorrt package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import QdgError
from .artifacts import Artifact
from .session import COPIES_EXCLUDED, COPIES_INCLUDED, Runtime, Session, in_batches


class TrtSession(Session):
    """A deserialized engine; buffers are torch CUDA tensors (torch's caching allocator), execution is
    `execute_async_v3` on a torch stream. Any batch within the engine's optimization profile runs (one set of
    buffers per shape). With copies, the timed call copies pinned host input → device and output → pinned host
    (trtexec's H2D/D2H); with `cuda_graph`, each shape's enqueue is captured once and replayed."""

    def __init__(self, path: Path, artifact: Artifact, copies: bool, cuda_graph: bool = False):
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
        dims = [int(d) for d in self.engine.get_tensor_shape(self.in_name)]  # -1: dynamic (Dims → list, no slicing)
        self.fixed_batch = dims[0] if dims[0] > 0 else None
        self.input_shape = dims[1:]
        if self.fixed_batch is None:  # a profile exists only for dynamic dimensions: ask for it only then
            lo, _opt, hi = (list(s) for s in self.engine.get_tensor_profile_shape(self.in_name, 0))
            self.batch_limits = (int(lo[0]), int(hi[0]))
            if any(d <= 0 for d in self.input_shape):  # dynamic C/H/W: the largest shape of profile 0
                self.input_shape = [int(d) for d in hi[1:]]
        self.stream = torch.cuda.Stream()
        self.cuda_graph = cuda_graph
        self._buffers: dict[tuple, tuple] = {}
        self._graphs: dict[tuple, object] = {}
        self.info = {
            "device": torch.cuda.get_device_name(0),
            "tensorrt": trt.__version__,
            "cuda_graph": cuda_graph,
            "profile_batch": list(self.batch_limits) if self.batch_limits else None,
        }
        self.run = self._run_copies if copies else self._run_on_device

    def _dtype(self, name):
        types = {
            self._trt.float32: self._torch.float32,
            self._trt.float16: self._torch.float16,
            self._trt.int8: self._torch.int8,
            self._trt.int32: self._torch.int32,
        }
        return types[self.engine.get_tensor_dtype(name)]

    def _prepare(self, shape: tuple):
        """Device and pinned host buffers for one input shape, bound to the context (cached)."""
        if shape not in self._buffers:
            torch = self._torch
            self.context.set_input_shape(self.in_name, shape)
            out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.out_name))
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

    def _enqueue(self, shape: tuple) -> None:
        """The engine's work for `shape` on self.stream: a replayed CUDA graph, or execute_async_v3."""
        if not self.cuda_graph:
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise QdgError("TensorRT execute_async_v3 failed")
            return
        torch = self._torch
        if shape not in self._graphs:
            # TensorRT asks for one enqueue after a shape change before capture (it updates its state then)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise QdgError("TensorRT execute_async_v3 failed")
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
            self._graphs[shape] = graph
        self._graphs[shape].replay()

    def _run_copies(self, x: np.ndarray):
        d_in, d_out, h_in, h_out = self._prepare(x.shape)
        h_in.numpy()[...] = x
        with self._torch.cuda.stream(self.stream):
            d_in.copy_(h_in, non_blocking=True)
            self._enqueue(x.shape)
            h_out.copy_(d_out, non_blocking=True)
        self.stream.synchronize()
        return h_out.numpy().astype(np.float32, copy=True)

    def _run_on_device(self, x: np.ndarray):
        d_in, d_out, h_in, _ = self._prepare(x.shape)
        if getattr(self, "_staged", None) is not x:  # stage each new input once, outside the timing loop
            d_in.copy_(self._torch.from_numpy(np.ascontiguousarray(x)).to(d_in.dtype))
            self._staged = x
        with self._torch.cuda.stream(self.stream):
            self._enqueue(x.shape)
        self.stream.synchronize()
        return None

    def predict(self, x):
        return in_batches(self._run_copies, x, self.batch_limits)

    def size(self):
        size = {"file": str(self.file), "file_bytes": self.file.stat().st_size, "packed_bytes": None, "params": None}
        rep = self._artifact.export_report(self.file) or {}
        for k in ("packed_bytes", "params"):
            if isinstance(rep.get(k), (int, float)):
                size[k] = int(rep[k])
        return size


class TrtRuntime(Runtime):
    name = "trt"
    description = "native TensorRT engine (execute_async_v3, torch CUDA buffers, optional CUDA graph)"
    cuda_graph = True

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
            return False, (
                f"tensorrt {trt.__version__} found but torch sees no CUDA GPU (buffers are torch CUDA tensors)"
            )
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

    def load(self, artifact, *, threads=None, copies=True, cuda_graph=False):
        return TrtSession(artifact.engine_path, artifact, copies, cuda_graph)
