"""The installer's self-test, run in-process without a display (the viewer step is skipped).

Real tiny checkpoints are written with ``checkpoint.save``; the broken cases are real broken files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from seg_studio import cli, selftest
from seg_studio.core import checkpoint, io
from seg_studio.core.models import create_model


def _write_model(folder: Path, dims: int, name: str = "tiny") -> Path:
    model = create_model("unet", spatial_dims=dims, in_channels=1, out_channels=4, features=4)
    patch = (32, 32, 32) if dims == 3 else (64, 64)
    meta = checkpoint.new_meta(model, "unet", {"features": 4}, patch_size=patch)
    return checkpoint.save(folder / f"{name}_{dims}d.segmodel", model, meta)


@pytest.fixture
def resources(tmp_path: Path) -> Path:
    res = tmp_path / "resources"
    (res / "models").mkdir(parents=True)
    return res


def _status(report: selftest.SelfTestReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_self_test_passes_with_a_model_and_writes_a_matching_mask(resources: Path, tmp_path: Path) -> None:
    _write_model(resources / "models", 2)
    work = tmp_path / "work"
    report = selftest.run_self_test(resources=resources, dims=2, viewer=False, workdir=work)
    assert report.ok, "\n".join(report.lines())
    assert _status(report) == {
        "sample": "PASS",
        "model": "PASS",
        "predict": "PASS",
        "save": "PASS",
        "read-back": "PASS",
        "finetune": "PASS",
        "viewer": "SKIP",
    }
    scan = io.read(work / "scans" / "input" / "sample_2d.nii.gz")
    mask = io.read(work / "mask.nii.gz")
    assert mask.same_geometry(scan)
    assert not [p for p in work.rglob("*") if ".tmp-" in p.name]
    assert (work / "finetuned.segmodel").is_file()
    assert report.lines()[-1].startswith("self-test passed")


def test_self_test_3d_sample(resources: Path) -> None:
    _write_model(resources / "models", 3)
    report = selftest.run_self_test(resources=resources, dims=3, viewer=False, finetune=False)
    assert report.ok, "\n".join(report.lines())


def test_corrupted_model_fails_with_nonzero_exit(resources: Path, tmp_path: Path, capsys) -> None:
    path = _write_model(resources / "models", 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4096])  # weights cut short, as by an interrupted download
    report = selftest.run_self_test(checkpoint=path, viewer=False)
    assert not report.ok
    assert _status(report)["model"] == "FAIL"
    assert "predict" not in _status(report)
    code = cli.main(["--self-test", "--checkpoint", str(path), "--no-viewer"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL model" in out and "self-test FAILED" in out


def test_missing_bundled_model_is_a_clear_failure(resources: Path) -> None:
    _write_model(resources / "models", 3)  # only a 3D model: the 2D self-test must say so
    report = selftest.run_self_test(resources=resources, dims=2, viewer=False)
    assert not report.ok
    model = next(c for c in report.checks if c.name == "model")
    assert model.status == "FAIL"
    assert "no bundled 2D model" in model.detail and "tiny_3d.segmodel (3D)" in model.detail


def test_min_dice_fails_an_untrained_model(resources: Path) -> None:
    _write_model(resources / "models", 2)
    report = selftest.run_self_test(resources=resources, viewer=False, min_dice=0.99, finetune=False)
    assert _status(report)["predict"] == "FAIL"
    assert not report.ok


def test_cli_spelling_and_exit_code(resources: Path, capsys) -> None:
    _write_model(resources / "models", 2)
    assert cli.main(["--self-test", "--resources", str(resources), "--no-viewer", "--no-finetune"]) == 0
    assert "self-test passed" in capsys.readouterr().out
    assert cli.main(["self-test", "--resources", str(resources / "nowhere"), "--no-viewer"]) == 1
