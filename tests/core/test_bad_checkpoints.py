"""Checkpoints are untrusted: every metadata field, the tensor table and the weights of a bad
``.segmodel`` (and a bad ``resume.pt``) give one clear line, fast, and allocate nothing big."""

from __future__ import annotations

import json
import math
import pickle
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from badinput import REPO, Bad, raw_safetensors, read_record, record, rewrite, run_case, scan, tiny_model

# --- helpers ----------------------------------------------------------------------------------------


def _set(dotted: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change of the record: ``_set("arch_args.depth", 60)``, ``_set("classes.1.value", -3)``."""

    def change(rec: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node: Any = rec
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def _no_mask(tmp: Path, out: str, err: str) -> None:
    assert not (tmp / "mask.nii.gz").exists(), "a mask was written from a bad checkpoint"


def _predict(bad: Path, tmp: Path, dims: int) -> list[str]:
    s = scan(tmp / "scan.nii.gz", (40, 48) if dims == 2 else (16, 24, 24))
    return ["predict", str(s), "--model", str(bad), "--out", str(tmp / "mask.nii.gz")]


def meta_case(
    case_id: str, given: str, change: Callable[[dict[str, Any]], None], expect: str, *, cmd: str = "predict",
    dims: int = 2, rc: int = 2, after: Callable[[Path, str, str], None] | None = None, max_s: float | None = None,
) -> Bad:  # fmt: skip
    """A real checkpoint whose JSON record ``change`` alters; run through ``predict`` or ``inspect``."""

    def make(tmp: Path) -> list[str]:
        bad = rewrite(tiny_model(tmp / "good.segmodel", dims), tmp / "bad.segmodel", change)
        return ["inspect", str(bad)] if cmd == "inspect" else _predict(bad, tmp, dims)

    return Bad(
        case_id,
        "checkpoint metadata",
        given,
        make,
        expect,
        rc,
        after or (_no_mask if rc == 2 else None),
        max_s,
    )


def file_case(
    case_id: str, given: str, build: Callable[[Path], Path], expect: str, cmd: str = "predict"
) -> Bad:
    """A file built from scratch (or a path that is not a file) given as the checkpoint."""

    def make(tmp: Path) -> list[str]:
        bad = build(tmp)
        return ["inspect", str(bad)] if cmd == "inspect" else _predict(bad, tmp, 2)

    return Bad(case_id, "checkpoint file", given, make, expect, 2, _no_mask if cmd == "predict" else None)


def tensor_case(
    case_id: str, given: str, change: Callable[[dict[str, torch.Tensor]], Any], expect: str
) -> Bad:
    def make(tmp: Path) -> list[str]:
        good = tiny_model(tmp / "good.segmodel")
        return _predict(rewrite(good, tmp / "bad.segmodel", tensors=change), tmp, 2)

    return Bad(case_id, "checkpoint weights", given, make, expect, 2, _no_mask)


def _classes(values: list[Any]) -> Callable[[dict[str, Any]], None]:
    def change(rec: dict[str, Any]) -> None:
        for c, v in zip(rec["classes"], values, strict=False):
            c["value"] = v

    return change


def _ensemble(members: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def change(rec: dict[str, Any]) -> None:
        rec["architecture"] = "ensemble"
        rec["arch_args"] = {"members": members}

    return change


def _all(fill: float) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    return lambda st: {k: torch.full_like(v, fill) if v.is_floating_point() else v for k, v in st.items()}


def _one_inf(st: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    k = next(k for k, v in st.items() if v.is_floating_point() and v.numel() > 10)
    st[k] = st[k].clone()
    st[k].view(-1)[3] = math.inf
    return st


def _drop_one(st: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    st.pop(next(iter(st)))
    return st


def _add_one(st: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    st["backdoor.weight"] = torch.zeros(3)
    return st


def _as_int(st: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    k = next(k for k, v in st.items() if v.is_floating_point())
    st[k] = st[k].to(torch.int64)
    return st


def _wider_meta(rec: dict[str, Any]) -> None:
    rec["arch_args"]["features"] = 8


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def _evil_pickle(tmp: Path, name: str) -> Path:
    p = tmp / name
    p.write_bytes(pickle.dumps({"optimizer": _Evil(str(tmp / "PWNED"))}))
    return p


def _torch_zip(tmp: Path) -> Path:
    p = tmp / "zip.segmodel"
    torch.save({"w": torch.zeros(2)}, p)
    return p


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name

    return build


def _header_with_bad_offsets(tmp: Path) -> Path:
    good = tiny_model(tmp / "good.segmodel")
    raw = good.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, 4]
    return raw_safetensors(tmp / "offsets.segmodel", header, raw[8 + n :])


def _metadata_not_a_dict(tmp: Path) -> Path:
    return raw_safetensors(tmp / "m.segmodel", {"__metadata__": 5})


def _truncated(tmp: Path) -> Path:
    data = tiny_model(tmp / "good.segmodel").read_bytes()
    (tmp / "cut.segmodel").write_bytes(data[: len(data) - 1000])
    return tmp / "cut.segmodel"


def _folder(tmp: Path) -> Path:
    (tmp / "folder.segmodel").mkdir()
    return tmp / "folder.segmodel"


def _dangling(tmp: Path) -> Path:
    (tmp / "link.segmodel").symlink_to(tmp / "gone.segmodel")
    return tmp / "link.segmodel"


def _unicode_ok(tmp: Path) -> list[str]:
    m = tiny_model(tmp / "modèle 模型 ü.segmodel")
    return _predict(m, tmp, 2)


def _escape_name(name: str) -> Callable[[dict[str, Any]], None]:
    return _set("classes.1.name", name)


def _no_forged_line(tmp: Path, out: str, err: str) -> None:
    assert not any(ln.startswith("FORGED") for ln in out.splitlines()), out
    assert "\\n" in out


def _import_case(tmp: Path) -> list[str]:
    good = tiny_model(tmp / "good.segmodel")
    from safetensors.torch import load_file

    torch.save(load_file(str(good)), tmp / "w.pt")
    return ["import-weights", str(tmp / "w.pt"), "--arch", "unet", "--dims", "2", "--classes", "3",
            "--arch-args", '{"features": 4, "depth": 60}', "--out", str(tmp / "x.segmodel")]  # fmt: skip


def _domain_ok(rec: dict[str, Any]) -> None:
    """A real domain (the bundled 2D demo model's) and a key this version does not know: both load."""
    rec["domain"] = read_record(REPO / "resources" / "models" / "demo2d_unet.segmodel")["domain"]
    rec["a_field_from_the_future"] = {"anything": [1, 2, 3]}


# fmt: off
CASES: list[Bad] = [
    # architecture arguments: bounded before anything is built
    meta_case("ck-depth-60", "arch_args depth = 60 (took 23.5 GB before)", _set("arch_args.depth", 60), "depth = 60 is outside", max_s=10),
    meta_case("ck-features-4096", "arch_args features = 4096", _set("arch_args.features", 4096), "features = 4096 is outside", max_s=10),
    meta_case("ck-params-huge", "features 512, depth 8: 10^11 parameters", lambda r: r["arch_args"].update(features=512, depth=8), "parameters", max_s=20),
    meta_case("ck-depth-0", "arch_args depth = 0", _set("arch_args.depth", 0), "outside"),
    meta_case("ck-depth-string", "arch_args depth = \"deep\"", _set("arch_args.depth", "deep"), "bad configuration"),
    meta_case("ck-features-negative", "arch_args features = -4", _set("arch_args.features", -4), "outside"),
    meta_case("ck-features-float", "arch_args features = 4.5", _set("arch_args.features", 4.5), "bad configuration"),
    meta_case("ck-features-nan", "arch_args features = NaN", _set("arch_args.features", math.nan), "not a finite number"),
    meta_case("ck-arch-args-unknown", "arch_args with an argument the builder lacks", _set("arch_args.evil", 1), "bad configuration"),
    meta_case("ck-arch-args-list", "arch_args is a list", _set("arch_args", [1, 2]), "must be a JSON object"),
    meta_case("ck-arch-args-object", "an arch argument that is an object", _set("arch_args.features", {"a": 1}), "unsupported type"),
    meta_case("ck-arch-args-long-list", "an arch argument that is a list of 10^5 numbers", _set("arch_args.widths", list(range(100000))), "entries"),
    meta_case("ck-encoder-weights", "res_unet with encoder_weights = /etc/passwd", lambda r: r.update(architecture="res_unet", arch_args={"encoder_weights": "/etc/passwd"}), "names a file"),
    meta_case("ck-ensemble-100", "an ensemble of 100 members", _ensemble([{"architecture": "unet", "arch_args": {"features": 4, "depth": 2}}] * 100), "at most 16"),
    meta_case("ck-ensemble-nested", "an ensemble that contains an ensemble", _ensemble([{"architecture": "ensemble", "arch_args": {}}]), "cannot contain another ensemble"),
    meta_case("ck-ensemble-member-depth", "an ensemble member with depth 60", _ensemble([{"architecture": "unet", "arch_args": {"depth": 60}}]), "depth = 60"),
    meta_case("ck-arch-unknown", "architecture \"os.system\"", _set("architecture", "os.system"), "unknown model 'os.system'"),
    meta_case("ck-arch-not-string", "architecture 42", _set("architecture", 42), "must be a string"),
    meta_case("ck-arch-missing", "no architecture field", lambda r: r.pop("architecture"), "lacks the field 'architecture'"),
    # dims and channels
    meta_case("ck-dims-4", "spatial_dims 4", _set("spatial_dims", 4), "outside 2..3"),
    meta_case("ck-dims-bool", "spatial_dims true", _set("spatial_dims", True), "must be an integer"),
    meta_case("ck-dims-wrong", "a 2D model that says it is 3D", _set("spatial_dims", 3), "patch_size|shape"),
    meta_case("ck-in-channels-0", "in_channels 0", _set("in_channels", 0), "in_channels"),
    meta_case("ck-in-channels-huge", "in_channels 10^9", _set("in_channels", 10**9), "in_channels"),
    meta_case("ck-out-channels-0", "out_channels 0", _set("out_channels", 0), "out_channels"),
    meta_case("ck-out-channels-huge", "out_channels 10^6", _set("out_channels", 10**6), "out_channels"),
    meta_case("ck-classes-count", "2 classes listed for 3 outputs", lambda r: r["classes"].pop(), "2 classes listed"),
    meta_case("ck-classes-missing", "no classes field", lambda r: r.pop("classes"), "lacks the field 'classes'"),
    # patch size
    meta_case("ck-patch-0", "patch_size [0, 32] (StopIteration traceback before)", _set("patch_size", [0, 32]), "patch_size"),
    meta_case("ck-patch-negative", "patch_size [-32, 32]", _set("patch_size", [-32, 32]), "patch_size"),
    meta_case("ck-patch-length", "patch_size [32] for a 2D model", _set("patch_size", [32]), "patch_size"),
    meta_case("ck-patch-float", "patch_size [32.5, 32]", _set("patch_size", [32.5, 32]), "patch_size"),
    meta_case("ck-patch-huge", "patch_size 4096^3", _set("patch_size", [4096] * 3), "voxels", dims=3),
    meta_case("ck-patch-string", "patch_size \"big\"", _set("patch_size", "big"), "patch_size"),
    # spacing
    meta_case("ck-spacing-nan", "spacing [NaN, 1] (ValueError traceback before)", _set("spacing", [math.nan, 1.0]), "not a finite number"),
    meta_case("ck-spacing-inf", "spacing [Infinity, 1]", _set("spacing", [math.inf, 1.0]), "not a finite number"),
    meta_case("ck-spacing-negative", "spacing [-1, 1]", _set("spacing", [-1.0, 1.0]), "outside"),
    meta_case("ck-spacing-zero", "spacing [0, 0]", _set("spacing", [0.0, 0.0]), "outside"),
    meta_case("ck-spacing-length", "spacing of 3 values for a 2D model", _set("spacing", [1.0, 1.0, 1.0]), "spacing must be"),
    meta_case("ck-spacing-string", "spacing \"fine\"", _set("spacing", "fine"), "spacing must be"),
    meta_case("ck-spacing-tiny", "spacing 0.01 mm on a 1 mm scan (247 GB asked before)", _set("spacing", [0.01] * 3), "needs .* of memory", dims=3, max_s=15),
    # classes: values, names, colours
    meta_case("ck-class-negative", "class value -3 (OverflowError traceback before)", _classes([0, -3]), "label value -3"),
    meta_case("ck-class-huge", "class value 2**40", _classes([0, 2**40]), "label value 1099511627776"),
    meta_case("ck-class-duplicate", "two classes with the value 1 (merged silently before)", _classes([0, 1, 1]), "share the label value 1"),
    meta_case("ck-class-bool", "class value true", _classes([0, True]), "label value true"),
    meta_case("ck-class-float", "class value 1.5", _classes([0, 1.5]), "label value 1.5"),
    meta_case("ck-colour-2", "a colour with 2 components (IndexError in inspect before)", _set("classes.1.color", [255, 0]), "colour", cmd="inspect"),
    meta_case("ck-colour-300", "a colour component of 300", _set("classes.1.color", [300, 0, 0]), "colour", cmd="inspect"),
    meta_case("ck-colour-string", "a colour \"red\"", _set("classes.1.color", "red"), "colour", cmd="inspect"),
    meta_case("ck-class-record", "a class that is a string", _set("classes.1", "liver"), "not a {value, name, color}", cmd="inspect"),
    meta_case("ck-name-number", "a class name that is a number", _set("classes.1.name", 5), "must be a string", cmd="inspect"),
    meta_case("ck-name-long", "a class name of 10 000 characters", _set("classes.1.name", "x" * 10000), "characters long", cmd="inspect"),
    meta_case("ck-name-escapes", "a class name that clears the screen and retitles the terminal", _escape_name("\x1b[2J\x1b]0;pwned\x07liver"), r"\\x1b\[2J", cmd="inspect", rc=0),
    meta_case("ck-name-newline", "a class name with a newline that forges a line of output", _escape_name("liver\nFORGED all checks passed"), "liver", cmd="inspect", rc=0, after=_no_forged_line),
    meta_case("ck-name-bidi", "a class name with a right-to-left override", _escape_name("gpj.\u202eexe"), r"\\u202e", cmd="inspect", rc=0),
    meta_case("ck-card-escapes", "a card text with escape codes", _set("card", {"use": "\x1b[31mred alert"}), r"\\x1b\[31m", cmd="inspect", rc=0),
    meta_case("ck-channel-names", "2 channel names for 1 input channel", _set("channel_names", ["a", "b"]), "channel_names"),
    # normalisation
    meta_case("ck-norm-mode", "normalisation mode \"evil\"", _set("normalization", {"mode": "evil"}), "normalisation mode 'evil'"),
    meta_case("ck-norm-window", "a CT window with low > high", _set("normalization", {"mode": "ct_window", "low": 100, "high": -100}), "low < high"),
    meta_case("ck-norm-std-0", "a z-score std of 0", _set("normalization", {"mode": "zscore", "std": 0}), r"std = 0 \(must be > 0\)"),
    meta_case("ck-norm-mean-nan", "a z-score mean of NaN", _set("normalization", {"mode": "zscore", "mean": math.nan}), "not a finite number"),
    meta_case("ck-norm-percentile", "percentiles 50..500", _set("normalization", {"mode": "percentile", "low": 50, "high": 500}), "percentile"),
    meta_case("ck-norm-string", "normalisation is a string", _set("normalization", "zscore"), "must be a JSON object"),
    # the record itself
    meta_case("ck-schema-negative", "schema_version -1", _set("schema_version", -1), "schema_version -1 is not"),
    meta_case("ck-schema-string", "schema_version \"1\"", _set("schema_version", "1"), "no schema_version"),
    meta_case("ck-schema-newer", "schema_version 99", _set("schema_version", 99), "newer seg_studio"),
    meta_case("ck-format-other", "format \"evil\"", _set("format", "evil"), "format 'evil' is not"),
    meta_case("ck-provenance-list", "provenance is a list", _set("provenance", [1]), "'provenance' must be a JSON object"),
    meta_case("ck-provenance-huge", "9 MB of provenance", _set("provenance", {"x": "a" * (9 << 20)}), "bytes"),
    meta_case("ck-domain-list", "domain is a list", _set("domain", [1]), "'domain' must be a JSON object"),
    meta_case("ck-domain-huge", "a 70 kB domain", _set("domain", {"x": "a" * 70000}), "'domain' takes"),
    meta_case("ck-domain-and-future-keys", "a domain object and an unknown top-level key", _domain_ok, "wrote", rc=0),
    Bad("ck-record-nested", "checkpoint metadata", "a metadata record nested 100 000 deep", lambda t: _predict(rewrite(tiny_model(t / "g.segmodel"), t / "b.segmodel", record="[" * 100000), t, 2), "nested too deeply"),
    Bad("ck-record-not-json", "checkpoint metadata", "a metadata record that is not JSON", lambda t: _predict(rewrite(tiny_model(t / "g.segmodel"), t / "b.segmodel", record="{oops"), t, 2), "not valid JSON"),
    Bad("ck-record-array", "checkpoint metadata", "a metadata record that is a JSON array", lambda t: _predict(rewrite(tiny_model(t / "g.segmodel"), t / "b.segmodel", record="[1, 2]"), t, 2), "not a JSON object"),
    # weights
    tensor_case("ck-weights-nan", "all weights NaN (an empty mask with exit 0 before)", _all(math.nan), "NaN or infinite"),
    tensor_case("ck-weights-inf", "one weight infinite", _one_inf, "1 NaN or infinite"),
    tensor_case("ck-tensor-missing", "a tensor missing", _drop_one, "1 missing"),
    tensor_case("ck-tensor-extra", "an extra tensor", _add_one, "1 unexpected"),
    tensor_case("ck-tensor-dtype", "a weight stored as int64", _as_int, "stored as I64"),
    meta_case("ck-weights-shape", "metadata for wider weights than the file holds", _wider_meta, "has shape"),
    file_case("ck-header-offsets", "a tensor table whose offsets do not match the shapes", _header_with_bad_offsets, "wrong byte size|corrupt"),
    file_case("ck-header-length", "a header length of 2^63", _write("len.segmodel", struct.pack("<Q", 2**63) + b"x" * 64), "unrecognised header"),
    file_case("ck-header-nested", "a header nested 100 000 deep", lambda t: raw_safetensors(t / "n.segmodel", b"[" * 100000), "header is not JSON"),
    file_case("ck-header-array", "a header that is a JSON array", lambda t: raw_safetensors(t / "a.segmodel", b"[1]"), "not a JSON object"),
    file_case("ck-metadata-not-object", "__metadata__ that is a number", _metadata_not_a_dict, "without seg_studio metadata"),
    file_case("ck-empty", "a 0-byte file", _write("empty.segmodel", b""), "empty or truncated"),
    file_case("ck-5-bytes", "a 5-byte file", _write("five.segmodel", b"12345"), "empty or truncated"),
    file_case("ck-truncated", "a checkpoint cut 1000 bytes short", _truncated, "truncated"),
    file_case("ck-pickle", "a Python pickle named .segmodel", lambda t: _evil_pickle(t, "p.segmodel"), "Python pickle"),
    file_case("ck-torch-zip", "a torch.save zip named .segmodel", _torch_zip, "PyTorch"),
    file_case("ck-hdf5", "a Keras HDF5 file named .segmodel", _write("k.segmodel", b"\x89HDF\r\n\x1a\n" + b"\0" * 64), "HDF5"),
    file_case("ck-json-file", "a JSON file named .segmodel", _write("j.segmodel", b'{"a": 1}' + b" " * 64), "JSON file"),
    file_case("ck-pt-suffix", "a .pt file given to inspect", lambda t: _evil_pickle(t, "w.pt"), "plain PyTorch file has no metadata", cmd="inspect"),
    file_case("ck-folder", "a folder given as the checkpoint", _folder, "is a folder"),
    file_case("ck-dev-zero", "/dev/zero given as the checkpoint", lambda t: Path("/dev/zero"), "not a regular file"),
    file_case("ck-missing", "a checkpoint that does not exist", lambda t: t / "nothing.segmodel", "no such checkpoint"),
    file_case("ck-dangling-link", "a symlink to nothing", _dangling, "no such checkpoint"),
    file_case("ck-escape-name", "a missing checkpoint whose name holds escape codes", lambda t: t / "\x1b]0;pwned\x07.segmodel", r"\\x1b\]0;pwned\\x07.segmodel: no such"),
    Bad("ck-unicode-path", "checkpoint file", "a checkpoint with accents and CJK in its name", _unicode_ok, "wrote", rc=0),
    Bad("ck-import-depth-60", "checkpoint metadata", "import-weights with --arch-args depth 60", _import_case, "depth = 60"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_checkpoint(case: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_case(case, tmp_path, capsys)


def test_no_unpickled_code_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The pickle cases above would create PWNED if anything in them ran."""
    for case in (c for c in CASES if c.id in ("ck-pickle", "ck-pt-suffix")):
        run_case(case, tmp_path, capsys)
    assert not (tmp_path / "PWNED").exists()


def test_every_shipped_model_still_loads() -> None:
    from seg_studio.core import checkpoint as ckpt

    shipped = sorted((REPO / "resources" / "models").glob("*.segmodel"))
    assert len(shipped) >= 6
    for p in shipped:
        model, meta = ckpt.load(p)
        assert meta.classes and model.out_channels == meta.out_channels


def test_old_record_without_format_or_domain_loads(tmp_path: Path) -> None:
    from seg_studio.core import checkpoint as ckpt

    def old(rec: dict[str, Any]) -> None:
        rec.pop("format")
        rec.pop("card")
        rec["provenance"] = {}

    path = rewrite(tiny_model(tmp_path / "g.segmodel"), tmp_path / "old.segmodel", old)
    model, meta = ckpt.load(path)
    assert meta.architecture == "unet"


def test_meta_plan_matches_the_real_model() -> None:
    """The meta-device plan that guards loading describes exactly what is then built."""
    from seg_studio.core.models import create_model, get_spec, list_models, plan_model

    for name in list_models(trainable_only=True):
        for dims in get_spec(name).dims:
            plan = plan_model(name, dims, 1, 3)
            real = create_model(name, dims, 1, 3).state_dict()
            assert {k: tuple(v.shape) for k, v in real.items()} == {
                k: s for k, (s, _) in plan.tensors.items()
            }
            assert plan.parameters == sum(v.numel() for v in real.values())


def test_refusal_allocates_nothing_big(tmp_path: Path) -> None:
    """depth 60 and features 4096 are refused in a fresh process whose peak memory grows by little
    (it took the machine's 23.5 GB before). The peak is compared with the same process after a good
    prediction, so what torch, CUDA or OpenVINO map at start-up on a given machine does not count."""
    good = tiny_model(tmp_path / "g.segmodel")
    paths = [
        rewrite(good, tmp_path / "d.segmodel", _set("arch_args.depth", 60)),
        rewrite(good, tmp_path / "f.segmodel", _set("arch_args.features", 4096)),
        rewrite(good, tmp_path / "p.segmodel", lambda r: r["arch_args"].update(features=512, depth=8)),
    ]
    img, out = scan(tmp_path / "s.nii.gz"), str(tmp_path / "m.nii.gz")
    code = (
        "import resource; from seg_studio.cli import main\n"
        "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"ok = main(['predict', {str(img)!r}, '--model', {str(good)!r}, '--out', {out!r}])\n"
        "before = peak()\n"
        f"rcs = [main(['predict', {str(img)!r}, '--model', p, '--out', {out!r}]) "
        f"for p in {[str(p) for p in paths]!r}]\n"
        "print(ok, rcs, before, peak())"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    ok, rcs, before_kb, after_kb = res.stdout.strip().splitlines()[-1].replace(", ", ",").split(" ")
    assert (ok, rcs) == ("0", "[2,2,2]"), res.stderr
    grown_mb = (int(after_kb) - int(before_kb)) // 1024
    assert grown_mb < 200, f"the refusals raised the peak RSS by {grown_mb} MB"
    record("ck-peak-memory", "checkpoint metadata", "depth 60 / features 4096 / 10^11 parameters in a fresh process",
           0, f"refused, peak RSS grew by {grown_mb} MB over a good prediction")  # fmt: skip


# --- resume.pt ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-step training run (last.segmodel + resume.pt) on four tiny 2D cases."""
    from badinput import labels_like

    root = tmp_path_factory.mktemp("run")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for i in range(4):
        img = scan(root / "images" / f"c{i}.nii.gz", (32, 32))
        labels_like(root / "labels" / f"c{i}.nii.gz", img)
    from seg_studio.cli import main

    rc = main(["train", "--images", str(root / "images"), "--labels", str(root / "labels"), "--out", str(root / "run"),
               "--steps", "2", "--val-every", "1", "--patch", "32,32", "--batch-size", "2",
               "--arch-args", '{"features": 4, "depth": 2}', "-q", "--device", "cpu"])  # fmt: skip
    assert rc == 0 and (root / "run" / "resume.pt").exists()
    return root


def _resume_case(case_id: str, given: str, corrupt: Callable[[Path], None], expect: str) -> Bad:
    def make(tmp: Path) -> list[str]:
        src = Path(_RUN[0])
        shutil.copytree(src, tmp / "copy")
        corrupt(tmp / "copy" / "run")
        return ["train", "--images", str(tmp / "copy" / "images"), "--labels", str(tmp / "copy" / "labels"),
                "--out", str(tmp / "copy" / "run"), "--resume", "--steps", "4", "--patch", "32,32", "-q",
                "--device", "cpu"]  # fmt: skip

    return Bad(case_id, "resume state", given, make, expect)


_RUN: list[Path] = []


def _random(run: Path) -> None:
    (run / "resume.pt").write_bytes(bytes(range(256)) * 40)


def _evil(run: Path) -> None:
    (run / "resume.pt").write_bytes(pickle.dumps({"optimizer": _Evil(str(run / "PWNED"))}))


def _tensor(run: Path) -> None:
    torch.save(torch.zeros(3), run / "resume.pt")


def _no_state(run: Path) -> None:
    torch.save({"optimizer": {"state": {}, "param_groups": []}, "state": {"step": "many"}}, run / "resume.pt")


def _other_model(run: Path) -> None:
    big = torch.nn.Linear(7, 5)
    opt = torch.optim.AdamW(big.parameters())
    big(torch.zeros(1, 7)).sum().backward()
    opt.step()
    st = torch.load(run / "resume.pt", weights_only=True)
    st["optimizer"] = opt.state_dict()
    torch.save(st, run / "resume.pt")


# fmt: off
RESUME_CASES = [
    _resume_case("rs-random", "train --resume with a resume.pt of random bytes", _random, "not a seg_studio resume state"),
    _resume_case("rs-pickle", "a resume.pt pickle that would open a file (UnpicklingError traceback before)", _evil, "nothing in it was run"),
    _resume_case("rs-tensor", "a resume.pt that holds one tensor", _tensor, "no optimiser state"),
    _resume_case("rs-fields", "a resume.pt whose step is a string", _no_state, "'step' is not a number"),
    _resume_case("rs-other-model", "a resume.pt of another model's optimiser", _other_model, "does not fit this model"),
]
# fmt: on


@pytest.mark.parametrize("case", RESUME_CASES, ids=[c.id for c in RESUME_CASES])
def test_bad_resume_state(
    case: Bad, run_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _RUN[:] = [run_folder]
    run_case(case, tmp_path, capsys)
    assert not (tmp_path / "copy" / "run" / "PWNED").exists()


def test_a_diverged_model_is_not_saved(tmp_path: Path) -> None:
    from seg_studio.core import checkpoint as ckpt
    from seg_studio.core.errors import CheckpointError
    from seg_studio.core.models import create_model

    model = create_model("unet", spatial_dims=2, in_channels=1, out_channels=2, features=4, depth=2)
    meta = ckpt.new_meta(model, "unet", {"features": 4, "depth": 2})
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    with pytest.raises(CheckpointError, match="training diverged; nothing was saved"):
        ckpt.save(tmp_path / "m.segmodel", model, meta)
    assert not list(tmp_path.iterdir())
