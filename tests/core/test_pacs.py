"""The hospital round trip against a real Orthanc (tests/orthanc_server.py): DICOMweb and DIMSE.

A TCIA series is stored in Orthanc through its own REST API, pulled with ``seg-studio pacs get``,
segmented with ``predict --out result.dcm``, pushed with ``pacs send``, found in Orthanc as a SEG
that references the series, and read back by highdicom to the voxels of the NIfTI result.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from seg_studio.cli import main
from seg_studio.core import io, pacs

CASE = ("tcia_brain_tumor_progression_dicom", "images", "PGBM-008_19930610")
MODEL = Path(__file__).resolve().parents[2] / "seg_studio" / "resources" / "models" / "demo3d_unet.segmodel"


@pytest.fixture(scope="module")
def stored(orthanc, data_dir: Path) -> dict[str, str]:  # noqa: ANN001
    files = sorted(data_dir.joinpath(*CASE).glob("*.dcm"))
    orthanc.store(files)
    import pydicom

    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return {"study": str(ds.StudyInstanceUID), "series": str(ds.SeriesInstanceUID), "n": str(len(files))}


def _dimse(orthanc) -> list[str]:  # noqa: ANN001
    return ["--host", "127.0.0.1", "--port", str(orthanc.dicom_port), "--aet", "ORTHANC_TEST"]


def _seg_series(orthanc) -> dict[str, dict]:  # noqa: ANN001
    """Orthanc's SEG series by ID."""
    return {
        s["ID"]: s for s in orthanc.get_json("/series?expand") if s["MainDicomTags"].get("Modality") == "SEG"
    }


def test_round_trip_pull_segment_push_find_read_back(
    orthanc, stored, pacs_cache: Path, tmp_path: Path, capsys
) -> None:  # noqa: ANN001
    web = ["--url", orthanc.dicomweb]
    assert main(["pacs", "find", *web]) == 0
    assert stored["study"] in capsys.readouterr().out
    assert main(["pacs", "get", stored["series"], *web]) == 0
    folder = pacs.cached_series(stored["series"])
    assert folder is not None and len(list(folder.glob("*.dcm"))) == int(stored["n"])
    assert "pulled" in capsys.readouterr().out
    assert main(["pacs", "get", stored["series"], *web]) == 0  # second time: from the cache
    assert "in the cache" in capsys.readouterr().out

    seg_path, nii_path = tmp_path / "result.dcm", tmp_path / "result.nii.gz"
    common = ["--model", str(MODEL), "--overlap", "0", "--device", "cpu", "--precision", "fp32"]
    assert main(["predict", str(folder), *common, "--out", str(seg_path)]) == 0
    assert main(["predict", str(folder), *common, "--out", str(nii_path)]) == 0
    assert main(["info", str(seg_path)]) == 0
    info = capsys.readouterr().out
    assert "segment 1: organ" in info and stored["series"] in info and "demo3d_unet" in info

    earlier = _seg_series(orthanc)  # the Orthanc fixture is shared with the other PACS tests
    assert main(["pacs", "send", str(seg_path), *web]) == 0
    segs = [s for sid, s in _seg_series(orthanc).items() if sid not in earlier]
    assert len(segs) == 1
    inst = orthanc.get_json(f"/instances/{segs[0]['Instances'][0]}/tags?simplify")
    assert inst["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == stored["series"]
    assert inst["StudyInstanceUID"] == stored["study"]

    # pull the SEG back from the PACS and read it with highdicom: the voxels of the NIfTI result
    seg_uid = inst["SeriesInstanceUID"]
    assert main(["pacs", "get", seg_uid, "--study", stored["study"], *_dimse(orthanc)]) == 0
    pulled = next(pacs.cached_series(seg_uid).glob("*.dcm"))
    import highdicom as hd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.segread(str(pulled))
    scan, nifti = io.read(folder), io.read(nii_path)
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=scan.meta["sop_instance_uids"], combine_segments=True
    )
    assert np.array_equal(got, nifti.array) and nifti.array.any()


def test_dimse_find_get_send(orthanc, stored, pacs_cache: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["pacs", "find", "--series-level", *_dimse(orthanc), "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    row = next(r for r in rows if r["series_uid"] == stored["series"])
    assert row["modality"] == "MR" and row["instances"] == int(stored["n"])
    assert main(["pacs", "get", stored["series"], "--refresh", *_dimse(orthanc)]) == 0
    folder = pacs.cached_series(stored["series"])
    assert io.read(folder).spatial_shape[0] == int(stored["n"])
    labels = io.read(folder)
    mask = labels.with_array(
        (labels.array > np.percentile(labels.array, 90)).astype(np.uint8),
        meta={"kind": "labels"},
        source=None,
    )
    nii = io.write(mask, tmp_path / "m.nii.gz")
    out = tmp_path / "m.dcm"
    assert main(["export", str(nii), "--like", str(folder), "--out", str(out)]) == 0
    before = len(orthanc.get_json("/instances"))
    assert main(["pacs", "send", str(out), *_dimse(orthanc)]) == 0
    assert len(orthanc.get_json("/instances")) == before + 1


def _one_line_error(capsys, argv: list[str]) -> str:  # noqa: ANN001
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def strict_orthanc(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """An Orthanc that wants a password over HTTP and its own AE title over DIMSE."""
    from orthanc_server import start_orthanc

    server = start_orthanc(
        tmp_path_factory.mktemp("strict"), dicom=True, users={"alice": "s3cret"}, check_called_aet=True
    )
    yield server
    server.stop()


@contextlib.contextmanager
def _silent_server():  # noqa: ANN202
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a hung PACS)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(timeout=5)
        for c in held:
            c.close()
        srv.close()


def test_down_refused_unauthorised_or_hung_pacs_gets_one_line_and_nothing_cached(
    strict_orthanc,
    stored,
    pacs_cache: Path,
    capsys,  # noqa: ANN001
) -> None:
    from orthanc_server import free_port

    series = [stored["series"], "--study", stored["study"]]
    dead = free_port()
    err = _one_line_error(capsys, ["pacs", "find", "--url", f"http://127.0.0.1:{dead}/dicom-web"])
    assert "does not answer" in err
    err = _one_line_error(capsys, ["pacs", "get", *series, "--host", "127.0.0.1", "--port", str(dead)])
    assert "does not answer" in err
    err = _one_line_error(capsys, ["pacs", "get", *series, "--url", strict_orthanc.dicomweb])
    assert "401" in err and "--user" in err
    assert (
        main(["pacs", "find", "--url", strict_orthanc.dicomweb, "--user", "alice", "--password", "s3cret"])
        == 0
    )
    capsys.readouterr()
    dimse = ["--host", "127.0.0.1", "--port", str(strict_orthanc.dicom_port)]
    err = _one_line_error(capsys, ["pacs", "find", *dimse, "--aet", "NOT_ORTHANC"])
    assert "refused the association" in err
    with _silent_server() as port:
        web = ["--url", f"http://127.0.0.1:{port}/dicom-web", "--timeout", "1"]
        err = _one_line_error(capsys, ["pacs", "get", *series, *web])
        assert "within 1 s" in err
        err = _one_line_error(
            capsys, ["pacs", "get", *series, "--host", "127.0.0.1", "--port", str(port), "--timeout", "1"]
        )
        assert "does not answer" in err
    assert not pacs_cache.exists() or not any(pacs_cache.iterdir())  # nothing half-stored
