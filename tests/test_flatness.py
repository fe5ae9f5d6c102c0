"""`flatness`: radius 0 is the plain training loss, the curve and PNG are written, quantized weights re-quantize."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from qdg_deploy.quant import quant_layers
from qdg_deploy.runs import load_run
from qdg_deploy.workflows.flatness import loss_curve, parse_radius, perturbable, training_data


@pytest.fixture(scope="module")
def qrun(folder_runs):
    return folder_runs["runs"][0]  # a tiny QT-DoG trt run (conftest), shared with test_ensemble


def test_radius_zero_is_the_training_loss_and_the_curve_is_written(qrun, tmp_path, cli):
    r = cli("flatness", qrun, "--radius", "0..2", "--points", "3", "--directions", "3", "--out", tmp_path / "f")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "f" / "flatness.json").read_text())
    assert (tmp_path / "f" / "flatness.png").read_bytes()[:4] == b"\x89PNG"
    c = res["runs"][str(qrun)]
    run = load_run(qrun)
    data = training_data(run, 512)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([int(data[i][1]) for i in range(len(data))])
    assert len(y) == 24  # the two training domains' whole in splits (80 % of 15 each)
    assert len(training_data(run, 5)) == 10  # a fixed subsample of each
    with torch.no_grad():
        plain = F.cross_entropy(run.model(x), y).item()
    assert c["mean"][0] == pytest.approx(plain, rel=1e-5) and c["std"][0] == 0.0
    assert res["radii"] == [0.0, 1.0, 2.0] and len(c["losses"]) == 3
    assert c["losses"][0][2] != c["losses"][1][2]  # different directions, different losses
    assert c["std"][2] > 0 and c["mean"][2] != c["mean"][0]


def test_perturbing_latent_weights_requantizes_them_at_fixed_steps(qrun):
    run = load_run(qrun)
    model = run.model
    names = [n for n, _ in perturbable(model)]
    assert names and not any("_quant." in n for n in names)
    layer = next(iter(quant_layers(model).values()))
    steps = [p.detach().clone() for p in layer.weight_quant.parameters()]
    before = layer.quant_weight().detach().clone()
    data = training_data(run, 8)
    curve = loss_curve(model, data, [0.0, 5.0], directions=1)
    assert torch.equal(layer.quant_weight(), before)  # restored afterwards
    with torch.no_grad():
        layer.weight.add_(0.05 * torch.randn_like(layer.weight))
    after = layer.quant_weight().detach()
    scale = layer.weight_quant.scale().detach()
    assert not torch.equal(after, before)
    assert torch.allclose(after / scale, torch.round(after / scale), atol=1e-4)  # still on the trained grid
    assert all(torch.equal(a, b) for a, b in zip(layer.weight_quant.parameters(), steps))
    assert curve["losses"][0][1] != curve["losses"][0][0]


def test_bad_radius_is_one_error_line(qrun, tmp_path, cli):
    assert parse_radius("0..3") == (0.0, 3.0) and parse_radius("2") == (0.0, 2.0)
    r = cli("flatness", qrun, "--radius", "3..1", "--out", tmp_path / "x")
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
