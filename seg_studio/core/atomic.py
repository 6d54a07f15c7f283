"""One way to save anything: write a temp file beside the target, check it, then swap it in.

A crash, a full disk or a failed check leaves the previous file untouched and no half-written file
behind, because the target only ever changes through ``os.replace`` (atomic on one file system, which
is why the temp file lives in the target's own folder). Input scans are passed as ``protected`` so no
save can clobber them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import ImageWriteError, SegStudioError

log = logging.getLogger(__name__)

#: Multi-part suffixes kept whole in temp names, so writers that pick a format by suffix still work.
COMPOUND_SUFFIXES = (".nii.gz", ".tar.gz", ".seg.nrrd")


def split_suffix(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``("scan", ".nii.gz")`` for ``scan.nii.gz``: the stem and the suffix that decides the format."""
    name = Path(path).name
    low = name.lower()
    for comp in COMPOUND_SUFFIXES:
        if low.endswith(comp) and len(name) > len(comp):
            return name[: -len(comp)], name[-len(comp) :]
    suffix = Path(name).suffix
    return (name[: -len(suffix)], suffix) if suffix else (name, "")


def is_protected(path: str | os.PathLike[str], protected: Iterable[str | os.PathLike[str] | None]) -> bool:
    """True when ``path`` names the same file as one of ``protected`` (links and ``..`` resolved)."""
    target = Path(path).expanduser().resolve()
    for p in protected:
        if p is None:
            continue
        q = Path(p).expanduser().resolve()
        if q == target:
            return True
        with contextlib.suppress(OSError):
            if target.exists() and q.exists() and os.path.samefile(target, q):
                return True
    return False


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows), so best effort.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A fresh hidden name in ``path``'s folder with the same suffix(es): ``.scan.tmp-ab12cd34.nii.gz``."""
    stem, suffix = split_suffix(path)
    while True:
        tmp = path.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{suffix}")
        if not tmp.exists():
            return tmp


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[Path], None],
    verify: Callable[[Path], None] | None = None,
    protected: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Save through ``write(tmp)``, ``verify(tmp)``, then atomically replace ``path``; returns ``path``.

    ``write`` must create the temp file it is given (its name keeps the target's suffixes). Any
    exception from ``write`` or ``verify`` removes the temp file and propagates (non-seg_studio
    errors are wrapped in ``ImageWriteError``); the target is then exactly as it was before.
    Refuses with ``ImageWriteError`` when ``path`` is one of ``protected`` (an input scan).
    """
    path = Path(path).expanduser()
    if is_protected(path, protected):
        raise ImageWriteError(
            f"refusing to overwrite the input scan {path}; choose another file name for the result"
        )
    if path.is_dir():
        raise ImageWriteError(f"{path} is a folder; give a file name to save to")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageWriteError(f"cannot create the folder {folder}: {exc.strerror or exc}") from exc
    tmp = temp_path_for(path)
    try:
        write(tmp)
        if not tmp.is_file():
            raise ImageWriteError(f"saving {path.name} produced no file")
        _fsync_file(tmp)
        if verify is not None:
            verify(tmp)
        _keep_mode(path, tmp)
        os.replace(tmp, path)
    except SegStudioError:
        _remove(tmp)
        raise
    except OSError as exc:
        _remove(tmp)
        raise ImageWriteError(f"could not save {path}: {exc.strerror or exc}") from exc
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, Exception):
            raise ImageWriteError(f"could not save {path}: {_one_line(exc)}") from exc
        raise
    _fsync_dir(folder)
    log.debug("saved %s", path)
    return path


def _keep_mode(path: Path, tmp: Path) -> None:
    """Give the new file the old one's permissions, or the usual umask-based ones for a new file."""
    with contextlib.suppress(OSError):
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
