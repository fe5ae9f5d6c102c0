"""Training: QT-DoG's conversion keeps training, run directories, the CLI's train/eval and its errors."""

import json

import pytest
import torch

from conftest import run_cli
from qdg_deploy.accuracy import predictions
from qdg_deploy.quant import is_quantized, quant_layers
from qdg_deploy.runs import load_run
from qdg_deploy.train import get_algorithm, resolve_hparams

METRIC_KEYS = {
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


def _batches(n_domains=2, bs=8):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.rand(bs, 1, 28, 28, generator=g), torch.randint(0, 10, (bs,), generator=g)) for _ in range(n_domains)
    ]


@pytest.mark.parametrize("scheme", ["paper", "ort"])
def test_qtdog_trains_quantized_weights_and_steps_after_q_steps(scheme):
    torch.manual_seed(0)
    hp = resolve_hparams("rotated-mnist", method="qtdog", scheme=scheme, q_steps=2, lr=1e-2)
    algo = get_algorithm("qtdog")((1, 28, 28), 10, 2, hp)
    for step in range(2):
        algo.update(_batches(), step)
        assert not is_quantized(algo.network)
    algo.update(_batches(), 2)  # converts, then takes its first quantized step
    layers = quant_layers(algo.network)
    assert layers
    before = {n: (m.weight.detach().clone(), m.weight_quant.step.detach().clone()) for n, m in layers.items()}
    in_optimizer = {id(p) for g in algo.optimizer.param_groups for p in g["params"]}
    for m in layers.values():
        assert id(m.weight) in in_optimizer and id(m.weight_quant.step) in in_optimizer
    for step in range(3, 6):
        algo.update(_batches(), step)
    for n, m in layers.items():
        w0, s0 = before[n]
        assert not torch.equal(m.weight, w0), f"{n}: weights stopped training"
        assert not torch.equal(m.weight_quant.step, s0), f"{n}: step sizes stopped training"


def test_run_directory_and_metrics_keys(tiny_run):
    out, metrics = tiny_run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert set(on_disk) == METRIC_KEYS
    assert on_disk["test_env"] == "75" and on_disk["method"] == "qtdog" and on_disk["scheme"] == "ort"
    assert on_disk["bits"] == 8 and on_disk["selected_step"] in (4, 6)  # step 2 is still float
    assert set(on_disk["per_domain"]) == {"0", "15", "30", "45", "60", "75"}
    assert all(set(v) == {"in_acc", "out_acc"} for v in on_disk["per_domain"].values())
    assert not list(out.glob(".*.tmp"))  # nothing half-written left behind


def test_load_run_rebuilds_the_selected_quantized_model(tiny_run):
    out, metrics = tiny_run
    run = load_run(out)
    assert is_quantized(run.model)
    from qdg_deploy.data import get_dataset, split_domains

    splits = split_domains(get_dataset("rotated-mnist"))
    logits, y = predictions(run.model, splits[5].out_eval)
    acc = (logits.argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(metrics["per_domain"]["75"]["out_acc"])


def test_eval_cli_writes_json(tiny_run, tmp_path, cli):
    out, metrics = tiny_run
    target = tmp_path / "e.json"
    r = cli("eval", out, "--json", target)
    assert r.returncode == 0, r.stderr
    result = json.loads(target.read_text())
    assert result["test_acc"] == pytest.approx(metrics["test_acc"])
    assert "75 (held-out)" in r.stdout


def test_refuses_to_overwrite_a_run(tiny_run, cli):
    out, _ = tiny_run
    r = cli("train", "--steps", "1", "--out", out)
    assert r.returncode == 2 and "already holds a run" in r.stderr


def test_test_env_all_on_a_folder_dataset(image_tree, tmp_path):
    r = run_cli(
        "train",
        "--dataset",
        f"folder:{image_tree}",
        "--arch",
        "mnist-cnn",
        "--image-size",
        "16",
        "--steps",
        "2",
        "--checkpoint-freq",
        "1",
        "--batch-size",
        "2",
        "--test-env",
        "all",
        "--out",
        tmp_path / "all",
    )
    assert r.returncode == 0, r.stderr
    for d in ("art", "photo"):
        m = json.loads((tmp_path / "all" / d / "metrics.json").read_text())
        assert m["test_env"] == d
    assert "Avg" in r.stdout and "art" in r.stdout


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("missing", "not found"),
        ("empty_class", "empty"),
        ("non_image", "not an image"),
        ("classes_differ", "classes"),
    ],
)
def test_cli_reports_bad_data_in_one_line(image_tree, tmp_path, breakage, expected, cli):
    root = image_tree
    if breakage == "missing":
        root = tmp_path / "nowhere"
    elif breakage == "empty_class":
        for f in (image_tree / "art" / "dog").iterdir():
            f.unlink()
    elif breakage == "non_image":
        (image_tree / "art" / "cat" / "notes.txt").write_text("hello")
    elif breakage == "classes_differ":
        (image_tree / "photo" / "fox").rename(image_tree / "photo" / "wolf")
    r = cli("train", "--dataset", f"folder:{root}", "--steps", "1", "--out", tmp_path / "x")
    assert r.returncode == 2
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0].lower(), r.stderr
    assert not (tmp_path / "x" / "model.safetensors").exists()
