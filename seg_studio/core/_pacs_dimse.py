"""DIMSE side of ``core.pacs``: C-FIND to list, C-GET to pull, C-STORE to push (pynetdicom).

C-GET brings the instances back on the same association (no C-MOVE destination to configure on the
PACS); the storage SOP classes we accept are proposed with the SCP role.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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

#: Storage SOP classes a pulled series may hold (C-GET proposes each with the SCP role).
_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary capture
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
)


class Dimse:
    """A PACS spoken to over DIMSE (any AE: Orthanc, dcm4chee, a modality's archive)."""

    def __init__(self, config: PacsConfig) -> None:
        self.config = config

    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.config.calling_aet)
        t = self.config.timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = t
        ae.maximum_associations = 1
        return ae

    @contextlib.contextmanager
    def _association(self, ae: Any, what: str, **kwargs: Any) -> Iterator[Any]:
        where = self.config.describe()
        assoc = ae.associate(self.config.host, int(self.config.port), ae_title=self.config.aet, **kwargs)
        if assoc.is_rejected:
            reason = _reject_reason(assoc)
            raise PacsError(
                f"the PACS {where} refused the association for {what} ({reason}); check --aet and --calling-aet"
            )
        if not assoc.is_established:
            raise PacsError(
                f"the PACS {where} does not answer (no connection within {self.config.timeout_s:g} s, or it "
                "dropped it); check --host, --port and that it runs"
            )
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _find(self, query: Any, what: str) -> list[Any]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        ae = self._ae()
        ae.add_requested_context(FIND)
        out = []
        with self._association(ae, what) as assoc:
            for status, ident in assoc.send_c_find(query, FIND):
                _check_status(status, what, self.config.describe(), pending_ok=True)
                if ident is not None:
                    out.append(ident)
                if len(out) >= MAX_RESULTS:
                    log.warning("%s: more than %d results; showing the first", what, MAX_RESULTS)
                    assoc.abort()
                    break
        return out

    def find_studies(self, patient: str | None = None) -> list[StudyRow]:
        from pydicom.dataset import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        for kw in ("StudyInstanceUID", "PatientID", "StudyDate", "StudyDescription", "ModalitiesInStudy"):
            setattr(q, kw, "")
        q.PatientName = patient or ""
        rows = self._find(q, "the study search")
        return [
            StudyRow(
                study_uid=str(r.get("StudyInstanceUID", "")),
                patient_name=person_name(r.get("PatientName", "")),
                patient_id=str(r.get("PatientID", "")),
                study_date=str(r.get("StudyDate", "")),
                description=str(r.get("StudyDescription", "")),
                modalities="\\".join(_as_list(r.get("ModalitiesInStudy", ""))),
            )
            for r in rows
        ]

    def find_series(self, study_uid: str | None = None, modality: str | None = None) -> list[SeriesRow]:
        studies = [study_uid] if study_uid else [s.study_uid for s in self.find_studies()]
        out: list[SeriesRow] = []
        for uid in studies[:MAX_RESULTS]:
            out.extend(self._series_of(uid, modality))
            if len(out) >= MAX_RESULTS:
                break
        return out[:MAX_RESULTS]

    def _series_of(self, study_uid: str, modality: str | None) -> list[SeriesRow]:
        from pydicom.dataset import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = study_uid
        for kw in (
            "SeriesInstanceUID",
            "SeriesDescription",
            "SeriesNumber",
            "NumberOfSeriesRelatedInstances",
        ):
            setattr(q, kw, "")
        q.Modality = modality or ""
        return [
            SeriesRow(
                study_uid=study_uid,
                series_uid=str(r.get("SeriesInstanceUID", "")),
                modality=str(r.get("Modality", "")),
                description=str(r.get("SeriesDescription", "")),
                number=str(r.get("SeriesNumber", "")),
                instances=_int(r.get("NumberOfSeriesRelatedInstances")),
            )
            for r in self._find(q, "the series search")
        ]

    def retrieve(self, study_uid: str, series_uid: str, folder: Path) -> int:
        from pydicom.dataset import Dataset
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        ae = self._ae()
        ae.add_requested_context(GET)
        for uid in _STORAGE:
            ae.add_requested_context(uid)
        roles = [build_role(uid, scp_role=True) for uid in _STORAGE]
        got: list[Path] = []
        deadline = Deadline(self.config.deadline_s, f"pulling series {series_uid}")

        def on_store(event: Any) -> int:
            if len(got) >= MAX_INSTANCES or _past(deadline):
                return 0xA700  # out of resources: the PACS stops sending
            ds = event.dataset
            ds.file_meta = event.file_meta
            path = folder / f"{len(got) + 1:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            got.append(path)
            return 0x0000

        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID, q.SeriesInstanceUID = study_uid, series_uid
        handlers = [(evt.EVT_C_STORE, on_store)]
        with self._association(ae, "pulling the series", ext_neg=roles, evt_handlers=handlers) as assoc:
            for status, _ident in assoc.send_c_get(q, GET):
                _check_status(status, "pulling the series", self.config.describe(), pending_ok=True)
        deadline.check()
        if len(got) >= MAX_INSTANCES:
            raise PacsError(f"series {series_uid} has more than {MAX_INSTANCES} instances; not pulled")
        return len(got)

    def store(self, files: Sequence[Path]) -> int:
        datasets = list(read_headers(files))
        ae = self._ae()
        for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
            ae.add_requested_context(uid)
        deadline = Deadline(self.config.deadline_s, "sending")
        with self._association(ae, "sending") as assoc:
            for ds in datasets:
                deadline.check()
                status = assoc.send_c_store(ds)
                _check_status(status, f"storing {Path(ds.filename).name}", self.config.describe())
        return len(datasets)


def _past(deadline: Deadline) -> bool:
    try:
        deadline.check()
    except PacsError:
        return True
    return False


def _check_status(status: Any, what: str, where: str, pending_ok: bool = False) -> None:
    """A DIMSE reply status that is not success (or pending) is one ``PacsError``."""
    if status is None or "Status" not in status:
        raise PacsError(f"the PACS {where} did not answer {what} (timeout or aborted association)")
    code = int(status.Status)
    if code == 0x0000 or (pending_ok and code in (0xFF00, 0xFF01)):
        return
    if code in (0xB000, 0xB007, 0xB006):  # warnings: stored with coercion / sub-operations warned
        log.warning("%s: the PACS answered with warning 0x%04X", what, code)
        return
    comment = str(status.get("ErrorComment", "") or "")
    raise PacsError(
        f"the PACS {where} refused {what} (status 0x{code:04X}{': ' + comment if comment else ''})"
    )


def _reject_reason(assoc: Any) -> str:
    try:
        prim = assoc.acceptor.primitive
        return f"{prim.result_str}: {prim.reason_str}"
    except AttributeError:
        return "association rejected"


def _as_list(v: Any) -> list[str]:
    if isinstance(v, str):
        return [x for x in v.split("\\") if x]
    return [str(x) for x in (v or [])]


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
