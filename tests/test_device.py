"""--device and --amp: the device error, autocast leaving fake-quant in float32, the CUDA path where there is one."""

import pytest
import torch
from torch import nn

from conftest import run_cli
from qdg_deploy.device import autocast, resolve_amp, resolve_device
from qdg_deploy.errors import QdgError
from qdg_deploy.quant import get_scheme, quantize_model
from qdg_deploy.quant.quantizers import LsqQuantizer, QuantSpec


def test_device_cuda_without_cuda_is_one_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the error needs a machine without it")
    r = run_cli("train", "--device", "cuda", "--steps", "2", "--out", tmp_path / "run")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: --device cuda:"), r.stderr
    assert "CUDA is not available" in r.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("verb", ["eval", "calibrate", "export", "bench"])
def test_every_torch_verb_refuses_a_bad_device_first(verb, tmp_path):
    r = run_cli(verb, tmp_path / "no-run", "--device", "gpu:0")
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
    hooks = [q.register_forward_hook(lambda mod, i, o: seen.append((mod, i[0].detach(), o.detach())))
             for q in quantizers]
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
    r = run_cli("train", "--device", "cuda", "--method", "qtdog", "--steps", "4", "--q-steps", "2",
                "--checkpoint-freq", "2", "--batch-size", "8", "--channels-last", "--amp", "bf16",
                "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr


KEEP_PROBE = """
import resource, sys, torch
from qdg_deploy.device import keep_freed_memory
print(keep_freed_memory())
live, faults = [], []
for i in range(24):  # a training step's pattern: a new 8 MiB buffer while the last ones are still held
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    live.append(torch.ones(2 << 20))
    live[:] = live[-3:]
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(sum(faults[16:]))
"""


def test_keep_freed_memory_reuses_pages_and_respects_the_users_setting():
    """With glibc keeping freed memory, 8 MiB buffers reallocated step after step fault no fresh page in once the
    heap holds them (a 4 KiB page each otherwise: 2,048 faults a buffer); a threshold the user set is left alone."""
    import os
    import subprocess
    import sys
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").gnu_get_libc_version
    except (OSError, AttributeError):
        pytest.skip("not glibc: keep_freed_memory changes nothing there")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    r = subprocess.run([sys.executable, "-c", KEEP_PROBE], capture_output=True, text=True, env=env, timeout=120)
    kept, late_faults = r.stdout.split()
    assert kept == "True" and int(late_faults) < 200, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-c", KEEP_PROBE], capture_output=True, text=True, timeout=120,
                       env={**env, "MALLOC_TRIM_THRESHOLD_": "131072"})
    assert r.stdout.split()[0] == "False", r.stdout + r.stderr
