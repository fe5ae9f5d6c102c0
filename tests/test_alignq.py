"""AlignQ: DAQ transforms, gradient approximation, CRP relation matrix and ADMM terms on hand-worked
numbers; the training algorithm's hooks; the CLI's domain-adaptation mode, `--init` and `load_run`."""

import json
import math

import pytest
import torch

from conftest import run_cli
from qdg_deploy.models import build_model
from qdg_deploy.quant import QuantSpec, build_quantizer, get_scheme, quant_layers, quantize_model
from qdg_deploy.quant.daq import daq_act, daq_weight, normal_cdf
from qdg_deploy.runs import load_run
from qdg_deploy.train import get_algorithm, resolve_hparams
from qdg_deploy.train.alignq_terms import (
    CrpState,
    admm_loss,
    admm_update,
    crp_discrepancy,
    grad_approx_factor,
    relation_matrix,
)

W = torch.tensor([-3.0, -1.0, 1.0, 3.0])  # mean 0, unbiased std sqrt(20/3)


# --- DAQ transforms -----------------------------------------------------------------------------------


def test_daq_weight_two_bits_hand_worked():
    # z = w / 2.582 = [-1.162, -0.387, 0.387, 1.162]; Phi = [.123, .349, .651, .877];
    # 3 Phi = [0.37, 1.05, 1.95, 2.63] -> r = [0, 1, 2, 3] -> 2r/3 - 1
    expected = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
    assert torch.allclose(daq_weight(W, 2), expected, atol=1e-6)
    # the layer's own mean / std: any affine map of the weights gives the same codes
    assert torch.allclose(daq_weight(W * 0.01 + 5.0, 2), expected, atol=1e-6)


def test_daq_weight_levels_and_range():
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3) * 0.05 + 0.01
    for bits in (2, 3, 4, 8):
        q = daq_weight(w, bits)
        vals = torch.unique(q)
        n = 2**bits - 1
        assert len(vals) <= 2**bits and vals.min() >= -1 - 1e-6 and vals.max() <= 1 + 1e-6
        assert torch.allclose((vals + 1) * n / 2, torch.round((vals + 1) * n / 2), atol=1e-4)  # on the grid
    assert len(torch.unique(daq_weight(w, 4))) == 16  # a big layer uses all 2^k levels


def test_daq_act_range_and_gradient():
    a = torch.tensor([-10.0, -0.5, 0.5, 10.0], requires_grad=True)
    # Phi = [0, .309, .691, 1]; 3 Phi = [0, .93, 2.07, 3] -> r = [0, 1, 2, 3]; (2r/3 - 1) * 2
    q = daq_act(a, 2, 2.0)
    assert torch.allclose(q, torch.tensor([-2.0, -2 / 3, 2 / 3, 2.0]), atol=1e-6)
    q.sum().backward()  # STE round: d/da = 2 * range * pdf(a)
    pdf = math.exp(-0.125) / math.sqrt(2 * math.pi)
    assert a.grad[2].item() == pytest.approx(4 * pdf, rel=1e-5)


def test_daq_quantizer_codes_times_scale_is_the_forward():
    torch.manual_seed(1)
    w = torch.randn(16, 8, 3, 3) * 0.03
    wq = build_quantizer(QuantSpec(bits=4, quantizer="daq"), channels=16, is_weight=True)
    codes = wq.integer_codes(w)
    assert (wq.qmin, wq.qmax) == (-15, 15) and codes.min() >= -15 and codes.max() <= 15
    assert bool((codes % 2 != 0).all())  # odd codes: n per side, k + 1 signed bits
    assert torch.allclose(codes.float() * wq.scale(), wq(w), atol=1e-6)
    aq = build_quantizer(QuantSpec(bits=4, quantizer="daq"), act_range=2.0)
    x = torch.randn(4, 8, 5, 5) * 1.5
    assert torch.allclose(aq.integer_codes(x).float() * aq.scale(), aq(x), atol=1e-6)
    assert aq.scale().item() == pytest.approx(2 / 15)


# --- gradient approximation ---------------------------------------------------------------------------


def test_grad_factor_at_a_bin_edge():
    w = torch.tensor([-1.0, 0.0, 1.0])  # mean 0, std 1: the middle weight has Phi = 0.5
    # n = 3: frac(3 (0.5 + 0.5)) = 0 -> s'(0) = 1/4; factor = lam * 1/4 * 2 * pdf(0) / sigma
    f = grad_approx_factor(w, 2, lam=2.0, lam2=4.0)
    assert f[1].item() == pytest.approx(2.0 * 0.25 * 2 / math.sqrt(2 * math.pi), rel=1e-6)


def test_grad_factor_inside_a_bin():
    # w = 1 in W: z = 0.3873, Phi = 0.6507, frac(3 * 1.1507) = 0.452, s'(8 * 0.452) = 0.0255,
    # pdf = exp(-z^2 / 2) / (sigma sqrt(2 pi)) = 0.1433 -> factor 0.00731
    f = grad_approx_factor(W, 2, lam=1.0, lam2=4.0)
    sigma = math.sqrt(20 / 3)
    z = 1 / sigma
    phi = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    pos = (3 * (phi + 0.5)) % 1
    s = 1 / (1 + math.exp(-8 * pos))
    expected = s * (1 - s) * 2 * math.exp(-z * z / 2) / (sigma * math.sqrt(2 * math.pi))
    assert f[2].item() == pytest.approx(expected, rel=1e-5)
    assert f[2].item() == pytest.approx(0.00731, abs=5e-5)


# --- CRP: relation matrix and ADMM ----------------------------------------------------------------------


def test_relation_matrix_hand_worked():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
    # each column standardized (unbiased std 2): rows [-1, 0], [0, 1], [1, -1]; Z Z^T / 2
    expected = torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.5, -0.5], [-0.5, -0.5, 1.0]])
    assert torch.allclose(relation_matrix(x), expected, atol=1e-4)


def test_crp_discrepancy_is_relation_of_cdf_minus_relation():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, 4)
    d = crp_discrepancy(x)
    assert d.shape == (6, 6)
    assert torch.allclose(d, relation_matrix(normal_cdf(x)) - relation_matrix(x), atol=1e-6)
    # Phi is nearly affine near 0 (no 2nd-order term): a small-variance batch has D ~ 0, a wide one not
    assert crp_discrepancy(x * 1e-2).abs().max() < 1e-2
    assert crp_discrepancy(x * 3).abs().max() > 0.05


def test_admm_loss_terms_hand_worked():
    d = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    a = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    g = torch.ones(2, 2)
    # 0.2 * 0.125 + 0.15 * sqrt(1.25 / 4) + (0.5 + 1) / 4
    expected = 0.025 + 0.15 * math.sqrt(0.3125) + 0.375
    assert admm_loss(d, a, g, mu=0.2, rho=0.3).item() == pytest.approx(expected, rel=1e-6)


def test_admm_closed_form_updates():
    d = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    a, g = admm_update(d, torch.zeros(2, 2), mu=0.2, rho=0.3)  # ||V|| = 5: shrink 1 - (2/3) / 5
    assert torch.allclose(a, torch.tensor([[2.6, 0.0], [0.0, 52 / 15]]), atol=1e-5)
    assert torch.allclose(g, torch.tensor([[0.12, 0.0], [0.0, 0.16]]), atol=1e-5)
    a, g = admm_update(d * 0.1, torch.zeros(2, 2))  # ||V|| = 0.5 < mu / rho: A = 0, Gamma = rho D
    assert torch.all(a == 0) and torch.allclose(g, 0.03 * d, atol=1e-7)
    # Gamma feeds V: V = D + Gamma / rho
    a, _ = admm_update(torch.zeros(2, 2), torch.tensor([[0.9, 0.0], [0.0, 1.2]]), mu=0.2, rho=0.3)
    assert torch.allclose(a, (1 - (2 / 3) / 5) * torch.tensor([[3.0, 0.0], [0.0, 4.0]]), atol=1e-5)


def test_crp_state_loss_and_update():
    st = CrpState()
    d = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert st.loss(d).item() == pytest.approx(0.15 * math.sqrt(25 / 4))  # A = Gamma = 0 at the start
    st.update(d)
    assert torch.allclose(st.gamma, torch.tensor([[0.12, 0.0], [0.0, 0.16]]), atol=1e-5)


# --- the algorithm ---------------------------------------------------------------------------------------


def _batch(bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(bs, 1, 28, 28, generator=g), torch.randint(0, 10, (bs,), generator=g)


def test_alignq_scheme_placement():
    net = quantize_model(build_model("mnist-cnn", 1, 10), get_scheme("alignq", bits=4, act_bits=4))
    layers = quant_layers(net)
    assert set(layers) == {"conv1", "conv2", "conv3", "conv4"}  # classifier float
    assert layers["conv1"].act_quant is None  # the image is not DAQ'd
    assert all(layers[n].act_quant.spec.quantizer == "daq" for n in ("conv2", "conv3", "conv4"))


def test_alignq_update_reshapes_gradients_and_runs_admm():
    torch.manual_seed(0)
    hp = resolve_hparams(
        "rotated-mnist", method="alignq", source="0", target="15", q_steps=0, steps=10, act_range=1.5, arch="mnist-cnn"
    )  # its layer names below
    algo = get_algorithm("alignq")((1, 28, 28), 10, 1, hp)
    layers = quant_layers(algo.network)
    assert layers["conv2"].act_quant.act_range.item() == 1.5
    assert layers["conv2"].act_quant.spec.bits == layers["conv2"].weight_quant.spec.bits == 4
    assert [id(m) for m in algo.approx_layers] == [id(layers[n]) for n in ("conv2", "conv3", "conv4")]
    assert set(algo.crp) == {"conv2", "conv3", "conv4"}
    (xs, ys), (xt, _) = _batch(), _batch(seed=1)
    # the reshaped gradient is the raw one times the factor
    algo.optimizer.zero_grad()
    fs = algo.featurize(xs)
    algo.featurize(xt)  # the target batch goes through the hooks as in a training step
    loss = torch.nn.functional.cross_entropy(algo.head(fs), ys) + algo.extra_loss()[0]
    loss.backward()
    raw = layers["conv3"].weight.grad.clone()
    algo.reshape_gradients()
    factor = grad_approx_factor(layers["conv3"].weight, 4, 1.0, 4.0)
    assert torch.allclose(layers["conv3"].weight.grad, raw * factor)
    for term in algo.crp.values():
        term.relations.clear()
    before = {n: m.weight.detach().clone() for n, m in layers.items()}
    info = algo.update([(xs, ys)], 0, unlabeled=xt)
    assert {"loss", "cls", "dom_src", "dom_tgt", "crp"} <= set(info) and info["crp"] > 0
    for term in algo.crp.values():
        assert not term.relations and term.state.gamma is not None and term.state.gamma.abs().sum() > 0
    assert all(not torch.equal(before[n], m.weight) for n, m in layers.items())


def test_alignq_without_crp_or_grad_approx():
    hp = resolve_hparams(
        "rotated-mnist",
        method="alignq",
        source="0",
        target="15",
        q_steps=0,
        crp=False,
        grad_approx=False,
        arch="mnist-cnn",
    )
    algo = get_algorithm("alignq")((1, 28, 28), 10, 1, hp)
    assert algo.crp == {}
    (xs, ys), (xt, _) = _batch(), _batch(seed=1)
    info = algo.update([(xs, ys)], 0, unlabeled=xt)
    assert "crp" not in info
    # single-domain (no target batch): DAQ training without the alignment loss
    info = algo.update([(xs, ys), (xt, ys)], 1)
    assert "dom_src" not in info and info["loss"] == pytest.approx(info["cls"])


@pytest.mark.parametrize("method", ["dann", "dsan"])
def test_da_baselines_float_and_quantized(method):
    (xs, ys), (xt, _) = _batch(), _batch(seed=1)
    for quant in (False, True):
        qopts = dict(q_steps=0, bits=4, act_bits=4) if quant else {}  # a float run refuses quantization options
        hp = resolve_hparams(
            "rotated-mnist", method=method, source="0", target="15", quant=quant, arch="mnist-cnn", **qopts
        )
        algo = get_algorithm(method)((1, 28, 28), 10, 1, hp)
        info = algo.update([(xs, ys)], 0, unlabeled=xt)
        assert math.isfinite(info["loss"])
        assert bool(quant_layers(algo.network)) == quant
        if quant:
            assert quant_layers(algo.network)["conv2"].weight_quant.spec.quantizer == "lsq"
    with pytest.raises(Exception, match="source"):
        algo.update([(xs, ys)], 1)


# --- CLI: DA mode, load_run, --init -----------------------------------------------------------------------


def test_cli_alignq_run_loads_back_and_inits(image_tree, tmp_path, cli):
    common = [
        "--dataset",
        f"folder:{image_tree}",
        "--arch",
        "mnist-cnn",
        "--image-size",
        "16",
        "--source",
        "art",
        "--target",
        "photo",
        "--batch-size",
        "4",
        "--checkpoint-freq",
        "2",
        "--threads",
        "1",
    ]
    r8 = run_cli(
        "train",
        "--method",
        "dann",
        "--quant",
        "--bits",
        "8",
        "--act-bits",
        "8",
        "--steps",
        "2",
        "--q-steps",
        "0",
        "--out",
        tmp_path / "r8",
        *common,
    )
    assert r8.returncode == 0, r8.stderr
    r4 = run_cli(
        "train",
        "--method",
        "alignq",
        "--bits",
        "4",
        "--act-range",
        "1.5",
        "--no-crp",
        "--steps",
        "2",
        "--lam",
        "1",
        "--lam2",
        "4",
        "--init",
        tmp_path / "r8",
        "--out",
        tmp_path / "r4",
        *common,
    )
    assert r4.returncode == 0, r4.stderr
    metrics = json.loads((tmp_path / "r4" / "metrics.json").read_text())
    assert set(metrics) == {
        "schema_version",
        "per_domain",
        "test_env",
        "test_acc",
        "val_acc",
        "selected_step",
        "bits",
        "scheme",
        "method",
    }
    assert metrics["test_env"] == "photo" and metrics["bits"] == 4 and metrics["scheme"] == "alignq"
    config = json.loads((tmp_path / "r4" / "config.json").read_text())
    assert config["init"]["bits"] == 8 and config["domain_adaptation"]["source"] == "art"
    run = load_run(tmp_path / "r4")
    layers = quant_layers(run.model)
    assert layers["conv2"].act_quant.spec.quantizer == "daq" and layers["conv2"].act_quant.act_range.item() == 1.5
    assert layers["conv2"].act_quant.spec.bits == 4  # act bits follow --bits
    bad = cli(
        "train", "--method", "alignq", "--source", "art", "--dataset", f"folder:{image_tree}", "--out", tmp_path / "bad"
    )
    assert bad.returncode == 2 and "--target" in bad.stderr
