"""Compiled CPU backends: the same weights through OpenVINO or ONNX Runtime instead of torch.

Small-width U-Net convolutions are memory-bound in torch; a compiler that fuses the graph for this
CPU runs them 2-3x faster (OpenVINO bf16 on a CPU with native bf16, measured in
``benchmarks/inference.py``). How it works:

1. the model (Conv+BN folded) is exported once to ONNX for one window size, with every output the
   prediction asks for (logits, attention gates, an ensemble's spread), and kept in the user cache
   dir under the SHA-256 of what decides the graph: architecture, arguments, every weight, the
   window, the outputs, and the torch version. A changed checkpoint is a new key, so it is
   exported again; an unchanged one is read from the cache;
2. OpenVINO (or ONNX Runtime) compiles that file for this CPU; compiled models are kept in this
   process for the next prediction with the same key;
3. the window runner calls it like the torch model (``CompiledForward``), so flip TTA, blending,
   attention maps and ensembles work unchanged.

``auto`` picks OpenVINO when installed (the ``seg-studio[fast]`` extra), else ONNX Runtime when the
run would be float32 anyway (torch bf16 beats ONNX Runtime's float32 on CPUs with native bf16), else
torch; GPUs always run torch. Any export, compile or run failure falls back to torch with one log
line: a corrupt cache file is deleted and exported again once first.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Collection, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import ModelMeta
from ..errors import InferenceError
from ..models.base import AUX_ATTENTION, AUX_UNCERTAINTY, SegModel, SegOutput
from ..progress import Progress
from .runner import fuse_conv_bn

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino", "onnxruntime")
#: the aux outputs a compiled graph can carry, in their order after the logits
GRAPH_AUX = (AUX_ATTENTION, AUX_UNCERTAINTY)
OPSET = 17
#: bump when the export changes in a way the key does not capture
EXPORT_VERSION = 1
#: cache entries kept (oldest use goes first)
CACHE_KEEP = 48
_MEMO_SIZE = 4
_memo: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()


class BackendError(RuntimeError):
    """A compiled backend failed while running; the runner goes back to torch."""


def installed(name: str) -> bool:
    """Whether the backend's package and ``onnx`` (the exporter needs it) are importable (not imported)."""
    if name == "torch":
        return True
    if name not in ("openvino", "onnxruntime"):
        return False
    return all(importlib.util.find_spec(m) is not None for m in (name, "onnx"))


def choose_backend(requested: str, device: torch.device, dtype: torch.dtype | None) -> str:
    """The backend to run: ``requested`` (or ``$SEG_STUDIO_BACKEND`` for ``auto``), resolved for the
    device and precision. A named backend that is not installed is an error with the fix."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        requested = os.environ.get("SEG_STUDIO_BACKEND", "auto").lower() or "auto"
    if requested not in BACKENDS:
        raise InferenceError(f"unknown backend {requested!r}; use one of {', '.join(BACKENDS)}")
    if device.type != "cpu" or requested == "torch":
        return "torch"
    if requested == "auto":
        if installed("openvino"):
            return "openvino"
        return "onnxruntime" if dtype is None and installed("onnxruntime") else "torch"
    if not installed(requested):
        raise InferenceError(
            f"backend {requested} is not installed; run: pip install 'seg-studio[fast]' (or use --backend torch)"
        )
    return requested


def cache_dir() -> Path:
    """Where exported graphs live: ``$SEG_STUDIO_CACHE``, else the user cache dir (platformdirs)."""
    env = os.environ.get("SEG_STUDIO_CACHE")
    if env:
        root = Path(env)
    else:
        from platformdirs import user_cache_dir

        root = Path(user_cache_dir("seg-studio", appauthor=False))
    folder = root / "compiled"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def graph_key(model: SegModel, meta: ModelMeta, roi: Sequence[int], want: Collection[str]) -> str:
    """SHA-256 of everything that decides the exported graph (so a changed checkpoint is re-exported)."""
    h = hashlib.sha256()
    head = {
        "v": EXPORT_VERSION,
        "torch": torch.__version__,
        "opset": OPSET,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "architecture": meta.architecture,
        "arch_args": meta.arch_args,
        "roi": [int(r) for r in roi],
        "want": sorted(set(want) & set(GRAPH_AUX)),
        "structure": repr(model),
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _Graph(nn.Module):
    """The model as a plain tensor function for export: logits, then each asked aux list in order."""

    def __init__(self, net: SegModel, want: Collection[str]) -> None:
        super().__init__()
        self.net = net
        self.want = frozenset(want) & frozenset(GRAPH_AUX)
        self.layout: dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(x, aux=self.want)
        flat = [out.logits]
        for name in GRAPH_AUX:
            maps = out.aux.get(name, []) if name in self.want else []
            self.layout[name] = len(maps)
            flat += maps
        return tuple(flat)


def export_onnx(model: SegModel, roi: Sequence[int], want: Collection[str], path: Path) -> dict[str, int]:
    """Export the Conv+BN-folded model for ``(N, C, *roi)`` windows (N free) to ``path``, atomically.

    Returns the output layout (how many maps of each aux kind follow the logits).
    """
    graph = _Graph(fuse_conv_bn(model).to("cpu").float().eval(), want)
    x = torch.zeros(1, model.in_channels, *roi)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        quiet = io.StringIO()  # the exporter prints its IR graph when an operator is unsupported
        with (
            torch.no_grad(),
            warnings.catch_warnings(),
            contextlib.redirect_stdout(quiet),
            contextlib.redirect_stderr(quiet),
        ):
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(
                graph, (x,), str(tmp), opset_version=OPSET, dynamo=False, input_names=["x"],
                dynamic_axes={"x": {0: "n"}},
            )  # fmt: skip
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return dict(graph.layout)


def _read_layout(path: Path) -> dict[str, int] | None:
    """The sidecar layout of a cached graph, or None when it is missing or unreadable."""
    try:
        layout = json.loads(path.with_suffix(".json").read_text())["layout"]
        return {str(k): int(v) for k, v in layout.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def cached_graph(
    model: SegModel, meta: ModelMeta, roi: Sequence[int], want: Collection[str], key: str
) -> tuple[Path, dict[str, int], bool]:
    """The ONNX file for ``key``: from the cache, else exported now. Returns (path, layout, exported)."""
    path = cache_dir() / f"{key}.onnx"
    layout = _read_layout(path) if path.is_file() else None
    if layout is not None:
        os.utime(path)  # recently used: kept by the pruning
        return path, layout, False
    t = time.perf_counter()
    layout = export_onnx(model, roi, want, path)
    sidecar = {
        "layout": layout,
        "architecture": meta.architecture,
        "roi": list(roi),
        "torch": torch.__version__,
    }
    tmp = path.with_name(f".{path.stem}.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(sidecar))
    os.replace(tmp, path.with_suffix(".json"))
    log.info(
        "exported %s for %s windows in %.1f s (cached as %s)",
        meta.architecture,
        tuple(roi),
        time.perf_counter() - t,
        path.name,
    )
    prune_cache(path.parent)
    return path, layout, True


def forget_graph(path: Path) -> None:
    for p in (path, path.with_suffix(".json")):
        with contextlib.suppress(OSError):
            p.unlink()


def prune_cache(folder: Path, keep: int = CACHE_KEEP) -> None:
    """Keep the ``keep`` most recently used graphs, and no temp file of an export killed an hour ago
    or more: the cache never grows without bound."""
    graphs = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in graphs[keep:]:
        forget_graph(old)
    for tmp in folder.glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            if time.time() - tmp.stat().st_mtime > 3600:
                tmp.unlink()


# --- compiling and running ----------------------------------------------------------------------------


def _compile(backend: str, path: Path, dtype: torch.dtype | None, threads: int) -> Any:
    """An OpenVINO ``CompiledModel`` or an ONNX Runtime ``InferenceSession`` for ``path``."""
    if backend == "openvino":
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if dtype == torch.bfloat16 else "f32",
            "INFERENCE_NUM_THREADS": int(threads),
            "PERFORMANCE_HINT": "LATENCY",
            # no pinning: on a shared machine (and beside a GUI thread) pinned workers wait for busy cores
            "ENABLE_CPU_PINNING": False,
        }
        return core.compile_model(core.read_model(str(path)), "CPU", config)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class CompiledForward:
    """The compiled network, called like ``SegModel.forward`` on CPU tensors (see ``runner.Forward``)."""

    device = torch.device("cpu")

    def __init__(self, backend: str, compiled: Any, layout: dict[str, int], precision: str) -> None:
        self.backend = backend
        self.label = f"{backend} {precision}"
        self.layout = layout
        if backend == "openvino":
            request = compiled.create_infer_request()  # one per prediction: compiled models are shared
            self._run = lambda x: list(request.infer({0: x}).to_tuple())
        else:
            self._run = lambda x: compiled.run(None, {"x": x})

    def adopt(self, x: torch.Tensor) -> torch.Tensor:
        return x.to("cpu").float().contiguous()

    def __call__(self, x: torch.Tensor, aux: Collection[str] = ()) -> SegOutput:
        try:
            outs = self._run(np.ascontiguousarray(x.numpy(), dtype=np.float32))
        except Exception as exc:  # noqa: BLE001 - any failure of the compiled graph: back to torch
            raise BackendError(f"{self.label} failed on a batch of shape {tuple(x.shape)}: {exc}") from exc
        logits, rest = torch.from_numpy(np.asarray(outs[0])), outs[1:]
        maps: dict[str, list[torch.Tensor]] = {}
        for name in GRAPH_AUX:
            n = self.layout.get(name, 0)
            if name in aux and n:
                maps[name] = [torch.from_numpy(np.asarray(a)) for a in rest[:n]]
            rest = rest[n:]
        return SegOutput(logits, maps)


def compiled_forward(
    backend: str,
    model: SegModel,
    meta: ModelMeta,
    roi: Sequence[int],
    want: Collection[str],
    dtype: torch.dtype | None,
    key: str | None = None,
) -> CompiledForward:
    """The model compiled by ``backend`` for ``roi`` windows: from this process's memo, else from the
    cache (a corrupt entry is exported again once), else exported now. Raises on failure."""
    key = key or graph_key(model, meta, roi, want)
    memo_key = _memo_key(key, backend, dtype)
    precision = memo_key[2]
    if memo_key in _memo:
        _memo.move_to_end(memo_key)
        compiled, layout = _memo[memo_key]
        return CompiledForward(backend, compiled, layout, precision)
    path, layout, exported = cached_graph(model, meta, roi, want, key)
    try:
        compiled = _compile(backend, path, dtype, memo_key[3])
    except Exception as exc:  # noqa: BLE001 - a cached file that does not compile is corrupt: redo it once
        if exported:
            raise
        log.warning("cached graph %s does not load (%s); exporting it again", path.name, _first_line(exc))
        forget_graph(path)
        path, layout, _ = cached_graph(model, meta, roi, want, key)
        compiled = _compile(backend, path, dtype, memo_key[3])
    _memo[memo_key] = (compiled, layout)
    while len(_memo) > _MEMO_SIZE:
        _memo.popitem(last=False)
    return CompiledForward(backend, compiled, layout, precision)


def _memo_key(key: str, backend: str, dtype: torch.dtype | None) -> tuple[str, str, str, int]:
    precision = "bf16" if backend == "openvino" and dtype == torch.bfloat16 else "fp32"
    return key, backend, precision, torch.get_num_threads()


def is_cached(key: str) -> bool:
    """Whether the graph for ``key`` is on disk already (no export needed)."""
    path = cache_dir() / f"{key}.onnx"
    return path.is_file() and _read_layout(path) is not None


def try_compiled(
    backend: str,
    model: SegModel,
    meta: ModelMeta,
    roi: Sequence[int],
    want: Collection[str],
    dtype: torch.dtype | None,
) -> Generator[Progress, None, CompiledForward | None]:
    """``compiled_forward``, saying so when it must export first; None (and one log line) when it
    fails for any reason, so the prediction runs with torch instead."""
    try:
        key = graph_key(model, meta, roi, want)
        if _memo_key(key, backend, dtype) not in _memo and not is_cached(key):
            yield Progress(
                0, 0, "prepare", f"compiling the model for this CPU ({backend}, once per checkpoint)"
            )
        return compiled_forward(backend, model, meta, roi, want, dtype, key)
    except Exception as exc:  # noqa: BLE001 - export/compile failures of any kind: torch runs instead
        log.warning(
            "%s could not compile %s (%s); running with torch", backend, meta.architecture, _first_line(exc)
        )
        return None


def clear_memo() -> None:
    """Forget the compiled models of this process (the next prediction reads the disk cache)."""
    _memo.clear()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
