"""How `qdg-deploy sweep` runs its train commands: `--launcher local|torchrun|submitit|print`.

* local: each run a process here, `--jobs` at a time (sweep.execute).
* torchrun: the same, each run data parallel over `--nproc-per-node` processes (torch.distributed.run).
* submitit: each run a Slurm job through the submitit library (one job array: partition, GPUs, time limit and
  array parallelism as options); submitit's local executor where there is no Slurm (or `--cluster local`).
* print: only write the commands, one a line, for any other scheduler (stdout and OUT/commands.sh).

Every launcher resumes a sweep the same way: a finished run is skipped, a killed one continues from its
last.ckpt (`train --resume`), any other broken one is removed and trained again (`prepare`)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import QdgError
from ..runs import run_state
from ..train.resume import LAST

LAUNCHERS = ("local", "torchrun", "submitit", "print")
LOG = "train.log"


@dataclass(frozen=True)
class Launch:
    launcher: str = "local"
    nproc_per_node: int = 1
    partition: str | None = None
    gpus: int | None = None
    time_min: int = 240
    array_parallelism: int | None = None
    cluster: str | None = None  # submitit: slurm, local, or None (Slurm where sbatch is, else local)

    def check(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise QdgError(f"--launcher takes one of {', '.join(LAUNCHERS)} (got {self.launcher!r})")
        if self.nproc_per_node < 1:
            raise QdgError(f"--nproc-per-node must be >= 1 (got {self.nproc_per_node})")
        if self.nproc_per_node > 1 and self.launcher == "local":
            raise QdgError("--nproc-per-node needs --launcher torchrun, submitit or print")
        if self.time_min < 1 or (self.gpus is not None and self.gpus < 0) or (self.array_parallelism or 1) < 1:
            raise QdgError("--time must be >= 1 minute, --gpus >= 0 and --array-parallelism >= 1")
        if self.cluster not in (None, "slurm", "local"):
            raise QdgError(f"--cluster takes slurm or local (got {self.cluster!r})")
        if self.launcher == "submitit":
            try:
                import submitit  # noqa: F401
            except ImportError:
                raise QdgError("--launcher submitit needs the submitit package: pip install submitit") from None

    def base(self) -> list[str]:
        """The program part of a train command: this Python, under torchrun when it is data parallel."""
        if self.launcher == "torchrun" or self.nproc_per_node > 1:
            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(self.nproc_per_node),
                "-m",
                "qdg_deploy.cli",
                "train",
            ]
        return [sys.executable, "-m", "qdg_deploy.cli", "train"]


def resumable(out: Path) -> bool:
    return (out / LAST).is_file()


def prepare(cmd: list[str], out: Path) -> list[str]:
    """Make `out` ready for `cmd` (a run not finished): a killed run with a checkpoint continues (--resume); any
    other leftover is removed and the run starts again."""
    if resumable(out):
        return [*cmd, "--resume"]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return cmd


def run_command(cmd: list[str], log: str, env: dict) -> int:
    """One run, its output appended to `log` (a submitit job calls this on its node)."""
    with open(log, "a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def print_commands(jobs, out: Path, echo) -> list[str]:
    """The commands of the runs not finished, for another scheduler: a killed run's with --resume, a broken one's
    after removing what it left. Also written to OUT/commands.sh."""
    lines = []
    for j in jobs:
        state = run_state(j.out)
        if state == "done":
            continue
        cmd = shlex.join([*j.cmd, "--resume"] if resumable(j.out) else j.cmd)
        lines.append(
            f"rm -rf {shlex.quote(str(j.out))} && {cmd}" if state == "broken" and not resumable(j.out) else cmd
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "commands.sh").write_text("".join(line + "\n" for line in lines))
    for line in lines:
        echo(line)
    return lines


def submit(jobs, launch: Launch, out: Path, env: dict) -> dict:
    """Every run not finished as one submitit job (a Slurm job array); waits for them. Returns the sweep's
    {"done", "skipped", "failed"}."""
    import submitit

    result = {"done": [], "skipped": [], "failed": []}
    pending = []
    for j in jobs:
        if run_state(j.out) == "done":
            result["skipped"].append(str(j.out))
        else:
            pending.append((j, prepare(j.cmd, j.out)))
    if not pending:
        return result
    ex = submitit.AutoExecutor(folder=out / ".submitit" / "%j", cluster=launch.cluster)
    params = {
        "timeout_min": launch.time_min,
        "gpus_per_node": launch.gpus,
        "slurm_partition": launch.partition,
        "slurm_array_parallelism": launch.array_parallelism,
        "name": f"qdg-sweep-{out.name}",
    }
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    with ex.batch():
        handles = [ex.submit(run_command, cmd, str(j.out / LOG), env) for j, cmd in pending]
    for (j, _), h in zip(pending, handles):
        try:
            code = h.result()
        except Exception:  # the job itself failed (time limit, node failure): its log and submitit's say why
            code = -1
        ok = code == 0 and run_state(j.out) == "done"
        result["done" if ok else "failed"].append(str(j.out))
    return result
