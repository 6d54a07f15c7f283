"""The battery of bad inputs: each case builds a file (or a fault), runs the real CLI on it and checks
that the user gets exactly one clear line (exit 2), never a traceback, and nothing half-written.

Cases are data (``Bad``), so ``docs/make_security_table.py`` can list them with what each got: run
with ``SEG_STUDIO_BAD_INPUT_LOG=FILE``, every case appends the line it really printed to ``FILE``.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from seg_studio.cli import main

REPO = Path(__file__).resolve().parents[2]
_ESC = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202e]")


@dataclass(frozen=True)
class Bad:
    """One bad input: ``make(tmp)`` builds it and returns the CLI arguments."""

    id: str
    area: str
    given: str
    make: Callable[[Path], list[str]]
    expect: str  # regex searched (case-insensitive) in the one error line
    rc: int = 2
    #: extra checks after the run: ``after(tmp, stdout, stderr)``
    after: Callable[[Path, str, str], None] | None = None
    #: the refusal must come within this many seconds (nothing big was allocated first)
    max_s: float | None = None


def record(case_id: str, area: str, given: str, rc: int, line: str, tmp: Path | None = None) -> None:
    """Append what a case really printed to ``$SEG_STUDIO_BAD_INPUT_LOG`` (for the docs table)."""
    log = os.environ.get("SEG_STUDIO_BAD_INPUT_LOG")
    if not log:
        return
    text = line.strip()
    if tmp is not None:
        text = text.replace(str(tmp), "<tmp>")
    text = re.sub(r"/tmp/[^\s'\"]*?(?=/|\s|$)", "<tmp>", text)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": case_id, "area": area, "given": given, "rc": rc, "line": text}) + "\n")


def _shown(rc: int, out: str, err: str, expect: str) -> str:
    """The line a case is listed with: the error line, or the line of the output that shows what
    the case is about (what ``expect`` matches)."""
    if rc and err.strip():
        return err.strip().splitlines()[-1]
    lines = [ln for ln in (out + "\n" + err).splitlines() if ln.strip()]
    hits = [ln for ln in lines if expect and re.search(expect, ln, re.IGNORECASE)]
    return (hits or lines or [""])[0 if hits else -1]


def run_case(case: Bad, tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Run one case through ``seg_studio.cli.main`` and check the one-line contract."""
    argv = case.make(tmp)
    capsys.readouterr()
    t0 = time.perf_counter()
    rc = main(argv)
    elapsed = time.perf_counter() - t0
    out, err = capsys.readouterr()
    record(case.id, case.area, case.given, rc, _shown(rc, out, err, case.expect), tmp)
    assert "Traceback" not in out + err, err
    assert not _ESC.search(out + err.replace("\r", "")), (
        f"control characters reached the terminal: {out!r}{err!r}"
    )
    assert rc == case.rc, f"exit {rc}, expected {case.rc}: {err or out}"
    if case.rc == 2:  # progress lines may come first; the error is one line, the last
        lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("seg-studio ")]
        assert len(errors) == 1 and lines[-1] == errors[0], f"expected one error line, got {lines}"
        err = errors[0]
    if case.expect:
        assert re.search(case.expect, err if rc else out + err, re.IGNORECASE), (
            f"{case.expect!r} not in {err or out!r}"
        )
    if case.max_s is not None:
        assert elapsed < case.max_s, f"took {elapsed:.1f} s (limit {case.max_s} s)"
    if case.after is not None:
        case.after(tmp, out, err)
    return out, err


def no_temp_files(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if ".tmp-" in p.name]
    assert not left, f"temp files left behind: {left}"


# --- building blocks ------------------------------------------------------------------------------


def tiny_model(path: Path, dims: int = 2, classes: int = 3, **meta_changes: Any) -> Path:
    """A small real checkpoint (U-Net, 4 features, depth 2)."""
    from seg_studio.core import checkpoint as ckpt
    from seg_studio.core.models import create_model

    model = create_model("unet", spatial_dims=dims, in_channels=1, out_channels=classes, features=4, depth=2)
    meta = ckpt.new_meta(
        model,
        "unet",
        {"features": 4, "depth": 2},
        classes=["background", "one", "two", "three"][:classes],
        patch_size=(16, 32, 32) if dims == 3 else (32, 32),
    )
    for k, v in meta_changes.items():
        setattr(meta, k, v)
    return ckpt.save(path, model, meta)


def read_record(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return json.loads(fh.metadata()["seg_studio"])


def rewrite(src: Path, dst: Path, change: Callable[[dict[str, Any]], Any] | None = None, **kw: Any) -> Path:
    """A copy of ``src`` whose JSON record is changed by ``change(record)`` (or raw ``record=``
    text) and whose tensors by ``tensors=`` (a function of the state dict)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(src))
    if "tensors" in kw:
        state = kw["tensors"](state)
    if "record" in kw:
        text = kw["record"]
    else:
        record = read_record(src)
        if change is not None:
            change(record)
        text = json.dumps(record, allow_nan=True)
    save_file(state, str(dst), metadata={"seg_studio": text})
    return dst


def raw_safetensors(dst: Path, header: Mapping[str, Any] | bytes, data: bytes = b"") -> Path:
    """A file with exactly this safetensors header and data (for headers no library would write)."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return dst


def scan(
    path: Path, shape: tuple[int, ...] = (40, 48), spacing: tuple[float, ...] | None = None, **kw: Any
) -> Path:
    """A small synthetic scan (a bright disc on noise), written with the real writer."""
    from seg_studio.core import io
    from seg_studio.core.volume import Volume

    rng = np.random.default_rng(0)
    arr = rng.normal(0, 1, size=shape).astype(np.float32)
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape, dtype=np.float32)[(slice(None),) + (None,) * len(shape)] / 2
    arr[((grid - centre) ** 2).sum(0) < (min(shape) / 4) ** 2] += 4
    vol = Volume.from_array(arr, spacing=spacing, **kw)
    return io.write(vol, path)


def labels_like(path: Path, image: Path, values: np.ndarray | None = None, **geometry: Any) -> Path:
    """Labels on ``image``'s grid (or with ``geometry`` changed): a disc of 1s unless ``values``."""
    from seg_studio.core import io
    from seg_studio.core.volume import Volume

    img = io.read(image)
    if values is None:
        values = (img.array > 2).astype(np.uint8)
    grid = {"spacing": img.spacing, "origin": img.origin, "direction": img.direction, **geometry}
    whole = values.dtype.kind != "f" or np.array_equal(values, np.round(values))
    lab = Volume(np.ascontiguousarray(values), meta={"kind": "labels" if whole else "image"}, **grid)
    return io.write(lab, path)
