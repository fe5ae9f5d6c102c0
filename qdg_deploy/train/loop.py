"""The training loop: leave-one-domain-out, training-domain validation, one run directory per test env."""

from __future__ import annotations

import copy
from contextlib import nullcontext
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from .. import __version__
from ..data import get_dataset, run_splits
from ..errors import QdgError
from ..evaluation import accuracy, domain_metrics, make_progress
from ..quant import model_size
from ..runs import METRICS, WEIGHTS, model_record, save_run
from .algorithms import scheme_from_hparams
from .methods import get_algorithm
from .hparams import METHOD_DEFAULTS, default_hparams


def resolve_hparams(dataset: str, **overrides) -> dict:
    """Defaults for the data set and the method, overridden by every value that is not None."""
    hp = default_hparams(dataset)
    hp.update(METHOD_DEFAULTS.get(overrides.get("method") or hp["method"], {}))
    hp.update({k: v for k, v in overrides.items() if v is not None})
    hp["dataset"] = dataset
    if hp["method"] == "alignq" and hp.get("act_bits") is None:
        hp["act_bits"] = hp.get("bits")  # AlignQ: weights and activations share the bit-width
    return hp


def apply_init(hp: dict) -> dict | None:
    """`init`: start from another run's weights (quantizer state re-initialized at this run's bits).

    Sets hp["weights"] to that run's model file; returns a short record for config.json."""
    if not hp.get("init"):
        return None
    from ..io import read_json
    from ..runs import CONFIG, check_run_dir
    run = check_run_dir(hp["init"], (CONFIG, WEIGHTS), role="--init ")
    model = read_json(run / CONFIG).get("model", {})
    if model.get("arch") and model["arch"] != hp["arch"]:
        raise QdgError(f"--init {run} holds a {model['arch']} but this run trains a {hp['arch']}")
    hp["weights"] = str(run / WEIGHTS)
    scheme = model.get("scheme")
    return {"run": str(run), "arch": model.get("arch"),
            "bits": scheme["weight"]["bits"] if scheme else 32}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def infinite_batches(dataset, batch_size: int, seed: int, workers: int = 0):
    """Endless random minibatches (with replacement across batches, like DomainBed's InfiniteDataLoader)."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[:2]
        while True:
            idx = torch.randint(len(x), (batch_size,), generator=g)
            yield x[idx], y[idx]
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**9, generator=g)
    yield from DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True)


def prepare_out(out: Path, overwrite: bool) -> None:
    if (out / WEIGHTS).exists() or (out / METRICS).exists():
        if not overwrite:
            raise QdgError(f"{out} already holds a run; choose another --out or pass --overwrite")


def train_one(hp: dict, out: str | Path, *, console: Console | None = None, overwrite: bool = False,
              progress: Progress | None = None) -> dict:
    """Train one leave-one-domain-out run into `out`; returns its metrics."""
    out = Path(out)
    prepare_out(out, overwrite)
    seed_everything(hp["seed"])
    if hp.get("threads"):
        torch.set_num_threads(hp["threads"])
    init = apply_init(hp)
    ds, splits = run_splits(hp)
    source, test_env, train_splits = _domains(hp, ds, splits)
    da = source is not None
    algo = get_algorithm(hp["method"])(ds.input_shape, ds.num_classes, len(train_splits), hp)
    label = (f"{hp['method']} · {ds.domains[source]} → {ds.domains[test_env]}" if da
             else f"{hp['method']} · test env {ds.domains[test_env]}")
    start = time.perf_counter()
    own_progress = progress is None
    progress = progress or make_progress(console)
    with progress if own_progress else nullcontext():
        best, history = _steps(algo, hp, train_splits, splits[test_env] if da else None, progress, label,
                               own_progress)
    algo.network.load_state_dict(best[2])
    algo.eval()
    scored = domain_metrics(algo.predict, splits, test_env)
    scheme = scheme_from_hparams(hp) if algo.quantizes else None
    metrics = {"per_domain": scored["per_domain"], "test_env": scored["test_env"], "test_acc": scored["test_acc"],
               "val_acc": best[0], "selected_step": best[1],
               "bits": scheme.weight.bits if scheme else 32, "scheme": scheme.name if scheme else None,
               "method": hp["method"]}
    config = {"qdg_deploy_version": __version__, "hparams": hp, "dataset": hp["dataset"], "domains": ds.domains,
              "test_env_index": test_env, "classes": ds.classes,
              "model": model_record(hp["arch"], ds.input_shape, ds.num_classes, scheme),
              "size": model_size(algo.network), "history": history,
              "train_seconds": round(time.perf_counter() - start, 1)}
    if init:
        config["init"] = init
    if da:  # selected by source 'out' accuracy; test_acc is the target's accuracy over all of it
        config["domain_adaptation"] = {"source": ds.domains[source], "target": ds.domains[test_env],
                                       "selection": "source out accuracy"}
    save_run(out, config, algo.network.state_dict(), metrics)
    return metrics


def _domains(hp: dict, ds, splits) -> tuple[int | None, int, list]:
    """(source index or None, held-out / target index, the splits trained on). Domain adaptation: the labelled
    source's `in` split (the target's `in` split is the unlabelled stream); otherwise every domain but the test one."""
    if hp.get("source") is None and hp.get("target") is None:
        test_env = ds.domain_index(hp["test_env"])
        return None, test_env, [s for i, s in enumerate(splits) if i != test_env]
    if hp.get("source") is None or hp.get("target") is None:
        raise QdgError("domain adaptation needs both --source and --target")
    source, test_env = ds.domain_index(str(hp["source"])), ds.domain_index(str(hp["target"]))
    if source == test_env:
        raise QdgError("--source and --target must be different domains")
    return source, test_env, [splits[source]]


def _steps(algo, hp: dict, train_splits, target, progress: Progress, label: str, own_progress: bool):
    """Run every training step, scoring a checkpoint every checkpoint_freq steps; returns the best
    (val_acc, step, state) and the history."""
    workers = 0 if isinstance(train_splits[0].train, TensorDataset) else min(4, os.cpu_count() or 1)
    streams = [infinite_batches(s.train, hp["batch_size"], hp["seed"] * 1000 + i, workers)
               for i, s in enumerate(train_splits)]
    target_stream = (infinite_batches(target.train, hp["batch_size"], hp["seed"] * 1000 + 999, workers)
                     if target is not None else None)
    best = (-1.0, None, None)  # (val_acc, step, state)
    history = []
    task = progress.add_task(label, total=hp["steps"], info="")
    for step in range(hp["steps"]):
        algo.train()
        unlabeled = next(target_stream)[0] if target_stream is not None else None
        losses = algo.update([next(s) for s in streams], step, unlabeled=unlabeled)
        if (step + 1) % hp["checkpoint_freq"] == 0 or step + 1 == hp["steps"]:
            algo.eval()
            val = float(np.mean([accuracy(algo.predict, s.out_eval) for s in train_splits]))
            history.append({"step": step + 1, "val_acc": val, **losses})
            if algo.is_selectable(step) and val > best[0]:
                best = (val, step + 1, copy.deepcopy(algo.network.state_dict()))
        progress.update(task, advance=1, info=f"loss {losses['loss']:.3f}  val {best[0]:.3f}")
    if not own_progress:
        progress.remove_task(task)
    if best[2] is None:
        raise QdgError("no checkpoint was selectable: raise --steps above --q-steps")
    return best, history


def train(hp: dict, out: str | Path, *, console: Console | None = None, overwrite: bool = False) -> dict:
    """`--test-env all` trains every held-out domain into out/<domain>; otherwise one run into out."""
    out = Path(out)
    if hp.get("source") is not None or hp.get("target") is not None:
        return {"runs": {str(hp.get("target")): train_one(hp, out, console=console, overwrite=overwrite)}}
    if str(hp["test_env"]) != "all":
        return {"runs": {str(hp["test_env"]): train_one(hp, out, console=console, overwrite=overwrite)}}
    domains = get_dataset(hp["dataset"], hp.get("data_dir"), image_size=hp.get("image_size")).domains
    runs = {}
    with make_progress(console) as progress:
        for d in domains:
            runs[d] = train_one({**hp, "test_env": d}, out / d, console=console, overwrite=overwrite,
                                progress=progress)
    return {"runs": runs}
