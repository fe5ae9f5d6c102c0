"""Issue 17's bad-input matrix: one row per bad input and verb, each run through the real entry point
(`qdg_deploy.cli.main`): its exit code, a fragment of its one `error:` line, no traceback, and nothing written or
changed anywhere (the row's own folder and the shared trained run, byte for byte, temporary names included).

Rows run in this process (one shared tiny trained run and its export, module scope) so that the whole matrix costs
seconds per row; Ctrl-C needs a real process and a signal, and disk-full / read-only cases a small tmpfs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from conftest import cli_here

SIZE = 16
TRAIN = [
    "--arch",
    "mnist-cnn",
    "--image-size",
    str(SIZE),
    "--checkpoint-freq",
    "1",
    "--batch-size",
    "4",
    "--threads",
    "1",
    "--test-env",
    "photo",
    "--steps",
    "2",
]


def make_tree(root: Path, spec: dict[str, tuple[str, ...]]) -> Path:
    """ROOT/<domain>/<class>/<i>.png, 4 small images a class."""
    for d, classes in spec.items():
        for k, c in enumerate(classes):
            (root / d / c).mkdir(parents=True)
            for i in range(4):
                color = (60 * k + 5 * i, 100 if d == "art" else 30, 20)
                Image.new("RGB", (20, 20), color).save(root / d / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data tree, one trained quantized run and its export (model.onnx + report): the good artifacts."""
    from qdg_deploy.export import export_run_dir
    from qdg_deploy.train import resolve_hparams, train

    root = tmp_path_factory.mktemp("world")
    tree = make_tree(root / "tree", {"art": ("cat", "dog", "fox"), "photo": ("cat", "dog", "fox")})
    run = root / "run"
    hp = resolve_hparams(
        f"folder:{tree}",
        method="qtdog",
        arch="mnist-cnn",
        image_size=SIZE,
        steps=2,
        q_steps=0,
        checkpoint_freq=1,
        batch_size=4,
        threads=1,
        test_env="photo",
        swad_bn_steps=1,
    )
    train(hp, run)
    export_run_dir(run)
    assert {p.name for p in run.iterdir()} == {
        "config.json",
        "metrics.json",
        "model.safetensors",
        "model.onnx",
        "model.export.json",
    }
    return {"root": root, "tree": tree, "run": run}


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file (hidden ones too) and folder below the roots: path → sha256 (folders: "dir")."""
    snap = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                snap[os.path.join(dirpath, d)] = "dir"
            for f in filenames:
                p = os.path.join(dirpath, f)
                snap[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return snap


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run `qdg-deploy ARGS` through main() here: (exit code, stdout, stderr)."""
    r = cli_here(capsys, *args)
    return r.returncode, r.stdout, r.stderr


def one_error_line(code: int, err: str, fragments: list[str], absent: list[str]) -> None:
    assert "Traceback" not in err, err
    for a in absent:
        assert a not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert err.strip().splitlines()[-1] == errors[0], err  # the error is the last thing said
    for f in fragments:
        assert f in errors[0], errors[0]


# ---------------------------------------------------------------- row set-ups (ws: the row's own folder)


def corrupt_copy(name: str, data: bytes | Callable[[bytes], bytes]):
    """A copy of the trained run (run files only) with one file replaced."""

    def setup(ws, world):
        run = ws / "run"
        run.mkdir()
        for f in ("config.json", "metrics.json", "model.safetensors"):
            shutil.copy(world["run"] / f, run / f)
        old = (run / name).read_bytes()
        (run / name).write_bytes(data(old) if callable(data) else data)
        return {"bad": run}

    return setup


def a_file(ws, world):
    (ws / "file.txt").write_text("not a folder")
    return {}


def a_folder_of_other_files(ws, world):
    (ws / "docs").mkdir()
    (ws / "docs" / "notes.txt").write_text("mine")
    return {}


def second_domain_taken(ws, world):
    """--test-env all: the second domain's folder already holds a run (the first would train, then stop)."""
    shutil.copytree(world["run"], ws / "all" / "photo")
    return {}


def worker_bad_image(ws, world):
    tree = shutil.copytree(world["tree"], ws / "tree")
    (tree / "art" / "cat" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return {"tree": tree}


def class_in_one_domain(ws, world):
    return {"tree": make_tree(ws / "tree", {"art": ("cat", "dog"), "photo": ("dog", "kitty")})}


def compare_of_wrong_shape(ws, world):
    from qdg_deploy.bench import SCHEMA

    (ws / "old.json").write_text(json.dumps({"schema": SCHEMA, "records": [{"artifact": "x", "runtime": "ort-cpu"}]}))
    return {}


def random_onnx(ws, world):
    (ws / "junk.onnx").write_bytes(os.urandom(4096))
    return {}


def onnx_of_other_shape(ws, world):
    """A run directory whose model.onnx takes 8×8 images while the run's are 16×16."""
    import onnx
    from onnx import TensorProto, helper

    run = ws / "run"
    run.mkdir()
    for f in ("config.json", "metrics.json", "model.safetensors"):
        shutil.copy(world["run"] / f, run / f)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
        "other",
        [x],
        [y],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), run / "model.onnx")
    return {"bad": run}


def daq_8bit_run(ws, world):
    """A run whose network is AlignQ's DAQ at 8 bits (weight codes [-255, 255]); untrained: export refuses it
    before it verifies anything."""
    from qdg_deploy.quant import get_scheme
    from qdg_deploy.runs import build_run_model, save_run

    config = json.loads((world["run"] / "config.json").read_text())
    config["model"]["scheme"] = get_scheme("alignq", bits=8, act_bits=8).to_dict()
    net = build_run_model(config["model"])
    metrics = json.loads((world["run"] / "metrics.json").read_text())
    save_run(ws / "daq8", config, net.state_dict(), metrics)
    return {"bad": ws / "daq8"}


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def pickled_object(ws, world):
    """A torch file whose pickle would call print() if it were unpickled."""
    import torch

    torch.save({"conv1.weight": Evil()}, ws / "w.pt")
    return {}


def nothing(ws, world):
    return {}


@dataclass
class Row:
    id: str
    args: list[str]
    fragments: list[str]
    setup: Callable = nothing
    code: int = 2
    absent: list[str] = field(default_factory=list)


T = ["train", "--dataset", "folder:{tree}", *TRAIN]
OUT = ["--out", "{ws}/out"]
ROWS = [
    # train: numeric ranges (before: tracebacks, or garbage written with exit 0)
    Row("train-lr-nan", [*T, "--lr", "nan", *OUT], ["--lr takes a finite number"]),
    Row("train-lr-inf", [*T, "--lr", "inf", *OUT], ["--lr takes a finite number"]),
    Row("train-lr-negative", [*T, "--lr", "-1", *OUT], ["--lr must be > 0"]),
    Row("train-weight-decay-negative", [*T, "--weight-decay", "-1", *OUT], ["--weight-decay must be >= 0"]),
    Row("train-batch-size-negative", [*T, "--batch-size", "-1", *OUT], ["--batch-size must be >= 1"]),
    Row("train-batch-size-zero", [*T, "--batch-size", "0", *OUT], ["--batch-size must be >= 1"]),
    Row("train-checkpoint-freq-zero", [*T, "--checkpoint-freq", "0", *OUT], ["--checkpoint-freq must be >= 1"]),
    Row("train-threads-negative", [*T, "--threads", "-1", *OUT], ["--threads must be >= 1"]),
    Row("train-steps-zero", [*T, "--steps", "0", *OUT], ["--steps must be >= 1"]),
    Row("train-optimizer-unknown", [*T, "--optimizer", "rmsprop", *OUT], ["--optimizer takes one of sgd, adam"]),
    Row(
        "train-grad-approx-unknown",
        [*T, "--method", "alignq", "--grad-approx", "twice", *OUT],
        ["--grad-approx takes one of chain, legacy, off"],
    ),
    # train: options the method would ignore (before: silence)
    Row(
        "train-momentum-with-adam",
        [*T, "--method", "erm", "--momentum", "0.5", *OUT],
        ["--momentum applies to --optimizer sgd only"],
    ),
    Row(
        "train-erm-bits",
        [*T, "--method", "erm", "--bits", "4", *OUT],
        ["--bits only applies to quantized training", "--quant"],
    ),
    Row(
        "train-erm-scheme-act-bits",
        [*T, "--method", "erm", "--scheme", "trt", "--act-bits", "8", *OUT],
        ["--scheme, --act-bits only apply to quantized training"],
    ),
    Row("train-erm-quantizer", [*T, "--method", "erm", "--quantizer", "dorefa", *OUT], ["--quantizer only applies"]),
    Row("train-qtdog-no-quant", [*T, "--method", "qtdog", "--no-quant", *OUT], ["--no-quant contradicts"]),
    Row(
        "train-weights-pickle-not-a-state-dict",
        [*T, "--method", "erm", "--weights", "{ws}/w.pt", *OUT],
        ["not a plain tensor state dict", "never unpickles"],
        pickled_object,
        absent=["weights_only", "pwned"],
    ),
    Row(
        "train-erm-coral-weight",
        [*T, "--method", "erm", "--coral-weight", "2", *OUT],
        ["--coral-weight applies to --method coral only"],
    ),
    # train: output folders, all of them before any work
    Row("train-out-is-a-file", [*T, "--out", "{ws}/file.txt"], ["is a file, not a directory"], a_file),
    Row("train-out-holds-other-files", [*T, "--out", "{ws}/docs"], ["holds other files"], a_folder_of_other_files),
    Row(
        "train-test-env-all-second-taken",
        [*T[:-4], "--steps", "2", "--test-env", "all", "--out", "{ws}/all"],
        ["already holds a run"],
        second_domain_taken,
    ),
    # train: what the data and the run turn out to be
    Row(
        "train-loss-not-finite",
        [*T, "--method", "erm", "--lr", "1e30", "--steps", "3", *OUT],
        ["training diverged", "lower --lr"],
    ),
    Row(
        "train-bad-image-in-worker",
        [*T, "--method", "erm", *OUT],
        ["cannot read image", "1.png"],
        worker_bad_image,
        absent=["Caught", "DataLoader worker"],
    ),
    Row(
        "train-class-in-one-domain",
        [*T, "--method", "erm", *OUT],
        ["'kitty' (only in 'photo')", "--class-map FILE.json"],
        class_in_one_domain,
    ),
    Row(
        "train-class-map-missing",
        [*T, "--method", "erm", "--class-map", "{ws}/map.json", *OUT],
        ["--class-map", "map.json not found"],
    ),
    # eval: damaged run files
    Row(
        "eval-truncated-weights",
        ["eval", "{bad}"],
        ["model.safetensors is not a readable safetensors file"],
        corrupt_copy("model.safetensors", lambda b: b[: len(b) // 2]),
    ),
    Row(
        "eval-random-weights",
        ["eval", "{bad}"],
        ["model.safetensors is not a readable safetensors file"],
        corrupt_copy("model.safetensors", os.urandom(2048)),
    ),
    Row(
        "eval-config-not-json",
        ["eval", "{bad}"],
        ["config.json is not valid JSON"],
        corrupt_copy("config.json", b'{"model": '),
    ),
    Row(
        "eval-metrics-not-json",
        ["eval", "{bad}"],
        ["metrics.json is not valid JSON"],
        corrupt_copy("metrics.json", b"\xff\xfe"),
    ),
    Row("eval-config-a-list", ["eval", "{bad}"], ["config.json holds a JSON list"], corrupt_copy("config.json", b"[]")),
    Row("eval-json-onto-a-directory", ["eval", "{run}", "--json", "{ws}"], ["is a directory"]),
    # export
    Row("export-opset-28-onto-good-export", ["export", "{run}", "--opset", "28"], ["--opset 28 is outside 13.."]),
    Row("export-out-a-directory", ["export", "{run}", "--out", "{ws}"], ["is a directory"]),
    Row(
        "export-max-samples-zero",
        ["export", "{run}", "--max-samples", "0", "--out", "{ws}/m.onnx"],
        ["--max-samples takes an integer >= 1"],
    ),
    Row(
        "export-tensorrt-batch-range",
        ["export", "{run}", "--format", "tensorrt", "--batch-range", "8,1,32"],
        ["--batch-range takes MIN,OPT,MAX"],
    ),
    Row(
        "export-tensorrt-static-batch-range",
        ["export", "{run}", "--format", "tensorrt", "--static-batch", "--batch-range", "1,8,32"],
        ["disagrees with the ONNX input's fixed batch 1"],
    ),
    Row(
        "export-tensorrt-out-a-directory",
        ["export", "{run}", "--format", "tensorrt", "--out", "{ws}"],
        ["is a directory", "model.engine"],
        absent=["model.onnx"],
    ),
    Row(
        "export-tensorrt-timing-cache-unwritable",
        ["export", "{run}", "--format", "tensorrt", "--timing-cache", "{run}/config.json/trt.cache"],
        ["--timing-cache", "cannot write in"],
    ),
    Row(
        "export-tensorrt-opt-level-9",
        ["export", "{run}", "--format", "tensorrt", "--builder-opt-level", "9"],
        ["--builder-opt-level takes 0..5"],
    ),
    Row(
        "export-tensorrt-workspace-zero",
        ["export", "{run}", "--format", "tensorrt", "--workspace-gb", "0"],
        ["--workspace-gb takes a positive number"],
    ),
    Row(
        "export-tensorrt-fallback-no-dla",
        ["export", "{run}", "--format", "tensorrt", "--gpu-fallback"],
        ["--gpu-fallback needs --dla-core"],
    ),
    Row(
        "export-fp16-not-tensorrt", ["export", "{run}", "--fp16", "--out", "{ws}/m.onnx"], ["go with --format tensorrt"]
    ),
    Row(
        "export-daq-8-bit",
        ["export", "{bad}", "--no-verify"],
        ["more than int8 holds", "--bits 7"],
        daq_8bit_run,
        absent=["gamma"],
    ),
    # bench
    Row("bench-duration-nan", ["bench", "{run}", "--duration-s", "nan"], ["--duration-s takes a finite number"]),
    Row("bench-threads-negative", ["bench", "{run}", "--threads", "-1"], ["--threads takes an integer >= 1"]),
    Row(
        "bench-compare-wrong-shape",
        [
            "bench",
            "{run}",
            "-r",
            "ort-cpu",
            "--batch",
            "1",
            "--duration-s",
            "0.01",
            "--no-accuracy",
            "--compare",
            "{ws}/old.json",
        ],
        ["--compare", "record 0"],
        compare_of_wrong_shape,
    ),
    Row(
        "bench-only-corrupt",
        ["bench", "{ws}/junk.onnx", "--duration-s", "0.01"],
        ["nothing was measured", "cannot load"],
        random_onnx,
    ),
    Row(
        "bench-onnx-shape-differs",
        ["bench", "{bad}/model.onnx", "-r", "ort-cpu", "--batch", "1", "--duration-s", "0.01"],
        ["nothing was measured", "[3, 8, 8] but its run's images are [3, 16, 16]"],
        onnx_of_other_shape,
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row, world, tmp_path, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    names = {"ws": ws, "run": world["run"], "tree": world["tree"], **row.setup(ws, world)}
    args = [a.format(**names) for a in row.args]
    before = snapshot(ws, world["root"])
    code, _, err = cli(capsys, *args)
    assert code == row.code, err
    one_error_line(code, err, row.fragments, row.absent)
    assert snapshot(ws, world["root"]) == before  # nothing written, nothing changed, no temporary left


# ---------------------------------------------------------------- Ctrl-C, umask


def children(pid: int) -> list[str]:
    """The child processes of `pid` (Linux's /proc; none where it is absent)."""
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


@pytest.mark.parametrize(
    "workers,group", [(None, False), (2, False), (2, True)], ids=["default", "workers-2", "workers-2-group"]
)
def test_ctrl_c_is_one_line(world, tmp_path, workers, group):
    # "ready" once the imports are done, torch's included (a signal during them would come before main, and one
    # while torch's C extension imports numpy is swallowed there: the run would go on), then main() as installed.
    # With DataLoader workers: SIGINT to the main process only (kill -INT), or to the whole process group as a
    # terminal's Ctrl-C sends it (the workers ignore it; the main process stops them).
    code = (
        "import sys, torch, qdg_deploy.train; from qdg_deploy.cli import main; "
        "print('ready', file=sys.stderr, flush=True); main()"
    )
    cmd = [
        sys.executable,
        "-c",
        code,
        "train",
        "--dataset",
        f"folder:{world['tree']}",
        *TRAIN[:-2],
        "--steps",
        "100000",
        "--out",
        str(tmp_path / "out"),
        *(["--workers", str(workers)] if workers else []),
    ]
    # SIGINT as a terminal user has it: a runner started in the background of a non-interactive shell ignores
    # SIGINT, and an ignored signal stays ignored across exec (Python then installs no KeyboardInterrupt handler)
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=group,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert p.stderr.readline().strip() == "ready"
    end = time.monotonic() + 60
    while workers and len(children(p.pid)) < workers and time.monotonic() < end and p.poll() is None:
        time.sleep(0.1)  # the workers started: the signal comes while they load batches
    time.sleep(3)  # into the data loading or the first steps
    os.killpg(p.pid, signal.SIGINT) if group else p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines and lines[-1].startswith("interrupted"), err
    assert not (tmp_path / "out").exists(), sorted((tmp_path / "out").iterdir())
    assert [p for p in tmp_path.iterdir()] == []  # no temporary folder left either


def test_sigint_held_arrives_after_the_block():
    import threading

    from qdg_deploy.cli import sigint_held

    reached = False
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal user has it (see above)
    with pytest.raises(KeyboardInterrupt):
        with sigint_held():
            # to this thread (the CLI's only one when it holds SIGINT; here other tests may have started threads,
            # which could take a process-directed signal): pending, not raised inside, where torch would lose it
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
            reached = True
    signal.signal(signal.SIGINT, old)
    assert reached


def test_artifacts_follow_the_umask(world, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        code, _, err = cli(capsys, "export", world["run"], "--no-verify", "--out", tmp_path / "m.onnx")
        assert code == 0, err
        from qdg_deploy.runs import load_run, save_run

        run = load_run(world["run"])
        save_run(tmp_path / "run", run.config, run.model.state_dict(), run.metrics)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*tmp_path.iterdir(), *(tmp_path / "run").iterdir()]}
    assert modes == {
        "m.onnx": 0o644,
        "m.export.json": 0o644,
        "run": 0o755,
        "config.json": 0o644,
        "metrics.json": 0o644,
        "model.safetensors": 0o644,
    }


# ---------------------------------------------------------------- full and read-only disks (tmpfs)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a small tmpfs at tmp_path/mnt (unmounted afterwards); skips where mounting is not allowed."""
    mounted = []

    def mount(size: str, *, ro: bool = False) -> Path:
        mnt = tmp_path / f"mnt{len(mounted)}"
        mnt.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in reversed(mounted):
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave: int) -> None:
    """Fill the file system up, then free `leave` bytes."""
    with open(mnt / ".filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    with open(mnt / ".filler", "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.truncate(max(0, size - leave))


def test_disk_full_train_overwrite_keeps_the_old_run(world, tmpfs, capsys):
    mnt = tmpfs("4m")
    out = mnt / "run"
    shutil.copytree(world["run"], out)
    fill(mnt, 32 * 1024)  # room for the new config.json and metrics.json, not the weights
    before = snapshot(out)
    code, _, err = cli(
        capsys, "train", "--dataset", f"folder:{world['tree']}", *TRAIN, "--method", "erm", "--out", out, "--overwrite"
    )
    assert code == 2, err
    one_error_line(code, err, [str(out), "no space left"], [])
    assert snapshot(out) == before  # the old run byte for byte, nothing of the new one mixed in
    assert sorted(p.name for p in mnt.iterdir()) == [".filler", "run"]  # no temporary folder left


def test_disk_full_export_keeps_the_old_export(world, tmpfs, capsys):
    mnt = tmpfs("4m")
    run = mnt / "run"
    shutil.copytree(world["run"], run)
    fill(mnt, 32 * 1024)  # model.onnx is ~380 kB
    before = snapshot(run)
    code, _, err = cli(capsys, "export", run, "--no-verify")
    assert code == 2, err
    one_error_line(code, err, [str(run / "model.onnx"), "no space left"], [])
    assert snapshot(run) == before
    assert sorted(p.name for p in mnt.iterdir()) == [".filler", "run"]


def test_read_only_out(world, tmpfs, capsys):
    mnt = tmpfs("1m")
    r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only: {r.stderr.strip()}")
    code, _, err = cli(capsys, "train", "--dataset", f"folder:{world['tree']}", *TRAIN, "--out", mnt / "run")
    assert code == 2, err
    one_error_line(code, err, [str(mnt / "run"), "cannot write"], [])
    code, _, err = cli(capsys, "export", world["run"], "--no-verify", "--out", mnt / "m.onnx")
    assert code == 2, err
    one_error_line(code, err, [str(mnt / "m.onnx"), "cannot write in"], [])
    assert list(mnt.iterdir()) == []


# ---------------------------------------------------------------- folder data sets whose domains differ


def test_domains_lacking_classes_train_with_one_note(tmp_path, capsys):
    tree = make_tree(tmp_path / "tree", {"art": ("cat", "dog"), "photo": ("dog", "fox"), "sketch": ("cat", "fox")})
    code, _, err = cli(
        capsys, "train", "--dataset", f"folder:{tree}", *TRAIN, "--method", "erm", "--out", tmp_path / "run"
    )
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "'art' lacks fox" in notes[0] and "'photo' lacks cat" in notes[0], err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["classes"] == ["cat", "dog", "fox"] and config["model"]["num_classes"] == 3
    assert config["data_notes"] == [notes[0][len("note: ") :]]


def test_class_map_joins_differently_named_folders(tmp_path, capsys):
    tree = make_tree(tmp_path / "tree", {"art": ("cat", "dog"), "photo": ("Dog", "kitty")})
    (tmp_path / "map.json").write_text(json.dumps({"photo": {"Dog": "dog", "kitty": "cat"}}))
    code, _, err = cli(
        capsys,
        "train",
        "--dataset",
        f"folder:{tree}",
        *TRAIN,
        "--method",
        "erm",
        "--class-map",
        tmp_path / "map.json",
        "--out",
        tmp_path / "run",
    )
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["classes"] == ["cat", "dog"] and "data_notes" not in config
    assert config["hparams"]["class_map"] == {"photo": {"Dog": "dog", "kitty": "cat"}}
    code, _, err = cli(capsys, "eval", tmp_path / "run")  # eval rebuilds the same labels from the stored map
    assert code == 0, err
