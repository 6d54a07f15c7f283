"""Keep triton's bundled LLVM out of a process whose OpenGL runs on Mesa.

The first optimiser of a process imports ``torch._dynamo``, which imports ``triton`` when it is
installed (CUDA wheels of torch ship it). Loading ``libtriton.so`` after Mesa's GL driver (llvmpipe
under Xvfb, and the radeonsi/llvmpipe drivers of many Linux desktops, all linked to the system's
``libLLVM``) segfaults the process: two LLVM copies, one symbol namespace. Measured here: a napari
window up, then ``import triton`` -> SIGSEGV, in any thread; ``import triton`` before the window ->
fine. seg_studio never uses ``torch.compile`` (the only user of triton), so in the GUI process we make
``import triton`` fail with ImportError, which torch treats as "triton not installed".
``importlib.util.find_spec("triton")`` still answers (torch.cuda asks it and must not break).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


class _RefuseLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        raise ImportError(
            "triton is disabled in the seg_studio GUI process (its LLVM clashes with Mesa's OpenGL)",
            name=spec.name,
        )

    def exec_module(self, module: Any) -> None:  # pragma: no cover - create_module always raises
        raise ImportError("triton is disabled in the seg_studio GUI process")


class _TritonBlocker(importlib.abc.MetaPathFinder):
    """Answers for ``triton`` and its submodules with a spec whose loader refuses to load."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == "triton" or fullname.startswith("triton."):
            return importlib.machinery.ModuleSpec(fullname, _RefuseLoader())
        return None


def guard_triton() -> bool:
    """Install the blocker once (Linux only, and only if triton is not loaded yet); True if active."""
    if not sys.platform.startswith("linux"):
        return False
    if any(isinstance(f, _TritonBlocker) for f in sys.meta_path):
        return True
    if "triton" in sys.modules:
        return False  # loaded before the GL context: already safe
    sys.meta_path.insert(0, _TritonBlocker())
    log.debug("triton imports disabled in this GUI process (LLVM clash with Mesa OpenGL)")
    return True
