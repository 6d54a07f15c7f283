"""Where the app keeps its own files, and the autosave of label edits that survives a crash.

Everything lives under one per-user folder (platformdirs' app-data dir, or ``$SEG_STUDIO_HOME``
when set, which tests and portable installs use): ``models/`` for checkpoints the user made, and
``autosave/`` for label maps written every minute while a scan is being corrected. An autosave is
keyed by the scan it belongs to (resolved path and size), so reopening the same scan after a crash
finds it; an explicit save or a discard removes it. Pure: no Qt here, the UI drives the timer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .volume import Volume

log = logging.getLogger(__name__)

APP_NAME = "seg-studio"
AUTOSAVE_SUFFIX = ".nii.gz"


def app_data_dir() -> Path:
    """The per-user folder for models and autosaves (created on first use)."""
    env = os.environ.get("SEG_STUDIO_HOME")
    if env:
        root = Path(env)
    else:
        from platformdirs import user_data_dir

        root = Path(user_data_dir(APP_NAME, appauthor=False))
    root.mkdir(parents=True, exist_ok=True)
    return root


def user_model_dir() -> Path:
    """Checkpoints the user created (fine-tunes of read-only parents land here)."""
    d = app_data_dir() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def autosave_dir() -> Path:
    d = app_data_dir() / "autosave"
    d.mkdir(parents=True, exist_ok=True)
    return d


def scan_key(source: Path | str | None, fallback: str = "unsaved") -> str:
    """A stable file-name-safe key for a scan: its resolved path and size, or ``fallback`` (e.g. a sample)."""
    if source is None:
        text = f"name:{fallback}"
    else:
        p = Path(source).expanduser().resolve()
        try:
            size = (
                p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.iterdir() if f.is_file())
            )
        except OSError:
            size = -1
        text = f"path:{p}:{size}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class AutosaveInfo:
    """An autosave found on disk: the label file, when it was written and what it belongs to."""

    path: Path
    saved_at: float
    scan: str

    @property
    def age_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.saved_at))


def _paths(key: str) -> tuple[Path, Path]:
    d = autosave_dir()
    return d / f"{key}{AUTOSAVE_SUFFIX}", d / f"{key}.json"


def write_autosave(labels: Volume, key: str, scan: str = "") -> Path:
    """Write ``labels`` (a label Volume in the scan's geometry) atomically; returns the file."""
    from . import io as sio
    from .atomic import atomic_write

    path, info = _paths(key)
    if labels.meta.get("kind") != "labels":
        labels = labels.with_array(labels.array, meta={**labels.meta, "kind": "labels"})
    sio.write(labels, path)
    classes = [
        {"value": int(c.value), "name": c.name, "color": [int(v) for v in c.color]}
        for c in labels.labels.values()
    ]
    payload = json.dumps({"scan": scan, "saved_at": time.time(), "file": path.name, "classes": classes})
    atomic_write(info, lambda tmp: tmp.write_text(payload))
    log.debug("autosaved labels of %s to %s", scan or key, path)
    return path


def find_autosave(key: str) -> AutosaveInfo | None:
    """The autosave for ``key`` if one is on disk (a crash or an unsaved session left it)."""
    path, info = _paths(key)
    if not path.is_file():
        return None
    try:
        data = json.loads(info.read_text())
        return AutosaveInfo(
            path, float(data.get("saved_at", path.stat().st_mtime)), str(data.get("scan", ""))
        )
    except (OSError, ValueError):
        return AutosaveInfo(path, path.stat().st_mtime, "")


def read_autosave(key: str) -> Volume | None:
    found = find_autosave(key)
    if found is None:
        return None
    from . import io as sio
    from .volume import LabelInfo

    vol = sio.read(found.path)
    vol.meta["kind"] = "labels"
    if not vol.labels:
        # label names and colours do not survive every format: the sidecar keeps them
        try:
            classes = json.loads(_paths(key)[1].read_text()).get("classes") or []
            vol.labels = {
                int(c["value"]): LabelInfo(int(c["value"]), str(c["name"]), tuple(c["color"]))
                for c in classes
            }
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return vol


def discard_autosave(key: str) -> None:
    """Remove the autosave of ``key`` (after an explicit save, or when the user declines it)."""
    for p in _paths(key):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
