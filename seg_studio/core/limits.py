"""How much memory an untrusted input may ask for, checked before it is allocated.

A 4 MB gzip can inflate to 4 GB, a checkpoint's metadata can ask for a model of 100 GB, a model's
spacing can ask to resample a scan onto a grid of 250 GB: each of these is compared with the memory
this machine has free *before* anything is allocated, and refused with one line that says how much
was needed and what to do. ``SEG_STUDIO_MAX_MEMORY`` (bytes, or with a K/M/G suffix) lowers the
budget, e.g. on a shared server.
"""

from __future__ import annotations

import os
import re

from .errors import SegStudioError

#: Share of the free memory one allocation may take (the rest is for copies and the OS).
DEFAULT_FRACTION = 0.8


def _parse_bytes(text: str) -> int | None:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        return None
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def available_memory() -> int:
    """Bytes of memory free for this process now (MemAvailable on Linux), capped by the env budget."""
    avail: int | None = None
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil is optional; any failure falls back to /proc
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 8 << 30  # unknown platform: assume a modest workstation
    limits = [avail, _address_space_left(), _cgroup_left()]
    cap = _parse_bytes(os.environ.get("SEG_STUDIO_MAX_MEMORY", ""))
    if cap:
        limits.append(cap)
    return max(0, min(v for v in limits if v is not None))


def _address_space_left() -> int | None:
    """What ``ulimit -v`` (RLIMIT_AS) still allows this process to map."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return soft - int(line.split()[1]) * 1024
    except (ImportError, OSError, ValueError):
        pass
    return None


def _cgroup_left() -> int | None:
    """The container's memory limit minus what it uses (cgroup v2, then v1); None without one."""
    for limit, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit) as fh:
                text = fh.read().strip()
            if text == "max" or int(text) >= 1 << 60:
                return None
            with open(used) as fh:
                return int(text) - int(fh.read().strip())
        except (OSError, ValueError):
            continue
    return None


def human_bytes(n: float) -> str:
    """``3.1 GB``: decimal units, as a user compares them with a disk or a task manager."""
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover - unreachable


def check_fits(
    nbytes: float,
    what: str,
    hint: str,
    error: type[SegStudioError] = SegStudioError,
    fraction: float = DEFAULT_FRACTION,
) -> None:
    """Raise ``error`` when ``nbytes`` is more than ``fraction`` of the free memory.

    ``what`` says who asks (``"ct.nii.gz needs"``), ``hint`` what to do about it.
    """
    avail = available_memory()
    if nbytes > fraction * avail:
        raise error(f"{what} {human_bytes(nbytes)} of memory, but only {human_bytes(avail)} is free; {hint}")


def memory_error_line(exc: BaseException, doing: str) -> str:
    """One line for a MemoryError: what ran out, how much numpy/torch asked for, what to do."""
    detail = str(exc).strip()
    m = re.search(r"allocate (\d+(?:\.\d+)?)\.?\s*([KMGT]i?B)", detail)
    n = re.search(r"allocate (?:memory: you tried to allocate )?(\d{6,}) bytes", detail)
    asked = (
        f" (it asked for {m.group(1)} {m.group(2)})"
        if m
        else f" (it asked for {human_bytes(int(n.group(1)))})"
        if n
        else ""
    )
    return (
        f"ran out of memory while {doing}{asked} with {human_bytes(available_memory())} free; "
        "close other programs, crop or downsample the scan, or use a smaller patch or batch size"
    )
