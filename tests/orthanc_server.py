"""A real Orthanc for tests: started from a JSON config on free ports of 127.0.0.1, stopped after.

Orthanc 1.10 binds every interface (it has no bind-address setting), so tests talk to 127.0.0.1
only, remote access is off, and the DICOM server is off unless a test needs DIMSE.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AET = "ORTHANC_TEST"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OrthancServer:
    process: subprocess.Popen
    http_port: int
    dicom_port: int | None
    folder: Path
    users: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def _request(self, path: str, data: bytes | None = None, method: str | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self.users:
            import base64

            user, pw = next(iter(self.users.items()))
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def get_json(self, path: str):  # noqa: ANN201 - JSON
        return json.loads(self._request(path))

    def store(self, files: list[Path]) -> int:
        """Upload DICOM files through Orthanc's own REST API (not the code under test)."""
        for f in files:
            self._request("/instances", f.read_bytes(), "POST")
        return len(files)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_orthanc(
    folder: Path, dicom: bool = False, users: dict[str, str] | None = None, check_called_aet: bool = False
) -> OrthancServer:
    """Start Orthanc with storage in ``folder``; waits until its REST API answers (about 2 s)."""
    if not Path(ORTHANC).exists() or not PLUGIN.exists():
        raise RuntimeError(
            "Orthanc is not installed: apt-get install -y orthanc orthanc-dicomweb (.ci/run does)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    dicom_port = free_port() if dicom else None
    cfg = {
        "Name": "seg_studio_test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port,
        "DicomServerEnabled": dicom,
        "DicomPort": dicom_port or free_port(),
        "DicomAet": AET,
        "DicomCheckCalledAet": check_called_aet,
        "DicomModalities": {"seg_studio": ["SEG_STUDIO", "127.0.0.1", 1]},
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
        "HttpTimeout": 30,
    }
    conf = folder / "orthanc.json"
    conf.write_text(json.dumps(cfg, indent=1))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([ORTHANC, str(conf)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = OrthancServer(proc, http_port, dicom_port, folder, dict(users or {}))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"Orthanc exited with {proc.returncode}: {(folder / 'orthanc.log').read_text()[-2000:]}"
            )
        try:
            server.get_json("/system")
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    server.stop()
    raise RuntimeError("Orthanc did not answer within 60 s")
