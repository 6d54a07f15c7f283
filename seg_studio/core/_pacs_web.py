"""DICOMweb side of ``core.pacs``: QIDO-RS to list, WADO-RS to pull, STOW-RS to push (dicomweb-client)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .pacs import (
    MAX_INSTANCES,
    MAX_RESULTS,
    Deadline,
    PacsConfig,
    PacsError,
    SeriesRow,
    StudyRow,
    person_name,
    read_headers,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_STUDY_FIELDS = ["00100010", "00100020", "00080020", "00081030", "00080061"]
_SERIES_FIELDS = [*_STUDY_FIELDS, "0008103E", "00080060", "00200011", "00201209"]


def _value(item: dict[str, Any], tag: str) -> Any:
    vals = (item.get(tag) or {}).get("Value") or []
    return vals[0] if vals else ""


def _text(item: dict[str, Any], tag: str) -> str:
    return person_name(_value(item, tag)) if tag == "00100010" else str(_value(item, tag))


class DicomWeb:
    """A DICOMweb PACS (Orthanc's plugin, dcm4chee, Google Healthcare...)."""

    def __init__(self, config: PacsConfig) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.config = config
        session = requests.Session()
        if config.username:
            session.auth = (config.username, config.password or "")
        self.client = DICOMwebClient(config.url.rstrip("/"), session=session, timeout=config.timeout_s)
        self.client.set_http_retry_params(retry=False)  # one try per request: loops stay bounded

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request; turn every network or HTTP failure into one ``PacsError`` line."""
        import requests

        where = self.config.describe()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn()
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code == 401:
                raise PacsError(
                    f"the PACS at {where} answered 401 Unauthorized to {what}: give --user and --password"
                ) from exc
            if code == 403:
                raise PacsError(
                    f"the PACS at {where} refused {what} (403 Forbidden): ask its administrator for access"
                ) from exc
            if code == 404:
                raise PacsError(
                    f"the PACS at {where} has no DICOMweb service there (404 on {what}); check the URL, e.g. http://host:8042/dicom-web"
                ) from exc
            raise PacsError(f"the PACS at {where} answered HTTP {code} to {what}") from exc
        except requests.exceptions.Timeout as exc:
            raise PacsError(
                f"the PACS at {where} did not answer {what} within {self.config.timeout_s:g} s"
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise PacsError(
                f"the PACS at {where} does not answer (connection refused or no route); check the URL and that it runs"
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"{what} at {where} failed: {exc}") from exc
        except ValueError as exc:  # a reply that is not DICOM JSON / multipart
            raise PacsError(
                f"the server at {where} did not answer {what} as a DICOMweb PACS would ({exc})"
            ) from exc

    def find_studies(self, patient: str | None = None) -> list[StudyRow]:
        filters = {"PatientName": patient} if patient else {}
        items = self._call(
            "the study search",
            lambda: self.client.search_for_studies(
                search_filters=filters, fields=_STUDY_FIELDS, limit=MAX_RESULTS
            ),
        )
        return [
            StudyRow(
                study_uid=_text(i, "0020000D"),
                patient_name=_text(i, "00100010"),
                patient_id=_text(i, "00100020"),
                study_date=_text(i, "00080020"),
                description=_text(i, "00081030"),
                modalities="\\".join(str(v) for v in (i.get("00080061") or {}).get("Value") or []),
            )
            for i in items
        ]

    def find_series(self, study_uid: str | None = None, modality: str | None = None) -> list[SeriesRow]:
        filters = {"Modality": modality} if modality else {}
        items = self._call(
            "the series search",
            lambda: self.client.search_for_series(
                study_instance_uid=study_uid, search_filters=filters, fields=_SERIES_FIELDS, limit=MAX_RESULTS
            ),
        )
        return [_series_row(i, study_uid) for i in items]

    def retrieve(self, study_uid: str, series_uid: str, folder: Path) -> int:
        deadline = Deadline(self.config.deadline_s, f"pulling series {series_uid}")
        stream = self._call("the series download", lambda: self.client.iter_series(study_uid, series_uid))
        n = 0
        it = iter(stream)
        while True:
            ds = self._call("the series download", lambda: next(it, None))
            if ds is None:
                break
            n += 1
            if n > MAX_INSTANCES:
                raise PacsError(f"series {series_uid} has more than {MAX_INSTANCES} instances; not pulled")
            deadline.check()
            ds.save_as(folder / f"{n:05d}.dcm", enforce_file_format=True)
        return n

    def store(self, files: Sequence[Path]) -> int:
        datasets = list(read_headers(files))
        result = self._call("storing", lambda: self.client.store_instances(datasets))
        failed = list(getattr(result, "FailedSOPSequence", []) or [])
        if failed:
            reason = getattr(failed[0], "FailureReason", "?")
            raise PacsError(
                f"the PACS at {self.config.describe()} refused {len(failed)} of {len(datasets)} instance(s) (reason {reason})"
            )
        return len(datasets)


def _series_row(i: dict[str, Any], study_uid: str | None) -> SeriesRow:
    count = _value(i, "00201209")
    return SeriesRow(
        study_uid=_text(i, "0020000D") or (study_uid or ""),
        series_uid=_text(i, "0020000E"),
        modality=_text(i, "00080060"),
        description=_text(i, "0008103E"),
        number=_text(i, "00200011"),
        instances=int(count) if str(count).isdigit() else None,
        patient_name=_text(i, "00100010"),
        patient_id=_text(i, "00100020"),
        study_date=_text(i, "00080020"),
        study_description=_text(i, "00081030"),
    )
