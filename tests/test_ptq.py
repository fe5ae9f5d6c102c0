"""Post-training quantization (`calibrate`, `sensitivity`, the Python API): observers against hand-worked examples,
calibration that never reads the held-out domain, exact exports of calibrated, mixed-precision and user networks."""

import copy
import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import qdg_deploy
from qdg_deploy.calibrate import observers as ob
from qdg_deploy.calibrate.core import calibrate_model, float_pass, set_activation_grid
from qdg_deploy.calibrate.run import PtqOptions, calibrate_run, calibration_batches
from qdg_deploy.errors import QdgError
from qdg_deploy.export import check_tensorrt_rules, export_run_dir, float_layers
from qdg_deploy.quant import LsqQuantizer, QuantSpec, get_scheme, quantize_model
from qdg_deploy.runs import load_run

# ---- observers, each against a hand-worked example ------------------------------------------------------------


def test_minmax_is_the_largest_magnitude():
    h = ob.AbsHistogram(3.0, bins=6)
    h.add(torch.tensor([-3.0, 1.0, 2.0]))
    assert h.counts.tolist() == [0, 0, 1, 0, 1, 1]  # |x| = 1, 2, 3 in bins of width 0.5 (3 in the last)
    assert ob.threshold(h, "minmax", levels=128) == 3.0


def test_percentile_is_the_edge_where_the_count_reaches_p():
    counts = np.ones(100)  # one value per unit bin over [0, 100]
    assert ob.percentile_threshold(counts, 1.0, 95.0) == 95.0  # 95 of 100 values lie below 95
    assert ob.percentile_threshold(counts, 1.0, 100.0) == 100.0


def test_entropy_picks_the_least_kl_candidate_by_hand():
    # counts [5, 4, 4, 1], 2 levels; the zero bin takes its neighbour's count -> [4, 4, 4, 1].
    # i=2: P=[4, 9]/13,       Q=[4, 4]/8            KL = 0.0759
    # i=3: P=[4, 4, 5]/13,    Q=[4, 4, 4]/12        KL = 0.0058  <- least
    # i=4: P=[4, 4, 4, 1]/13, Q=[4, 4, 2.5, 2.5]/13 KL = 0.0741
    # T = (3 + 0.5) bins of width 1.
    assert ob.entropy_threshold(np.array([5.0, 4, 4, 1]), 1.0, levels=2) == pytest.approx(3.5)
    p, q = np.array([4.0, 4, 5]), ob._merge_and_spread(np.array([4.0, 4, 4]), 2)
    assert q.tolist() == [4, 4, 4] and ob._kl(p, q) == pytest.approx(0.0058, abs=1e-4)
    # an empty bin stays empty when its group is spread back
    assert ob._merge_and_spread(np.array([2.0, 0, 6, 2]), 2).tolist() == [2, 0, 4, 4]


def test_mse_picks_the_least_squared_error_edge_by_hand():
    # counts [10, 0, 0, 1] (centres 0.5 and 3.5), codes {0, 1} of step T:
    # T=1: 10·0.25 + (3.5-1)² = 8.75; T=2: 2.5 + 2.25 = 4.75; T=3: 2.5 + 0.25 = 2.75; T=4: 2.5 + 0.25 = 2.75
    # (0.5 rounds to code 0 at every T); the first least one wins: T = 3.
    assert ob.mse_threshold(np.array([10.0, 0, 0, 1]), 1.0, levels=2) == 3.0


def test_weight_thresholds_per_channel_by_hand():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.25]])
    assert ob.weight_thresholds(w, "minmax", -127, 127).tolist() == [3.0, 0.5]
    # [1, 1, 1, 1, 3] on codes {-1, 0, 1}, T = 0.3·k: T=1.5 rounds every 1 to 1.5 (4·0.25) and clips 3 to 1.5
    # (2.25): 3.25, the least (T=1.2: 3.40; T=1.8: 4.00; T=3.0: 4.00).
    t = ob.weight_thresholds(torch.tensor([[1.0, 1, 1, 1, 3]]), "mse", -1, 1, candidates=10)
    assert t.item() == pytest.approx(1.5)


def test_asymmetric_grid_clips_the_range_by_hand():
    q = LsqQuantizer(QuantSpec(bits=8, signed=False, zero_point="learned"))
    set_activation_grid(q, t=2.0, lo=-1.0, hi=3.0)  # [-1, 3] clipped to [-1, 2]: step 3/255, zero point 85
    assert q.step.item() == pytest.approx(3 / 255) and q.zero_point.item() == 85 and bool(q.initialized)


# ---- calibration on a real network ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    from qdg_deploy.train import resolve_hparams, train_one

    out = tmp_path_factory.mktemp("ptq") / "erm"
    train_one(resolve_hparams("rotated-mnist", method="erm", steps=30, checkpoint_freq=30, test_env="75"), out)
    return out


def test_calibration_never_reads_the_held_out_domain(float_run):
    from qdg_deploy.data import run_data
    from qdg_deploy.data.base import DomainSplit

    class Forbidden(torch.utils.data.Dataset):
        def __len__(self):
            return 100

        def __getitem__(self, i):
            raise AssertionError("the held-out domain was read")

    run = load_run(float_run)
    data = run_data(run.config["hparams"], run.config["test_env_index"])
    data.domains[data.test] = DomainSplit(data.heldout.name, Forbidden(), Forbidden(), Forbidden())
    batches = calibration_batches(data, num_batches=3, seed=0)
    assert [len(b) for b in batches] == [64, 64, 64]


def test_every_observer_calibrates_and_narrows_no_wider_than_minmax(float_run):
    run = load_run(float_run)
    x = torch.rand(64, 1, 28, 28)
    steps = {}
    for method in ob.ACT_METHODS:
        model = quantize_model(load_run(float_run).model, get_scheme("trt"))
        info = calibrate_model(model, [x], method)
        assert info["activation_quantizers"] == 14 and info["weight_quantizers"] == 10
        acts = [m for m in model.modules() if isinstance(m, LsqQuantizer) and not m.is_weight]
        steps[method] = torch.stack([a.step.detach() for a in acts])
        out = model.eval()(x)
        assert torch.isfinite(out).all()
    for method in ("percentile", "entropy", "mse"):
        assert (steps[method] <= steps["minmax"] * (1 + 1e-6)).all()
    with torch.no_grad():  # float_pass: the quantized network computes the float one's logits
        model = quantize_model(load_run(float_run).model, get_scheme("ort"))
        calibrate_model(model, [x], "percentile")
        with float_pass(model):
            assert torch.allclose(model(x), run.model(x), atol=1e-5)


def test_calibrate_cli_writes_a_run_that_exports_exactly(float_run, tmp_path, cli):
    out = tmp_path / "ptq"
    r = cli("calibrate", float_run, "--method", "percentile", "--num-batches", "2", "--out", out)
    assert r.returncode == 0, r.stderr
    run = load_run(out)
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "ptq" and m["bits"] == 8 and 0 <= m["test_acc"] <= 1 and "float" in m
    cal = run.config["calibration"]
    assert cal["images"] == 128 and "75" not in cal["calibration_domains"] and cal["source"]["run"] == str(float_run)
    rep = export_run_dir(out, max_samples=200)
    assert rep["top1_agreement"] == 1.0 and rep["max_abs_diff"] == 0.0


def test_keep_float_two_layers_stays_exact_and_tensorrt_clean(float_run, tmp_path, cli):
    out = tmp_path / "kf"
    calibrate_run(float_run, out, PtqOptions(scheme="trt", keep_float=2, num_batches=2))
    run = load_run(out)
    kept = run.config["calibration"]["float_layers"]
    assert len(kept) == 2 and run.scheme.float_layers == tuple(kept)
    assert all(type(run.model.get_submodule(n)) in (nn.Conv2d, nn.Linear) for n in kept)
    sens = run.config["calibration"]["sensitivity"]["layers"]
    assert [r["layer"] for r in sens[:2]] == kept and sens[0]["drop"] >= sens[-1]["drop"]
    rep = export_run_dir(out, target="tensorrt", out=tmp_path / "kf.onnx", max_samples=200)
    assert rep["top1_agreement"] == 1.0
    assert check_tensorrt_rules(tmp_path / "kf.onnx") == []
    notes = float_layers(tmp_path / "kf.onnx")  # the kept layers, and only they, run in float
    assert len(notes) == 2 and all(any(k in n for n in notes) for k in kept)
    r = cli("check", tmp_path / "kf.onnx")
    assert r.returncode == 0 and r.stdout.count("note:") == 2


def test_sensitivity_cli_writes_table_json_and_chart(float_run, tmp_path, cli):
    js, png = tmp_path / "s.json", tmp_path / "s.png"
    r = cli("sensitivity", float_run, "--json", js, "--plot", png)
    assert r.returncode == 0, r.stderr
    rep = json.loads(js.read_text())
    assert len(rep["layers"]) == 10 and rep["calibrated"]["method"] == "percentile"
    drops = [row["drop"] for row in rep["layers"]]
    assert drops == sorted(drops, reverse=True) and all(v.startswith("out:") for v in rep["validation"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "layer1.conv1" in r.stdout


# ---- a user's own weights file and network --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["torchvision", "domainbed"])
def test_resnet18_state_dict_file_calibrates_exports_and_benches(image_tree, tmp_path, layout, cli):
    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=3).state_dict()
    if layout == "domainbed":  # DomainBed/SWAD: featurizer under network.0.network, classifier network.1
        state = {
            "model_dict": {
                **{f"network.0.network.{k}": v for k, v in state.items() if not k.startswith("fc.")},
                "network.1.weight": state["fc.weight"],
                "network.1.bias": state["fc.bias"],
            }
        }
    path = tmp_path / "r18.pt"
    torch.save(state, path)
    out = tmp_path / "run"
    r = cli(
        "calibrate",
        path,
        "--arch",
        "resnet18",
        "--dataset",
        f"folder:{image_tree}",
        "--image-size",
        "32",
        "--num-batches",
        "1",
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    r = cli("export", out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "model.export.json").read_text())["top1_agreement"] == 1.0
    r = cli("bench", out / "model.onnx", "--batch", "1", "--duration-s", "0.2", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    recs = json.loads((tmp_path / "b.json").read_text())
    assert any(
        rec.get("runtime", "").startswith("ort") for rec in (recs if isinstance(recs, list) else recs["records"])
    )


def test_a_state_dict_for_other_classes_is_refused(image_tree, tmp_path, cli):
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    r = cli("calibrate", path, "--arch", "resnet18", "--dataset", f"folder:{image_tree}", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "fc.weight" in r.stderr
    assert not (tmp_path / "o").exists()


class _UserNet(nn.Module):
    def __init__(self, act=nn.ReLU):
        super().__init__()
        self.c1, self.b1, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act()
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 5)

    def forward(self, x):
        y = self.act(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)) + y)  # a residual Add of the user's own
        return self.fc(torch.flatten(self.pool(y), 1))


@pytest.mark.parametrize("scheme,target", [("ort", "ort"), ("trt", "tensorrt")])
def test_python_api_on_a_users_network_is_exact(tmp_path, scheme, target):
    from qdg_deploy.ort_session import ort_session

    torch.manual_seed(0)
    net = qdg_deploy.quantize(_UserNet(), scheme)
    x = torch.randn(64, 3, 16, 16)
    info = qdg_deploy.calibrate(net, [(x[:32], None), (x[32:], None)], "mse")
    assert info["activation_quantizers"] == 3
    qdg_deploy.export_onnx(net, (3, 16, 16), tmp_path / "m.onnx", target=target)
    got = ort_session(str(tmp_path / "m.onnx"), level="all").run(None, {"input": x.numpy()})[0]
    assert np.array_equal(got, net(x).detach().numpy())


def test_python_api_refuses_an_unsupported_op_by_name():
    with pytest.raises(QdgError, match="module 'act' of type ELU"):
        qdg_deploy.quantize(_UserNet(nn.ELU), "ort")


# ---- bad input: one error line, exit 2, nothing written --------------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--method", "kl"], "--method"),
        (["--keep-float", "1", "--keep-float-layers", "fc"], "two ways"),
        (["--keep-float-layers", "nope"], "nope"),
        (["--percentile", "0"], "--percentile"),
        (["--num-batches", "0"], "--num-batches"),
        (["--test-env", "0"], "held out"),
    ],
)
def test_bad_calibrate_options(float_run, tmp_path, args, needle, cli):
    r = cli("calibrate", float_run, *args, "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.startswith("error:") and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_bad_sources(tiny_run, tmp_path, cli):
    qrun, _ = tiny_run
    r = cli("calibrate", qrun, "--out", tmp_path / "o")
    assert r.returncode == 2 and "already quantized" in r.stderr
    (tmp_path / "w.pt").write_bytes(b"junk")
    r = cli("calibrate", tmp_path / "w.pt", "--out", tmp_path / "o")
    assert r.returncode == 2 and "--arch" in r.stderr
    assert not (tmp_path / "o").exists()


# ---- QT-DoG's --q-init -----------------------------------------------------------------------------------------


def test_q_init_starts_lsq_steps_from_a_calibration_of_the_first_quantized_batch():
    from qdg_deploy.train import resolve_hparams
    from qdg_deploy.train.methods import get_algorithm

    hp = resolve_hparams(
        "rotated-mnist", method="qtdog", scheme="ort", q_steps=0, q_init="minmax", lr=1e-12, q_lr=1e-12
    )
    torch.manual_seed(0)
    algo = get_algorithm("qtdog")((1, 28, 28), 10, 5, hp)
    batch = [(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(5)]
    ref = copy.deepcopy(algo.network)
    calibrate_model(ref, [torch.cat([x for x, _ in batch])], "minmax")
    assert algo.calibrate_pending
    algo.update(batch, step=0)  # calibrates, then one optimizer step at a negligible rate
    assert not algo.calibrate_pending
    got = {n: p for n, p in algo.network.named_parameters() if n.endswith(".step")}
    want = dict(ref.named_parameters())
    assert got and all(torch.allclose(p, want[n], rtol=1e-5) for n, p in got.items())
    lsq = get_algorithm("qtdog")((1, 28, 28), 10, 5, {**hp, "q_init": "lsq"})
    assert not lsq.calibrate_pending
