"""Exports are byte-identical to the ones the code wrote before issue 14's refactor (tests/data/make_golden.py).

The four mnist-cnn runs (paper, trt, ort, AlignQ) are committed run directories; the ResNet-18 cases (paper, trt,
ort: residual quantizers, integer kernels) are rebuilt bit for bit from a seeded generator. Each is exported on both
targets, the runs also as onnx-fp32, and every file's SHA-256 and report must equal the recorded ones.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)
RECORDED = json.loads((DATA / "golden.json").read_text())


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _prose_out(report: dict) -> dict:
    """The report with each note's text replaced by a mark: the keys and every figure must stay, the prose may
    name a moved module."""
    return {k: "(note)" if k.endswith("_note") else v for k, v in json.loads(json.dumps(report, default=str)).items()}


def _same(got: dict, want: dict):
    for key, w in want.items():
        g = got[key]
        report, recorded = _prose_out(g["report"]), _prose_out(w["report"])
        # every recorded key with its value; keys added since (e.g. "graph") may appear beside them
        assert {k: report.get(k) for k in recorded} == recorded, key
        assert g["sha256"] == w["sha256"], f"{key}: the exported bytes changed"
    assert set(got) == set(want)


@pytest.mark.parametrize("name", sorted(golden.RUNS))
def test_run_exports_are_byte_identical(name):
    _same(golden.run_exports(name), RECORDED["runs"][name])


@pytest.mark.parametrize("scheme", golden.RESNETS)
def test_resnet_exports_are_byte_identical(scheme):
    _same(golden.resnet_exports(scheme), RECORDED["resnet18"][scheme])
