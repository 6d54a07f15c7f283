"""Scans and their headers are untrusted: sizes are checked against free memory before data is
inflated, headers may not point at files elsewhere, and damaged or odd files give one line."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from badinput import REPO, Bad, no_temp_files, record, run_case, scan, tiny_model

from seg_studio.core.volume import Volume

# --- builders -------------------------------------------------------------------------------------------


def _nii_header(dims: tuple[int, ...], dtype: type = np.uint8) -> bytearray:
    """A valid NIfTI-1 header (352 bytes with the extension flag) for ``dims`` (x, y, z)."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"hdr-{os.getpid()}.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), dtype)), str(tmp))
    hdr = bytearray(tmp.read_bytes()[:352])
    tmp.unlink()
    struct.pack_into("<8h", hdr, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    return hdr


def _gzip_bomb(tmp: Path) -> list[str]:
    """A 600 MB image in a 2.7 MB gzip, read with a 300 MB memory budget (SEG_STUDIO_MAX_MEMORY)."""
    p = tmp / "bomb.nii.gz"
    with gzip.open(p, "wb", compresslevel=1) as fh:
        fh.write(_nii_header((1024, 1024, 600)))
        zeros = bytes(1 << 20)
        for _ in range(600):
            fh.write(zeros)
    os.environ["SEG_STUDIO_MAX_MEMORY"] = "300M"
    return ["info", str(p)]


def _claims_petabytes(tmp: Path) -> list[str]:
    """A .nii.gz of a few bytes whose header claims 32767^3 float64 voxels (281 TB)."""
    hdr = _nii_header((32767, 32767, 32767))
    struct.pack_into("<2h", hdr, 70, 64, 64)  # float64
    p = tmp / "huge.nii.gz"
    p.write_bytes(gzip.compress(bytes(hdr) + bytes(1000)))
    return ["info", str(p)]


def _huge_uncompressed(tmp: Path) -> list[str]:
    p = tmp / "huge.nii"
    p.write_bytes(bytes(_nii_header((30000, 30000, 3000))) + bytes(1000))
    return ["info", str(p)]


def _nii(change: Callable[[bytearray], None], name: str = "x.nii") -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        hdr = _nii_header((4, 4, 4))
        change(hdr)
        (tmp / name).write_bytes(bytes(hdr) + bytes(64))
        return ["info", str(tmp / name)]

    return make


def _text_file(name: str, data: bytes) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(data)
        return ["info", str(tmp / name)]

    return make


def _cut(name: str, keep: float, shape: tuple[int, ...] = (40, 48)) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        if name.endswith((".png", ".tif")):
            from seg_studio.core import io

            rng = np.random.default_rng(1)
            io.write(Volume.from_array(rng.integers(0, 255, shape, dtype=np.uint8)), tmp / name)
        else:
            scan(tmp / name, shape)
        data = (tmp / name).read_bytes()
        (tmp / name).write_bytes(data[: int(len(data) * keep)])
        return ["info", str(tmp / name)]

    return make


def _header_text(name: str, text: str, data: bytes = b"") -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(text.encode() + data)
        return ["info", str(tmp / name)]

    return make


_MHA_BOMB = (
    "ObjectType = Image\nNDims = 3\nDimSize = 30000 30000 30000\nElementType = MET_UCHAR\n"
    "CompressedData = True\nCompressedDataSize = 12\nElementDataFile = LOCAL\n"
)
_NRRD_BOMB = "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 30000 30000 30000\nencoding: gzip\n\n"


def _png_huge(tmp: Path) -> list[str]:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 200000, 200000, 8, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + chunk(b"IEND", b"")
    )
    (tmp / "huge.png").write_bytes(data)
    return ["info", str(tmp / "huge.png")]


_SECRET = np.arange(16, dtype=np.uint8).tobytes()


def _external(
    header_name: str, body: str, where: str, link: bool = False, allow: bool = False
) -> Callable[[Path], list[str]]:
    """A header in tmp/a/b whose data file is ``where`` (``{tmp}`` expands); a secret lies at tmp/."""

    def make(tmp: Path) -> list[str]:
        folder = tmp / "a" / "b"
        folder.mkdir(parents=True)
        (tmp / "secret.raw").write_bytes(_SECRET)
        target = where.format(tmp=tmp)
        if link:
            (folder / "data.raw").symlink_to(tmp / "secret.raw")
        (folder / header_name).write_text(body.format(data=target))
        return (["--allow-external-data"] if allow else []) + ["info", str(folder / header_name)]

    return make


_MHD = "ObjectType = Image\nNDims = 2\nDimSize = 4 4\nElementType = MET_UCHAR\nElementDataFile = {data}\n"
_MHD_LIST = "ObjectType = Image\nNDims = 3\nDimSize = 4 4 1\nElementType = MET_UCHAR\nElementDataFile = LIST 2D\n{data}\n"
_NRRD = "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 4 4\nencoding: raw\ndata file: {data}\n\n"
_NRRD2 = "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 4 4\nencoding: raw\ndatafile: {data}\n\n"


def _fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "scan.nii.gz")
    return ["info", str(tmp / "scan.nii.gz")]


def _fifo_predict(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "scan.nii.gz")
    m = tiny_model(tmp / "m.segmodel")
    return ["predict", str(tmp / "scan.nii.gz"), "--model", str(m), "--out", str(tmp / "mask.nii.gz")]


def _folder_named_like_a_file(tmp: Path) -> list[str]:
    (tmp / "scan.nii.gz").mkdir()
    return ["info", str(tmp / "scan.nii.gz")]


def _dangling(tmp: Path) -> list[str]:
    (tmp / "scan.nii.gz").symlink_to(tmp / "gone.nii.gz")
    return ["info", str(tmp / "scan.nii.gz")]


def _unicode(tmp: Path) -> list[str]:
    return ["info", str(scan(tmp / "scän 扫描 ✓.nii.gz"))]


def _nan_nifti(tmp: Path) -> list[str]:
    a = np.zeros((4, 5, 6), np.float32)
    a[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp / "nan.nii.gz"))
    return ["info", str(tmp / "nan.nii.gz")]


def _sheared(tmp: Path) -> list[str]:
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    img.SetDirection((1, 0.5, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp / "shear.nrrd"))
    return ["info", str(tmp / "shear.nrrd")]


def _four_d(tmp: Path) -> list[str]:
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False), str(tmp / "4d.nii.gz")
    )
    return ["info", str(tmp / "4d.nii.gz")]


def _dicom_text(tmp: Path) -> list[str]:
    (tmp / "x.dcm").write_text("this is not DICOM\n" * 20)
    return ["info", str(tmp / "x.dcm")]


def _dicom_cut(tmp: Path) -> list[str]:
    data_dir = Path(os.environ.get("SEG_STUDIO_DATA", REPO.parent / "shared" / "data"))
    src = sorted((data_dir / "tcia_brain_tumor_progression_dicom" / "images").glob("*/*.dcm"))[0]
    data = src.read_bytes()
    (tmp / "cut.dcm").write_bytes(data[: len(data) // 3])
    return ["info", str(tmp / "cut.dcm")]


def _restore_budget(tmp: Path, out: str, err: str) -> None:
    os.environ.pop("SEG_STUDIO_MAX_MEMORY", None)


# fmt: off
CASES: list[Bad] = [
    # sizes checked before the data is inflated or allocated
    Bad("sc-gzip-bomb", "memory", "a 2.7 MB .nii.gz that inflates to 600 MB, with 300 MB to spare (MemoryError traceback before)", _gzip_bomb, r"1024 x 1024 x 600 voxels\) needs 1.3 GB of memory", after=_restore_budget, max_s=5),
    Bad("sc-petabyte-header", "memory", "a tiny .nii.gz whose header claims 32767^3 float64 voxels", _claims_petabytes, r"needs 562.9 TB of memory", max_s=5),
    Bad("sc-huge-nii", "memory", "a 1 kB .nii whose header claims 30000 x 30000 x 3000 voxels", _huge_uncompressed, r"needs .* of memory", max_s=5),
    Bad("sc-mha-bomb", "memory", "a compressed .mha whose header claims 30000^3 voxels", _header_text("bomb.mha", _MHA_BOMB, b"x" * 12), r"30000 x 30000 x 30000 voxels of 8-bit unsigned integer\) needs", max_s=5),
    Bad("sc-nrrd-bomb", "memory", "a gzip .nrrd whose header claims 30000^3 voxels", _header_text("bomb.nrrd", _NRRD_BOMB, gzip.compress(b"\0" * 100)), r"needs .* of memory", max_s=5),
    Bad("sc-png-huge", "memory", "a PNG whose header claims 200000 x 200000 pixels", _png_huge, r"200000 x 200000 voxels.*needs", max_s=5),
    # headers that point elsewhere
    Bad("sc-mhd-up", "header points elsewhere", ".mhd whose ElementDataFile is ../../secret.raw (copied into the output before)", _external("scan.mhd", _MHD, "../../secret.raw"), r"outside the header's folder"),
    Bad("sc-mhd-absolute", "header points elsewhere", ".mhd whose ElementDataFile is an absolute path", _external("scan.mhd", _MHD, "{tmp}/secret.raw"), r"outside the header's folder"),
    Bad("sc-mhd-symlink", "header points elsewhere", ".mhd whose data file is a symlink out of the folder", _external("scan.mhd", _MHD, "data.raw", link=True), r"outside the header's folder"),
    Bad("sc-mhd-list", "header points elsewhere", ".mhd with an ElementDataFile LIST naming ../../secret.raw", _external("scan.mhd", _MHD_LIST, "../../secret.raw"), r"outside the header's folder"),
    Bad("sc-mha-up", "header points elsewhere", ".mha whose ElementDataFile is ../../secret.raw", _external("scan.mha", _MHD, "../../secret.raw"), r"outside the header's folder"),
    Bad("sc-nrrd-up", "header points elsewhere", ".nrrd with 'data file: ../../secret.raw'", _external("scan.nrrd", _NRRD, "../../secret.raw"), r"outside the header's folder"),
    Bad("sc-nrrd-absolute", "header points elsewhere", ".nrrd with 'datafile: /absolute/path'", _external("scan.nrrd", _NRRD2, "{tmp}/secret.raw"), r"outside the header's folder"),
    Bad("sc-mhd-allowed", "header points elsewhere", "the same .mhd with --allow-external-data: read", _external("scan.mhd", _MHD, "../../secret.raw", allow=True), r"range: +0 \.\. 15", rc=0),
    Bad("sc-nrrd-allowed", "header points elsewhere", "the same .nrrd with --allow-external-data: read", _external("scan.nrrd", _NRRD, "../../secret.raw", allow=True), r"range: +0 \.\. 15", rc=0),
    Bad("sc-mhd-missing-data", "header points elsewhere", ".mhd whose data file is missing", _header_text("m.mhd", _MHD.format(data="gone.raw")), r"missing"),
    # damaged, empty, odd files
    Bad("sc-empty", "scan file", "a 0-byte .nii.gz", _text_file("e.nii.gz", b""), r"empty"),
    Bad("sc-not-gzip", "scan file", "a .nii.gz that is plain text", _text_file("t.nii.gz", b"\x1f\x8bnot really gzip data" * 10), r"not readable gzip|damaged"),
    Bad("sc-nii-magic", "scan file", "a .nii with a wrong magic", _nii(lambda h: h.__setitem__(slice(344, 348), b"XXXX")), r"not a NIfTI file"),
    Bad("sc-nii-dim0", "scan file", "a .nii with dim[0] = 9", _nii(lambda h: struct.pack_into("<h", h, 40, 9)), r"dim\[0\] = 9"),
    Bad("sc-nii-size0", "scan file", "a .nii with a size of 0", _nii(lambda h: struct.pack_into("<h", h, 42, 0)), r"image size"),
    Bad("sc-nii-header-only", "scan file", "a NIfTI header-only file (ni1)", _nii(lambda h: h.__setitem__(slice(344, 348), b"ni1\x00")), r"header-only"),
    Bad("sc-nii-short", "scan file", "a .nii of 100 bytes", _text_file("s.nii", b"\0" * 100), r"not a complete NIfTI"),
    Bad("sc-nii-truncated", "scan file", "a .nii cut to 60 %", _cut("c.nii", 0.6), r"truncated"),
    Bad("sc-niigz-truncated", "scan file", "a .nii.gz cut to 60 %", _cut("c.nii.gz", 0.6), r"truncated|damaged"),
    Bad("sc-png-truncated", "scan file", "a PNG cut to 50 %", _cut("c.png", 0.5), r"damaged|truncated"),
    Bad("sc-tiff-truncated", "scan file", "a TIFF cut to 50 %", _cut("c.tif", 0.5), r"truncated"),
    Bad("sc-mha-truncated", "scan file", "a .mha cut to 50 %", _cut("c.mha", 0.5), r"damaged|truncated"),
    Bad("sc-nrrd-garbage", "scan file", "a .nrrd that does not start with NRRD", _text_file("g.nrrd", b"hello world\n" * 10), r"not a NRRD file"),
    Bad("sc-dicom-text", "scan file", "a text file named .dcm", _dicom_text, r"not a readable DICOM|damaged|not a valid DICOM"),
    Bad("sc-dicom-cut", "scan file", "a DICOM slice cut to a third", _dicom_cut, r"damaged|truncated|not a valid"),
    Bad("sc-nan", "scan file", "a float NIfTI with a NaN voxel", _nan_nifti, r"1 NaN"),
    Bad("sc-sheared", "scan file", "a NRRD with a sheared direction", _sheared, r"sheared"),
    Bad("sc-4d", "scan file", "a 4D NIfTI", _four_d, r"4D image"),
    Bad("sc-unknown-suffix", "scan file", "a .xyz file", _text_file("scan.xyz", b"data"), r"unsupported file type .xyz"),
    Bad("sc-fifo", "scan file", "a named pipe called scan.nii.gz (would block for ever)", _fifo, r"not a regular file", max_s=10),
    Bad("sc-fifo-predict", "scan file", "predict on a named pipe", _fifo_predict, r"not a regular file", max_s=20),
    Bad("sc-folder-as-file", "scan file", "a folder named scan.nii.gz", _folder_named_like_a_file, r"no DICOM series"),
    Bad("sc-dangling-link", "scan file", "a symlink to nothing", _dangling, r"does not exist"),
    Bad("sc-missing", "scan file", "a path that does not exist", lambda t: ["info", str(t / "nope.nii.gz")], r"does not exist"),
    Bad("sc-newline-name", "scan file", "an empty scan whose file name holds a newline and escape codes", _text_file("x\nFORGED\x1b[2J.nii.gz", b""), r"x\\nFORGED\\x1b\[2J.nii.gz is empty"),
    Bad("sc-unicode", "scan file", "a scan with accents, CJK and a tick in its name: read", _unicode, r"path", rc=0),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_scan(
    case: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEG_STUDIO_MAX_MEMORY", raising=False)
    try:
        run_case(case, tmp_path, capsys)
    finally:
        os.environ.pop("SEG_STUDIO_MAX_MEMORY", None)


def test_external_data_is_not_copied_into_an_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """convert of a header pointing at ../../secret.raw writes nothing that holds the secret."""
    from seg_studio.cli import main

    args = _external("scan.mhd", _MHD, "../../secret.raw")(tmp_path)
    out = tmp_path / "out.nii.gz"
    assert main(["convert", args[-1], str(out)]) == 2
    assert "outside the header's folder" in capsys.readouterr().err
    assert not out.exists()
    no_temp_files(tmp_path)


def test_a_real_memory_error_is_one_line(tmp_path: Path) -> None:
    """predict with --save-probabilities under a 4 GB address-space limit: numpy runs out of
    memory inside inference, and the user gets one line (a MemoryError traceback before)."""
    import resource

    from seg_studio.core import io

    a = np.zeros((256, 512, 512), np.int16)
    a[100:150, 200:300, 200:300] = 500
    ct = io.write(Volume.from_array(a), tmp_path / "ct.nii.gz")
    model = tiny_model(tmp_path / "m.segmodel", dims=3)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    res = subprocess.run(
        [sys.executable, "-m", "seg_studio", "predict", str(ct), "--model", str(model), "--out", str(tmp_path / "mask.nii.gz"),
         "--save-probabilities", str(tmp_path / "p.nii.gz"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, preexec_fn=limit, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(("ct.nii.gz:", "\r"))]
    record("mem-real-memoryerror", "memory", "predict of a 512x512x256 CT with probabilities under ulimit -v 4 GB",
           res.returncode, lines[-1] if lines else "", tmp_path)  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert lines and "ran out of memory" in lines[-1] and "it asked for" in lines[-1], res.stderr
    assert not (tmp_path / "mask.nii.gz").exists() and not (tmp_path / "p.nii.gz").exists()
    no_temp_files(tmp_path)
