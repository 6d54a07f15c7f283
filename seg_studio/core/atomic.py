"""One way to save anything: write a temp file beside the target, check it, then swap it in.

A crash, a full disk or a failed check leaves the previous file untouched and no half-written file
behind, because the target only ever changes through ``os.replace`` (atomic on one file system, which
is why the temp file lives in the target's own folder). Input scans are passed as ``protected`` so no
save can clobber them.

What a killed process cannot clean up, the next save into the same folder does: temp names carry the
host and process id of their writer (``.mask.tmp-host-4242-ab12cd34.nii.gz``), so a temp file whose
writer is gone is removed, and one of a live writer is never touched. ``transaction()`` makes several
saves one (all replaced at the end, or none); ``expect_unchanged(path)`` refuses to replace a file
that another program changed while this one worked; ``check_output`` finds a bad output path, a
read-only folder or a full disk before the work starts rather than after it.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ImageWriteError, SegStudioError

log = logging.getLogger(__name__)

#: Multi-part suffixes kept whole in temp names, so writers that pick a format by suffix still work.
COMPOUND_SUFFIXES = (".nii.gz", ".tar.gz", ".seg.nrrd")
#: Free space under which a failed save is blamed on a full disk.
_FULL_DISK_BYTES = 4 << 20
#: Temp files of the old naming (no writer id) older than this are leftovers of a killed run.
_OLD_TEMP_AGE_S = 3600.0
#: Suffixes of what seg_studio saves (old-style temp names are only cleaned with one of these).
_OUR_SUFFIXES = frozenset(
    (".nii.gz", ".nii", ".mha", ".mhd", ".raw", ".nrrd", ".tif", ".tiff", ".png", ".bmp")
    + (".segmodel", ".json", ".pt", ".csv", ".md", ".toml", ".txt")
)
_TEMP_RE = re.compile(
    r"^\.(?P<stem>.*)\.tmp-(?:(?P<host>[A-Za-z0-9]{0,16})-(?P<pid>\d+)-)?[0-9a-z_]{8}(?P<rest>.*)$"
)


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


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16]


def writer_tag() -> str:
    """``host-pid``: which process wrote a temp file, so a later run knows whether it is still alive."""
    return f"{_host()}-{os.getpid()}"


def is_temp_name(name: str) -> bool:
    """True for a temp file or folder of ours (``.NAME.tmp-...``): never a result, never a model."""
    return bool(_TEMP_RE.match(name))


def temp_path_for(path: Path) -> Path:
    """A fresh hidden name in ``path``'s folder with the same suffix(es):
    ``.scan.tmp-host-4242-ab12cd34.nii.gz``."""
    stem, suffix = split_suffix(path)
    while True:
        tmp = path.with_name(f".{stem}.tmp-{writer_tag()}-{secrets.token_hex(4)}{suffix}")
        if not tmp.exists():
            return tmp


def _writer_alive(host: str | None, pid: str | None, mtime: float, rest: str) -> bool:
    if pid is None:  # an older seg_studio's temp: no writer id, judge by age (and only our suffixes)
        return rest.lower() not in _OUR_SUFFIXES or time.time() - mtime < _OLD_TEMP_AGE_S
    if host != _host():
        return True  # another machine's (a shared folder): not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


_CLEANED: set[Path] = set()


def clean_stale_temps(folder: str | os.PathLike[str], force: bool = False) -> list[Path]:
    """Remove temp files and folders of ours in ``folder`` whose writer is no longer running.

    Called before every save into a folder (once per folder and process, unless ``force``), so a
    run killed mid-save leaves nothing behind for long. Returns what was removed.
    """
    folder = Path(folder)
    key = folder.resolve() if folder.exists() else folder
    if key in _CLEANED and not force:
        return []
    _CLEANED.add(key)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if not m:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if _writer_alive(m.group("host"), m.group("pid"), st.st_mtime, m.group("rest")):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError as exc:
            log.debug("could not remove the stale temp file %s: %s", entry.path, exc)
            continue
        removed.append(Path(entry.path))
    if removed:
        log.info("removed %d temp file(s) left by an interrupted save in %s", len(removed), folder)
    return removed


# --- checks before the work starts -----------------------------------------------------------------


def _existing_ancestor(folder: Path) -> Path:
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_write(folder: Path) -> OSError | None:
    """Create and remove a temp file in ``folder``: the only reliable writability test (ACLs, root,
    read-only mounts and network shares all fool ``os.access``)."""
    probe = folder / f".probe.tmp-{writer_tag()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        return exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def _why_not(folder: Path, exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied in {folder}"
    if exc.errno == errno.EROFS:
        return f"{folder} is on a read-only file system"
    if exc.errno == errno.ENOSPC:
        return f"the disk holding {folder} is full"
    if exc.errno == errno.EDQUOT:
        return f"the disk quota for {folder} is exceeded"
    return f"cannot write in {folder} ({exc.strerror or exc})"


def check_output(
    path: str | os.PathLike[str],
    protected: Iterable[str | os.PathLike[str] | None] = (),
    what: str = "output",
) -> Path:
    """Refuse, before any work, an output that would overwrite an input, is a folder, or lies in a
    folder this process cannot write (the folder is created if missing, as the save would)."""
    path = Path(path).expanduser()
    if is_protected(path, protected):
        raise ImageWriteError(
            f"refusing to overwrite {path}, an input of this command, with the {what}; choose another file name"
        )
    if path.is_dir():
        raise ImageWriteError(f"the {what} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise ImageWriteError(f"the {what} {path} is not a regular file; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise ImageWriteError(f"cannot save the {what} {path}: {base} is a file, not a folder")
    err = _probe_write(base)
    if err is not None:
        raise ImageWriteError(f"cannot save the {what} {path}: {_why_not(base, err)}; choose another folder")
    free = _free_bytes(base)
    if free is not None and free < _FULL_DISK_BYTES:
        raise ImageWriteError(
            f"cannot save the {what} {path}: the disk holding {base} is full ({free // 1024} KB free); "
            "free some space or choose another folder"
        )
    return path


def check_output_folder(folder: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Refuse, before any work, an output folder that is a file or that this process cannot write."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ImageWriteError(f"the {what} {folder} is a file; give a folder")
    check_output(folder / "results", what=what)
    return folder


def check_outputs(
    paths: dict[str, str | os.PathLike[str] | None], protected: Iterable[str | os.PathLike[str] | None] = ()
) -> None:
    """``check_output`` for each named output, and no two outputs naming the same file."""
    protected = list(protected)
    seen: dict[Path, str] = {}
    for what, p in paths.items():
        if p is None:
            continue
        check_output(p, protected, what)
        key = Path(p).expanduser().resolve()
        if key in seen:
            raise ImageWriteError(f"{seen[key]} and {what} both name {p}; give each output its own file")
        seen[key] = what


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


# --- files that must not change under us, and several saves as one ---------------------------------

_Fingerprint = tuple[int, int, int, int] | None
_WATCHED: contextvars.ContextVar[dict[Path, _Fingerprint] | None] = contextvars.ContextVar(
    "seg_studio_watched", default=None
)


def _fingerprint(path: Path) -> _Fingerprint:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def expect_unchanged(*paths: str | os.PathLike[str]) -> Iterator[None]:
    """While inside, a save to one of ``paths`` is refused if the file changed since entry (another
    run or program wrote it); this process's own saves update what is expected."""
    watched = dict(_WATCHED.get() or {})
    for p in paths:
        q = Path(p).expanduser().absolute()
        watched[q] = _fingerprint(q)
    token = _WATCHED.set(watched)
    try:
        yield
    finally:
        _WATCHED.reset(token)


def _check_unchanged(path: Path) -> None:
    watched = _WATCHED.get()
    if not watched:
        return
    key = path.absolute()
    if key in watched and _fingerprint(key) != watched[key]:
        now = "appeared" if watched[key] is None else "changed"
        raise ImageWriteError(
            f"{path} {now} while this run was working (another run or program wrote it), so it was not "
            "replaced: nothing was saved; choose another output file or run again"
        )


def _note_written(path: Path) -> None:
    watched = _WATCHED.get()
    if watched is not None and path.absolute() in watched:
        watched[path.absolute()] = _fingerprint(path)


@dataclass
class _Batch:
    staged: list[tuple[Path, Path]] = field(default_factory=list)  # (temp, target)


_BATCH: contextvars.ContextVar[_Batch | None] = contextvars.ContextVar("seg_studio_batch", default=None)


def in_transaction() -> bool:
    return _BATCH.get() is not None


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """Saves inside are staged (written and checked as temp files) and all replace their targets at
    the end; if anything fails before, every temp file is removed and no target changes."""
    if _BATCH.get() is not None:  # nested: the outer transaction decides
        yield
        return
    batch = _Batch()
    token = _BATCH.set(batch)
    try:
        yield
    except BaseException:
        for tmp, _ in batch.staged:
            _remove(tmp)
        raise
    finally:
        _BATCH.reset(token)
    try:
        for _, target in batch.staged:
            _check_unchanged(target)
        for i, (tmp, target) in enumerate(batch.staged):
            os.replace(tmp, target)
            _note_written(target)
            _fsync_dir(target.parent)
            batch.staged[i] = (target, target)
    except BaseException as exc:
        for tmp, target in batch.staged:
            if tmp != target:
                _remove(tmp)
        if isinstance(exc, OSError):
            raise ImageWriteError(
                f"could not save {exc.filename or 'the results'}: {exc.strerror or exc}"
            ) from exc
        raise


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
    Refuses with ``ImageWriteError`` when ``path`` is one of ``protected`` (an input scan). Inside
    ``transaction()`` the replace waits for the end of the transaction.
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
        raise ImageWriteError(f"cannot create the folder {folder}: {_why_not(folder, exc)}") from exc
    clean_stale_temps(folder)
    tmp = temp_path_for(path)
    batch = _BATCH.get()
    try:
        write(tmp)
        if not tmp.is_file():
            raise ImageWriteError(f"saving {path.name} produced no file")
        _fsync_file(tmp)
        if verify is not None:
            verify(tmp)
        _keep_mode(path, tmp)
        if batch is not None:
            batch.staged.append((tmp, path))
            return path
        _check_unchanged(path)
        os.replace(tmp, path)
        _note_written(path)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            _remove(tmp)
            raise
        better = _explain(path, folder, exc)  # while the temp file still fills the disk
        _remove(tmp)
        if better is exc:
            raise
        raise better from exc
    _fsync_dir(folder)
    log.debug("saved %s", path)
    return path


def _explain(path: Path, folder: Path, exc: Exception) -> SegStudioError:
    """The real reason a save failed: a full disk or a folder we may not write says so (ITK's own
    words name a hidden temp file and blame the data), else the error itself."""
    free = _free_bytes(folder)
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    codes = {getattr(c, "errno", None) for c in chain}
    if errno.ENOSPC in codes or errno.EDQUOT in codes or (free is not None and free < _FULL_DISK_BYTES):
        what = "the disk quota is exceeded" if errno.EDQUOT in codes else "the disk is full"
        shown = "" if free is None else f" ({free // 1024} KB free in {folder})"
        return ImageWriteError(
            f"could not save {path}: {what}{shown}; free some space or choose another folder; nothing was written"
        )
    probe = _probe_write(folder)
    if probe is not None:
        return ImageWriteError(f"could not save {path}: {_why_not(folder, probe)}; nothing was written")
    if isinstance(exc, SegStudioError):
        return exc
    if isinstance(exc, OSError):
        return ImageWriteError(f"could not save {path}: {exc.strerror or exc}")
    return ImageWriteError(f"could not save {path}: {_one_line(exc)}")


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
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)
        else:
            tmp.unlink()


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
