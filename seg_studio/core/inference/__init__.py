"""Sliding-window inference: ``iter_predict`` (a progress generator) and ``predict``."""

from __future__ import annotations

from .devices import cpu_has_fast_bf16, describe_hardware, pick_device, resolve_precision
from .engine import Prediction, PredictOptions, fuse_conv_bn, iter_predict, predict

__all__ = [
    "PredictOptions",
    "Prediction",
    "cpu_has_fast_bf16",
    "describe_hardware",
    "fuse_conv_bn",
    "iter_predict",
    "pick_device",
    "predict",
    "resolve_precision",
]
