"""Issue 19: fair DA baselines (activation bits, SGD), the gradient approximation inside the chain rule (hand-worked),
and the report's one column per DA pair."""

import json
import math

import pytest
import torch

from conftest import run_cli
from qdg_deploy.quant import quant_layers
from qdg_deploy.quant.daq import daq_weight
from qdg_deploy.records import Metrics, RunConfig
from qdg_deploy.train import get_algorithm, resolve_hparams
from qdg_deploy.train.algorithms import lr_scale
from qdg_deploy.train.alignq_terms import ApproxRound, approx_round, approx_round_derivative, grad_approx_factor
from qdg_deploy.workflows.report import write_report

W = torch.tensor([-3.0, -1.0, 1.0, 3.0])  # mean 0, unbiased std sqrt(20/3)


def s_prime(x: float) -> float:
    s = 1 / (1 + math.exp(-x))
    return s * (1 - s)


# --- 1. activation bits follow --bits for every quantized DA method ----------------------------------------


@pytest.mark.parametrize("method", ["dann", "dsan", "alignq"])
def test_act_bits_follow_bits_and_both_are_recorded(method):
    quant = {} if method == "alignq" else {"quant": True}
    hp = resolve_hparams("rotated-mnist", method=method, source="0", target="15", bits=2, arch="mnist-cnn", **quant)
    assert (hp["bits"], hp["act_bits"]) == (2, 2)
    layers = quant_layers(get_algorithm(method)((1, 28, 28), 10, 1, {**hp, "q_steps": 0}).network)
    assert layers["conv2"].act_quant.spec.bits == layers["conv2"].weight_quant.spec.bits == 2
    hp = resolve_hparams("rotated-mnist", method=method, source="0", target="15", bits=2, act_bits=8, **quant)
    assert (hp["bits"], hp["act_bits"]) == (2, 8)  # --act-bits still says otherwise
    hp = resolve_hparams("rotated-mnist", method=method, source="0", target="15", **quant)
    assert (hp["bits"], hp["act_bits"]) == (4, 4)  # the scheme's default, written down
    assert resolve_hparams("rotated-mnist", method="dann", source="0", target="15")["act_bits"] is None  # float


# --- 2. the optimizer ------------------------------------------------------------------------------------------


def test_da_methods_default_to_sgd_with_momentum_and_dg_to_adam():
    hp = resolve_hparams("rotated-mnist", method="dann", source="0", target="15", quant=True, quantizer="lsq")
    assert (hp["optimizer"], hp["momentum"], hp["lr"], hp["q_lr"]) == ("sgd", 0.9, 0.01, 0.01)
    algo = get_algorithm("dann")((1, 28, 28), 10, 1, {**hp, "q_steps": 0})
    assert isinstance(algo.optimizer, torch.optim.SGD)
    assert [g["lr"] for g in algo.optimizer.param_groups] == [0.01, 0.01]  # weights, LSQ steps
    assert algo.optimizer.param_groups[0]["momentum"] == 0.9
    hp = resolve_hparams("rotated-mnist", method="alignq", source="0", target="15", lr=0.05, momentum=0.5)
    assert (hp["lr"], hp["momentum"]) == (0.05, 0.5)
    erm = resolve_hparams("rotated-mnist", method="erm")
    assert (erm["optimizer"], erm["lr"]) == ("adam", 1e-3)
    adam = resolve_hparams("rotated-mnist", method="alignq", source="0", target="15", optimizer="adam")
    assert isinstance(get_algorithm("alignq")((1, 28, 28), 10, 1, adam).optimizer, torch.optim.Adam)


def test_step_schedule_divides_the_rate_by_ten_from_80_percent():
    hp = resolve_hparams("rotated-mnist", method="dann", source="0", target="15", steps=10, lr_schedule="step")
    assert [lr_scale(hp, s) for s in (0, 7, 8, 9)] == [1.0, 1.0, 0.1, 0.1]
    algo = get_algorithm("dann")((1, 28, 28), 10, 1, {**hp, "arch": "mnist-cnn"})
    algo.schedule_lr(8)
    assert algo.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    algo.schedule_lr(0)
    assert algo.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert lr_scale({**hp, "lr_schedule": "none"}, 9) == 1.0


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--optimizer", "rmsprop"], "--optimizer takes one of sgd, adam"),
        (["--lr-schedule", "cosine"], "--lr-schedule takes one of none, step"),
        (["--grad-approx", "double"], "--grad-approx takes one of chain, legacy, off"),
        (["--momentum", "1.5"], "--momentum must be in [0, 1]"),
        (["--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to --optimizer sgd only"),
    ],
)
def test_bad_optimizer_options_are_one_error_line(args, fragment, tmp_path, cli):
    r = cli("train", "--method", "alignq", "--source", "0", "--target", "15", *args, "--out", tmp_path / "o")
    assert r.returncode == 2 and fragment in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


# --- 3. the gradient approximation inside the chain rule ------------------------------------------------------


def test_approx_round_forward_and_hand_worked_derivative():
    # n = 3, lam 2, lam2 4: frac(x + 1.5) = [0, 0.25, 0, 0.5] -> 2 s'(8 * that) = 2 * [1/4, s'(2), 1/4, s'(4)]
    x = torch.tensor([1.5, 1.75, 0.5, 2.0], requires_grad=True)
    y = ApproxRound.apply(x, 3, 2.0, 4.0)
    assert y.tolist() == [2.0, 2.0, 0.0, 2.0]  # round half to even, as ONNX QuantizeLinear
    y.backward(torch.tensor([1.0, 1.0, 1.0, 3.0]))
    expected = [0.5, 2 * 0.104994, 0.5, 3 * 2 * 0.017663]  # s'(2) = 0.104994, s'(4) = 0.017663
    assert x.grad.tolist() == pytest.approx(expected, abs=2e-6)


def test_chain_gradient_holds_phi_once_hand_worked():
    # loss = w_q[2] of a 2-bit DAQ over W: d/dw_2 = (2/n) * d * n * phi(z_2) * dz_2/dw_2 with d the approximated
    # round derivative at x_2 = 3 Phi(z_2) and dz_2/dw_2 = (1 - 1/N) / sigma - z_2^2 / ((N - 1) sigma) (mu, sigma
    # are the layer's own): z_2 = 0.3873, Phi 0.6507, frac(x_2 + 1.5) = 0.452, d = s'(3.616) = 0.0255,
    # phi = 0.3704, dz/dw = 0.2711 -> 2 * 0.0255 * 0.3704 * 0.2711 = 0.00512
    w = W.clone().requires_grad_(True)
    daq_weight(w, 2, approx_round(1.0, 4.0))[2].backward()
    sigma = math.sqrt(20 / 3)
    z = 1 / sigma
    phi_cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    d = s_prime(8 * ((3 * phi_cdf + 1.5) % 1))
    pdf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    expected = 2 * d * pdf * ((1 - 1 / 4) / sigma - z * z / (3 * sigma))
    assert w.grad[2].item() == pytest.approx(expected, rel=1e-4)
    assert w.grad[2].item() == pytest.approx(0.00512, abs=5e-5)


def test_chain_is_the_straight_through_gradient_with_round_derivative_replaced_and_legacy_differs():
    torch.manual_seed(0)
    w0, c = torch.randn(8, 4, 3, 3) * 0.1, torch.randn(8, 4, 3, 3)
    grads = {}
    for name, fn, up in (("chain", approx_round(1.0, 4.0), c), ("ste", None, None)):
        w = w0.clone().requires_grad_(True)
        if fn is None:  # straight-through, with the upstream scaled by the approximated derivative at each x
            z = (w0 - w0.mean()) / w0.std()
            x = 0.5 * (1 + torch.erf(z / math.sqrt(2))) / torch.tensor(1 / 15)  # as daq rounds: Phi / float32(1/n)
            up = c * approx_round_derivative(x, 15, 1.0, 4.0)
        (daq_weight(w, 4, fn) * up).sum().backward()
        grads[name] = w.grad
    assert torch.allclose(grads["chain"], grads["ste"], rtol=1e-4, atol=1e-7)
    w = w0.clone().requires_grad_(True)
    (daq_weight(w, 4) * c).sum().backward()
    legacy = w.grad * grad_approx_factor(w0, 4)  # phi from autograd times 2 phi: phi twice
    assert not torch.allclose(legacy, grads["chain"], rtol=0.1)


def test_alignq_modes_set_the_rounding_of_all_convs_but_the_first():
    for mode, chain in (("chain", True), ("legacy", False), ("off", False), (True, True), (False, False)):
        hp = resolve_hparams(
            "rotated-mnist", method="alignq", source="0", target="15", arch="mnist-cnn", grad_approx=mode, q_steps=0
        )
        algo = get_algorithm("alignq")((1, 28, 28), 10, 1, hp)
        layers = quant_layers(algo.network)
        assert (layers["conv2"].weight_quant.round_fn is not None) == chain
        assert layers["conv1"].weight_quant.round_fn is None  # the first conv keeps the straight-through round
    assert hp["grad_approx"] == "off"


def test_cli_grad_approx_forms(tmp_path):
    for args, mode in (
        (["--grad-approx"], "chain"),
        (["--grad-approx", "legacy"], "legacy"),
        (["--no-grad-approx"], "off"),
    ):
        out = tmp_path / mode
        r = run_cli(
            "train",
            "--method",
            "alignq",
            "--source",
            "0",
            "--target",
            "15",
            "--arch",
            "mnist-cnn",
            *args,
            "--steps",
            "1",
            "--q-steps",
            "0",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--no-crp",
            "--out",
            out,
        )
        assert r.returncode == 0, r.stderr
        assert json.loads((out / "config.json").read_text())["hparams"]["grad_approx"] == mode


# --- 5. the report: one column per pair --------------------------------------------------------------------------


def test_report_has_one_column_per_da_pair(tmp_path):
    out = tmp_path / "S"
    for label, accs in (
        ("dann", {("0", "15"): [0.9, 0.8], ("15", "30"): [0.7, 0.7]}),
        ("alignq", {("0", "15"): [0.6]}),
    ):
        for (src, tgt), values in accs.items():
            for s, acc in enumerate(values):
                run = out / label / tgt / f"seed{s}"
                run.mkdir(parents=True)
                Metrics(test_env=tgt, test_acc=acc, method=label).write(run / "metrics.json")
                RunConfig.from_json(
                    {"domains": ["0", "15", "30"], "domain_adaptation": {"source": src, "target": tgt}}
                ).write(run / "config.json")
                (run / "model.safetensors").write_bytes(b"")
    table, md, _ = write_report(out)
    assert table["domains"] == ["0→15", "15→30"]
    rows = {r["label"]: r for r in table["rows"]}
    assert rows["dann"]["per_domain"]["0→15"]["mean"] == pytest.approx(0.85)
    assert rows["dann"]["avg"] == pytest.approx(0.775) and rows["alignq"]["avg"] is None
    assert "| alignq | 60.0 | — | — |" in md.read_text() and "Target-domain accuracy" in md.read_text()
