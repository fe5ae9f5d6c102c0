"""The competitor every benchmark times us against: ONNX Runtime's own post-training `quantize_static`."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

ORT_METHODS = ("MinMax", "Entropy", "Percentile")


def ort_quantize_static(fp32_path: Path, out: Path, calib: np.ndarray, method: str = "MinMax", batch: int = 1) -> None:
    """quantize_static as its documentation sets it up for CPU: QDQ format, per-channel int8 weights, uint8
    activations (U8S8), calibrated on `calib` (float32 NCHW) fed `batch` images at a time with `method`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i : i + batch]} for i in range(0, len(calib), batch)])

        def get_next(self):
            return next(self.it, None)

    with contextlib.redirect_stdout(sys.stderr):  # its calibrators print progress: keep stdout for the JSON
        quantize_static(
            str(fp32_path),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
        )
