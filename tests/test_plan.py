"""The deployment plan (quant/plan.py): each quantized layer's mode, folded BatchNorm, output quantizer and integer
bias, and each residual Add ORT runs as QLinearAdd, built once by quantize_model and held by the modules."""

import pytest
import torch
from torch import nn

from qdg_deploy.models import build_model
from qdg_deploy.quant import get_scheme, quant_layers, quantize_model
from qdg_deploy.quant.norms import FoldedBatchNorm2d
from qdg_deploy.quant.plan import FLOAT, Mode, add_plans, layer_plan


def resnet(scheme):
    torch.manual_seed(0)
    return quantize_model(build_model("resnet18", 3, 7), get_scheme(scheme))


def test_weight_only_scheme_plans_every_layer_weight_only_and_folds_nothing():
    m = resnet("paper")
    assert {layer_plan(q).mode for q in quant_layers(m).values()} == {Mode.WEIGHT_ONLY}
    assert layer_plan(m.fc) is FLOAT  # paper leaves the classifier float
    assert not any(isinstance(b, FoldedBatchNorm2d) for b in m.modules()) and add_plans(m) == []


def test_trt_scheme_snaps_every_layer_and_folds_each_conv_batchnorm():
    m = resnet("trt")
    plans = {n: q.plan for n, q in quant_layers(m).items()}
    assert {p.mode for p in plans.values()} == {Mode.SNAPPED}
    assert plans["layer1.0.conv1"].bn is m.layer1[0].bn1 and isinstance(m.layer1[0].bn1, FoldedBatchNorm2d)
    assert plans["layer2.0.downsample.0"].bn is m.layer2[0].downsample[1]
    assert plans["fc"].bn is None and not any(p.int_bias for p in plans.values()) and add_plans(m) == []


def test_ort_scheme_plans_integer_kernels_and_qlinearadds():
    m = resnet("ort")
    plans = {n: q.plan for n, q in quant_layers(m).items()}
    assert all(p.int_bias for p in plans.values())
    kernels = [n for n, p in plans.items() if p.mode is Mode.ORT_KERNEL]
    # conv1 → bn1 → relu → maxpool → layer1.0.conv1's quantizer (also the identity's): one kernel
    assert plans["conv1"].out_quant is m.layer1[0].conv1.act_quant and "layer1.0.conv2" in kernels
    assert plans["fc"].mode is Mode.SNAPPED  # the logits go to no quantizer
    adds = add_plans(m)
    assert len(adds) == 8 and all(a.main.learned_zp for a in adds)  # the last feeds the pool's quantizer
    assert (
        m.layer4[1].add_plan.out is m.avgpool.act_quant and m.layer1[0].add_plan.identity is m.layer1[0].conv1.act_quant
    )


def test_alignq_scheme_keeps_the_image_float_and_snaps_daq_layers():
    m = quantize_model(build_model("mnist-cnn", 1, 10), get_scheme("alignq"))
    modes = {n: q.plan.mode for n, q in quant_layers(m).items()}
    assert modes == {"conv1": Mode.WEIGHT_ONLY, "conv2": Mode.SNAPPED, "conv3": Mode.SNAPPED, "conv4": Mode.SNAPPED}


@pytest.mark.parametrize("scheme", ["trt", "ort"])
def test_plans_survive_a_copy_with_their_own_modules(scheme):
    import copy

    m = copy.deepcopy(resnet(scheme))
    conv = m.layer1[0].conv1
    assert conv.plan.bn is m.layer1[0].bn1  # the copy's BatchNorm, not the original's
    assert all(isinstance(q, nn.Module) for q in quant_layers(m).values())
