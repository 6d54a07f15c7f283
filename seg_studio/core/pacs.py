"""A PACS in and out: list studies and series, pull a series (cached by UID), push a DICOM SEG.

Two ways to talk to a PACS, one interface (``Pacs``): DICOMweb (QIDO-RS, WADO-RS, STOW-RS through
``dicomweb-client``) when a URL is given, DIMSE (C-FIND, C-GET, C-STORE through ``pynetdicom``) when
a host, port and AE title are. Every failure the user can act on (nothing listening, AE title
refused, 401, a timeout) is one ``PacsError`` line. Every request has a timeout and every loop a
bound in count and in time. A pulled series lands in a temp folder beside the cache and is renamed
into ``<cache>/<SeriesInstanceUID>/`` only when complete, so a failure leaves nothing half-stored.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import SegStudioError

log = logging.getLogger(__name__)

#: Most results one query returns, and most instances one series may hold (bounded loops).
MAX_RESULTS = 1000
MAX_INSTANCES = 5000
_DONE = ".complete"


class PacsError(SegStudioError):
    """The PACS could not be reached, refused us, or answered something we cannot use."""


@dataclass(frozen=True)
class PacsConfig:
    """Where the PACS is: ``url`` (DICOMweb root) or ``host``/``port``/``aet`` (DIMSE)."""

    url: str | None = None
    host: str | None = None
    port: int | None = None
    aet: str = "ORTHANC"
    calling_aet: str = "SEG_STUDIO"
    username: str | None = None
    password: str | None = None
    timeout_s: float = 30.0
    #: the longest one pull or push may take, whatever the number of instances
    deadline_s: float = 900.0

    def describe(self) -> str:
        return self.url or f"{self.aet}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SeriesRow:
    """One series as a PACS lists it (the browser's row)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""
    number: str = ""
    instances: int | None = None
    patient_name: str = ""
    patient_id: str = ""
    study_date: str = ""
    study_description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StudyRow:
    study_uid: str
    patient_name: str = ""
    patient_id: str = ""
    study_date: str = ""
    description: str = ""
    modalities: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Pacs(Protocol):
    config: PacsConfig

    def find_studies(self, patient: str | None = None) -> list[StudyRow]: ...
    def find_series(self, study_uid: str | None = None, modality: str | None = None) -> list[SeriesRow]: ...
    def retrieve(self, study_uid: str, series_uid: str, folder: Path) -> int: ...
    def store(self, files: Sequence[Path]) -> int: ...


def connect(config: PacsConfig) -> Pacs:
    """The client for ``config``: DICOMweb for a URL, DIMSE for host/port."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # both libraries narrate every request at INFO and every refusal at ERROR; ours is the one line
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
    if config.url:
        from ._pacs_web import DicomWeb

        return DicomWeb(config)
    if config.host and config.port:
        from ._pacs_dimse import Dimse

        return Dimse(config)
    raise PacsError("say where the PACS is: --url http://host:8042/dicom-web, or --host, --port and --aet")


# --- pulling a series into the cache ----------------------------------------------------------------


def cache_root() -> Path:
    """Series pulled from a PACS: ``$SEG_STUDIO_PACS_CACHE`` or the user cache dir's ``pacs/``."""
    env = os.environ.get("SEG_STUDIO_PACS_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("seg_studio", appauthor=False)) / "pacs"


def cached_series(series_uid: str, root: Path | None = None) -> Path | None:
    """The cached folder of a fully pulled series, or None."""
    folder = (root or cache_root()) / _safe(series_uid)
    return folder if (folder / _DONE).is_file() else None


def _safe(uid: str) -> str:
    if not uid or any(c not in "0123456789." for c in uid) or len(uid) > 64:
        raise PacsError(f"{uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def get_series(
    pacs: Pacs, study_uid: str, series_uid: str, root: Path | None = None, refresh: bool = False
) -> Path:
    """Pull a series into the cache (or find it there); returns its folder of ``.dcm`` files."""
    root = root or cache_root()
    final = root / _safe(series_uid)
    if not refresh and cached_series(series_uid, root):
        log.debug("series %s is in the cache: %s", series_uid, final)
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PacsError(f"cannot create the PACS cache {root}: {exc.strerror or exc}") from exc
    tmp = Path(tempfile.mkdtemp(prefix=f".{series_uid[-12:]}.tmp-", dir=root))
    try:
        n = pacs.retrieve(study_uid, series_uid, tmp)
        if n == 0:
            raise PacsError(f"the PACS at {pacs.config.describe()} has no instances of series {series_uid}")
        (tmp / _DONE).write_text(f"{n} instances from {pacs.config.describe()}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("pulled %d instances of series %s into %s", n, series_uid, final)
    return final


def find_series_by_uid(pacs: Pacs, series_uid: str) -> SeriesRow:
    """The series' row (for its study UID) when only the series UID is known."""
    rows = [r for r in pacs.find_series() if r.series_uid == series_uid]
    if not rows:
        raise PacsError(f"the PACS at {pacs.config.describe()} has no series {series_uid}")
    return rows[0]


def send_files(pacs: Pacs, paths: Sequence[Path]) -> int:
    """Push DICOM files (a SEG, or a folder of them) to the PACS; returns the number stored."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")))
        elif p.is_file():
            files.append(p)
        else:
            raise PacsError(f"{p} does not exist; nothing was sent")
    if not files:
        raise PacsError("no DICOM files to send")
    if len(files) > MAX_INSTANCES:
        raise PacsError(f"{len(files)} files is more than one send takes ({MAX_INSTANCES})")
    return pacs.store(files)


# --- shared by the two clients --------------------------------------------------------------------


class Deadline:
    """A loop's bound in time (the count is bounded by the caller): ``check()`` raises once passed."""

    def __init__(self, seconds: float, what: str) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.what = what

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise PacsError(f"{self.what} took longer than {self.seconds:.0f} s; stopped, nothing was kept")


def read_headers(files: Sequence[Path]) -> Iterator[Any]:
    """Datasets of ``files`` (with pixels: they are sent as they are)."""
    import pydicom

    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield pydicom.dcmread(f)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types
            raise PacsError(f"{f.name} is not a DICOM file ({exc}); nothing more was sent") from exc


def person_name(value: Any) -> str:
    """A DICOM JSON PersonName ({"Alphabetic": ...}) or a pydicom one, as text."""
    if isinstance(value, dict):
        return str(value.get("Alphabetic", ""))
    return str(value or "")
