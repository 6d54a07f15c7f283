"""Checkpoints: round trip, metadata, and one clear line for every kind of bad file."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from seg_studio.core import checkpoint as ckpt
from seg_studio.core.errors import CheckpointError
from seg_studio.core.models import create_model


def _tiny(dims: int = 3, out: int = 3):
    model = create_model("unet", spatial_dims=dims, in_channels=1, out_channels=out, features=4, depth=2)
    meta = ckpt.new_meta(
        model,
        "unet",
        {"features": 4, "depth": 2},
        classes=["background", "head", "tail"][:out] if out > 1 else None,
        channel_names=["T1"],
        normalization={"mode": "percentile", "low": 0.5, "high": 99.5},
        spacing=(1.0, 1.0, 2.0) if dims == 3 else (0.5, 0.5),
        patch_size=(16, 32, 32) if dims == 3 else (64, 64),
        provenance={"parent": None, "metrics": {"dice": 0.5}},
    )
    return model, meta


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg, msg
    return msg


@pytest.mark.parametrize("dims", [2, 3])
def test_round_trip_weights_and_meta(tmp_path: Path, dims: int) -> None:
    model, meta = _tiny(dims)
    with torch.no_grad():  # make BN buffers non-default so they must survive the trip
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
    path = ckpt.save(tmp_path / "m.segmodel", model, meta)
    loaded, meta2 = ckpt.load(path)
    assert not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert meta2.architecture == "unet" and meta2.arch_args == {"features": 4, "depth": 2}
    assert meta2.classes == meta.classes and meta2.classes[1].name == "head"
    assert meta2.spacing == meta.spacing and meta2.patch_size == meta.patch_size
    assert meta2.normalization["mode"] == "percentile"
    assert meta2.provenance["versions"]["torch"] == torch.__version__ and "date" in meta2.provenance
    assert meta2.provenance["metrics"] == {"dice": 0.5}
    x = torch.randn(1, 1, *(16,) * dims)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x).logits, loaded(x).logits)
    # the same bytes give the same hash; a child names its parent by it
    assert ckpt.file_hash(path) == ckpt.file_hash(path) and len(ckpt.file_hash(path)) == 64
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_file_is_plain_safetensors_with_json_meta(tmp_path: Path) -> None:
    from safetensors import safe_open

    model, meta = _tiny()
    path = ckpt.save(tmp_path / "m.segmodel", model, meta)
    with safe_open(str(path), "pt") as fh:
        record = json.loads(fh.metadata()["seg_studio"])
        assert set(fh.keys()) == set(model.state_dict())
    assert record["schema_version"] == ckpt.SCHEMA_VERSION and record["architecture"] == "unet"
    assert record["classes"][2] == {"value": 2, "name": "tail", "color": list(meta.classes[2].color)}


def test_inspect_prints_the_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seg_studio.cli import main

    model, meta = _tiny()
    meta.card = {"intended_use": "hippocampus on T1 MR"}
    path = ckpt.save(tmp_path / "m.segmodel", model, meta)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "unet" in out and "head" in out and "percentile" in out and "hippocampus on T1 MR" in out
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "unet"


def test_save_refuses_mismatched_meta(tmp_path: Path) -> None:
    model, meta = _tiny()
    meta.out_channels = 5
    with pytest.raises(CheckpointError) as exc:
        ckpt.save(tmp_path / "m.segmodel", model, meta)
    assert "5" in _one_line(exc)
    assert not (tmp_path / "m.segmodel").exists()


# --- bad checkpoints --------------------------------------------------------------------------------


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    model, meta = _tiny()
    return ckpt.save(tmp_path / "good.segmodel", model, meta)


def _rewrite_meta(src: Path, dst: Path, record: str) -> Path:
    """A copy of ``src`` whose JSON record is replaced by ``record`` (weights untouched)."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(src)), str(dst), metadata={"seg_studio": record})
    return dst


def test_truncated(good: Path, tmp_path: Path) -> None:
    data = good.read_bytes()
    for cut in (len(data) - 100, 200, 5):
        bad = tmp_path / f"cut{cut}.segmodel"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as exc:
            ckpt.load(bad)
        assert "truncated" in _one_line(exc)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "notes.segmodel"
    bad.write_bytes(b"hello, this is a text file and not a model at all" * 10)
    with pytest.raises(CheckpointError) as exc:
        ckpt.load(bad)
    assert "not a .segmodel" in _one_line(exc)
    with pytest.raises(CheckpointError) as exc:
        ckpt.load(tmp_path / "missing.segmodel")
    assert "no such" in _one_line(exc)


def test_header_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "x.segmodel"
    junk = b"\x01\x02not json at all"
    bad.write_bytes(struct.pack("<Q", len(junk)) + junk)
    with pytest.raises(CheckpointError) as exc:
        ckpt.load(bad)
    assert "not JSON" in _one_line(exc)


def test_bad_metadata_json(good: Path, tmp_path: Path) -> None:
    bad = _rewrite_meta(good, tmp_path / "bad.segmodel", '{"architecture": "unet", ')
    with pytest.raises(CheckpointError) as exc:
        ckpt.load(bad)
    assert "not valid JSON" in _one_line(exc)


def test_safetensors_without_our_metadata(good: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare.segmodel"
    save_file(load_file(str(good)), str(bare))
    with pytest.raises(CheckpointError) as exc:
        ckpt.load(bare)
    assert "import-weights" in _one_line(exc)


def test_unknown_architecture(good: Path, tmp_path: Path) -> None:
    record = ckpt.read_meta(good).to_dict()
    record["architecture"] = "os.system"
    bad = _rewrite_meta(good, tmp_path / "arch.segmodel", json.dumps(record))
    with pytest.raises(CheckpointError) as exc:
        ckpt.load(bad)
    assert "unknown model 'os.system'" in _one_line(exc)


def test_newer_schema_and_missing_field(good: Path, tmp_path: Path) -> None:
    record = ckpt.read_meta(good).to_dict()
    record["schema_version"] = ckpt.SCHEMA_VERSION + 1
    with pytest.raises(CheckpointError) as exc:
        ckpt.load(_rewrite_meta(good, tmp_path / "new.segmodel", json.dumps(record)))
    assert "newer" in _one_line(exc)
    record = ckpt.read_meta(good).to_dict()
    del record["classes"]
    with pytest.raises(CheckpointError) as exc:
        ckpt.load(_rewrite_meta(good, tmp_path / "nocls.segmodel", json.dumps(record)))
    assert "'classes'" in _one_line(exc)


def test_tensor_shape_mismatch(good: Path, tmp_path: Path) -> None:
    record = ckpt.read_meta(good).to_dict()
    record["arch_args"]["features"] = 8
    bad = _rewrite_meta(good, tmp_path / "shape.segmodel", json.dumps(record))
    with pytest.raises(CheckpointError) as exc:
        ckpt.load(bad)
    assert "shape" in _one_line(exc)


class _Evil:
    """Unpickling this would call ``open(marker, "w")``, creating the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = {"state_dict": {"head.weight": torch.zeros(1)}, "x": _Evil(marker)}
    as_pt = tmp_path / "evil.pt"
    torch.save(payload, as_pt)  # zip container, like every modern .pt
    as_pkl = tmp_path / "evil.pth"
    as_pkl.write_bytes(pickle.dumps(payload, protocol=2))  # a bare legacy pickle
    disguised = tmp_path / "evil.segmodel"
    disguised.write_bytes(as_pt.read_bytes())
    assert not marker.exists()

    for path in (as_pt, as_pkl):
        with pytest.raises(CheckpointError) as exc:
            ckpt.import_weights(path, "unet", 3, 1, 3, {"features": 4, "depth": 2})
        msg = _one_line(exc)
        assert "refused" in msg and "nothing in it was run" in msg
        assert not marker.exists()
    for path in (disguised, as_pt):
        with pytest.raises(CheckpointError) as exc:
            ckpt.load(path)
        _one_line(exc)
        assert not marker.exists()


def test_import_plain_state_dict(tmp_path: Path, good: Path) -> None:
    model, _ = ckpt.load(good)
    pt = tmp_path / "weights.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, pt)
    imported, meta = ckpt.import_weights(
        pt, "unet", 3, 1, 3, {"features": 4, "depth": 2}, classes=["bg", "a", "b"], patch_size=(16, 16, 16)
    )
    assert meta.provenance["imported_from"]["sha256"] == ckpt.file_hash(pt)
    out = ckpt.save(tmp_path / "imported.segmodel", imported, meta)
    again, meta2 = ckpt.load(out)
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [c.name for c in meta2.classes] == ["bg", "a", "b"]
    # wrong architecture arguments: a shape mismatch, one line
    with pytest.raises(CheckpointError) as exc:
        ckpt.import_weights(pt, "unet", 3, 1, 3, {"features": 8, "depth": 2})
    assert "shape" in _one_line(exc)
    with pytest.raises(CheckpointError) as exc:
        ckpt.load(pt)
    assert "import-weights" in _one_line(exc)


def test_import_weights_cli(tmp_path: Path, good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seg_studio.cli import main

    model, _ = ckpt.load(good)
    pt = tmp_path / "w.pt"
    torch.save(model.state_dict(), pt)
    out = tmp_path / "w.segmodel"
    rc = main(
        [
            "import-weights", str(pt), "--arch", "unet", "--dims", "3", "--in-channels", "1",
            "--classes", "background,head,tail", "--arch-args", '{"features": 4, "depth": 2}',
            "--normalization", '{"mode": "zscore"}', "--patch-size", "16,32,32", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0 and ckpt.read_meta(out).patch_size == (16, 32, 32)
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "PWNED"
    torch.save({"x": _Evil(marker)}, evil)
    rc = main(
        [
            "import-weights",
            str(evil),
            "--arch",
            "unet",
            "--dims",
            "3",
            "--classes",
            "3",
            "--out",
            str(tmp_path / "e.segmodel"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "refused" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "e.segmodel").exists()
