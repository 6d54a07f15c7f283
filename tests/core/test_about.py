"""``seg-studio --version`` names what a bug report needs: seg_studio, torch, napari, Qt, the device."""

from __future__ import annotations

from importlib import metadata

import pytest
import torch

from seg_studio import __version__
from seg_studio.cli import main
from seg_studio.core.about import installed_version, version_lines
from seg_studio.core.inference.devices import describe_hardware, pick_device


def test_version_names_every_component(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert lines["seg-studio"] == __version__
    assert lines["torch"] == torch.__version__.split("+")[0] or lines["torch"] == torch.__version__
    assert lines["napari"] == metadata.version("napari")
    assert lines["qt"].split()[-1] == metadata.version(lines["qt"].split()[0])
    assert lines["device"] == describe_hardware(pick_device("auto"))


def test_missing_distribution_says_not_installed() -> None:
    assert installed_version("no-such-distribution-seg-studio") is None
    lines = version_lines(device=False)
    assert not any(line.startswith("device:") for line in lines)
    assert all(": " in line for line in lines)
