"""`qdg-deploy`: a thin typer layer; every verb calls a plain Python function of the library.

`train`'s options are built from the hyperparameter table (train/hparams.py): see train_signature."""

from __future__ import annotations

import errno
import inspect
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import QdgError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Quantization-aware domain generalization: train → calibrate → export → bench.",
)
console = Console(stderr=True)
out = Console()


DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N."


def hparam_option(h) -> inspect.Parameter:
    """A hyperparameter table entry (train/hparams.py) as a typer option: unset (None) by default, so the table's
    default for the data set and method applies, unless the entry is `shown` (its default then shows in --help)."""
    if h.type is bool and not h.negatable:
        default, decls = False, (h.option,)
    else:
        default = h.default if h.shown else None
        decls = (f"{h.option}/--no-{h.option[2:]}",) if h.type is bool else (h.option,)
    option = typer.Option(default, *decls, help=h.help or None, rich_help_panel=h.panel)
    return inspect.Parameter(
        h.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=option,
        annotation=h.type if default is not None else Optional[h.type],
    )


def _hand(name: str, annotation, option) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def train_signature() -> inspect.Signature:
    """`train`'s options: every `cli` entry of the hyperparameter table in its order; the few that are not
    hyperparameters (`hand`: the data set, an alias, the output) placed after the entry named, or at the end."""
    from .train import hparams

    hand = {
        "method": [
            _hand(
                "dataset",
                str,
                typer.Option(
                    "rotated-mnist",
                    help="rotated-mnist (embedded), PACS, VLCS, OfficeHome, TerraIncognita, DomainNet, "
                    "office31, digits, or folder:PATH.",
                ),
            )
        ],
        "grad_approx": [
            _hand("no_grad_approx", bool, typer.Option(False, "--no-grad-approx", help="AlignQ: --grad-approx off."))
        ],
    }
    end = [
        _hand("out_dir", Path, typer.Option(Path("runs/train"), "--out", help="Run directory to write.")),
        _hand("overwrite", bool, typer.Option(False, help="Replace a run already in --out.")),
    ]
    params = []
    for h in hparams.HPARAMS:
        if h.cli:
            params += [hparam_option(h), *hand.get(h.name, [])]
    return inspect.Signature(params + end)


@app.command()
def train(**options):
    """Train leave-one-domain-out; select by training-domain validation; write config/model/metrics.

    Under `torchrun --nproc-per-node N` it trains data parallel (DistributedDataParallel); rank 0 writes."""
    from .tables import per_domain_table, runs_table, with_unaveraged
    from .train import resolve_hparams
    from .train import train as run_train

    dataset, out_dir, overwrite = options.pop("dataset"), options.pop("out_dir"), options.pop("overwrite")
    if options.pop("no_grad_approx"):
        options["grad_approx"] = "off"
    method = options["method"]
    hp = resolve_hparams(dataset, **options)
    result = run_train(hp, out_dir, console=console, overwrite=overwrite)
    runs = result["runs"]
    if None in runs.values():  # a torchrun rank other than 0: rank 0 reports
        return
    if len(runs) == 1:
        (metrics,) = runs.values()
        out.print(per_domain_table(with_unaveraged({method: metrics})))
        out.print(f"run written to {out_dir}")
    else:
        out.print(runs_table(method, runs))
        out.print(f"runs written under {out_dir}")


# typer reads the options from the signature (the table's, built on import; tests that change the table rebuild it).
train.__signature__ = train_signature()  # type: ignore[attr-defined]


_PTQ_HELP = dict(
    method="Activation ranges (per tensor): minmax, percentile (--percentile of |x|), entropy (TensorRT's KL "
    "calibration), mse (least rounding-and-clipping error).",
    scheme="ort (W8A8, uint8 activations: ONNX Runtime's integer kernels), trt (W8A8 int8, zero point 0: "
    "TensorRT) or paper (weight-only).",
)


@app.command()
def calibrate(
    source: Path = typer.Argument(
        ...,
        help="A float run directory (from `train`), or a local weights file "
        "(.safetensors / .pt, read without executing code) with --arch.",
    ),
    dataset: Optional[str] = typer.Option(
        None, help="Data set of a weights file (rotated-mnist, folder:PATH, ...; a run directory's own by default)."
    ),
    data_dir: Optional[str] = typer.Option(None, help="Root holding the DomainBed folders."),
    class_map: Optional[Path] = typer.Option(None, help="Folder data sets: JSON {domain: {folder: class}}."),
    test_env: Optional[str] = typer.Option(
        None,
        help="Held-out domain (never read for calibration); a run directory's own by default, 0 for a weights file.",
    ),
    arch: Optional[str] = typer.Option(
        None,
        help="The network a weights file holds: digits-resnet, mnist-cnn, "
        "resnet18, resnet50, tv:NAME, timm:NAME (see `qdg-deploy models`).",
    ),
    image_size: Optional[int] = typer.Option(None, help="Input size for folder data sets (default 224)."),
    method: str = typer.Option("percentile", help=_PTQ_HELP["method"]),
    percentile: float = typer.Option(99.99, help="--method percentile: the percentile of |x| kept unclipped."),
    weight_method: str = typer.Option("minmax", help="Weight ranges (per output channel): minmax or mse."),
    num_batches: int = typer.Option(
        16, help="Calibration batches of 64 images from the training domains' `in` splits."
    ),
    scheme: str = typer.Option("ort", help=_PTQ_HELP["scheme"]),
    bits: Optional[int] = typer.Option(None, help="Weight bits 2..8 (default: the scheme's, 8)."),
    act_bits: Optional[int] = typer.Option(None, help="Activation bits 2..8; 0 keeps activations float."),
    keep_float: int = typer.Option(
        0,
        help="Keep the K layers whose quantization alone costs the most validation "
        "accuracy in float (per-layer sensitivity on the training domains' `out` splits).",
    ),
    keep_float_layers: Optional[str] = typer.Option(
        None, help="Keep these layers float: comma-separated module names (see `qdg-deploy sensitivity`)."
    ),
    seed: int = typer.Option(0, help="Which calibration images are drawn (and, for a weights file, the split)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    out_dir: Path = typer.Option(Path("runs/ptq"), "--out", help="Run directory to write."),
    overwrite: bool = typer.Option(False, help="Replace a run already in --out."),
):
    """Post-training quantization: a float model in, a quantized run directory out (eval, export and bench take it).

    Calibration images come from the training domains only; the held-out domain is scored, never read."""
    from .calibrate.run import PtqOptions, calibrate_run
    from .tables import per_domain_table
    from .train.hparams import default_hparams

    layers = tuple(n.strip() for n in keep_float_layers.split(",") if n.strip()) if keep_float_layers else ()
    opts = PtqOptions(
        method=method,
        percentile=percentile,
        weight_method=weight_method,
        num_batches=num_batches,
        scheme=scheme,
        bits=bits,
        act_bits=act_bits,
        keep_float=keep_float,
        keep_float_layers=layers,
    )
    m = calibrate_run(
        source,
        out_dir,
        opts,
        arch=arch,
        dataset=dataset,
        data_dir=data_dir,
        test_env=test_env,
        image_size=image_size,
        class_map=class_map,
        seed=seed,
        overwrite=overwrite,
        console=console,
        device=device,
        defaults=default_hparams,
    )
    out.print(per_domain_table({f"ptq {scheme} ({method})": m}))
    f = m["float"]
    out.print(
        f"held-out acc {100 * m['test_acc']:.1f} (float {100 * f['test_acc']:.1f}); val {100 * m['val_acc']:.1f} "
        f"(float {100 * f['val_acc']:.1f})"
    )
    out.print(f"run written to {out_dir}")


@app.command()
def sensitivity(
    run_dir: Path = typer.Argument(
        ..., help="A run directory: a quantized run as it is, a float run after a calibration with the options below."
    ),
    json_path: Optional[Path] = typer.Option(
        None, "--json", help="Where to write the JSON (default RUN_DIR/sensitivity.json)."
    ),
    plot: Optional[Path] = typer.Option(None, help="Bar chart PNG (default RUN_DIR/sensitivity.png)."),
    method: str = typer.Option("percentile", help="Float runs: " + _PTQ_HELP["method"]),
    scheme: str = typer.Option("ort", help="Float runs: " + _PTQ_HELP["scheme"]),
    bits: Optional[int] = typer.Option(None, help="Float runs: weight bits."),
    act_bits: Optional[int] = typer.Option(None, help="Float runs: activation bits."),
):
    """Per-layer sensitivity: each layer quantized alone (the rest float), its validation accuracy drop, sorted."""
    from .calibrate.run import PtqOptions, sensitivity_run
    from .tables import FitTable, pct

    r = sensitivity_run(
        run_dir,
        json_path=json_path,
        plot_path=plot,
        opts=PtqOptions(method=method, scheme=scheme, bits=bits, act_bits=act_bits),
        console=console,
    )
    table = FitTable(
        f"Layer sensitivity — validation (training domains' out) accuracy, float {pct(r['float_acc'])} %, "
        f"all quantized {pct(r['quantized_acc'])} %",
        [("layer", "left"), ("kind", "left"), ("acc %", "right"), ("drop (points)", "right")],
    )
    for row in r["layers"]:
        table.add_row(row["layer"], row["kind"], pct(row["acc"]), f"{100 * row['drop']:+.2f}")
    out.print(table)
    out.print(f"written {r['json']} and {r['plot']}")


@app.command("eval")
def eval_cmd(
    run_dir: Path = typer.Argument(
        ...,
        help="A run directory written by `train`, or an exported .onnx (ONNX "
        "Runtime CPU; its metadata names the data set, split and input pipeline).",
    ),
    json_path: Optional[Path] = typer.Option(
        None, "--json", help="Where to write the JSON (default RUN_DIR/eval.json; X.eval.json beside an X.onnx)."
    ),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    data_dir: Optional[str] = typer.Option(
        None, help="An .onnx: where its data set lives now (default: the data_dir in its metadata)."
    ),
):
    """Per-domain accuracy of a trained run (in/out splits, held-out domain marked)."""
    from .tables import per_domain_table
    from .workflows.evaluate import evaluate_run

    result = evaluate_run(run_dir, json_path, device=device, data_dir=data_dir)
    out.print(per_domain_table({result["method"]: result}))
    default = run_dir.with_name(run_dir.stem + ".eval.json") if "onnx" in result else run_dir / "eval.json"
    out.print(f"written {json_path or default}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `train`."),
    fmt: str = typer.Option(
        "onnx",
        "--format",
        help="onnx (QDQ, exact), onnx-fp32 (float network, BN folded), tensorrt (engine; needs TensorRT).",
    ),
    target: str = typer.Option(
        "ort", help="tensorrt (int8, zero point 0) or ort (uint8, ONNX Runtime's U8S8 kernels)."
    ),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Output file (default RUN_DIR/model.onnx)."),
    opset: int = typer.Option(17, help="ONNX opset (13 or newer)."),
    dynamic_batch: bool = typer.Option(True, "--dynamic-batch/--static-batch", help="Batch dimension symbolic or 1."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare ONNX Runtime with the torch model."),
    residual_qdq: Optional[bool] = typer.Option(
        None,
        "--residual-qdq/--no-residual-qdq",
        help="Q/DQ on residual "
        "Adds' identity inputs (TensorRT's placement advice; not exact: the "
        "trained model adds the float tensor). Default off. Runs trained with residual quantizers (trt/ort "
        "schemes) always get exact Q/DQ there; this flag then adds nothing.",
    ),
    int_bias: Optional[bool] = typer.Option(
        None,
        "--int-bias/--float-bias",
        help="--target ort, runs trained with "
        "the ort scheme: write the layers ONNX Runtime runs as integer kernels "
        "(QLinearConv, int32 bias) as such (default; the model's eval forward "
        "computes exactly what they compute), or snap every layer and let ORT "
        "run them in float (--float-bias: slower, and for those runs no longer "
        "exact; for comparison).",
    ),
    max_samples: Optional[int] = typer.Option(None, help="Verify at most N samples per split (default: all)."),
    graph: str = typer.Option(
        "exact",
        help="exact: each quantized layer snapped to its integer accumulator (or "
        "written as the ORT integer kernel the model computes), norm and pooling in float64 "
        "where not an integer kernel: ONNX Runtime gives the trained model's logits bit for "
        "bit. lean: plain Q/DQ as other exporters write it (float32 norm and pooling, no "
        "snap ops): fewer ops, not bit-exact. With --verify the report measures both.",
    ),
    min_agreement: float = typer.Option(
        0.999,
        help="Refuse the export (exit 2, nothing written, any earlier file "
        "kept) when its top-1 agreement with torch is below this fraction in "
        "[0, 1]. --no-verify measures nothing and skips this check.",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Write an export below --min-agreement anyway (the report records below_min_agreement: true).",
    ),
    onnx_in: Optional[Path] = typer.Option(
        None, "--onnx", help="--format tensorrt: build the engine from this ONNX instead of exporting the run."
    ),
    fp16: Optional[bool] = typer.Option(
        None,
        "--fp16/--no-fp16",
        help="--format tensorrt: layers without Q/DQ "
        "in FP16 (default on; TensorRT 10: FP16 flag, 11: the ONNX's float "
        "remainder converted to float16, Q/DQ untouched, I/O kept FP32).",
    ),
    batch_range: Optional[str] = typer.Option(
        None, help="--format tensorrt: MIN,OPT,MAX batch of the optimization profile (default 1,8,32)."
    ),
    workspace_gb: Optional[float] = typer.Option(None, help="--format tensorrt: builder workspace in GiB (default 2)."),
    timing_cache: Optional[Path] = typer.Option(
        None, help="--format tensorrt: timing cache file, read if present and written back (faster rebuilds)."
    ),
    builder_opt_level: Optional[int] = typer.Option(
        None, help="--format tensorrt: builder optimization level 0..5 (default TensorRT's, 3)."
    ),
    dla_core: Optional[int] = typer.Option(None, help="--format tensorrt: run on this DLA core (Jetson)."),
    gpu_fallback: bool = typer.Option(
        False, "--gpu-fallback", help="--format tensorrt with --dla-core: layers the DLA cannot run go to the GPU."
    ),
    strict_int8: bool = typer.Option(
        False,
        "--strict-int8",
        help="--format tensorrt: refuse the engine (exit 2) if a quantized Conv/Gemm did not run in INT8.",
    ),
    device: str = typer.Option(
        "cpu",
        help="Where --verify runs the torch model: cpu (default: bit-for-bit with ONNX "
        "Runtime CPU), auto, cuda or cuda:N.",
    ),
):
    """Export a run's model to ONNX (QDQ at its trained bit-widths) and verify it against PyTorch; --format
    tensorrt also builds RUN_DIR/model.engine and model.engine.json (TensorRT 10.x or 11.x)."""
    from .export import export_run_dir, report_name
    from .export.tensorrt import TrtOptions

    given = {
        k: v
        for k, v in dict(
            fp16=fp16,
            batch_range=batch_range,
            workspace_gb=workspace_gb,
            timing_cache=str(timing_cache) if timing_cache else None,
            opt_level=builder_opt_level,
            dla_core=dla_core,
            gpu_fallback=gpu_fallback or None,
            strict_int8=strict_int8 or None,
        ).items()
        if v is not None
    }
    trt = TrtOptions(**given) if fmt == "tensorrt" or given else None
    r = export_run_dir(
        run_dir,
        fmt=fmt,
        target=target,
        out=out_path,
        opset=opset,
        dynamic_batch=dynamic_batch,
        verify=verify,
        residual_qdq=residual_qdq,
        int_bias=int_bias,
        max_samples=max_samples,
        graph=graph,
        min_agreement=min_agreement,
        force=force,
        console=console,
        onnx_in=onnx_in,
        trt=trt,
        device=device,
    )
    engine = r if isinstance(r, dict) else r.engine  # a dict: --onnx, the engine only (nothing exported)
    if engine:
        out.print(
            f"written {engine['engine']} ({engine['engine_bytes']:,} bytes, TensorRT {engine['tensorrt']}, "
            f"built in {engine['build_seconds']:.1f} s); report {engine['engine_report']}"
        )
        if engine["not_int8"]:
            out.print(
                f"{engine['not_int8']} quantized layer(s) did not run in INT8: see not_int8 in "
                f"{engine['engine_report']}"
            )
        if isinstance(r, dict):
            return
    out.print(f"written {r.path} ({r.file_bytes:,} bytes, {r.size_ratio:.3f}× FP32 ONNX; packed {r.packed_ratio:.3f}×)")
    if r.ensemble is not None:
        e = r.ensemble
        out.print(
            f"{e['kind']}: one graph of {e['k']} members, each {e['member_packed_bytes']:,.0f} packed bytes "
            f"({e['packed_vs_one_fp32_member']:.3f}× one FP32 member in all)"
        )
    if r.verification is not None:
        v = r.verification
        out.print(
            f"top-1 agreement with torch {v['top1_agreement']:.4f} over {v['n_samples']} samples; max |Δlogit| "
            f"{v['max_abs_diff']:.3g}; held-out acc onnx {v['onnx_acc']:.4f} / torch {v['torch_acc']:.4f}"
        )
        if "layer_divergence" in v:
            out.print(f"first divergence: {v['layer_divergence']['first_divergence']}")
        if v["below_min_agreement"]:
            console.print(
                f"[bold yellow]warning:[/] below --min-agreement {v['min_agreement']:g}; written because of --force",
                highlight=False,
            )
    else:
        out.print("not verified (--no-verify): agreement not measured, --min-agreement not checked")
    if r.graphs is not None:
        gs = r.graphs
        out.print(
            "; ".join(
                f"{g} graph{' (written)' if g == gs['written'] else ''}: ORT CPU "
                f"{gs[g]['ort_cpu_ms_batch1']:.3f} ms at batch 1, agreement {gs[g]['top1_agreement']:.4f}"
                for g in ("exact", "lean")
            )
        )
    out.print(f"report {report_name(Path(r.path))}")


@app.command()
def check(
    model: Path = typer.Argument(..., help="An ONNX file."),
    target: str = typer.Option("tensorrt", help="Rules to check: tensorrt."),
):
    """List every violation of TensorRT's explicit-quantization rules; exit 1 when there is any.

    Layers TensorRT will run in float (no Q/DQ on an input: a mixed-precision model) are listed as notes."""
    from .export import check_tensorrt_rules, float_layers

    if target != "tensorrt":
        raise QdgError(f"check knows the rules of --target tensorrt only, not {target!r}")
    problems = check_tensorrt_rules(model)
    for note in float_layers(model):
        out.print(f"note: {note}", highlight=False, soft_wrap=True)
    for p in problems:
        out.print(p, highlight=False, soft_wrap=True)
    if problems:
        out.print(f"{len(problems)} violation(s) of TensorRT's explicit-quantization rules in {model}")
        raise typer.Exit(1)
    out.print(f"{model}: follows TensorRT's explicit-quantization rules")


@app.command()
def bench(
    artifacts: Optional[list[Path]] = typer.Argument(
        None,
        help="Run directories, .onnx or .engine files. An "
        "ONNX/engine file's data set comes from the run directory it sits in.",
    ),
    runtime: Optional[list[str]] = typer.Option(
        None,
        "--runtime",
        "-r",
        help="Runtime(s) to use (repeatable; default: every available one that fits the artifact).",
    ),
    batch: str = typer.Option("1,8,32", help="Comma-separated batch sizes."),
    warmup_ms: float = typer.Option(200, help="Warm-up before timing, per batch size (ms)."),
    duration_s: float = typer.Option(3.0, help="Timed duration per batch size (s)."),
    min_iters: int = typer.Option(10, help="Timed iterations at least, whatever the duration."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch and ONNX Runtime (default: theirs)."),
    device: str = typer.Option("auto", help="Where the torch runtimes (torch-fp32, torch-fq) run: " + DEVICE_HELP),
    json_path: Optional[Path] = typer.Option(
        None, "--json", help="Write the records (one per artifact, runtime, batch)."
    ),
    plot: Optional[Path] = typer.Option(
        None, help="PNG plots: DIR (DIR/latency.png, DIR/accuracy.png) or X.png (X-latency.png, X-accuracy.png)."
    ),
    accuracy: bool = typer.Option(True, "--accuracy/--no-accuracy", help="Per-domain accuracy of each artifact."),
    copies: bool = typer.Option(
        True, "--copies/--no-copies", help="GPU runtimes: time host↔device copies (trtexec's latency) or compute only."
    ),
    cuda_graph: bool = typer.Option(
        False,
        "--cuda-graph",
        help="trt runtime: capture each batch shape's enqueue "
        "once as a CUDA graph and time its replay (trtexec --useCudaGraph).",
    ),
    compare_path: Optional[Path] = typer.Option(None, "--compare", help="An earlier --json: print new/old ratios."),
    list_runtimes: bool = typer.Option(False, "--list-runtimes", help="Show each runtime, available or not and why."),
):
    """Latency (mean, p50/p90/p95/p99), throughput, size and per-domain accuracy on every runtime here."""
    from . import bench as B
    from .device import resolve_device
    from .io import write_json

    if list_runtimes:
        out.print(B.runtimes_table(B.list_runtimes()))
        return
    if not artifacts:
        raise QdgError("give at least one artifact (a run directory, an .onnx or an .engine), or --list-runtimes")
    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise QdgError(f"--batch takes comma-separated integers, e.g. 1,8,32 (got {batch!r})") from None
    check_threads(threads)
    resolve_device(device)  # a bad --device is refused before anything runs
    old = B.load_result(compare_path) if compare_path else None  # its schema checked before anything runs
    result = B.bench(
        artifacts,
        runtime or None,
        batches,
        warmup_ms=warmup_ms,
        duration_s=duration_s,
        min_iters=min_iters,
        threads=threads,
        accuracy=accuracy,
        copies=copies,
        console=console,
        cuda_graph=cuda_graph,
        device=device,
    )
    if not result["records"]:
        skipped = sorted(result["skipped"], key=lambda s: s["artifact"] is None)  # each artifact's reasons first
        why = "; ".join(dict.fromkeys(f"{s['artifact'] or 'all'} · {s['runtime']}: {s['reason']}" for s in skipped))
        raise QdgError(f"nothing was measured: {why or 'no (artifact, runtime) pair applies'}")
    out.print(B.results_table(result))
    acc = B.accuracy_table(result)
    if acc is not None:
        out.print(acc)
    for line in B.skipped_lines(result):
        out.print(f"[dim]{line}[/]", highlight=False)
    if json_path:
        write_json(json_path, result)
        out.print(f"written {json_path}")
    if plot:
        for p in B.write_plots(result, plot):
            out.print(f"written {p}")
    if old is not None:
        rows = B.compare(result, old)
        if rows:
            out.print(B.compare_table(rows, str(compare_path)))
        else:
            out.print(f"--compare: no (artifact, runtime, batch) in common with {compare_path}")


@app.command()
def ensemble(
    run_dirs: list[Path] = typer.Argument(
        ...,
        help="Two or more run directories: one method, different seeds, the "
        "same data set, held-out domain, architecture and quantization scheme.",
    ),
    out_dir: Path = typer.Option(..., "--out", help="The ensemble run directory to write."),
    overwrite: bool = typer.Option(False, help="Replace a run already in --out."),
):
    """EoQ / EoA: one run directory whose network sums its members' logits (as EoA's code does).

    Quantized members make an EoQ, float ones an EoA.

    eval, export (one ONNX graph: every member and the sum, verified as a single model) and bench take it."""
    from .tables import per_domain_table
    from .workflows.ensemble import build_ensemble

    m = build_ensemble(run_dirs, out_dir, overwrite=overwrite)
    out.print(per_domain_table({m["method"]: m}))
    for mem in m["members"]:
        out.print(f"member seed {mem['seed']}: held-out acc {100 * mem['test_acc']:.1f}  ({mem['run']})")
    out.print(
        f"{m['method']}: held-out acc {100 * m['test_acc']:.1f}, members' mean {100 * m['members_mean_test_acc']:.1f} "
        f"({100 * m['gain_over_members_mean']:+.1f} points)"
    )
    out.print(f"ensemble written to {out_dir}")


@app.command()
def flatness(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (one curve each; ensembles too)."),
    radius: str = typer.Option("0..1", help="Radii from 0 to R: 0..R (or START..R); the L2 norm of the weight change."),
    points: int = typer.Option(11, help="Radii evaluated, evenly spaced."),
    directions: int = typer.Option(5, help="Random directions per radius (mean ± std over them)."),
    samples: int = typer.Option(512, help="Items per training domain's `in` split (a fixed random subset; 0: all)."),
    seed: int = typer.Option(0, help="Seed of the directions and the subset."),
    out_dir: Path = typer.Option(Path("flatness"), "--out", help="Writes OUT/flatness.json and OUT/flatness.png."),
):
    """Local flatness as SWAD measures it: training-domain loss along random unit directions in weight space.

    Writes OUT/flatness.json (mean, std, every loss per run) and OUT/flatness.png (one curve per run).

    Quantizer steps stay fixed: a quantized run's perturbed latent weights are re-quantized by its layers."""
    from .workflows.flatness import run_flatness

    r = run_flatness(run_dirs, out_dir, radius=radius, points=points, directions=directions, samples=samples, seed=seed)
    for label, c in r["runs"].items():
        out.print(
            f"{label}: loss {c['mean'][0]:.4f} at r={r['radii'][0]:g} → {c['mean'][-1]:.4f} ± {c['std'][-1]:.4f} "
            f"at r={r['radii'][-1]:g} ({c['n_params_moved']:,} weights moved)"
        )
    out.print(f"written {out_dir / 'flatness.json'} and {out_dir / 'flatness.png'}")


@app.command()
def sweep(
    dataset: str = typer.Option("rotated-mnist", help="Data set, as for train."),
    methods: str = typer.Option(
        "erm,qtdog",
        help="Comma-separated entries METHOD[:key=value[:key=value...]], e.g. "
        '"erm,qtdog,qtdog:scheme=ort,qtdog:freeze_after_swap=true"; each entry is one row, '
        "its label the entry text made file-system safe.",
    ),
    test_envs: str = typer.Option("all", help="Held-out domains: all, or comma-separated names/indices."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds."),
    set_: Optional[list[str]] = typer.Option(
        None,
        "--set",
        help="key=value for every entry (repeatable): becomes the "
        "train flag --key value (_ → -; true/false → --key/--no-key).",
    ),
    out_dir: Path = typer.Option(
        Path("sweeps/sweep"), "--out", help="Sweep directory: OUT/<label>/<test_env>/seed<k>/."
    ),
    jobs: int = typer.Option(
        1, "--jobs", "-j", help="Runs at a time (each gets cores/N torch threads unless --set threads=...)."
    ),
    ensembles: Optional[str] = typer.Option(
        None,
        help="eoq and/or eoa: per (entry, held-out domain), an ensemble of "
        "its seeds (quantized entries: eoq, float ones: eoa) in OUT/<label>+ens/.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the train commands (finished runs marked)."),
    launcher: str = typer.Option(
        "local",
        help="local (processes here), torchrun (each run data parallel), submitit "
        "(Slurm jobs through submitit), print (write the commands for another scheduler).",
    ),
    nproc_per_node: int = typer.Option(1, help="torchrun / submitit / print: processes (GPUs) per run."),
    partition: Optional[str] = typer.Option(None, help="submitit: Slurm partition."),
    gpus: Optional[int] = typer.Option(None, help="submitit: GPUs per job."),
    time_min: int = typer.Option(240, "--time", help="submitit: time limit per job (minutes)."),
    array_parallelism: Optional[int] = typer.Option(None, help="submitit: jobs of the array running at once."),
    cluster: Optional[str] = typer.Option(
        None, help="submitit: slurm or local (default: Slurm where sbatch is, else submitit's local executor)."
    ),
):
    """Train every (method entry, held-out domain, seed) as its own process (or Slurm job), N at a time; resumable.

    Finished runs (a valid metrics.json) are skipped; killed ones continue from their last.ckpt; other broken ones
    (crashed) are removed and trained again — with every --launcher.

    Each run logs to RUN_DIR/train.log. Then `qdg-deploy report OUT` prints the table."""
    from .workflows.launchers import Launch
    from .workflows.sweep import run_sweep

    launch = Launch(launcher, nproc_per_node, partition, gpus, time_min, array_parallelism, cluster)
    r = run_sweep(
        dataset,
        methods,
        test_envs,
        seeds,
        set_ or [],
        out_dir,
        parallel=jobs,
        ensembles=ensembles,
        dry_run=dry_run,
        console=console,
        echo=lambda s: out.print(s, highlight=False, soft_wrap=True),
        launch=launch,
    )
    if dry_run or launcher == "print":
        return
    out.print(f"{len(r['done'])} trained, {len(r['skipped'])} already finished, {len(r['failed'])} failed")
    for e in r.get("ensembles", []):
        out.print(
            f"ensemble {e['run']}" + (" (kept)" if e.get("kept") else f": {e['method']} {100 * e['test_acc']:.1f}")
        )
    if r["failed"]:
        raise QdgError(f"{len(r['failed'])} run(s) failed; see their train.log: " + ", ".join(r["failed"]))
    out.print(f"next: qdg-deploy report {out_dir}")


@app.command("report")
def report_cmd(
    sweep_dir: Path = typer.Argument(..., help="A sweep directory written by `qdg-deploy sweep`."),
    out_path: Optional[Path] = typer.Option(
        None, "--out", help="Markdown file (default SWEEP_DIR/results.md); the JSON goes beside it (.json)."
    ),
):
    """DomainBed-style results table of a sweep: a row per method label (and ensemble), a column per held-out domain.

    Cells: mean ± standard error (ddof 1) over seeds; Avg of the domain means; size ×FP32 (packed / one FP32 net).

    Rows "<label> w/o SWAD" where the runs' metrics.json hold a no_swad result."""
    from rich.table import Table

    from .workflows.report import cells, write_report

    table, md, js = write_report(sweep_dir, out_path)
    header, rows = cells(table)
    t = Table(title=f"Held-out accuracy (%), mean ± SE over seeds — {sweep_dir}")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    out.print(t)
    out.print(f"written {md} and {js}")


@app.command("models")
def models_cmd(
    filter_text: Optional[str] = typer.Option(
        None,
        "--filter",
        help="Only names containing this text (case-insensitive), e.g. tv:, timm:mobilenet, efficientnet.",
    ),
    check_export: bool = typer.Option(
        False,
        "--check",
        help="Also build each listed network (random init) and "
        "say whether the exporter lowers every op, or the first it cannot: about a "
        "second per model, so narrow the list with --filter.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
):
    """The architectures --arch takes: the short names, tv:NAME (torchvision) and timm:NAME (timm).

    Listing is instant; the exporter check (--check) builds every listed model, so it runs only when asked."""
    import json

    from .tables import FitTable
    from .workflows.listing import list_models

    rows = list_models(filter_text, check=check_export)
    if json_out:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        raise QdgError(f"no model name contains {filter_text!r}")
    cols = [("arch", "left"), ("library", "left"), ("pretrained", "left")] + (
        [("exporter", "left")] if check_export else []
    )
    table = FitTable(f"{len(rows)} model(s)" + ("" if check_export else " (--check: exporter support)"), cols)
    for r in rows:
        pre = {True: "yes", False: "no", None: "-"}[r["pretrained"]]
        table.add_row(r["arch"], r["library"], pre, *([r["export"]] if check_export else []))
    out.print(table)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Where the demo's runs go (replaced)."),
    steps: Optional[int] = typer.Option(None, help="Training steps per model (default: rotated-mnist default)."),
    seed: int = typer.Option(0),
    test_env: str = typer.Option("75", help="Held-out rotation."),
):
    """The whole story on the embedded rotated-MNIST: ERM, QT-DoG, QT-DoG W8A8, side by side."""
    from .workflows.demo import run_demo

    run_demo(out_dir, steps=steps, seed=seed, test_env=test_env, console=console, out=out)


def check_threads(threads: Optional[int]) -> None:
    if threads is not None and threads < 1:
        raise QdgError(f"--threads takes an integer >= 1 (got {threads}); leave it out for the default")


# Verbs that compute with torch: main imports it first, with Ctrl-C held back (see sigint_held).
TORCH_VERBS = {"train", "calibrate", "sensitivity", "eval", "export", "bench", "ensemble", "flatness", "models"}


@contextmanager
def sigint_held():
    """SIGINT held back in the block and delivered when it ends (a KeyboardInterrupt then). torch's C extension
    swallows a KeyboardInterrupt raised while it imports numpy: a Ctrl-C then would be lost and the command go on.
    The mask is this thread's (main's, the only one before torch; threads started in the block inherit it)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: as is
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def main() -> None:
    """The one error policy: an expected failure (QdgError, an OS error on a named file) is one line, `error: …`,
    exit 2; Ctrl-C is one line, exit 130; anything else is a bug: its traceback and a line asking to report it."""
    try:
        if TORCH_VERBS.intersection(sys.argv[1:2]) and "--help" not in sys.argv:
            with sigint_held():
                import torch  # noqa: F401
        app(args=bare_flag_values(sys.argv[1:]))
    except QdgError as e:
        fail(worker_message(str(e)))
    except OSError as e:
        fail(os_error_line(e))
    except SystemExit as e:
        if e.code == 130 and interrupted(e):  # typer turns Ctrl-C into exit 130 before it reaches us
            console.print("interrupted (Ctrl-C): nothing half-written was kept", highlight=False)
        raise
    except KeyboardInterrupt:
        console.print("interrupted (Ctrl-C): nothing half-written was kept", highlight=False)
        sys.exit(130)
    except Exception:
        import traceback

        traceback.print_exc()
        console.print(
            "[bold red]internal error[/] (a bug in qdg-deploy): please report it with the command line and "
            "the traceback above",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


# Options that take a value but may stand bare, meaning this value (typer has no optional-value options):
# `--grad-approx` was an on/off flag before it took a mode.
BARE_VALUES = {"--grad-approx": "chain"}


def bare_flag_values(args: list[str]) -> list[str]:
    """args with the implied value after each bare BARE_VALUES option (last, or followed by another option)."""
    out_args = []
    for i, a in enumerate(args):
        out_args.append(a)
        if a in BARE_VALUES and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out_args.append(BARE_VALUES[a])
    return out_args


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    sys.exit(2)


def interrupted(e: BaseException) -> bool:
    """Whether a KeyboardInterrupt is somewhere in the chain of exceptions behind `e`."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def worker_message(message: str) -> str:
    """A DataLoader worker's error arrives wrapped ("Caught DataError in DataLoader worker process 0. Original
    Traceback ..."): its own last line, without the class name."""
    if "Original Traceback" not in message:
        return message
    last = [line for line in message.strip().splitlines() if line.strip()][-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and "Error" in head and " " not in head else last


OS_ADVICE = {
    errno.ENOSPC: "no space left on the device: free some space or write elsewhere",
    errno.EROFS: "read-only file system: write elsewhere",
    errno.EACCES: "permission denied: write elsewhere or fix the permissions",
    errno.EPERM: "operation not permitted: write elsewhere or fix the permissions",
    errno.EISDIR: "is a directory: give a file path",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.ENOENT: "no such file or directory",
    errno.EDQUOT: "disk quota exceeded: free some space or write elsewhere",
}


def os_error_line(e: OSError) -> str:
    """One line for an OS error: the path, what happened and what to do."""
    path = e.filename if e.filename is not None else "?"
    what = OS_ADVICE.get(e.errno, e.strerror or str(e))
    return f"{path}: {what}"


if __name__ == "__main__":
    main()
