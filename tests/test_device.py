"""--device and --amp: the device error, autocast leaving fake-quant in float32, the CUDA path where there is one."""

import pytest
import torch

from conftest import run_cli
from qdg_deploy.device import autocast, resolve_amp, resolve_device
from qdg_deploy.errors import QdgError
from qdg_deploy.quant import get_scheme, quantize_model
from qdg_deploy.quant.quantizers import LsqQuantizer, QuantSpec


def test_device_cuda_without_cuda_is_one_error(tmp_path, cli):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the error needs a machine without it")
    r = cli("train", "--device", "cuda", "--steps", "2", "--out", tmp_path / "run")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: --device cuda:"), (
        r.stderr
    )
    assert "CUDA is not available" in r.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("verb", ["eval", "calibrate", "export", "bench"])
def test_every_torch_verb_refuses_a_bad_device_first(verb, tmp_path, cli):
    r = cli(verb, tmp_path / "no-run", "--device", "gpu:0")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["error: --device takes auto, cpu, cuda or cuda:N (got 'gpu:0')"], r.stderr


def test_device_and_amp_values():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(QdgError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    assert resolve_amp(None, torch.device("cpu")) == "off"
    with pytest.raises(QdgError, match="needs a CUDA device"):
        resolve_amp("fp16", torch.device("cpu"))
    with pytest.raises(QdgError, match="bf16, fp16 or off"):
        resolve_amp("fp8", torch.device("cpu"))


def test_autocast_leaves_codes_and_step_gradients_float32():
    """Under bf16 autocast a quantizer's input arrives in bf16 (the conv before it ran in bf16); the codes are those of
    that input in float32 arithmetic, the output and the step's gradient are float32. In bf16 arithmetic x / s rounds
    to 8 significant bits and moves codes, which this would catch."""
    torch.manual_seed(0)
    q = LsqQuantizer(QuantSpec(bits=8, signed=False))
    x = (torch.rand(4096) * 3).bfloat16()  # what a bf16 conv hands on
    ref = q(x.float()).detach()  # initializes the step from the float32 tensor
    with autocast(torch.device("cpu"), "bf16"):
        y = q(x)
        y.sum().backward()
    assert y.dtype == torch.float32 and q.step.grad.dtype == torch.float32
    assert torch.equal(y, ref)
    assert torch.equal(q.integer_codes(y), q.integer_codes(ref))
    # the arithmetic this guards against: the same quantization in bf16 gives other codes
    s = q.step.detach().bfloat16()
    assert not torch.equal(torch.round(x / s), torch.round(x.float() / s.float()))


def test_autocast_network_codes_unchanged():
    """A W8A8 network under bf16 autocast: the float parts run in bf16, every quantizer (weights and activations)
    outputs float32, and what it outputs is the float32 fake-quant of the tensor it was given."""
    from qdg_deploy.models import build_model
    from qdg_deploy.quant import Quantizer

    torch.manual_seed(0)
    net = build_model("mnist-cnn", 2, 10)
    quantize_model(net, get_scheme("trt"))
    x = torch.randn(8, 2, 28, 28)
    net(x)  # activation steps from a float32 batch
    seen = []
    quantizers = [m for m in net.modules() if isinstance(m, Quantizer)]
    hooks = [
        q.register_forward_hook(lambda mod, i, o: seen.append((mod, i[0].detach(), o.detach()))) for q in quantizers
    ]
    with torch.no_grad(), autocast(torch.device("cpu"), "bf16"):
        out = net(x)
    for h in hooks:
        h.remove()
    assert out.dtype == torch.bfloat16  # the float parts did run in bf16
    assert len(seen) == len(quantizers) and any(i.dtype == torch.bfloat16 for _, i, _ in seen)
    with torch.no_grad():
        for q, i, o in seen:
            assert o.dtype == torch.float32
            assert torch.equal(o, q(i.float())), q


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_cuda_training_step(tmp_path):
    r = run_cli(
        "train",
        "--device",
        "cuda",
        "--method",
        "qtdog",
        "--steps",
        "4",
        "--q-steps",
        "2",
        "--checkpoint-freq",
        "2",
        "--batch-size",
        "8",
        "--channels-last",
        "--amp",
        "bf16",
        "--out",
        tmp_path / "run",
    )
    assert r.returncode == 0, r.stderr


KEEP_PROBE = """
import ctypes, os, sys, torch
from qdg_deploy.device import keep_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
                                               "fordblks keepcost").split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
a = libc.mallinfo2()
bufs = [torch.empty(2 << 20) for _ in range(3)]  # 8 MiB each, as a training step's activations
b = libc.mallinfo2()
del bufs
c = libc.mallinfo2()
# in-use heap bytes, not the arena size: part of the 24 MiB may reuse free heap space left by imports
print(kept, b.hblks - a.hblks, b.uordblks - a.uordblks >= 3 * (8 << 20), c.arena == b.arena)
"""


def _probe(mode: str, **env) -> list[str]:
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    r = subprocess.run(
        [sys.executable, "-c", KEEP_PROBE, mode], capture_output=True, text=True, timeout=120, env={**base, **env}
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_keep_freed_memory_keeps_large_blocks_in_the_heap():
    """glibc by default maps an 8 MiB block anew (mmap) and unmaps it when freed, so the next step faults its pages in
    again; with keep_freed_memory it comes from the heap and stays there once freed. A threshold the user set
    (MALLOC_*_THRESHOLD_) is left alone."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc 2.33 or newer: keep_freed_memory changes nothing there / mallinfo2 is missing")
    # glibc's default threshold (128 KiB, pinned: glibc raises it on its own after a large mapped block is freed)
    assert _probe("default", MALLOC_MMAP_THRESHOLD_="131072") == ["False", "3", "False", "True"]
    assert _probe("keep") == ["True", "0", "True", "True"]  # kept: heap blocks, the heap not trimmed after the free
    assert _probe("keep", MALLOC_TRIM_THRESHOLD_="131072")[:2] == ["False", "3"]
