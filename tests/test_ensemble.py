"""EoQ / EoA ensembles: the run directory, its exact ONNX export, eval/bench on it, and refusals."""

from __future__ import annotations

import json

import pytest
import torch

from qdg_deploy.accuracy import predictions
from qdg_deploy.errors import QdgError
from qdg_deploy.export import export_run_dir
from qdg_deploy.runs import load_run
from qdg_deploy.train import resolve_hparams, train_one
from qdg_deploy.workflows.ensemble import Ensemble, build_ensemble
from tests.test_bench import IMAGE


def tiny_train(out, data, *, method="qtdog", scheme="trt", seed=0, test_env="d2"):
    quant = dict(scheme=scheme, q_steps=2) if method != "erm" else {}  # erm refuses quantization options
    hp = resolve_hparams(
        f"folder:{data}",
        method=method,
        arch="mnist-cnn",
        image_size=IMAGE,
        steps=4,
        checkpoint_freq=2,
        batch_size=4,
        test_env=test_env,
        seed=seed,
        threads=1,
        **quant,
    )
    train_one(hp, out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, folder_runs):
    root = tmp_path_factory.mktemp("ens")
    data, runs = folder_runs["data"], folder_runs["runs"]
    ens = root / "eoq"
    metrics = build_ensemble([runs[0], runs[1]], ens)
    return {"root": root, "data": data, "runs": runs, "ens": ens, "metrics": metrics}


def test_ensemble_run_sums_member_logits_and_scores_like_train(world):
    run = load_run(world["ens"])
    assert isinstance(run.model, Ensemble) and len(run.model.members) == 2
    members = [load_run(world["runs"][s]).model for s in (0, 1)]
    x = torch.rand(6, 3, IMAGE, IMAGE)
    with torch.no_grad():
        assert torch.equal(run.model(x), members[0](x) + members[1](x))
    m = world["metrics"]
    assert m["method"] == "EoQ(2)" and m["scheme"] == "trt"
    assert [r["seed"] for r in m["members"]] == [0, 1]
    assert m["members_mean_test_acc"] == pytest.approx(sum(r["test_acc"] for r in m["members"]) / 2)
    # the held-out accuracy recomputed by hand from the summed logits
    from torch.utils.data import ConcatDataset

    from qdg_deploy.data import run_splits

    _, splits = run_splits(run.config["hparams"])
    held = splits[run.config["test_env_index"]]
    logits, y = predictions(lambda t: members[0](t) + members[1](t), ConcatDataset([held.in_eval, held.out_eval]))
    assert m["test_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    single = json.loads((world["runs"][0] / "config.json").read_text())["size"]
    assert run.config["size"]["packed_bytes"] == pytest.approx(2 * single["packed_bytes"], abs=1)
    assert run.config["size"]["fp32_bytes"] == 2 * single["fp32_bytes"]


def test_ensemble_export_is_one_graph_exact_against_torch(world, tmp_path):
    r = export_run_dir(world["ens"], out=tmp_path / "eoq.onnx")
    assert r["top1_agreement"] == 1.0 and r["max_abs_diff"] == 0.0
    held = next(k for k in r["splits"] if k.startswith("heldout"))
    assert r["splits"][held]["top1_agreement"] == 1.0 and r["splits"][held]["max_abs_diff"] == 0.0
    assert r["splits"][held]["n_samples"] == 15  # all of the held-out domain: 3 classes × 5 images
    single = export_run_dir(world["runs"][0], out=tmp_path / "one.onnx", verify=False)
    second = export_run_dir(world["runs"][1], out=tmp_path / "two.onnx", verify=False)
    assert r["packed_bytes"] == single["packed_bytes"] + second["packed_bytes"]
    assert r["ensemble"]["k"] == 2 and r["ensemble"]["member_packed_bytes"] == r["packed_bytes"] / 2
    import onnx

    g = onnx.load(str(tmp_path / "eoq.onnx")).graph
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert len(convs) == 8  # four per member, in one graph


def test_eval_and_bench_take_an_ensemble(world, tmp_path, cli):
    r = cli("eval", world["ens"], "--json", tmp_path / "eval.json")
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["test_acc"] == pytest.approx(world["metrics"]["test_acc"])
    r = cli(
        "bench",
        world["ens"],
        "-r",
        "torch-fp32",
        "-r",
        "torch-fq",
        "--batch",
        "2",
        "--duration-s",
        "0.05",
        "--warmup-ms",
        "0",
        "--min-iters",
        "2",
        "--json",
        tmp_path / "b.json",
    )
    assert r.returncode == 0, r.stderr
    recs = json.loads((tmp_path / "b.json").read_text())["records"]
    fq = next(x for x in recs if x["runtime"] == "torch-fq")
    assert fq["accuracy"]["test_acc"] == pytest.approx(world["metrics"]["test_acc"])
    assert {x["runtime"] for x in recs} == {"torch-fp32", "torch-fq"}


def test_mismatched_members_are_refused_with_one_error_line(world, tmp_path, cli):
    float_run = tiny_train(tmp_path / "erm", world["data"], method="erm", seed=2)
    other_env = tiny_train(tmp_path / "q_d1", world["data"], seed=3, test_env="d1")
    cases = [
        ((world["runs"][0], float_run), "scheme"),
        ((world["runs"][0], other_env), "held-out domain"),
        ((world["runs"][0], world["runs"][0]), "given twice"),
        ((world["runs"][0],), "at least two"),
    ]
    for members, needle in cases:
        out = tmp_path / f"bad_{needle.replace(' ', '_')}"
        r = cli("ensemble", *members, "--out", out)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
        assert not out.exists()
    with pytest.raises(QdgError, match="already holds a run"):
        build_ensemble([world["runs"][0], world["runs"][1]], world["ens"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(QdgError, match="other files"):
        build_ensemble([world["runs"][0], world["runs"][1]], tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
