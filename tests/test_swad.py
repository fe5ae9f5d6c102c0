"""SWAD's loss valley, weight averaging of quantized layers, the quantizer learning rate, freeze-after-swap,
CORAL and MixStyle: each against a hand computation."""

import json

import pytest
import torch
from torch import nn

from qdg_deploy.accuracy import predictions
from qdg_deploy.models import build_model
from qdg_deploy.quant import get_scheme, quant_layers, quantize_model
from qdg_deploy.runs import load_run
from qdg_deploy.train import get_algorithm, resolve_hparams, train_one
from qdg_deploy.train.algorithms import quantizer_params
from qdg_deploy.train.dg import coral_penalty
from qdg_deploy.train.swad import LossValley, RunningAverage, WeightAveraging, recompute_bn


def _segment(value: float, end_step: int) -> RunningAverage:
    """A segment average whose single parameter equals `value` (so window averages are checkable by hand)."""
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(value)
    avg = RunningAverage()
    avg.add(net, end_step)
    return avg


def _feed(valley: LossValley, losses):
    for i, loss in enumerate(losses):
        valley.update(_segment(float(i), 10 * (i + 1)), loss)


def _window_value(valley: LossValley) -> float:
    return valley.final().state()["weight"].item()


# segment:   0    1    2    3    4    5    6    7    8    9   10   11   12   13
LOSSES = [5.0, 4.0, 3.0, 2.0, 2.5, 3.0, 2.2, 2.4, 6.0, 7.0, 8.0, 9.0, 9.0, 9.0]


def test_valley_opens_where_the_oldest_of_three_is_lowest_and_closes_on_the_lookahead():
    v = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    _feed(v, LOSSES)
    # [2, 2.5, 3] (segments 3-5) is the first window of three whose oldest is the minimum: opens at segment 3
    assert v.opened and v.converge_step == 40
    assert v.threshold == pytest.approx((2.0 + 2.5 + 3.0) / 3 * 1.3)  # 3.25
    # segment k joins while min(loss[k .. k+5]) <= 3.25: 3..7 do; segment 8's look-ahead [6, 7, 8, 9, 9, 9] closes it
    assert v.dead and v.joined == [40, 50, 60, 70, 80]
    assert _window_value(v) == pytest.approx((3 + 4 + 5 + 6 + 7) / 5)


def test_a_larger_tolerance_keeps_the_valley_open_longer():
    v = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=1.0)  # threshold 5.0
    _feed(v, LOSSES)
    # segment 8's look-ahead min(6, 7, 8, 9, 9, 9) = 6 is still over 5: the same window as at 0.3
    assert v.joined == [40, 50, 60, 70, 80] and v.dead
    v = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=2.0)  # threshold 7.5
    _feed(v, LOSSES)
    assert not v.dead and v.joined == [40, 50, 60, 70, 80, 90]  # segment 8 joins (look-ahead min 6)
    # at the end segment 9 joins on its shorter look-ahead (min 7), segment 10's (min 8) closes the valley
    assert _window_value(v) == pytest.approx(sum(range(3, 10)) / 7)
    assert v.joined == [40, 50, 60, 70, 80, 90, 100] and v.dead


def test_final_judges_the_segments_left_on_the_shorter_lookahead():
    v = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    _feed(v, LOSSES[:9])  # ends before the valley closes: segments 3..8 undecided or pending
    assert not v.dead
    # at the end: 3..7 join (each look-ahead still holds a loss <= 3.25), segment 8 alone (6.0) does not
    assert _window_value(v) == pytest.approx((3 + 4 + 5 + 6 + 7) / 5)
    assert v.joined == [40, 50, 60, 70, 80]


def test_a_valley_that_never_opens_gives_the_last_segment():
    v = LossValley()
    _feed(v, [5.0, 4.0, 3.0, 2.0])  # still falling
    assert not v.opened
    assert _window_value(v) == pytest.approx(3.0)
    assert "never opened" in v.record()["note"]


def test_averaging_of_quantized_layers_covers_weights_and_step_sizes():
    net = build_model("mnist-cnn", 1, 10)
    quantize_model(net, get_scheme("ort"))
    net(torch.rand(2, 1, 28, 28))  # initializes the activation quantizers
    layer = quant_layers(net)["conv2"]
    avg = RunningAverage()
    weights, steps, zps = [], [], []
    for k in range(3):  # three iterates with known values
        with torch.no_grad():
            layer.weight.fill_(0.1 * (k + 1))
            layer.weight_quant.step.fill_(0.01 * (k + 1))
            layer.act_quant.zero_point.fill_(float(k))
        weights.append(0.1 * (k + 1))
        steps.append(0.01 * (k + 1))
        zps.append(float(k))
        avg.add(net, k)
    avg.load_into(net)
    assert torch.allclose(layer.weight, torch.full_like(layer.weight, sum(weights) / 3))
    assert torch.allclose(layer.weight_quant.step, torch.full_like(layer.weight_quant.step, sum(steps) / 3))
    assert layer.act_quant.zero_point.item() == pytest.approx(sum(zps) / 3)


def test_weight_averaging_takes_iterates_after_the_start_only():
    net = nn.Linear(1, 1, bias=False)
    wa = WeightAveraging({"sma": 0}, start=2)
    for done in range(1, 5):
        with torch.no_grad():
            net.weight.fill_(float(done))
        wa.observe(net, done)
    assert wa.average().state()["weight"].item() == pytest.approx((3 + 4) / 2)


def test_recompute_bn_gives_the_plain_average_over_the_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    batches = [torch.randn(4, 1, 3, 3) for _ in range(3)]
    recompute_bn(net, iter(batches), 3)
    with torch.no_grad():
        feats = [net[0](b) for b in batches]
    expected = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    assert torch.allclose(net[1].running_mean, expected, atol=1e-6)
    assert net[1].momentum == 0.1  # restored


def test_quantizer_parameters_get_their_own_learning_rate_and_no_weight_decay():
    hp = resolve_hparams("rotated-mnist", method="qtdog", q_steps=0, lr=1e-3, q_lr=1e-5, weight_decay=1e-4)
    algo = get_algorithm("qtdog")((1, 28, 28), 10, 2, hp)
    qids = {id(p) for p in quantizer_params(algo) if p.requires_grad}  # step sizes (zero points fixed at 0)
    assert qids
    groups = algo.optimizer.param_groups
    qgroup = [g for g in groups if {id(p) for p in g["params"]} == qids]
    assert len(qgroup) == 1 and qgroup[0]["lr"] == 1e-5 and qgroup[0]["weight_decay"] == 0.0
    rest = [g for g in groups if g is not qgroup[0]]
    assert all(g["lr"] == 1e-3 and not ({id(p) for p in g["params"]} & qids) for g in rest)


def _batches(n_domains=2, bs=8):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.rand(bs, 1, 28, 28, generator=g), torch.randint(0, 10, (bs,), generator=g)) for _ in range(n_domains)
    ]


def test_freeze_after_swap_stops_quantized_layers_and_trains_the_rest():
    torch.manual_seed(0)
    hp = resolve_hparams("rotated-mnist", method="qtdog", q_steps=1, lr=1e-2, freeze_after_swap=True)
    algo = get_algorithm("qtdog")((1, 28, 28), 10, 2, hp)
    algo.update(_batches(), 0)  # float step
    algo.update(_batches(), 1)  # swap, then a step
    layers = quant_layers(algo.network)
    before = {n: (m.weight.detach().clone(), m.weight_quant.step.detach().clone()) for n, m in layers.items()}
    fc, gn = algo.network.fc.weight.detach().clone(), algo.network.bn1.weight.detach().clone()
    for step in range(2, 4):
        algo.update(_batches(), step)
    for n, m in layers.items():
        assert torch.equal(m.weight, before[n][0]) and torch.equal(m.weight_quant.step, before[n][1]), n
    assert not torch.equal(algo.network.fc.weight, fc) and not torch.equal(algo.network.bn1.weight, gn)


def test_coral_penalty_by_hand():
    a = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0), covariance [[2, 0], [0, 0]]
    b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])  # mean (0, 1), covariance [[0, 0], [0, 2]]
    # means: ((2-0)^2 + (0-1)^2) / 2 = 2.5; covariances: (2^2 + 0 + 0 + 2^2) / 4 = 2
    assert coral_penalty(a, b).item() == pytest.approx(4.5)
    assert coral_penalty(a, a).item() == 0.0


def test_coral_trains_with_its_penalty():
    torch.manual_seed(0)
    hp = resolve_hparams("rotated-mnist", method="coral")
    algo = get_algorithm("coral")((1, 28, 28), 10, 2, hp)
    info = algo.update(_batches(), 0)
    assert info["coral"] > 0 and info["loss"] == pytest.approx(info["ce"] + info["coral"], rel=1e-5)


def test_mixstyle_mixes_in_training_and_is_the_identity_in_eval():
    torch.manual_seed(0)
    hp = resolve_hparams("rotated-mnist", method="mixstyle", mixstyle_p=1.0)
    algo = get_algorithm("mixstyle")((1, 28, 28), 10, 2, hp)
    plain = build_model(hp["arch"], 1, 10)  # mixes after layer1 and layer2 (mnist-cnn: bn0, bn1)
    plain.load_state_dict(algo.network.state_dict())
    x = torch.rand(8, 1, 28, 28)
    algo.eval()
    plain.eval()
    assert torch.equal(algo.predict(x), plain(x))
    algo.train()
    plain.train()
    assert not torch.allclose(algo.predict(x), plain(x))


def test_quant_on_a_dg_method_quantizes_it():
    hp = resolve_hparams("rotated-mnist", method="coral", quant=True, q_steps=0)
    assert hp["swad"] is True  # quantized DG training averages by default, as QT-DoG does
    algo = get_algorithm("coral")((1, 28, 28), 10, 2, hp)
    assert quant_layers(algo.network) and algo.quantizes


@pytest.fixture(scope="module")
def swad_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "swad"
    hp = resolve_hparams(
        "rotated-mnist",
        method="qtdog",
        steps=14,
        q_steps=4,
        checkpoint_freq=2,
        batch_size=8,
        test_env="75",
        swad_n_converge=2,
        swad_n_tolerance=2,
        swad_tolerance_ratio=1.0,
    )
    return out, train_one(hp, out)


def test_swad_run_saves_and_scores_the_average_of_quantized_iterates(swad_run):
    out, metrics = swad_run
    on_disk = json.loads((out / "metrics.json").read_text())
    avg = on_disk["averaging"]
    assert avg["kind"] == "swad" and avg["used"] and avg["start_after_step"] == 4
    assert avg["iterates_averaged"] >= 2 and all(s > 4 for s in avg["segments_averaged"])
    assert {"test_acc", "per_domain", "val_acc", "selected_step"} <= set(on_disk["no_swad"])
    run = load_run(out)  # the saved model is the averaged one: its accuracy is the reported one
    from qdg_deploy.data import get_dataset, split_domains

    splits = split_domains(get_dataset("rotated-mnist"))
    logits, y = predictions(run.model, splits[5].out_eval)
    assert (logits.argmax(1) == y).float().mean().item() == pytest.approx(metrics["per_domain"]["75"]["out_acc"])
