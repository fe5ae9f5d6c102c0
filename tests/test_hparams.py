"""The hyperparameter table (train/hparams.py) is the one source of `train`'s options, checks, defaults and docs."""

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qdg_deploy import cli
from qdg_deploy.train import hparams
from qdg_deploy.train.hparams import HParam

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hparams.md"


def help_text(monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "250")  # one line per option (rich reads it for typer's help)
    res = CliRunner().invoke(cli.app, ["train", "--help"])
    assert res.exit_code == 0, res.output
    return res.output


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The console entry point in this process (so a patched table holds): exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["qdg-deploy", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_docs_page_is_the_table():
    assert DOCS.read_text(encoding="utf-8") == hparams.markdown(), (
        "docs/hparams.md is stale: python -m qdg_deploy.train.hparams --markdown docs/hparams.md"
    )


def test_every_option_of_the_table_is_in_train_help(monkeypatch):
    text = help_text(monkeypatch)
    for h in hparams.HPARAMS:
        assert (h.option in text) == h.cli, h.name
        if h.type is bool and h.negatable and h.cli:
            assert f"--no-{h.option[2:]}" in text, h.name
    for hand in ("--dataset", "--no-grad-approx", "--out", "--overwrite"):
        assert hand in text


def test_table_entries_are_consistent():
    names = [h.name for h in hparams.HPARAMS]
    assert len(names) == len(set(names))
    for h in hparams.HPARAMS:
        assert set(h.family) <= set(hparams.FAMILIES) - {"image"}, h.name
        assert not (h.shown and (h.family or h.method)), f"{h.name}: a shown default must not depend on the data set"
        assert not (h.unset and h.default is not None), h.name
        if h.choices:
            assert h.default is None or h.default in h.choices, h.name


@pytest.fixture
def extra_entry(monkeypatch):
    """One more hyperparameter, added the way a developer adds one: an entry in the table (and the command rebuilt,
    as importing cli does)."""
    entry = HParam(
        "label_smoothing",
        float,
        0.0,
        low=0,
        high=0.5,
        methods=("erm", "qtdog"),
        help="Test-only: label smoothing of the cross-entropy.",
    )
    monkeypatch.setattr(hparams, "HPARAMS", [*hparams.HPARAMS, entry])
    monkeypatch.setattr(cli.train, "__signature__", cli.train_signature())
    return entry


def test_an_added_entry_is_an_option_is_checked_and_lands_in_config(extra_entry, monkeypatch, capsys, tmp_path):
    # 1. train --help shows it with its help
    text = help_text(monkeypatch)
    assert "--label-smoothing" in text and "Test-only: label smoothing of the cross-entropy." in text

    # 2. validated: out of range, and on a method that does not read it: one error line, exit 2, nothing written
    for args, words in [
        (["--label-smoothing", "0.9"], "--label-smoothing must be in [0, 0.5] (got 0.9)"),
        (["--label-smoothing", "nan"], "--label-smoothing takes a finite number"),
        (
            ["--method", "coral", "--label-smoothing", "0.1"],
            "--label-smoothing applies to --method erm or qtdog only, not coral",
        ),
    ]:
        code, out, err = run_main(monkeypatch, capsys, "train", *args, "--out", tmp_path / "refused")
        lines = err.strip().splitlines()
        assert code == 2 and not out and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], err
        assert not (tmp_path / "refused").exists()

    # 3. in config.json: the given value after a tiny run, the table's default when not given
    run = tmp_path / "run"
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "train",
        "--label-smoothing",
        "0.25",
        "--steps",
        "2",
        "--checkpoint-freq",
        "2",
        "--batch-size",
        "4",
        "--test-env",
        "75",
        "--out",
        run,
    )
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["hparams"]["label_smoothing"] == 0.25
    from qdg_deploy.train import resolve_hparams

    assert resolve_hparams("rotated-mnist")["label_smoothing"] == 0.0
    assert "`--label-smoothing`" in hparams.markdown()  # and the docs page
