"""`qdg-deploy sweep`: every (method entry, held-out domain, seed) trained as its own process, N at a time.

Layout: OUT/<label>/<test_env>/seed<k>/ (a run directory, with its log in train.log), OUT/<label>+ens/<test_env>/
(an ensemble of that entry's seeds, `--ensembles`), OUT/sweep.json (what was asked, and each label's entry text).

A method entry is `method` or `method:key=value[:key=value...]`; its label is the entry text made safe for the
file system. `--set key=value` applies to every entry (an entry's own value wins). Each key=value becomes the
train flag `--key value` (underscores become dashes; true/false become `--key` / `--no-key`), so any flag
`qdg-deploy train` has works here unchanged.

Resuming: a run whose metrics.json is present and valid (with its config.json and weights) is skipped; a killed run
with a last.ckpt continues from it (`train --resume`); any other existing run directory is a broken run (crashed)
and is removed before it is trained again. The same holds whatever the launcher (launchers.py).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QdgError
from ..io import read_json, write_json
from ..records import RunConfig
from ..runs import CONFIG, METRICS, run_state
from ..train.validate import applies
from .launchers import LOG, Launch, prepare, print_commands, submit

RESERVED = {"method", "dataset", "test_env", "seed", "out", "overwrite"}
ENSEMBLE_KINDS = ("eoq", "eoa")
SWEEP_FILE = "sweep.json"


@dataclass
class Entry:
    text: str
    method: str
    overrides: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return safe_label(self.text)


@dataclass
class Job:
    entry: Entry
    test_env: str
    seed: int
    out: Path
    cmd: list[str]


def safe_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]", "_", text.strip()) or "_"


def parse_pairs(items: list[str], where: str) -> dict:
    """['a=1', 'b_c=x'] -> {'a': '1', 'b_c': 'x'}; refuses keys the sweep sets itself."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise QdgError(f"{where}: {item!r} is not key=value")
        if key in RESERVED:
            raise QdgError(
                f"{where}: {key} is set by the sweep itself (--methods, --dataset, --test-envs, --seeds, --out)"
            )
        out[key] = value.strip()
    return out


def parse_methods(spec: str) -> list[Entry]:
    """'erm,qtdog,qtdog:scheme=ort:act_bits=8' -> entries (method, overrides)."""
    entries = []
    for text in (t.strip() for t in spec.split(",")):
        if not text:
            continue
        method, *pairs = text.split(":")
        if not method:
            raise QdgError(f"--methods: entry {text!r} has no method before ':'")
        entries.append(Entry(text, method.strip(), parse_pairs(pairs, f"--methods entry {text!r}")))
    if not entries:
        raise QdgError("--methods is empty")
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise QdgError(f"--methods: two entries have the same label ({', '.join(labels)})")
    return entries


def to_flags(settings: dict) -> list[str]:
    """{'q_lr': '1e-4', 'swad': 'true', 'freeze_after_swap': 'false'} -> ['--q-lr', '1e-4', '--swad', '--no-freeze-after-swap']."""
    flags = []
    for key, value in settings.items():
        name = key.replace("_", "-")
        low = str(value).lower()
        if low in ("true", "yes", "on"):
            flags.append(f"--{name}")
        elif low in ("false", "no", "off"):
            flags.append(f"--no-{name}")
        else:
            flags += [f"--{name}", str(value)]
    return flags


def parse_ints(spec: str, what: str) -> list[int]:
    try:
        values = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise QdgError(f"{what} takes comma-separated integers (got {spec!r})") from None
    if not values:
        raise QdgError(f"{what} is empty")
    return values


def resolve_test_envs(dataset: str, spec: str, settings: dict) -> list[str]:
    """'all' or 'a,b' -> the domains' names (an index becomes the name it stands for)."""
    from ..data import get_dataset

    size = settings.get("image_size")
    ds = get_dataset(dataset, settings.get("data_dir"), image_size=int(size) if size else None)
    if spec.strip() == "all":
        return list(ds.domains)
    names = [ds.domains[ds.domain_index(t.strip())] for t in spec.split(",") if t.strip()]
    if not names:
        raise QdgError("--test-envs is empty")
    return list(dict.fromkeys(names))


def plan(
    dataset: str,
    entries: list[Entry],
    test_envs: list[str],
    seeds: list[int],
    settings: dict,
    out: Path,
    jobs: int = 1,
    launch: Launch = Launch(),
) -> list[Job]:
    """One job per (entry, test env, seed), with the command line that trains it."""
    base = [*launch.base(), "--dataset", dataset]
    todo = []
    for e in entries:
        quant = str(e.overrides.get("quant", settings.get("quant", ""))).lower() == "true"
        # a --set option for every entry goes to the entries it means something to (quantization options to the
        # quantizing ones); an entry's own option always goes (train refuses it where it does not apply)
        merged = {**{k: v for k, v in settings.items() if applies(e.method, k, quant)}, **e.overrides}
        if jobs > 1 and "threads" not in merged:  # share the cores between the parallel runs
            merged["threads"] = str(max(1, (os.cpu_count() or 1) // jobs))
        for te in test_envs:
            for s in seeds:
                run = out / e.label / safe_label(te) / f"seed{s}"
                cmd = [
                    *base,
                    "--method",
                    e.method,
                    "--test-env",
                    te,
                    "--seed",
                    str(s),
                    "--out",
                    str(run),
                    *to_flags(merged),
                ]
                todo.append(Job(e, te, s, run, cmd))
    return todo


def child_env() -> dict:
    """The environment of a run process: this one's, with this qdg_deploy package first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def execute(jobs: list[Job], parallel: int, console=None) -> dict:
    """Run the jobs, `parallel` at a time, skipping finished runs and cleaning broken ones first.

    Returns {"done": [...], "skipped": [...], "failed": [...]} (run directories)."""
    from ..accuracy import make_progress

    result = {"done": [], "skipped": [], "failed": []}
    pending = []
    for j in jobs:
        state = run_state(j.out)
        if state == "done":
            result["skipped"].append(str(j.out))
        else:
            pending.append(j)
    running: list[tuple[Job, subprocess.Popen, object]] = []
    env = child_env()
    _terminate_on_sigterm()
    with make_progress(console) as progress:
        task = progress.add_task("sweep", total=len(jobs), completed=len(result["skipped"]), info="")
        try:
            while pending or running:
                while pending and len(running) < parallel:
                    j = pending.pop(0)
                    with _held():
                        running.append(_start(j, env))
                for item in list(running):
                    j, proc, log = item
                    if proc.poll() is None:
                        continue
                    log.close()
                    running.remove(item)
                    ok = proc.returncode == 0 and run_state(j.out) == "done"
                    result["done" if ok else "failed"].append(str(j.out))
                    progress.advance(task)
                names = ", ".join(f"{j.entry.label}/{j.test_env}/seed{j.seed}" for j, _, _ in running)
                progress.update(task, info=f"running: {names}" if names else "")
                time.sleep(0.2)
        except BaseException:
            for _, proc, log in running:  # never leave orphans behind: their run dirs stay broken, rerun later
                proc.terminate()
                proc.wait()
                log.close()
            raise
    return result


_HOLD = {"on": False, "pending": False}  # an interrupt that arrived while a child was being started


def _terminate_on_sigterm() -> None:
    """SIGTERM ends the sweep as Ctrl-C does: its running children are terminated, not orphaned."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)


def _interrupt(signum, frame):
    if _HOLD["on"]:
        _HOLD["pending"] = True
        return
    raise KeyboardInterrupt


@contextmanager
def _held():
    """Hold an interrupt back while a child starts, so that it is in the running list (and gets terminated) when
    the interrupt lands: one arriving between Popen and that list left an orphan that finished its run."""
    _HOLD["on"] = True
    try:
        yield
    finally:
        _HOLD["on"] = False
        if _HOLD["pending"]:
            _HOLD["pending"] = False
            raise KeyboardInterrupt


def _start(j: Job, env: dict):
    cmd = prepare(j.cmd, j.out)  # a killed run continues from its checkpoint; other leftovers are removed
    log = open(j.out / LOG, "a")
    log.write("$ " + shlex.join(cmd) + "\n")
    log.flush()
    return j, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log


def build_ensembles(
    out: Path, entries: list[Entry], test_envs: list[str], seeds: list[int], kinds: list[str]
) -> list[dict]:
    """Per (entry, test env): an ensemble of its seeds in OUT/<label>+ens/<test_env> when every seed finished and
    the members are quantized (kind eoq) or float (eoa). One built from the same members since they last trained
    is kept."""
    from .ensemble import build_ensemble

    built = []
    for e in entries:
        for te in test_envs:
            members = [out / e.label / safe_label(te) / f"seed{s}" for s in seeds]
            if len(members) < 2 or any(run_state(m) != "done" for m in members):
                continue
            quantized = bool(RunConfig.read(members[0] / CONFIG).model.get("scheme"))
            if ("eoq" if quantized else "eoa") not in kinds:
                continue
            dest = out / f"{e.label}+ens" / safe_label(te)
            if _ensemble_current(dest, members):
                built.append({"run": str(dest), "kept": True})
                continue
            m = build_ensemble(members, dest, overwrite=True)
            built.append({"run": str(dest), "method": m["method"], "test_acc": m["test_acc"]})
    return built


def _ensemble_current(dest: Path, members: list[Path]) -> bool:
    """An ensemble already built from these members, after their last (re)training."""
    if run_state(dest) != "done":
        return False
    same = RunConfig.read(dest / CONFIG).extra.get("ensemble", {}).get("members") == [str(m) for m in members]
    return same and (dest / METRICS).stat().st_mtime >= max((m / METRICS).stat().st_mtime for m in members)


def run_sweep(
    dataset: str,
    methods: str,
    test_envs: str,
    seeds: str,
    sets: list[str],
    out: Path,
    *,
    parallel: int = 1,
    ensembles: str | None = None,
    dry_run: bool = False,
    console=None,
    echo=print,
    launch: Launch = Launch(),
) -> dict:
    """The whole sweep; with dry_run only prints each command (and which runs it would skip). `launch` says how the
    runs are started (launchers.py)."""
    if parallel < 1:
        raise QdgError("--jobs must be at least 1")
    launch.check()
    kinds = [k.strip().lower() for k in (ensembles or "").split(",") if k.strip()]
    bad = [k for k in kinds if k not in ENSEMBLE_KINDS]
    if bad:
        raise QdgError(f"--ensembles takes eoq and/or eoa, not {', '.join(bad)}")
    entries = parse_methods(methods)
    settings = parse_pairs(sets, "--set")
    seed_list = parse_ints(seeds, "--seeds")
    envs = resolve_test_envs(dataset, test_envs, settings)
    jobs = plan(dataset, entries, envs, seed_list, settings, Path(out), parallel, launch)
    if dry_run:
        for j in jobs:
            tag = "# finished, skipped: " if run_state(j.out) == "done" else ""
            echo(tag + shlex.join(j.cmd))
        return {"jobs": len(jobs)}
    if launch.launcher == "print":
        return {"printed": print_commands(jobs, Path(out), echo)}
    _record(Path(out), dataset, entries, envs, seed_list, settings, kinds)
    if launch.launcher == "submitit":
        result = submit(jobs, launch, Path(out), child_env())
    else:
        result = execute(jobs, parallel, console)
    if kinds:
        result["ensembles"] = build_ensembles(Path(out), entries, envs, seed_list, kinds)
    return result


def _record(out: Path, dataset, entries, envs, seeds, settings, kinds) -> None:
    """OUT/sweep.json: this sweep's request; labels accumulate over reruns with other --methods."""
    old = read_json(out / SWEEP_FILE) if (out / SWEEP_FILE).is_file() else {}
    labels = {**old.get("labels", {}), **{e.label: e.text for e in entries}}
    write_json(
        out / SWEEP_FILE,
        {
            "dataset": dataset,
            "methods": [e.text for e in entries],
            "labels": labels,
            "test_envs": envs,
            "seeds": seeds,
            "set": settings,
            "ensembles": kinds,
        },
    )
