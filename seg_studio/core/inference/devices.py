"""Device and precision choice: CUDA, then MPS, then CPU; mixed precision where it pays.

On the CPU, bfloat16 is only fast with native instructions (AVX512-BF16 or AMX); without them
oneDNN emulates it and it is many times *slower* than float32, so ``auto`` checks the CPU first.
float16 is never used on the CPU (about 1 GFLOP/s).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import InferenceError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device(name: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """``auto``: CUDA if present, then Apple MPS, then the CPU. A named device that is missing is an error.

    ``local_rank`` (a torchrun process's rank on its machine) picks that rank's GPU under ``auto``;
    training and inference both choose their device here.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            if local_rank is None:
                return torch.device("cuda")
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InferenceError("--device cuda: no CUDA GPU is available here; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InferenceError("--device mps: Apple MPS is not available here; use --device auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InferenceError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU runs bfloat16 natively (AVX512-BF16 or AMX-BF16, or Apple silicon's BF16)."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = cpuinfo.read_text(errors="ignore")
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return platform.machine().lower() in ("arm64", "aarch64")


def describe_hardware(device: torch.device | None = None) -> str:
    """One line naming what ran: the GPU, or the CPU with its core count and whether it has native bf16.

    Model cards and benchmark reports carry it, since speed, precision and so the trained weights
    depend on it.
    """
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    if device is not None and device.type == "mps":
        return "Apple GPU (MPS)"
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    bf16 = "native bf16" if cpu_has_fast_bf16() else "no native bf16"
    return f"{name}, {os.cpu_count()} cores, {bf16}"


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain float32."""
    if precision not in PRECISIONS:
        raise InferenceError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type == "cpu":
        if precision == "fp16":
            raise InferenceError("float16 is not supported on the CPU (it is ~100x slower); use bf16 or fp32")
        if precision == "bf16" or cpu_has_fast_bf16():
            return torch.bfloat16
        return None
    if device.type == "cuda":
        if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16
    if device.type == "mps":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises ``OutOfMemoryError``; MPS raises a RuntimeError that says so."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()
