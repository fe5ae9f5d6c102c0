"""Typed run records (records.py): older run directories (the committed golden runs, written before
schema_version existed) still load, and a record reads back as it was written."""

import json
from pathlib import Path

import pytest

from qdg_deploy.errors import QdgError
from qdg_deploy.records import SCHEMA_VERSION, Metrics, RunConfig
from qdg_deploy.runs import load_run, save_run

GOLDEN = sorted((Path(__file__).parent / "data").glob("golden*/*/config.json"))


def test_there_are_golden_runs_without_a_schema_version():
    assert len(GOLDEN) >= 4
    assert all("schema_version" not in json.loads(p.read_text()) for p in GOLDEN)


@pytest.mark.parametrize("config", GOLDEN, ids=lambda p: p.parent.name)
def test_golden_runs_load_as_records(config, tmp_path):
    raw_config = json.loads(config.read_text())
    raw_metrics = json.loads((config.parent / "metrics.json").read_text())
    rc, m = RunConfig.read(config), Metrics.read(config.parent / "metrics.json")
    assert rc.schema_version == m.schema_version == SCHEMA_VERSION
    assert rc.hparams == raw_config["hparams"] and rc.model == raw_config["model"]
    assert rc.test_env_index == raw_config["test_env_index"] and m.test_acc == raw_metrics["test_acc"]
    # every key of the old files comes back, only schema_version is added
    assert rc.to_json() == {**raw_config, "schema_version": SCHEMA_VERSION}
    assert m.to_json() == {**raw_metrics, "schema_version": SCHEMA_VERSION}
    run = load_run(config.parent)
    assert run.config["dataset"] == raw_config["dataset"] and run.metrics["method"] == raw_metrics["method"]
    # written again through save_run: the same records, now with their version
    save_run(tmp_path / "again", run.config, run.model.state_dict(), run.metrics)
    again = load_run(tmp_path / "again")
    assert again.config == run.config and again.metrics == run.metrics
    assert json.loads((tmp_path / "again" / "config.json").read_text())["schema_version"] == SCHEMA_VERSION


def test_a_newer_schema_is_refused_with_one_line(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(QdgError, match=r"schema_version 2; .*update qdg-deploy"):
        RunConfig.read(p)


def test_metrics_of_domain_figures_keeps_the_extras_between_the_figures_and_what_it_is():
    scored = {"per_domain": {}, "test_env": "a", "test_acc": 0.5, "val_acc": 0.25, "selected_step": 3}
    m = Metrics.of(scored, method="erm", bits=32, scheme=None, no_swad={"test_acc": 0.4})
    assert list(m.to_json()) == [
        "schema_version",
        "per_domain",
        "test_env",
        "test_acc",
        "val_acc",
        "selected_step",
        "no_swad",
        "bits",
        "scheme",
        "method",
    ]
    assert Metrics.from_json(m.to_json()) == m


def test_bench_records_are_checked_in_one_place():
    from qdg_deploy.bench.record import RECORD_VERSION, BenchRecord
    from qdg_deploy.timing import summarize

    rec = BenchRecord(
        "m.onnx",
        "/x/m.onnx",
        "onnx",
        None,
        "ort-cpu",
        1,
        [1, 1, 4, 4],
        "included",
        1,
        {},
        {},
        summarize([1_000_000, 2_000_000], 1),
        {"file_bytes": 10},
    )
    data = rec.to_json()
    assert data["schema_version"] == RECORD_VERSION and data["latency_ms"]["mean"] == 1.5
    assert BenchRecord.problem(data) is None
    old = {k: v for k, v in data.items() if k != "schema_version"}  # a result written before the version
    assert BenchRecord.problem(old) is None
    assert "newer" in BenchRecord.problem({**data, "schema_version": RECORD_VERSION + 1})
    assert "'batch' missing" in BenchRecord.problem({**data, "batch": "1"})
