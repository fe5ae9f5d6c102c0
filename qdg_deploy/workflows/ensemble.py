"""EoQ / EoA ensembles: several runs of one method (different seeds, same data set and held-out domain) as one
run directory whose network adds the members' logits.

Ensemble of Averages (salesforce/ensemble-of-averages, domainbed/EoA.py) sums the members' logits and takes the
arg-max; we do the same. The sum (not the mean) is what the network outputs: the arg-max is the same, and the
exported graph then holds only Adds, the same float32 additions in the same order as torch, so the export stays
bit-exact. EoQ (QT-DoG) is the same ensemble of quantized runs.

An ensemble run directory is a normal run directory: config["model"] holds the members' common record (arch,
input_shape, num_classes, scheme) plus "ensemble": [one model record per member]; the weights are stored under
`members.<i>.`; `runs.load_run` rebuilds it, so `eval`, `export` and `bench` take it like any run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import QdgError
from ..models.ensemble import Ensemble
from ..records import Metrics, RunConfig
from ..runs import Run, check_out_dir, load_run, save_run

# Which config entries must agree between members (what they mean: the same task and the same network).
SAME_TASK = ("dataset", "domains", "test_env_index", "classes")
SAME_HP = ("data_dir", "image_size", "holdout_fraction")
SAME_MODEL = ("arch", "input_shape", "num_classes", "scheme")
NAMES = {"test_env_index": "held-out domain", "classes": "class list", "domains": "domain list"}


def ensemble_kind(quantized: bool, k: int) -> str:
    """The row label QT-DoG's README uses: EoQ for quantized members, EoA for float ones."""
    return f"{'EoQ' if quantized else 'EoA'}({k})"


def check_members(runs: list[Run]) -> None:
    """Refuse members that are not the same task and network, or that repeat a seed (one QdgError line)."""
    if len(runs) < 2:
        raise QdgError("an ensemble needs at least two run directories")
    first = runs[0]
    for r in runs:
        if r.config["model"].get("ensemble"):
            raise QdgError(f"{r.path} is itself an ensemble: give its member runs instead")
        if r.config.get("domain_adaptation"):
            raise QdgError(f"{r.path} is a domain-adaptation run: ensembles take domain-generalization runs")
    for r in runs[1:]:
        for key in SAME_TASK:
            if r.config.get(key) != first.config.get(key):
                raise QdgError(
                    f"members differ in {NAMES.get(key, key)}: {first.path} has {_show(first, key)}, "
                    f"{r.path} has {_show(r, key)}"
                )
        for key in SAME_HP:
            if r.config["hparams"].get(key) != first.config["hparams"].get(key):
                raise QdgError(
                    f"members differ in {key}: {first.config['hparams'].get(key)!r} ({first.path}) vs "
                    f"{r.config['hparams'].get(key)!r} ({r.path})"
                )
        for key in SAME_MODEL:
            a, b = first.config["model"].get(key), r.config["model"].get(key)
            if a != b:
                what = "quantization scheme" if key == "scheme" else key
                raise QdgError(f"members differ in {what}: {_brief(a)} ({first.path}) vs {_brief(b)} ({r.path})")
    seeds = [r.config["hparams"].get("seed") for r in runs]
    if len(set(seeds)) != len(seeds):
        raise QdgError(f"members repeat a seed ({', '.join(map(str, seeds))}): ensemble runs of different seeds")


def _show(run: Run, key: str):
    v = run.config.get(key)
    if key == "test_env_index":
        return f"held-out domain {run.config['domains'][v]!r}"
    return repr(v)


def _brief(v) -> str:
    if isinstance(v, dict):
        return repr(v.get("name", v))
    return repr(v)


def ensemble_record(runs: list[Run]) -> dict:
    """config['model'] of the ensemble: the members' common record plus every member's own."""
    first = runs[0].config["model"]
    return {**{k: first.get(k) for k in SAME_MODEL}, "ensemble": [r.config["model"] for r in runs]}


def build_ensemble(run_dirs: list[str | Path], out: str | Path, *, overwrite: bool = False) -> dict:
    """Write the ensemble run directory `out` (atomically: a temporary directory renamed); returns its metrics."""
    from ..accuracy import domain_metrics
    from ..quant import model_size

    out = check_out_dir(out, overwrite)
    runs = [load_run(p) for p in run_dirs]
    if len({r.path.resolve() for r in runs}) != len(runs):
        raise QdgError("a run directory is given twice")
    check_members(runs)
    net = Ensemble([r.model for r in runs]).eval()
    hp = dict(runs[0].config["hparams"])
    with torch.no_grad():
        scored = domain_metrics(net, runs[0].data())
    quantized = bool(runs[0].config["model"].get("scheme"))
    kind, k = ensemble_kind(quantized, len(runs)), len(runs)
    members = [
        {
            "run": str(r.path),
            "seed": r.config["hparams"].get("seed"),
            "method": r.metrics.get("method"),
            "test_acc": r.metrics["test_acc"],
            "val_acc": r.metrics.get("val_acc"),
        }
        for r in runs
    ]
    member_mean = sum(m["test_acc"] for m in members) / k
    metrics = Metrics.of(
        {**scored, "selected_step": None},
        bits=runs[0].metrics.get("bits"),
        scheme=runs[0].metrics.get("scheme"),
        method=kind,
        members=members,
        members_mean_test_acc=member_mean,
        gain_over_members_mean=scored["test_acc"] - member_mean,
        val_note=(
            f"training domains' out splits of member 0 (seed {members[0]['seed']}); the splits "
            "depend on the seed, so other members trained on part of them: val_acc is optimistic"
        ),
    )
    size = model_size(net)
    first = runs[0].config
    config = RunConfig(
        hparams=hp,
        dataset=first["dataset"],
        domains=first["domains"],
        test_env_index=first["test_env_index"],
        classes=first["classes"],
        model=ensemble_record(runs),
        extra={
            "size": size,
            "member_size": first.get("size"),
            "ensemble": {
                "kind": kind,
                "k": k,
                "members": [m["run"] for m in members],
                "seeds": [m["seed"] for m in members],
                "combine": "sum of the members' logits, arg-max (as EoA's code); no softmax",
            },
        },
    )
    save_run(out, config, net.state_dict(), metrics)
    return metrics.to_json()
