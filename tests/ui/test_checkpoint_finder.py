"""The panel's checkpoint finder never offers a temp file (a save in progress, or one a killed run
left behind) as a model."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_temp_files_are_not_listed_as_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seg_studio.core import checkpoint as ckpt
    from seg_studio.core.models import create_model
    from seg_studio.ui.model_section import find_checkpoints

    monkeypatch.setenv("SEG_STUDIO_HOME", str(tmp_path))
    models = tmp_path / "models"
    models.mkdir()
    model = create_model("unet", spatial_dims=2, in_channels=1, out_channels=2, features=4, depth=2)
    real = ckpt.save(models / "ft.segmodel", model, ckpt.new_meta(model, "unet", {"features": 4, "depth": 2}))
    killed = models / ".ft.tmp-somehost-4242-ab12cd34.segmodel"  # what a SIGKILL mid-save leaves
    killed.write_bytes(real.read_bytes())
    old_style = models / ".ft.tmp-ab12cd34.segmodel"
    old_style.write_bytes(real.read_bytes())
    import subprocess
    import sys

    from seg_studio.core.atomic import writer_tag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours = (
        models / f".ft.tmp-{writer_tag().rsplit('-', 1)[0]}-{dead.pid}-ab12cd35.segmodel"
    )  # this host, writer gone
    ours.write_bytes(real.read_bytes())
    found = find_checkpoints()
    assert real.resolve() in found
    assert killed.resolve() not in found and old_style.resolve() not in found and ours.resolve() not in found
    assert not ours.exists(), "the panel's start did not clean a temp file whose writer is gone"
    assert killed.exists(), "another host's temp file must not be touched"
