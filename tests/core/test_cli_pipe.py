"""A closed stdout (``seg-studio info X | head``) ends every command quietly: no traceback, no
'Exception ignored' at exit. Real processes, the reading end closed before they write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seg_studio.cli.main import EXIT_STDOUT_CLOSED

REPO = Path(__file__).resolve().parents[2]


def _run_into_closed_pipe(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "seg_studio", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()  # the reader went away before the first line (what `| head -0` does)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err.decode(errors="replace")


@pytest.mark.parametrize(
    "args",
    [
        ["info", "{data}/msd_task04_hippocampus/images/hippocampus_003.nii.gz"],
        ["info", "{data}/tcia_brain_tumor_progression_dicom/images/PGBM-003_19950329", "--json"],
        ["models"],
        ["inspect", "{repo}/resources/models/demo2d_unet.segmodel"],
        [
            "evaluate",
            "--pred",
            "{data}/msd_task04_hippocampus/labels/hippocampus_003.nii.gz",
            "--truth",
            "{data}/msd_task04_hippocampus/labels/hippocampus_003.nii.gz",
        ],
        ["--help"],
        ["demo", "--out", "{tmp}/sample"],
    ],
)
def test_a_closed_stdout_ends_quietly(args: list[str], data_dir: Path, tmp_path: Path) -> None:
    args = [a.format(data=data_dir, repo=REPO, tmp=tmp_path) for a in args]
    env = dict(os.environ, SEG_STUDIO_HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    code, err = _run_into_closed_pipe(args, env)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert code in (0, EXIT_STDOUT_CLOSED), (code, err)  # argparse swallows the error of --help itself
