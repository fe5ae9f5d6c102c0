"""Every hyperparameter of `train`, once: `HPARAMS`, one entry each.

From this table come `train`'s options (cli.py builds the command's signature from it), the up-front checks
(validate.py: ranges, choices, which methods read it), the defaults that land in config.json's "hparams"
(`default_hparams`, `method_defaults`), the options a resumed run may change (resume.py) and docs/hparams.md
(`python -m qdg_deploy.train.hparams --markdown docs/hparams.md`). Adding a hyperparameter is adding an entry.

DomainBed image data sets follow the SWAD / QT-DoG protocol (ResNet-50, Adam, lr 5e-5, batch 32 per domain, 5,000
steps, quantization from step 100 as the QT-DoG README runs it). The embedded rotated-MNIST defaults are sized so
that `qdg-deploy demo` trains four models in a few minutes on 2 CPU cores, on the deploy-friendly digits-resnet
(`--arch mnist-cnn`, DomainBed's MNIST_CNN, stays available).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Data set families with defaults of their own; every other data set (DomainBed, office31, folder:PATH) is "image".
FAMILIES = ("image", "rotated-mnist", "digits")


@dataclass(frozen=True)
class HParam:
    """One hyperparameter. `default` holds for every data set family not in `family` and every method not in
    `method` (a method's value wins over the family's; the user's over both)."""

    name: str
    type: type
    default: Any = None
    help: str = ""
    family: Mapping[str, Any] = field(default_factory=dict)  # data set family -> its default
    method: Mapping[str, Any] = field(default_factory=dict)  # method -> its default
    low: float | None = None  # the range: low <= value (low < value when `strict`) <= high; None: no bound
    high: float | None = None
    strict: bool = False
    choices: tuple = ()  # the values it takes (empty: any)
    methods: tuple = ()  # the methods that read it (empty: every one)
    quant: bool = False  # read by quantizing runs only
    runtime: bool = False  # where or how fast a run computes, not what: a resumed run may change it
    cli: bool = True  # a `train` option (else the Python API's and config.json's only)
    flag: str = ""  # the option's name ("": --name with dashes)
    negatable: bool = True  # bool: --x/--no-x, unset by default; False: a bare --x, off by default
    shown: bool = False  # the option defaults to `default` (shown by --help); else to unset: resolved here
    unset: bool = False  # no default: in config.json only when given
    panel: str | None = None  # rich help panel of `train --help` (None: Options)

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


E = HParam
DG = ("erm", "qtdog", "coral", "mixstyle")
ALIGNQ = ("alignq",)
SGD_METHODS = {"alignq": "sgd", "dann": "sgd", "dsan": "sgd"}

HPARAMS: list[HParam] = [
    E(
        "method",
        str,
        "erm",
        shown=True,
        help="Algorithm: erm, coral, mixstyle (each float, or quantized with --quant), "
        "qtdog (QT-DoG = erm --quant: LSQ quantization after --q-steps, SWAD on); domain adaptation (with "
        "--source/--target): dann, dsan (float, or --quant), alignq.",
    ),
    E("data_dir", str, help="Root holding the DomainBed folders (PACS/, office_home/, ...)."),
    # Stored as the mapping it names, so eval / export / bench rebuild the same data.
    E(
        "class_map",
        Path,
        unset=True,
        help="Folder data sets: JSON {domain: {folder: class}} mapping differently "
        "named class folders onto one label space.",
    ),
    E(
        "holdout_fraction",
        float,
        0.2,
        cli=False,
        help="Share of each domain held out as its `out` split (training-domain validation).",
    ),
    E("test_env", str, "0", shown=True, help="Held-out domain: a name, an index, or 'all' for every one in turn."),
    E(
        "arch",
        str,
        "resnet50",
        family={"rotated-mnist": "digits-resnet", "digits": "resnet18"},
        help="digits-resnet (rotated-mnist's default), mnist-cnn, resnet18, resnet50 (default by data set), tv:NAME "
        "(any torchvision classifier), timm:NAME (any timm model); see `qdg-deploy models`.",
    ),
    E("weights", str, help="Local pretrained state dict (.safetensors or .pt); never downloaded."),
    E(
        "pretrained",
        bool,
        False,
        negatable=False,
        help="tv:/timm: archs: the library's default ImageNet weights, from "
        "its own cache (torch hub / Hugging Face; downloaded there when online); classifier and stem of other shapes "
        "start fresh.",
    ),
    E(
        "steps",
        int,
        5000,
        family={"rotated-mnist": 300, "digits": 2000},
        low=1,
        help="Training steps (default by data set).",
    ),
    E(
        "q_steps",
        int,
        100,
        family={"digits": 500},
        low=0,
        quant=True,
        help="QT-DoG: float steps before the network is quantized.",
    ),
    # Domain adaptation methods quantize with the "alignq" placement (convs; the image and the classifier float) so
    # DANN + LSQ and AlignQ compare like for like.
    E(
        "scheme",
        str,
        "paper",
        method={"alignq": "alignq", "dann": "alignq", "dsan": "alignq"},
        quant=True,
        help="Quantization scheme: paper (W7 weight-only, default), trt (W8A8 int8), ort (W8A8 uint8 act), alignq "
        "(W4A4 convs, image and classifier float; default for dann/dsan/alignq).",
    ),
    E("bits", int, low=1, high=8, quant=True, help="Weight bits 2..8 (overrides the scheme)."),
    E("act_bits", int, low=0, high=8, quant=True, help="Activation bits 2..8; 0 keeps activations float."),
    E(
        "quantizer",
        str,
        "lsq",
        method={"alignq": "daq"},
        quant=True,
        help="Quantizer: lsq (default), dorefa, uniform, apot, bwn (1 bit), daq (AlignQ's default).",
    ),
    # Domain adaptation (DANN / DSAN / AlignQ): labelled --source, unlabelled --target.
    E("source", str, help="Domain adaptation: labelled source domain (with --target)."),
    E("target", str, help="Domain adaptation: unlabelled target domain, reported as the test domain."),
    E(
        "quant",
        bool,
        False,
        method={"qtdog": True},
        help="erm/coral/mixstyle/dann/dsan: quantize (--scheme, --bits, "
        "--quantizer) after --q-steps, or from the start with --init.",
    ),
    # QT-DoG: where LSQ step sizes start. "lsq": LSQ's 2·mean|x|/√Qp from the first tensor each quantizer sees;
    # minmax / percentile / mse: a calibration (calibrate/) on the batch of the step the network is quantized at
    # (training domains only), weights per channel (mse weights for mse, else max |w|).
    E(
        "q_init",
        str,
        "lsq",
        choices=("lsq", "minmax", "percentile", "mse"),
        methods=DG,
        quant=True,
        help="Where LSQ step sizes start when the network is quantized: lsq (default: 2·mean|x|/√Qp), or a calibrated "
        "range on that step's batch: minmax, percentile, mse.",
    ),
    # Quantizer step sizes / zero points learn at q_lr (None: lr / 100, the ratio chosen on the embedded set by
    # training-domain validation; under SGD an unset q_lr is lr: LSQ trains its step sizes at the weights' rate).
    E(
        "q_lr",
        float,
        5e-7,
        family={"rotated-mnist": 1e-5, "digits": 1e-5},
        low=0,
        strict=True,
        quant=True,
        help="Learning rate of the quantizers' step sizes and zero points (their own Adam group, no weight decay; "
        "default: see README).",
    ),
    # Trains only what the reference's optimizer still holds after the swap (see train/algorithms.py ERM).
    E(
        "freeze_after_swap",
        bool,
        False,
        quant=True,
        help="QT-DoG as its reference code runs: after --q-steps the "
        "quantized layers and step sizes stop training (off: the paper).",
    ),
    # Weight averaging: SWAD (None: on for quantizing DG methods, off otherwise; LossValley's defaults), or EoA's
    # simple moving average from step `sma`.
    E(
        "swad",
        bool,
        help="SWAD dense weight averaging in the loss valley (default: on for qtdog and --quant DG "
        "methods, off otherwise).",
    ),
    E("swad_n_converge", int, 3, low=1, help="SWAD: evaluations that open the valley (3)."),
    E("swad_n_tolerance", int, 6, low=0, help="SWAD: look-ahead evaluations that keep it open (6)."),
    E("swad_tolerance_ratio", float, 0.3, low=0, help="SWAD: loss threshold over the opening mean (0.3)."),
    E(
        "swad_bn_steps",
        int,
        100,
        low=0,
        help="Batches that recompute BatchNorm statistics after averaging (100; 0 keeps the last iterate's).",
    ),
    E("sma", int, low=0, help="EoA's simple moving average of every iterate from this step (instead of SWAD)."),
    E(
        "coral_weight",
        float,
        1.0,
        low=0,
        methods=("coral",),
        help="CORAL: weight of the feature-alignment penalty (1).",
    ),
    E(
        "mixstyle_p",
        float,
        0.5,
        low=0,
        high=1,
        methods=("mixstyle",),
        help="MixStyle: probability of mixing a batch (0.5).",
    ),
    E(
        "mixstyle_alpha",
        float,
        0.1,
        low=0,
        strict=True,
        methods=("mixstyle",),
        help="MixStyle: Beta(alpha, alpha) mixing weights (0.1).",
    ),
    E(
        "init",
        str,
        help="Start from this run directory's weights (progressive 8→4→3→2 bits); quantizes from the first step.",
    ),
    # AlignQ's values are the AlignQ README's (lam 1, lam2 4, act_range 2; ADMM mu 0.2, rho 0.3; DSAN --param 0.3).
    E("crp", bool, True, methods=ALIGNQ, help="AlignQ: contrastive relation preservation (ADMM)."),
    # The Python API also takes True / False (chain / off); cli.py adds --no-grad-approx and a bare --grad-approx.
    E(
        "grad_approx",
        str,
        "chain",
        choices=("chain", "legacy", "off"),
        methods=ALIGNQ,
        help="AlignQ's gradient approximation: chain (default; in round's derivative), legacy (the old multiply of the "
        "gradient), off; a bare --grad-approx is chain.",
    ),
    E("act_range", float, 2.0, low=0, strict=True, methods=ALIGNQ, help="AlignQ: DAQ activation range (default 2)."),
    E("lam", float, 1.0, low=0, methods=ALIGNQ, help="AlignQ gradient approximation lambda (default 1)."),
    E("lam2", float, 4.0, low=0, methods=ALIGNQ, help="AlignQ gradient approximation lambda2 (default 4)."),
    E("mu", float, 0.2, cli=False, help="AlignQ CRP: ADMM weight of mean|A| (mu)."),
    E("rho", float, 0.3, cli=False, help="AlignQ CRP: ADMM penalty rho (and the step of its dual update)."),
    E("da", str, "dann", methods=ALIGNQ, help="AlignQ's network: dann (default) or dsan."),
    E("lmmd_weight", float, 0.3, cli=False, help="DSAN: weight of the LMMD term (the DSAN --param)."),
    E("batch_size", int, 32, family={"rotated-mnist": 16}, low=1, help="Batch size per training domain."),
    E(
        "lr",
        float,
        5e-5,
        family={"rotated-mnist": 1e-3, "digits": 1e-3},
        low=0,
        strict=True,
        help="Learning rate (default by data set and optimizer).",
    ),
    # Under SGD an unset lr is the family's sgd_lr (the DANN digits value 0.01 on the embedded set, the AlignQ
    # Office-31 command's 1e-3 on image sets).
    E(
        "sgd_lr",
        float,
        1e-3,
        family={"rotated-mnist": 1e-2, "digits": 1e-2},
        cli=False,
        help="The learning rate under --optimizer sgd when --lr is not given.",
    ),
    # Adam (QT-DoG / SWAD), or SGD with momentum (AlignQ's reference, the default of the DA methods).
    E(
        "optimizer",
        str,
        "adam",
        method=SGD_METHODS,
        choices=("sgd", "adam"),
        help="adam (default) or sgd (default for dann, dsan, alignq).",
    ),
    E("momentum", float, 0.9, low=0, high=1, help="SGD momentum (0.9)."),
    E(
        "lr_schedule",
        str,
        "none",
        choices=("none", "step"),
        help="none (default) or step: the rate x0.1 from 80% of --steps (AlignQ's reference schedule).",
    ),
    E(
        "weight_decay",
        float,
        0.0,
        low=0,
        help="Weight decay (0; the quantizers' step sizes and zero points take none).",
    ),
    E(
        "checkpoint_freq",
        int,
        200,
        family={"rotated-mnist": 50},
        low=1,
        help="Evaluate (and maybe select) every N steps.",
    ),
    E(
        "image_size",
        int,
        224,
        family={"rotated-mnist": 28, "digits": 32},
        low=8,
        help="Input size for folder data sets (default 224).",
    ),
    E("freeze_bn", bool, False, help="Keep BatchNorm statistics frozen."),
    # Under torchrun: BatchNorm with the global batch's statistics (None: on for a network with BatchNorm that is not
    # frozen; False: per-rank statistics, as DDP alone gives; train/syncbn.py).
    E(
        "sync_bn",
        bool,
        methods=("erm", "qtdog", "mixstyle"),
        help="Under torchrun: BatchNorm normalizes with the "
        "global batch's statistics (SyncBatchNorm; default on when BatchNorm is not frozen); --no-sync-bn: each rank's "
        "own.",
    ),
    # Where it runs (not what it computes; a resumed run may change them).
    E("threads", int, low=1, unset=True, runtime=True, help="torch CPU threads (default: all cores)."),
    E("device", str, "auto", shown=True, runtime=True, help="auto (CUDA when available), cpu, cuda or cuda:N."),
    E(
        "amp",
        str,
        runtime=True,
        help="Autocast of the float parts: bf16, fp16 (CUDA) or off (default: bf16 on a CUDA "
        "device that supports it, off on the CPU); fake-quant stays float32.",
    ),
    E(
        "channels_last",
        bool,
        False,
        negatable=False,
        runtime=True,
        help="Channels-last memory layout (faster convs on recent GPUs).",
    ),
    E(
        "workers",
        int,
        low=0,
        runtime=True,
        help="DataLoader worker processes per domain stream of a folder data set "
        "(default: none on the CPU; on a GPU up to 4 in all).",
    ),
    E("deterministic", bool, False, negatable=False, runtime=True, help="torch's deterministic algorithms only."),
    E(
        "resume",
        bool,
        False,
        negatable=False,
        runtime=True,
        help="Continue from OUT/last.ckpt (written every --checkpoint-freq steps) where a killed run left one.",
    ),
    E("seed", int, 0, shown=True, help="Seed of the split, the initialization and the batches."),
]


def family(dataset: str) -> str:
    return dataset if dataset in FAMILIES else "image"


def entry(name: str) -> HParam | None:
    return next((h for h in HPARAMS if h.name == name), None)


def default_hparams(dataset: str) -> dict:
    """Every hyperparameter's default for the data set's family (those marked `unset` left out)."""
    fam = family(dataset)
    return {h.name: h.family.get(fam, h.default) for h in HPARAMS if not h.unset}


def method_defaults(method: str) -> dict:
    """The method's own defaults, applied over the data set's and under the user's."""
    return {h.name: h.method[method] for h in HPARAMS if method in h.method}


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return "unset" if v is None else f"`{v}`"


def _default(h: HParam) -> str:
    parts = [_value(h.default) + (" (image data sets)" if h.family else "")]
    parts += [f"{_value(v)} ({fam})" for fam, v in h.family.items()]
    methods: dict[str, list[str]] = {}  # value -> the methods with it
    for m, v in h.method.items():
        methods.setdefault(_value(v), []).append(f"`{m}`")
    parts += [f"{v} ({', '.join(ms)})" for v, ms in methods.items()]
    return "; ".join(parts)


def _accepts(h: HParam) -> str:
    if h.choices:
        return ", ".join(f"`{c}`" for c in h.choices)
    if h.low is None and h.high is None:
        return ""
    if h.high is not None:
        return f"[{h.low}, {h.high}]"
    return f"{'>' if h.strict else '>='} {h.low}"


def _applies(h: HParam) -> str:
    who = ", ".join(f"`{m}`" for m in h.methods)
    if h.quant:
        return f"{who} (quantizing)" if who else "quantizing runs"
    return who or "all"


def markdown() -> str:
    """docs/hparams.md: the table as Markdown (tests/test_hparams.py checks the committed file equals it)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    names = {bool: "on/off", int: "integer", float: "number", str: "text", Path: "path"}
    lines = [
        "# `train` hyperparameters",
        "",
        (
            "Generated from `qdg_deploy/train/hparams.py` by `python -m qdg_deploy.train.hparams --markdown "
            "docs/hparams.md`; do not edit by hand."
        ),
        "",
        (
            "Defaults: a method's value wins over the data set family's, the option over both; every value a run "
            "resolves is written to its `config.json` under `hparams`. `unset` is resolved as the description "
            "says. Options not in `applies to` are refused (`error:`, exit 2), as are values out of range."
        ),
        "",
        "| option | type | default | accepts | applies to | what |",
        "|---|---|---|---|---|---|",
    ]
    for h in HPARAMS:
        option = (
            (f"`{h.option}` / `--no-{h.option[2:]}`" if h.type is bool and h.negatable else f"`{h.option}`")
            if h.cli
            else f"`{h.name}` (Python API)"
        )
        lines.append(
            "| "
            + " | ".join(
                cell(c)
                for c in (option, names.get(h.type, h.type.__name__), _default(h), _accepts(h), _applies(h), h.help)
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if argv[:1] != ["--markdown"] or len(argv) > 2:
        sys.exit("usage: python -m qdg_deploy.train.hparams --markdown [PATH]  (stdout without PATH)")
    if len(argv) == 2:
        Path(argv[1]).write_text(markdown(), encoding="utf-8")
    else:
        sys.stdout.write(markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
