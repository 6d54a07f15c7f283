"""Import, in a worker right after start-up, what the first prediction and fine-tune would import.

Why: an import runs Python bytecode while holding the GIL, and with PySide6 loaded every import also
runs shiboken's ``feature_imported`` hook, which reads the new module's source. Measured with
``benchmarks/ui_responsiveness.py --trace``: the first prediction's imports (scipy.linalg, the
training package, pandas for the Labels features table, skimage.color for its colormap) stalled the
event loop for 185-650 ms at a time, even from a worker thread. Done once while the user looks at
the freshly opened window, they cost nothing later.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from collections.abc import Generator
from typing import Any

log = logging.getLogger(__name__)

#: What prediction, fine-tuning and landing their results import lazily, in the order they need it.
MODULES = (
    "seg_studio.core.inference",
    # the compiled backend (when installed) and the exporter the first prediction of a checkpoint uses
    *(("openvino",) if importlib.util.find_spec("openvino") is not None else ()),
    "torch.onnx",
    "seg_studio.core.postprocess",
    "scipy.ndimage",
    "scipy.linalg",
    "pandas",
    "skimage.color",
    "napari.layers.utils.layer_utils",
    "seg_studio.core.training",
    "seg_studio.core.training.finetune",
)


def _exercise_lazy_paths() -> None:
    """Run once what imports on first *use* rather than on import.

    napari's first Labels layer draws random label colours through skimage.color, which loads its
    submodules on first attribute access (on the main thread). torch builds its first optimizer
    under ``_disable_dynamo``, which imports torch._dynamo: ~3 s of GIL held by the fine-tune worker
    (py-spy --gil), during which the event loop stood still for up to 700 ms at a time. The first
    Labels layer's polygon overlay builds vispy's 13 dash patterns in a Python loop (cached after):
    200-300 ms of the first mask's landing turn (``ui_responsiveness.py --trace``).
    """
    import torch
    from napari.utils.colormaps import label_colormap
    from vispy.visuals.line.dash_atlas import DashAtlas

    label_colormap(8)
    DashAtlas()
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)


def warm_imports(modules: tuple[str, ...] = MODULES) -> Generator[Any, None, list[str]]:
    """Import ``modules`` (a generator for ``Job``); returns those that could not be imported.

    It yields after each module, so quitting the app stops it there instead of waiting for all.
    """
    from ..core.progress import Progress

    t0 = time.perf_counter()
    missing: list[str] = []
    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
        yield Progress(i + 1, len(modules) + 1, "warming up", name)
    try:
        _exercise_lazy_paths()
    except Exception:  # noqa: BLE001 - a warm-up only; the real call will report any problem
        log.debug("warm-up of lazily imported paths failed", exc_info=True)
    log.debug("warm-up imports took %.2f s", time.perf_counter() - t0)
    return missing
