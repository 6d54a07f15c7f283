"""Shared fixtures: the real data sets in ../shared/data and small deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEG_STUDIO_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data`` (CI has it at the same path); a missing folder is an error, not a skip."""
    if not DATA.is_dir():
        pytest.fail(f"test data not found at {DATA}; set SEG_STUDIO_DATA to the shared/data folder")
    return DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Seed torch for tests that use it, without importing it for those that do not (I/O, UI)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _compiled_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Graphs the compiled inference backends export go to a temp folder, not the user's cache."""
    os.environ.setdefault("SEG_STUDIO_CACHE", str(tmp_path_factory.mktemp("seg-cache")))


# --- a real Orthanc (tests/orthanc_server.py); .ci/run installs the Debian packages --------------------


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - OrthancServer
    """One Orthanc for the session: DICOMweb and DIMSE on free 127.0.0.1 ports, temp storage."""
    from orthanc_server import start_orthanc

    server = start_orthanc(tmp_path_factory.mktemp("orthanc"), dicom=True)
    yield server
    server.stop()


@pytest.fixture
def pacs_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Series pulled from a PACS go to a temp cache, never to the user's."""
    cache = tmp_path / "pacs_cache"
    monkeypatch.setenv("SEG_STUDIO_PACS_CACHE", str(cache))
    return cache
