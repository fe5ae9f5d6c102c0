"""Baseline quantizers (dorefa, uniform, apot, bwn) in LSQ's registry: hand-worked values, the
codes x scale contract an exporter relies on, 1-bit only for bwn, and --quantizer through a scheme."""

import pytest
import torch

from qdg_deploy.errors import QdgError
from qdg_deploy.models import build_model
from qdg_deploy.quant import QUANTIZERS, QuantSpec, build_quantizer, get_scheme, quant_layers, quantize_model
from qdg_deploy.quant.baselines import apot_grid


def test_registered_beside_lsq():
    assert {"lsq", "dorefa", "uniform", "apot", "bwn", "daq"} <= set(QUANTIZERS)


def test_one_bit_only_for_bwn():
    with pytest.raises(QdgError, match="1..8"):
        pass_ = QuantSpec(bits=0, quantizer="bwn")  # noqa: F841
    with pytest.raises(QdgError, match="2..8"):
        QuantSpec(bits=1, quantizer="lsq")
    assert QuantSpec(bits=1, quantizer="bwn").bits == 1
    with pytest.raises(QdgError, match="binary"):
        build_quantizer(QuantSpec(bits=4, quantizer="bwn"), is_weight=True)
    s = get_scheme("alignq", bits=1, act_bits=1, quantizer="bwn")
    assert s.weight.bits == 1 and s.act.quantizer == "bwn"


def test_dorefa_weights_hand_worked():
    q = build_quantizer(QuantSpec(bits=2, quantizer="dorefa"), is_weight=True)
    w = torch.tensor([-2.0, -0.1, 0.1, 2.0])
    # tanh / (2 max|tanh|) + 0.5 = [0, .447, .553, 1]; * 3 -> round [0, 1, 2, 3]; 2r/3 - 1
    assert torch.allclose(q(w), torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]), atol=1e-6)
    assert q.integer_codes(w).tolist() == [-3, -1, 1, 3]
    a = build_quantizer(QuantSpec(bits=2, quantizer="dorefa", signed=False))
    x = torch.tensor([-1.0, 0.2, 0.5, 0.9, 3.0])  # clamp [0, 1], round(3x)/3
    assert torch.allclose(a(x), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0, 1.0]), atol=1e-6)


def test_bwn_hand_worked():
    q = build_quantizer(QuantSpec(bits=1, quantizer="bwn"), is_weight=True)
    w = torch.tensor([-2.0, 1.0, 0.5, 0.5], requires_grad=True)  # alpha = mean|w| = 1
    out = q(w)
    assert out.tolist() == [-1.0, 1.0, 1.0, 1.0]
    out.sum().backward()
    assert w.grad.tolist() == [1.0, 1.0, 1.0, 1.0]  # straight through
    assert q.integer_codes(w).tolist() == [-1, 1, 1, 1] and q.scale().item() == 1.0
    a = build_quantizer(QuantSpec(bits=1, quantizer="bwn"))
    assert a(torch.tensor([-0.3, 0.0, 0.2, 4.0])).tolist() == [0.0, 0.0, 1.0, 1.0]


def test_uniform_fixed_step():
    q = build_quantizer(QuantSpec(bits=4, quantizer="uniform"))
    x = torch.tensor([-1.4, 0.33, 0.71, 0.05])
    y = q(x)  # step = max|x| / 7 = 0.2, fixed from the first batch
    assert q.step.item() == pytest.approx(0.2)
    assert torch.allclose(y, torch.tensor([-1.4, 0.4, 0.8, 0.0]), atol=1e-6)
    assert torch.allclose(q(torch.tensor([5.0])), torch.tensor([1.4]))  # clamped at 7 * 0.2, step kept
    assert not q.step.requires_grad


def test_apot_grid_and_values():
    assert apot_grid(3) == [0, 1, 2, 3, 4, 6, 8, 10]  # {0, 1/2, 1/4, 1/16} + {0, 1/8}, in 1/16ths
    assert len(apot_grid(4)) == 16 and apot_grid(4)[-1] == 48
    q = build_quantizer(QuantSpec(bits=4, quantizer="apot"), is_weight=True)
    torch.manual_seed(0)
    w = torch.randn(200) * 0.1
    out = q(w)
    mags = (out.abs() / q.alpha * 10).detach()
    assert torch.allclose(mags, torch.round(mags), atol=1e-4)
    assert set(torch.round(mags).int().tolist()) <= set(apot_grid(3))
    out.sum().backward()
    assert q.alpha.grad is not None  # alpha is learned


@pytest.mark.parametrize("name", ["lsq", "dorefa", "uniform", "apot", "bwn"])
def test_weight_codes_times_scale_is_the_forward(name):
    torch.manual_seed(2)
    bits = 1 if name == "bwn" else 4
    w = torch.randn(8, 4, 3, 3) * 0.05
    q = build_quantizer(QuantSpec(bits=bits, quantizer=name), channels=8, is_weight=True)
    q.init_from(w)
    fq = q(w)
    codes = q.integer_codes(w)
    assert codes.min() >= q.qmin and codes.max() <= q.qmax
    assert torch.allclose((codes.float() - q.zero_point_int()) * q.scale(), fq, atol=1e-6)


@pytest.mark.parametrize("name", ["lsq", "dorefa", "uniform", "apot"])
def test_quantizer_flag_trains_any_layer_placement(name):
    torch.manual_seed(0)
    net = quantize_model(build_model("mnist-cnn", 1, 10), get_scheme("trt", bits=4, act_bits=4, quantizer=name))
    assert all(m.weight_quant.spec.quantizer == name for m in quant_layers(net).values())
    net(torch.rand(4, 1, 28, 28)).sum().backward()
    assert net.conv2.weight.grad is not None and torch.isfinite(net.conv2.weight.grad).all()
