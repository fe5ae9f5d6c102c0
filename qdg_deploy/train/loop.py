"""The training loop: leave-one-domain-out, training-domain validation, one run directory per test env."""

from __future__ import annotations

import copy
import functools
import math
import os
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch.utils.data import TensorDataset

from ..accuracy import accuracy_and_loss, domain_metrics, make_progress
from ..data import Splits, get_dataset, load_class_map, run_splits
from ..device import keep_freed_memory, resolve_amp, resolve_device, torch_threads
from ..errors import QdgError
from ..models import backbone_input
from ..quant import model_size
from ..records import Metrics, RunConfig
from ..runs import WEIGHTS, check_out_dir, model_record, save_run
from .algorithms import scheme_from_hparams
from .dist import SINGLE, check_distributed, close_dist, init_dist
from .hparams import default_hparams, method_defaults
from .methods import get_algorithm
from .resume import LAST, read_checkpoint, restore, save_checkpoint
from .streams import infinite_batches
from .swad import WeightAveraging, recompute_bn
from .syncbn import sync_note
from .validate import check_applicable, check_choices, check_ranges

DG_METHODS = ("erm", "qtdog", "coral", "mixstyle")
DA_METHODS = ("dann", "dsan", "alignq")


def resolve_hparams(dataset: str, **overrides) -> dict:
    """Defaults for the data set and the method, overridden by every value that is not None."""
    hp = default_hparams(dataset)
    given = {k: v for k, v in overrides.items() if v is not None}
    check_applicable(given.get("method") or hp["method"], given)
    hp.update(method_defaults(overrides.get("method") or hp["method"]))
    hp.update({k: v for k, v in overrides.items() if v is not None})
    hp["dataset"] = dataset
    if hp.get("swad") is None:  # SWAD by default where QT-DoG uses it: quantized DG training
        hp["swad"] = bool(hp.get("quant")) and hp["method"] in DG_METHODS and hp.get("sma") is None
    if hp.get("swad") and hp.get("sma") is not None:
        raise QdgError("--swad and --sma are two kinds of weight averaging: choose one")
    if isinstance(hp.get("grad_approx"), bool):  # the Python API's True / False
        hp["grad_approx"] = "chain" if hp["grad_approx"] else "off"
    check_ranges(hp)
    check_choices(hp, given)
    check_distributed(hp)  # first: under torchrun, --device cuda:N is refused as such
    resolve_amp(hp.get("amp"), resolve_device(hp.get("device")))  # --device cuda without CUDA: refused here
    if hp["optimizer"] == "sgd":  # SGD's own rates where none was given (hparams.py)
        hp["lr"] = given.get("lr", hp["sgd_lr"])
        hp["q_lr"] = given.get("q_lr", hp["lr"])
    if hp["method"] in DA_METHODS and (hp["method"] == "alignq" or hp.get("quant")):
        # Quantized domain adaptation (AlignQ and its DANN / DSAN baselines): activations take --bits unless
        # --act-bits says otherwise, so every row compares one width; both effective widths go to config.json.
        if hp.get("act_bits") is None:
            hp["act_bits"] = hp.get("bits")
        scheme = scheme_from_hparams(hp)
        hp["bits"], hp["act_bits"] = scheme.weight.bits, scheme.act.bits if scheme.act else 0
    if isinstance(hp.get("class_map"), (str, Path)):  # stored as the mapping, so eval/export/bench rebuild the data
        hp["class_map"] = load_class_map(str(hp["class_map"]))
    backbone_input(hp, given.get("image_size"))
    return hp


def random_init_warning(hp: dict) -> str | None:
    """DomainBed's image benchmarks (and QT-DoG, SWAD) fine-tune an ImageNet-pretrained backbone: a run of an
    ImageNet-size network that starts from random weights is not their protocol."""
    if hp["dataset"] in ("rotated-mnist", "digits") or hp["arch"] in ("mnist-cnn", "digits-resnet"):
        return None
    if hp.get("weights") or hp.get("pretrained") or hp.get("init"):
        return None
    return (
        f"{hp['arch']} trains from random weights on {hp['dataset']}: the DomainBed protocol (and QT-DoG's) "
        f"assumes ImageNet weights (--pretrained with a tv:/timm: arch, or --weights FILE)"
    )


def apply_init(hp: dict) -> dict | None:
    """`init`: start from another run's weights (quantizer state re-initialized at this run's bits).

    Sets hp["weights"] to that run's model file; returns a short record for config.json."""
    if not hp.get("init"):
        return None
    from ..runs import CONFIG, check_run_dir, read_run_json

    run = check_run_dir(hp["init"], (CONFIG, WEIGHTS), role="--init ")
    model = read_run_json(run / CONFIG).get("model", {})
    if model.get("arch") and model["arch"] != hp["arch"]:
        raise QdgError(f"--init {run} holds a {model['arch']} but this run trains a {hp['arch']}")
    hp["weights"] = str(run / WEIGHTS)
    scheme = model.get("scheme")
    return {"run": str(run), "arch": model.get("arch"), "bits": scheme["weight"]["bits"] if scheme else 32}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_out(out: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse an output directory the run may not write; with --resume, a killed run's (its last.ckpt) is fine."""
    if resume and (out / LAST).is_file():
        return
    if (out / LAST).is_file() and not overwrite:
        raise QdgError(
            f"{out} holds a killed run's {LAST}: continue it with --resume, or pass --overwrite to start anew"
        )
    check_out_dir(out, overwrite)


@dataclass
class Setup:
    """What a run trains on: the data set, its splits, the held-out (or target) domain, the training splits."""

    ds: object
    splits: list
    test_env: int
    train_splits: list
    source: int | None = None  # domain adaptation: the labelled source domain

    @property
    def da(self) -> bool:
        return self.source is not None

    @property
    def data(self) -> Splits:
        return Splits(self.ds, self.splits, self.test_env)


def make_setup(hp: dict) -> Setup:
    ds, splits = run_splits(hp)
    if hp.get("source") is None and hp.get("target") is None:
        data = Splits(ds, splits, ds.domain_index(hp["test_env"]))
        return Setup(ds, splits, data.test, data.training)
    # domain adaptation: labelled source 'in' split, unlabelled target 'in' split
    if hp.get("source") is None or hp.get("target") is None:
        raise QdgError("domain adaptation needs both --source and --target")
    source, test_env = ds.domain_index(str(hp["source"])), ds.domain_index(str(hp["target"]))
    if source == test_env:
        raise QdgError("--source and --target must be different domains")
    return Setup(ds, splits, test_env, [splits[source]], source)


@dataclass
class Fit:
    """What the loop leaves: the best checkpoint by training-domain validation, the history, the averaging."""

    averaging: WeightAveraging
    best_val: float = -1.0
    best_step: int | None = None
    best_state: dict | None = None
    history: list = field(default_factory=list)


def validation_score(algo, train_splits) -> tuple[float, float]:
    """Mean accuracy and mean cross-entropy over the training domains' `out` splits."""
    scores = [accuracy_and_loss(algo.predict, s.out_eval) for s in train_splits]
    return float(np.mean([a for a, _ in scores])), float(np.mean([loss for _, loss in scores]))


def fit(
    algo,
    hp: dict,
    setup: Setup,
    streams,
    target_stream,
    progress: Progress,
    label: str,
    result: Fit,
    start: int = 0,
    out: Path | None = None,
) -> Fit:
    """The training loop from update `start` on: update, feed the weight averaging, evaluate and select every
    checkpoint_freq steps (and write `out`/last.ckpt there). Under torchrun only rank 0 evaluates, averages and
    writes; the other ranks update."""
    main = algo.dist.main
    task = progress.add_task(label, total=hp["steps"], completed=start, info="")
    for step in range(start, hp["steps"]):
        algo.train()
        unlabeled = next(target_stream)[0] if target_stream is not None else None
        algo.schedule_lr(step)
        losses = algo.update([next(s) for s in streams], step, unlabeled=unlabeled)
        if not math.isfinite(losses["loss"]):
            raise QdgError(
                f"training diverged: the loss is {losses['loss']} at step {step + 1} (--lr {hp['lr']:g}); "
                f"lower --lr; nothing was written"
            )
        if main:
            result.averaging.observe(algo.network, step + 1)
        if main and ((step + 1) % hp["checkpoint_freq"] == 0 or step + 1 == hp["steps"]):
            algo.eval()
            val, val_loss = validation_score(algo, setup.train_splits)
            result.averaging.checkpoint(val_loss)
            result.history.append({"step": step + 1, "val_acc": val, "val_loss": val_loss, **losses})
            if algo.is_selectable(step) and val > result.best_val:
                result.best_val, result.best_step = val, step + 1
                result.best_state = copy.deepcopy(algo.network.state_dict())
            if out is not None and step + 1 < hp["steps"]:
                save_checkpoint(out / LAST, algo, result, step + 1, hp)
        progress.update(task, advance=1, info=f"loss {losses['loss']:.3f}  val {result.best_val:.3f}")
    progress.remove_task(task)
    if main and result.best_state is None:
        raise QdgError("no checkpoint was selectable: raise --steps above --q-steps")
    return result


def score(algo, setup: Setup) -> dict:
    algo.eval()
    return domain_metrics(algo.predict, setup.data)


def finish(algo, hp: dict, setup: Setup, result: Fit, streams) -> dict:
    """Load the model the run keeps into algo.network and return its metrics: the weight average where one was
    made (BatchNorm statistics recomputed for it), else the best checkpoint. With an average, the best checkpoint's
    figures are kept too (`no_swad` / `no_sma`): the same run without averaging."""
    avg = result.averaging.average()
    last = copy.deepcopy(algo.network.state_dict()) if avg is not None else None  # the average's buffers
    algo.network.load_state_dict(result.best_state)
    scored = score(algo, setup)
    selected = {"val_acc": result.best_val, "selected_step": result.best_step}
    extra = {"averaging": {**result.averaging.record(), "used": avg is not None}} if result.averaging.kind else {}
    if avg is None:
        return {**scored, **selected, **extra}
    plain = {"test_acc": scored["test_acc"], "per_domain": scored["per_domain"], **selected}
    algo.network.load_state_dict(last)
    avg.load_into(algo.network)
    if not hp.get("freeze_bn"):
        batches = (torch.cat([next(s)[0] for s in streams]) for _ in iter(int, 1))
        extra["averaging"]["bn_recomputed"] = recompute_bn(algo.network, batches, hp.get("swad_bn_steps", 100))
    scored = score(algo, setup)
    return {**scored, "selected_step": None, **extra, f"no_{result.averaging.kind}": plain}


def train_one(
    hp: dict,
    out: str | Path,
    *,
    console: Console | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict | None:
    """Train one leave-one-domain-out run into `out`; returns its metrics (None on a torchrun rank other than 0).
    With hp["resume"], continue from `out`/last.ckpt where a killed run left one."""
    out = Path(out)
    dist, device = init_dist(hp.get("device"))
    amp = resolve_amp(hp.get("amp"), device)
    if device.type == "cpu":
        keep_freed_memory()
    try:
        with deterministic_algorithms(bool(hp.get("deterministic"))), torch_threads(hp.get("threads")):
            return _train_one(hp, out, console, overwrite, progress, device, amp, dist)
    finally:
        close_dist(dist)


@contextmanager
def deterministic_algorithms(on: bool):
    """torch's deterministic algorithms for the run only: the setting is process-wide, so the previous one comes
    back afterwards (for in-process callers). cuBLAS needs a fixed workspace for them on CUDA, set before its first
    use (a value the user set is kept)."""
    if not on:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def loader_workers(hp: dict, dataset, device: torch.device, n_streams: int) -> int:
    """DataLoader workers of each data stream: none for in-memory data; --workers where given; else none on the CPU
    (workers compete with the training's own threads for the cores) and up to 4 in all on a GPU, which they keep
    fed, shared by the streams."""
    if isinstance(dataset, TensorDataset):
        return 0
    if hp.get("workers") is not None:
        return hp["workers"]
    return max(1, min(4, os.cpu_count() or 1) // n_streams) if device.type == "cuda" else 0


def _train_one(hp, out, console, overwrite, progress, device, amp, dist) -> dict | None:
    if dist.main:
        prepare_out(out, overwrite, hp.get("resume", False))
    seed_everything(hp["seed"])
    init = apply_init(hp)
    setup = make_setup(hp)
    ds = setup.ds
    notes = getattr(ds, "notes", [])
    for note in notes if dist.main else ():  # e.g. a domain lacking classes: it trains (accuracy over those it has)
        (console or Console(stderr=True)).print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if dist.main and (warning := random_init_warning(hp)):
        (console or Console(stderr=True)).print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    algo = get_algorithm(hp["method"])(ds.input_shape, ds.num_classes, len(setup.train_splits), hp)
    algo.place(device, amp, bool(hp.get("channels_last")), dist)
    if dist.main and (line := sync_note(algo.network, hp, dist.world)):
        (console or Console(stderr=True)).print(f"[yellow]note:[/] {line}", highlight=False, soft_wrap=True)
    result = Fit(WeightAveraging(hp, algo.averaging_start()))
    ckpt = out / LAST
    done = restore(read_checkpoint(ckpt, hp), algo, result) if hp.get("resume") and ckpt.is_file() else 0
    workers = loader_workers(hp, setup.train_splits[0].train, device, len(setup.train_splits) + setup.da)
    stream = functools.partial(
        infinite_batches,
        batch_size=hp["batch_size"],
        workers=workers,
        dist=dist,
        device=device,
        channels_last=algo.channels_last,
        skip=done,
    )
    streams = [stream(s.train, seed=hp["seed"] * 1000 + i) for i, s in enumerate(setup.train_splits)]
    target_stream = stream(setup.splits[setup.test_env].train, seed=hp["seed"] * 1000 + 999) if setup.da else None
    # SyncBatchNorm: SWAD's BatchNorm recompute (rank 0 alone) reads the global batches one process reads after the
    # training steps, not rank 0's slices (lazy: nothing is loaded unless it runs)
    bn_streams = (
        [
            stream(s.train, seed=hp["seed"] * 1000 + i, dist=SINGLE, skip=hp["steps"])
            for i, s in enumerate(setup.train_splits)
        ]
        if algo.sync_bn and dist.main
        else streams
    )
    label = (
        f"{hp['method']} · {ds.domains[setup.source]} → {ds.domains[setup.test_env]}"
        if setup.da
        else f"{hp['method']} · test env {ds.domains[setup.test_env]}"
    )
    fresh = not out.exists()
    try:
        return _fit_and_save(
            algo,
            hp,
            setup,
            streams,
            target_stream,
            label,
            result,
            done,
            out,
            console,
            progress,
            init,
            notes,
            bn_streams,
        )
    except BaseException:  # a failure or Ctrl-C ends the run: its checkpoint goes too (a SIGKILL leaves it to resume)
        if dist.main and not hp.get("resume"):
            discard_checkpoint(out, fresh)
        raise
    finally:  # their DataLoader workers stop here, a Ctrl-C's included
        for s in {id(s): s for s in [*streams, *bn_streams, target_stream]}.values():
            if s is not None:
                s.close()


def discard_checkpoint(out: Path, fresh: bool) -> None:
    """Remove out/last.ckpt, and `out` itself when this run created it and nothing else is in it. A Ctrl-C just
    after atomic_path's mkstemp created the checkpoint's temporary file (before its cleanup could take over) leaves
    that file: it goes too."""
    for p in [out / LAST, *out.glob(f".{LAST}.*.tmp")]:
        p.unlink(missing_ok=True)
    if fresh and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _fit_and_save(
    algo, hp, setup, streams, target_stream, label, result, done, out, console, progress, init, notes, bn_streams
) -> dict | None:
    ds, dist = setup.ds, algo.dist
    start = time.perf_counter()
    bar = progress or make_progress(console if dist.main else Console(stderr=True, quiet=True))
    with bar if progress is None else nullcontext():
        result = fit(algo, hp, setup, streams, target_stream, bar, label, result, done, out)
    if not dist.main:
        return None
    scored = finish(algo, hp, setup, result, bn_streams)
    scheme = scheme_from_hparams(hp) if algo.quantizes else None
    metrics = Metrics.of(
        scored, bits=scheme.weight.bits if scheme else 32, scheme=scheme.name if scheme else None, method=hp["method"]
    )
    extra = {
        "input": getattr(ds, "pipeline", None),
        "size": model_size(algo.network),
        "history": result.history,
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    if init:
        extra["init"] = init
    if notes:
        extra["data_notes"] = notes
    extra["device"] = {
        "device": str(algo.device),
        "amp": algo.amp,
        "channels_last": algo.channels_last,
        "world_size": dist.world,
        "resumed_at_step": done or None,
        "sync_bn": algo.sync_bn,
    }
    if setup.da:  # selected by source 'out' accuracy; test_acc is the target's accuracy over all of it
        extra["domain_adaptation"] = {
            "source": ds.domains[setup.source],
            "target": ds.domains[setup.test_env],
            "selection": "source out accuracy",
        }
    config = RunConfig(
        hparams=hp,
        dataset=hp["dataset"],
        domains=ds.domains,
        test_env_index=setup.test_env,
        classes=ds.classes,
        model=model_record(hp["arch"], ds.input_shape, ds.num_classes, scheme),
        extra=extra,
    )
    save_run(out, config, algo.network.state_dict(), metrics)
    return metrics.to_json()


def train(hp: dict, out: str | Path, *, console: Console | None = None, overwrite: bool = False) -> dict:
    """`--test-env all` trains every held-out domain into out/<domain>; otherwise one run into out."""
    out = Path(out)
    if hp.get("source") is not None or hp.get("target") is not None:
        return {"runs": {str(hp.get("target")): train_one(hp, out, console=console, overwrite=overwrite)}}
    if str(hp["test_env"]) != "all":
        return {"runs": {str(hp["test_env"]): train_one(hp, out, console=console, overwrite=overwrite)}}
    domains = get_dataset(
        hp["dataset"],
        hp.get("data_dir"),
        image_size=hp.get("image_size"),
        class_map=hp.get("class_map"),
        input_cfg=hp.get("input"),
    ).domains
    for d in domains:  # every output folder, before the first domain trains
        prepare_out(out / d, overwrite, hp.get("resume", False))
    runs = {}
    with make_progress(console) as progress:
        for d in domains:
            runs[d] = train_one({**hp, "test_env": d}, out / d, console=console, overwrite=overwrite, progress=progress)
    return {"runs": runs}
