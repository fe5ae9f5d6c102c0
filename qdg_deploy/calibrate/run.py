"""`qdg-deploy calibrate` and `qdg-deploy sensitivity`: post-training quantization of a float run or weights file
into a run directory that `eval`, `export` and `bench` take as they take a trained one."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import Subset

from ..accuracy import domain_metrics, iter_batches, make_progress
from ..data import Splits, load_class_map, run_data
from ..device import resolve_device
from ..errors import QdgError
from ..io import atomic_path, write_json
from ..models import backbone_input
from ..models.checkpoint import float_from_file
from ..quant import get_scheme, model_size, quantize_model
from ..quant.convert import eligible_layers
from ..records import Metrics, RunConfig
from ..runs import check_out_dir, check_run_dir, load_run, model_record, save_run
from .core import calibrate_model, check_method
from .sensitivity import layer_sensitivity, most_sensitive, plot_sensitivity

CALIBRATION_BATCH = 64


@dataclass
class Source:
    """The float network and the data it belongs to: hyperparameters as a run records them, the data set and its
    per-domain splits (loaded once), the held-out index."""

    net: nn.Module
    hp: dict
    data: Splits
    origin: dict


def load_source(
    source: str | Path,
    *,
    arch: str | None,
    dataset: str | None,
    data_dir: str | None,
    test_env: str | None,
    image_size: int | None,
    class_map: str | None,
    seed: int,
    defaults: Callable[[str], dict] | None = None,
) -> Source:
    """`defaults(dataset)`: the data set's default hyperparameters (the caller's table, train/hparams.py: this
    layer does not import train/), needed only for a weights file (a run directory records its own)."""
    source = Path(source)
    if source.is_dir():
        return _run_source(source, dataset, test_env, arch)
    if not source.is_file():
        from ..models.state import weights_name_hint

        raise QdgError(f"SOURCE {source} is neither a run directory nor a weights file{weights_name_hint(source)}")
    if not arch:
        raise QdgError(f"SOURCE {source} is a weights file: say which network it holds with --arch")
    if defaults is None:
        raise QdgError(
            f"SOURCE {source} is a weights file: calibrating it needs the data set's default "
            f"hyperparameters (defaults=)"
        )
    dataset = dataset or "rotated-mnist"
    hp = {
        **defaults(dataset),
        "dataset": dataset,
        "arch": arch,
        "seed": seed,
        "method": "ptq",
        "test_env": "0" if test_env is None else test_env,
    }
    hp.update({k: v for k, v in dict(data_dir=data_dir, image_size=image_size).items() if v is not None})
    if class_map:
        hp["class_map"] = load_class_map(str(class_map))
    backbone_input(hp, image_size)  # a tv:/timm: arch's input pipeline for folder data
    data = run_data(hp)
    net = float_from_file(source, arch, data.ds.input_shape[0], data.ds.num_classes)
    return Source(net, hp, data, {"weights": str(source), "arch": arch})


def _run_source(path: Path, dataset, test_env, arch) -> Source:
    run = load_run(check_run_dir(path, role="SOURCE "))
    if run.config["model"].get("ensemble"):
        raise QdgError(f"SOURCE {path} is an ensemble run: calibrate each member's float run")
    if run.scheme is not None:
        raise QdgError(
            f"SOURCE {path} is already quantized (scheme {run.scheme.name}): export it as it is, or "
            f"calibrate its float run"
        )
    hp, test = dict(run.config["hparams"]), run.config["test_env_index"]
    if dataset and dataset != run.config["dataset"]:
        raise QdgError(f"SOURCE {path} was trained on {run.config['dataset']}, not --dataset {dataset}")
    if arch and arch != run.config["model"]["arch"]:
        raise QdgError(f"SOURCE {path} holds a {run.config['model']['arch']}, not --arch {arch}")
    data = run_data(hp, test)
    if test_env is not None and data.ds.domain_index(test_env) != test:
        raise QdgError(
            f"SOURCE {path} held out {data.heldout.name!r}; calibrating for another held-out domain "
            f"would score it on data the float model trained on"
        )
    return Source(
        run.model,
        hp,
        data,
        {"run": str(path), "method": run.metrics.get("method"), "test_acc": run.metrics.get("test_acc")},
    )


def calibration_batches(
    data: Splits, num_batches: int, seed: int, batch_size: int = CALIBRATION_BATCH
) -> list[torch.Tensor]:
    """`num_batches` batches drawn evenly from the training domains' `in` splits (eval transform); the held-out
    domain is never read."""
    train = [s.in_eval for s in data.training]
    per_domain = -(-num_batches * batch_size // len(train))
    rng = np.random.default_rng(seed)
    parts = [Subset(d, rng.permutation(len(d))[:per_domain].tolist()) for d in train]
    images = torch.cat([x for p in parts for x, _ in iter_batches(p, 256)])
    images = images[torch.from_numpy(rng.permutation(len(images)))][: num_batches * batch_size]
    return list(images.split(batch_size))


@dataclass(frozen=True)
class PtqOptions:
    method: str = "percentile"
    percentile: float = 99.99
    weight_method: str = "minmax"
    num_batches: int = 16
    scheme: str = "ort"
    bits: int | None = None
    act_bits: int | None = None
    keep_float: int = 0
    keep_float_layers: tuple[str, ...] = ()

    def check(self) -> None:
        check_method(self.method, self.weight_method, self.percentile)
        if self.num_batches < 1:
            raise QdgError(f"--num-batches must be >= 1 (got {self.num_batches})")
        if self.keep_float < 0:
            raise QdgError(f"--keep-float must be >= 0 (got {self.keep_float})")
        if self.keep_float and self.keep_float_layers:
            raise QdgError("--keep-float K and --keep-float-layers name the float layers two ways: choose one")
        for name, v in (("--bits", self.bits), ("--act-bits", self.act_bits)):
            if v is not None and not (2 if name == "--bits" else 0) <= v <= 8:
                raise QdgError(f"{name} must be in {2 if name == '--bits' else 0}..8 (got {v})")


def quantize_calibrated(net: nn.Module, scheme, batches, opts: PtqOptions, progress=None):
    """A quantized copy of `net`, calibrated on `batches`, on their device."""
    model = quantize_model(copy.deepcopy(net), scheme).to(batches[0].device)
    info = calibrate_model(
        model, batches, opts.method, percentile=opts.percentile, weight_method=opts.weight_method, progress=progress
    )
    return model.eval(), info


def calibrate_run(
    source: str | Path,
    out: str | Path,
    opts: PtqOptions = PtqOptions(),
    *,
    arch=None,
    dataset=None,
    data_dir=None,
    test_env=None,
    image_size=None,
    class_map=None,
    seed: int = 0,
    overwrite: bool = False,
    console: Console | None = None,
    device: str = "auto",
    defaults: Callable[[str], dict] | None = None,
) -> dict:
    """Quantize and calibrate SOURCE's float network on `device`; write the run directory `out`; returns its
    metrics. `defaults`: as load_source's."""
    opts.check()
    where = resolve_device(device)
    out = check_out_dir(out, overwrite)
    start = time.perf_counter()
    src = load_source(
        source,
        arch=arch,
        dataset=dataset,
        data_dir=data_dir,
        test_env=test_env,
        image_size=image_size,
        class_map=class_map,
        seed=seed,
        defaults=defaults,
    )
    scheme = get_scheme(opts.scheme, bits=opts.bits, act_bits=opts.act_bits, quantizer="lsq")
    eligible = eligible_layers(src.net, scheme)
    unknown = [n for n in opts.keep_float_layers if n not in eligible]
    if unknown:
        raise QdgError(
            f"--keep-float-layers: {', '.join(unknown)} not a quantized layer of this network; "
            f"layers: {', '.join(eligible)}"
        )
    if opts.keep_float > len(eligible):
        raise QdgError(f"--keep-float {opts.keep_float}: the network has only {len(eligible)} quantized layers")
    batches = [b.to(where) for b in calibration_batches(src.data, opts.num_batches, seed)]
    src.net.to(where)
    val_sets = list(src.data.validation().values())
    sensitivity = None
    with make_progress(console) as progress:
        float_layers = opts.keep_float_layers
        if opts.keep_float:  # the K layers whose quantization alone costs the most validation accuracy stay float
            model, _ = quantize_calibrated(src.net, scheme, batches, opts, progress)
            sensitivity = layer_sensitivity(model, val_sets, progress)
            float_layers = most_sensitive(sensitivity, opts.keep_float)
        scheme = replace(scheme, float_layers=tuple(float_layers))
        model, info = quantize_calibrated(src.net, scheme, batches, opts, progress)
    scored = domain_metrics(model, src.data)
    float_scored = domain_metrics(src.net.eval(), src.data)
    metrics = Metrics.of(
        scored,
        bits=scheme.weight.bits,
        scheme=scheme.name,
        method="ptq",
        float={"test_acc": float_scored["test_acc"], "val_acc": float_scored["val_acc"]},
    )
    info.update(
        source=src.origin,
        float_layers=list(float_layers),
        test_env_read=False,
        calibration_domains=src.data.training_names,
    )
    if sensitivity is not None:
        info["sensitivity"] = sensitivity
    hp = {**src.hp, "scheme": opts.scheme, "bits": opts.bits, "act_bits": opts.act_bits, "quantizer": "lsq"}
    ds = src.data.ds
    config = RunConfig(
        hparams=hp,
        dataset=hp["dataset"],
        domains=ds.domains,
        test_env_index=src.data.test,
        classes=ds.classes,
        model=model_record(hp["arch"], ds.input_shape, ds.num_classes, scheme),
        extra={
            "input": getattr(ds, "pipeline", None),
            "size": model_size(model),
            "calibration": info,
            "calibrate_seconds": round(time.perf_counter() - start, 1),
        },
    )
    save_run(out, config, model.state_dict(), metrics)
    return metrics.to_json()


def sensitivity_run(
    run_dir: str | Path,
    *,
    json_path=None,
    plot_path=None,
    opts: PtqOptions = PtqOptions(),
    console: Console | None = None,
) -> dict:
    """Per-layer sensitivity of a run (a quantized run as it is; a float run calibrated first with `opts`); writes
    the JSON and the bar chart (default RUN_DIR/sensitivity.json, .png) and returns the report."""
    opts.check()
    run = load_run(run_dir)
    data = run_data(run.config["hparams"], run.config["test_env_index"])
    val_sets = list(data.validation().values())
    with make_progress(console) as progress:
        model, calibrated = run.model, None
        if run.scheme is None:
            scheme = get_scheme(opts.scheme, bits=opts.bits, act_bits=opts.act_bits, quantizer="lsq")
            batches = calibration_batches(data, opts.num_batches, run.config["hparams"]["seed"])
            model, calibrated = quantize_calibrated(model, scheme, batches, opts, progress)
        report = layer_sensitivity(model, val_sets, progress)
    report = {
        "run": str(run_dir),
        "scheme": (run.scheme or scheme).name,
        "calibrated": calibrated,
        "validation": [f"out:{name}" for name in data.training_names],
        **report,
    }
    json_path = Path(json_path) if json_path else Path(run_dir) / "sensitivity.json"
    plot_path = Path(plot_path) if plot_path else Path(run_dir) / "sensitivity.png"
    with atomic_path(plot_path) as tmp:
        plot_sensitivity(report, tmp)
    write_json(json_path, report)
    report["json"], report["plot"] = str(json_path), str(plot_path)
    return report
