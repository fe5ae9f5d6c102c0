"""Every default hyperparameter in one place, by data set family.

DomainBed image data sets follow the SWAD / QT-DoG protocol (ResNet-50, Adam, lr 5e-5, batch 32 per
domain, 5,000 steps, quantization from step 100 as the QT-DoG README runs it). The embedded rotated-MNIST
defaults are sized so that `qdg-deploy demo` trains four models in a few minutes on 2 CPU cores, on the
deploy-friendly digits-resnet (`--arch mnist-cnn`, DomainBed's MNIST_CNN, stays available).
"""

from __future__ import annotations

IMAGE_DEFAULTS = dict(arch="resnet50", lr=5e-5, sgd_lr=1e-3, q_lr=5e-7, weight_decay=0.0, batch_size=32, steps=5000,
                      q_steps=100, checkpoint_freq=200, image_size=224, freeze_bn=False)

MNIST_DEFAULTS = dict(arch="digits-resnet", lr=1e-3, sgd_lr=1e-2, q_lr=1e-5, weight_decay=0.0, batch_size=16,
                      steps=300, q_steps=100, checkpoint_freq=50, image_size=28, freeze_bn=False)

DIGITS_DEFAULTS = dict(MNIST_DEFAULTS, arch="resnet18", image_size=32, steps=2000, q_steps=500,
                       checkpoint_freq=200, batch_size=32)

COMMON = dict(method="erm", scheme="paper", bits=None, act_bits=None, quantizer="lsq", seed=0, test_env="0",
              holdout_fraction=0.2, weights=None, data_dir=None, init=None,
              # QT-DoG: quantizer step sizes / zero points learn at q_lr (a family's value; None: lr / 100, the ratio
              # chosen on the embedded set by training-domain validation); freeze_after_swap trains only
              # what the reference's optimizer still holds after the swap (see train/algorithms.py ERM).
              freeze_after_swap=False,
              # QT-DoG: where LSQ step sizes start. "lsq": LSQ's 2·mean|x|/√Qp from the first tensor each quantizer
              # sees; minmax / percentile / mse: a calibration (ptq/) on the batch of the step the network is
              # quantized at (training domains only), weights per channel (mse weights for mse, else max |w|).
              q_init="lsq",
              # Weight averaging: SWAD (None: on for quantizing DG methods, off otherwise; LossValley's defaults),
              # or EoA's simple moving average from step `sma`.
              swad=None, swad_n_converge=3, swad_n_tolerance=6, swad_tolerance_ratio=0.3, swad_bn_steps=100,
              sma=None,
              coral_weight=1.0, mixstyle_p=0.5, mixstyle_alpha=0.1,
              # The optimizer: Adam (QT-DoG / SWAD), or SGD with momentum (AlignQ's reference, the default of the DA
              # methods below). Under SGD an unset --lr is the family's `sgd_lr` (the DANN digits value 0.01 on the
              # embedded set, the AlignQ Office-31 command's 1e-3 on image sets) and an unset --q-lr is --lr (LSQ
              # trains its step sizes at the weights' rate under SGD). lr_schedule "step": see algorithms.lr_scale.
              optimizer="adam", momentum=0.9, lr_schedule="none",
              # Where it runs (not what it computes; a resumed run may change them): the device (auto: CUDA when
              # available), autocast (None: bf16 on a CUDA device that has it, else off), channels-last, DataLoader
              # workers per stream of folder data sets (None: 0 on the CPU, up to 4 in all on a GPU), deterministic
              # algorithms, resume from last.ckpt.
              device="auto", amp=None, channels_last=False, workers=None, deterministic=False, resume=False,
              # Under torchrun: BatchNorm with the global batch's statistics (None: on for a network with BatchNorm
              # that is not frozen; False: per-rank statistics, as DDP alone gives; train/syncbn.py).
              sync_bn=None)

# Domain adaptation (DANN / DSAN / AlignQ): labelled --source, unlabelled --target. AlignQ's values are
# the AlignQ README's (lam 1, lam2 4, act_range 2; ADMM mu 0.2, rho 0.3; DSAN --param 0.3).
DA_DEFAULTS = dict(source=None, target=None, da="dann", quant=False, crp=True, grad_approx="chain", act_range=2.0,
                   lam=1.0, lam2=4.0, mu=0.2, rho=0.3, lmmd_weight=0.3)

# Per-method defaults, applied over the data set's and under the user's. DA methods quantize with the
# "alignq" placement (convs; the image and the classifier float) so DANN + LSQ and AlignQ compare like
# for like; AlignQ's quantizer is DAQ.
# The DA methods train with SGD + momentum, as the AlignQ reference does.
METHOD_DEFAULTS = {"qtdog": dict(quant=True),
                   "alignq": dict(scheme="alignq", quantizer="daq", optimizer="sgd"),
                   "dann": dict(scheme="alignq", optimizer="sgd"), "dsan": dict(scheme="alignq", optimizer="sgd")}


def default_hparams(dataset: str) -> dict:
    """COMMON, then the domain-adaptation defaults, then the data set family's."""
    if dataset == "rotated-mnist":
        family = MNIST_DEFAULTS
    elif dataset == "digits":
        family = DIGITS_DEFAULTS
    else:
        family = IMAGE_DEFAULTS
    return {**COMMON, **DA_DEFAULTS, **family}
