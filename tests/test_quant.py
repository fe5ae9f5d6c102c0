"""The quantization core: LSQ numerics, schemes and model conversion."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from qdg_deploy.errors import QdgError
from qdg_deploy.models import build_model
from qdg_deploy.quant import (
    LsqQuantizer,
    QConv2d,
    QLinear,
    QuantSpec,
    get_scheme,
    model_size,
    quant_layers,
    quantize_model,
)

SPECS = [
    QuantSpec(bits=7, signed=True),
    QuantSpec(bits=8, signed=True, narrow=True, per_channel=True),
    QuantSpec(bits=4, signed=False),
    QuantSpec(bits=2, signed=True),
    QuantSpec(bits=8, signed=False, zero_point="learned"),
    QuantSpec(bits=3, signed=False, zero_point="learned"),
]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_outputs_are_integer_multiples_of_the_step_inside_the_range(spec):
    torch.manual_seed(0)
    x = torch.randn(8, 5, 3, 3) * 3 + (0.5 if not spec.signed else 0)
    q = LsqQuantizer(spec, channels=8, ndim=4)
    y = q(x)
    s = q.scale()
    codes = y / s + q.zero_point_int()
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.round().min() >= spec.qmin and codes.round().max() <= spec.qmax
    # Both ends of the range are used on a wide input, so the clamp really is [qmin, qmax].
    y_wide = q(x * 100)
    codes_wide = (y_wide / s + q.zero_point_int()).round()
    assert codes_wide.min() == spec.qmin and codes_wide.max() == spec.qmax
    assert torch.equal(q.integer_codes(x).float(), codes.round())


def test_ranges():
    assert (QuantSpec(bits=7).qmin, QuantSpec(bits=7).qmax) == (-64, 63)
    assert (QuantSpec(bits=8, narrow=True).qmin, QuantSpec(bits=8, narrow=True).qmax) == (-127, 127)
    assert (QuantSpec(bits=8, signed=False).qmin, QuantSpec(bits=8, signed=False).qmax) == (0, 255)
    with pytest.raises(QdgError):
        QuantSpec(bits=9)


def test_step_gradient_matches_the_lsq_formula_by_hand():
    # 3-bit signed: Qn = -4, Qp = 3, s = 0.5. v = x/s = [0.6, 3.2, -10, 8] →
    # d(out)/ds = [round(v)-v, Qp, Qn, Qp] = [0.4, 3, -4, 3] → sum 2.4, times g = 1/sqrt(N*Qp) = 1/sqrt(12).
    q = LsqQuantizer(QuantSpec(bits=3, signed=True))
    with torch.no_grad():
        q.step.fill_(0.5)
        q.initialized.fill_(True)
    x = torch.tensor([0.3, 1.6, -5.0, 4.0], requires_grad=True)
    y = q(x)
    assert y.tolist() == [0.5, 1.5, -2.0, 1.5]
    y.sum().backward()
    assert q.step.grad.item() == pytest.approx(2.4 / math.sqrt(12), rel=1e-6)
    assert x.grad.tolist() == [1.0, 0.0, 0.0, 0.0]  # straight-through inside the range only


def test_lsq_init_is_two_mean_abs_over_sqrt_qp():
    torch.manual_seed(1)
    w = torch.randn(4, 3, 3, 3)
    q = LsqQuantizer(QuantSpec(bits=7, per_channel=True), channels=4, ndim=4)
    q.init_from(w)
    expected = 2 * w.abs().mean(dim=(1, 2, 3)) / math.sqrt(63)
    assert torch.allclose(q.step.flatten(), expected)


def test_rounding_is_half_to_even_like_onnx_quantizelinear():
    q = LsqQuantizer(QuantSpec(bits=8))
    with torch.no_grad():
        q.step.fill_(0.25)
        q.initialized.fill_(True)
    x = torch.tensor([2.5, 3.5, -2.5, -8.5, 0.5]) * 0.25
    assert (q(x) / 0.25).tolist() == [2.0, 4.0, -2.0, -8.0, 0.0]


def _count(model, kind):
    return sum(type(m) is kind for m in model.modules())


def test_paper_scheme_quantizes_exactly_the_conv_weights_of_resnet18():
    net = build_model("resnet18", 3, 7)
    n_conv = _count(net, nn.Conv2d)
    assert n_conv == 20
    quantize_model(net, get_scheme("paper"))
    layers = quant_layers(net)
    assert len(layers) == n_conv and all(isinstance(m, QConv2d) for m in layers.values())
    assert _count(net, nn.Conv2d) == 0 and _count(net, nn.Linear) == 1  # the classifier stays float
    for m in layers.values():
        assert m.act_quant is None
        assert (m.weight_quant.qmin, m.weight_quant.qmax) == (-64, 63)
        assert m.weight_quant.step.shape == (m.out_channels, 1, 1, 1)
        assert not m.weight_quant.learned_zp
    # Weight-only 7-bit: conv weights shrink to 7/32; the float fc and BN keep ResNet-18 above that.
    size = model_size(net)
    assert 0.22 < size["packed_bytes"] / size["fp32_bytes"] < 0.23


def test_trt_scheme_quantizes_conv_and_linear_with_int8_activations():
    net = build_model("resnet18", 3, 7)
    quantize_model(net, get_scheme("trt"))
    layers = quant_layers(net)
    assert len(layers) == 21 and isinstance(net.fc, QLinear)
    for m in layers.values():
        assert (m.weight_quant.qmin, m.weight_quant.qmax) == (-127, 127)
        assert (m.act_quant.qmin, m.act_quant.qmax) == (-128, 127) and not m.act_quant.learned_zp


def test_ort_scheme_zero_point_is_fixed_after_relu_and_learned_elsewhere():
    net = build_model("resnet18", 3, 7)
    quantize_model(net, get_scheme("ort"))
    layers = quant_layers(net)
    learned = {n for n, m in layers.items() if m.act_quant.learned_zp}
    assert learned == {"conv1"}  # the image input; every other layer is fed by a ReLU (through pools)
    assert all(m.act_quant.qmin == 0 and m.act_quant.qmax == 255 for m in layers.values())


def test_scheme_overrides():
    s = get_scheme("trt", bits=4, act_bits=0)
    assert s.weight.bits == 4 and s.act is None
    s = get_scheme("paper", act_bits=4)
    assert s.act.bits == 4
    with pytest.raises(QdgError):
        get_scheme("nope")


def test_activation_steps_initialize_from_the_first_batch():
    net = build_model("mnist-cnn", 1, 10)
    quantize_model(net, get_scheme("trt"))
    act = net.conv2.act_quant
    assert not act.initialized
    net(torch.rand(4, 1, 28, 28))
    assert act.initialized and act.step.item() != 1.0


@pytest.mark.parametrize("regime", ["clipped", "inside"])
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_fused_gradients_equal_the_composite_lsq_graph(spec, regime):
    """The hand-written backward equals autograd through the textbook LSQ expression, with elements outside the range
    and with every element inside it (where the CPU forward skips the clamp and the backward the range test)."""
    from qdg_deploy.quant.quantizers import _all_inside, _range, round_ste, scale_grad

    torch.manual_seed(3)
    q = LsqQuantizer(spec, channels=6, ndim=4)
    x = torch.randn(6, 3, 4, 4) * 2 + 0.3
    q.init_from(x)
    with torch.no_grad():
        q.zero_point.add_(0.3 if q.learned_zp else 0)
        half = q.qmax * q.scale().reshape(q.step.shape) * 0.5
        if regime == "clipped":  # ten times the data the range was fitted to
            x = x * 10
        elif q.learned_zp:  # the range fitted to x (it holds 0) holds a tenth of x
            x = x * 0.1
        else:  # half of LSQ's range (no element on a range end, where torch's clamp has a zero gradient and LSQ not)
            x = torch.minimum(torch.maximum(x, -half) if q.spec.signed else x.abs(), half)
    x.requires_grad_()
    z0 = torch.round(q.zero_point.detach()) if q.learned_zp else None
    assert _all_inside(x.detach(), q.scale().reshape(q.step.shape), *_range(z0, q.qmin, q.qmax)) == (regime == "inside")
    w = torch.randn_like(x)
    out = q(x)
    with torch.no_grad():  # ONNX QuantizeLinear's order: round, add the zero point, saturate
        z_int = q.zero_point_int() if q.learned_zp else 0
        s_ = q.scale().reshape(q.step.shape)
        assert torch.equal(out, (torch.clamp(torch.round(x / s_) + z_int, q.qmin, q.qmax) - z_int) * s_)
    (out * w).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    s = q.step.detach().clone().requires_grad_()
    z = q.zero_point.detach().clone().requires_grad_()
    g = 1 / math.sqrt(x.numel() * q.qmax)
    ss = scale_grad(s, g)
    zz = round_ste(scale_grad(z, g)) if q.learned_zp else 0
    ref = (round_ste(torch.clamp(x2 / ss + zz, q.qmin, q.qmax)) - zz) * ss
    (ref * w).sum().backward()
    assert torch.allclose(x.grad, x2.grad)
    assert torch.allclose(q.step.grad, s.grad, atol=1e-6)
    if q.learned_zp:
        assert torch.allclose(q.zero_point.grad, z.grad, atol=1e-6)


def test_range_ends_are_inside_for_the_gradients():
    """v exactly qmin or qmax passes the gradient (LSQ: -Qn <= v <= Qp; torch 2.14's clamp would pass none there); a hair
    beyond it does not."""
    from qdg_deploy.quant.quantizers import _LsqFakeQuant

    x = torch.tensor([127 * 0.5, -128 * 0.5, 127 * 0.5 + 1e-3, 0.3], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    _LsqFakeQuant.apply(x, s, None, -128, 127, 1.0).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 1.0]
    # step: round(v) - v inside (0, 0, 1 - 0.6), qmax - 0 outside
    assert s.grad.item() == pytest.approx(127.4)


def test_range_test_uses_the_input_precision():
    """float64: a value 1e-12 beyond the range end is outside (a float32 neighbour would call it inside)."""
    from qdg_deploy.quant.quantizers import _LsqFakeQuant

    x = torch.tensor([1 + 1e-12, 0.5], dtype=torch.float64, requires_grad=True)
    s = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    _LsqFakeQuant.apply(x, s, None, -1, 1, 1.0).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_range_test_on_x_equals_the_test_on_x_over_s(dtype):
    """The CPU backward tests a < x < b instead of forming v = x / s: for every float next to either end (and next
    to lo·s, hi·s), the two tests agree, for steps of every size (up to 1e12, where a walk from 0 would take ~1e12
    floats) and ranges shifted by a zero point."""
    from qdg_deploy.quant.quantizers import _x_bounds

    ft = np.float64 if dtype == torch.float64 else np.float32
    rng = np.random.default_rng(0)
    steps = [0.5, 1.0, 3.0, 0.1, 1e-8, 1 / 3, 1e5, 1e12] + list(10 ** rng.uniform(-6, 2, 40))
    for s in steps:
        s = float(ft(s))
        for lo, hi in [(-128, 127), (0, 255), (-131, 124), (-1, 1)]:
            a, b = _x_bounds(dtype, s, lo, hi)  # not None: found by a short walk
            near = []
            for c in (a, b, lo * s, hi * s, 0.0):
                t = ft(c)
                for direction in (np.inf, -np.inf):
                    u = t
                    for _ in range(6):
                        near.append(u)
                        u = np.nextafter(u, ft(direction))
            x = torch.tensor(np.array(near, dtype=ft))
            v = x / torch.tensor(s, dtype=dtype)
            assert torch.equal((x > a) & (x < b), (v >= lo) & (v <= hi)), (s, lo, hi)


@pytest.mark.parametrize("data", ["fitted", "inside"])
@pytest.mark.parametrize("scheme", ["trt", "ort"])
@pytest.mark.parametrize("first", ["conv", "linear"])
def test_image_input_step_gradient_comes_from_a_forward_op(scheme, first, data):
    """An image (no gradient) entering a quantized layer: its input step (and zero point) gets its gradient from one
    forward op on d x_q / d s, not from the op's backward to its input. Outputs are the same bits and every gradient
    equals the one through the usual path (an input that needs a gradient takes it)."""
    import copy

    torch.manual_seed(0)
    head = nn.Linear(16 * 16 * 16, 10) if first == "conv" else nn.Linear(3 * 32 * 32, 10)
    # a ReLU in place right after the layer: allowed
    body = [nn.Conv2d(3, 16, 7, 2, 3), nn.ReLU(inplace=True), nn.Flatten()] if first == "conv" else [nn.Flatten()]
    net = nn.Sequential(*body, head)
    quantize_model(net, get_scheme(scheme))
    x = torch.rand(8, 3, 32, 32) * 2 - 0.5
    y = torch.randint(0, 10, (8,))
    net(x)  # steps from the first batch
    if data == "inside":  # every pixel inside the input range: the zero point's gradient is 0 (no op computes it)
        x = x * 0.5
    ref = copy.deepcopy(net)
    layer = net[0] if first == "conv" else net[1]
    assert type(layer(x if first == "conv" else x.flatten(1)).grad_fn).__name__ == "_TangentsBackward"
    out = net(x)
    nn.functional.cross_entropy(out, y).backward()
    xr = x.clone().requires_grad_()
    out_ref = ref(xr)
    nn.functional.cross_entropy(out_ref, y).backward()
    assert torch.equal(out, out_ref)
    act = layer.act_quant
    assert act.step.grad is not None and act.step.grad.abs().item() > 0
    if scheme == "ort":
        assert act.zero_point.grad is not None and (act.zero_point.grad.item() == 0) == (data == "inside")
    for (name, p), (_, pr) in zip(net.named_parameters(), ref.named_parameters()):
        assert (p.grad is None) == (pr.grad is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, pr.grad, rtol=1e-4, atol=1e-9), name
