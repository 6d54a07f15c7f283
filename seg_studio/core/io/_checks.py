"""Checks that turn silent garbage into a clear ``ImageLoadError``.

ITK reads a truncated ``.nii``/``.nii.gz`` or TIFF without complaint and fills the missing voxels
with whatever was in memory, so the sizes are checked here before ITK sees the file. Values and
geometry that the rest of seg_studio cannot use (NaN, shear) are refused after reading.
"""

from __future__ import annotations

import gzip
import logging
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import ImageLoadError
from ..volume import Volume

log = logging.getLogger(__name__)

_NIFTI_DTYPE_BITS = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32}


def check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path.name} is empty (0 bytes); the file was not saved completely")


def check_nifti(path: Path) -> None:
    """Refuse files that are not NIfTI-1/2 or hold fewer voxel bytes than their header promises."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    try:
        opener = gzip.open if gz else open
        with opener(path, "rb") as fh:
            hdr = fh.read(544)
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageLoadError(f"{path.name} is damaged: it is not readable gzip data ({exc})") from exc
    if len(hdr) < 348:
        raise ImageLoadError(
            f"{path.name} is not a complete NIfTI file (only {len(hdr)} bytes, a NIfTI header has 348)"
        )
    expected, offset, float_dtype = _nifti_layout(hdr, path)
    from ..limits import check_fits

    check_fits(  # before a byte of the data is inflated: a 4 MB gzip can claim 4 GB
        2 * (expected - offset),
        f"{path.name} (its header says {_nifti_shape(hdr)} voxels) needs",
        "crop or downsample it first, or use a machine with more memory",
        ImageLoadError,
    )
    if gz:
        _check_gzip_length(path, expected)
    else:
        size = path.stat().st_size
        if size < expected:
            raise ImageLoadError(
                f"{path.name} is truncated: {size} bytes on disk, its header needs {expected}; "
                "copy the file again from its source"
            )
    if float_dtype is not None:
        _check_nifti_finite(path, gz, offset, expected, float_dtype)


def _check_nifti_finite(path: Path, gz: bool, offset: int, end: int, dtype: np.dtype) -> None:
    """ITK's NIfTI reader silently turns NaN/Inf into 0, so float data is checked on disk first."""
    opener = gzip.open if gz else open
    n_nan = n_inf = 0
    chunk = (1 << 22) // dtype.itemsize * dtype.itemsize
    with opener(path, "rb") as fh:
        fh.seek(offset)
        left = end - offset
        while left > 0:
            buf = fh.read(min(chunk, left))
            if not buf:
                break
            left -= len(buf)
            a = np.frombuffer(buf[: len(buf) // dtype.itemsize * dtype.itemsize], dtype=dtype)
            bad = a[~np.isfinite(a)]
            if bad.size:
                nans = int(np.isnan(bad).sum())
                n_nan, n_inf = n_nan + nans, n_inf + int(bad.size - nans)
    if n_nan or n_inf:
        raise ImageLoadError(
            f"{path.name} contains {n_nan} NaN and {n_inf} infinite voxel values; replace them (e.g. with 0) "
            "in the program that made the file, then open it again"
        )


def _nifti_shape(hdr: bytes) -> str:
    """``512 x 512 x 400`` from a NIfTI-1/2 header already known to be valid."""
    for end in "<>":
        if struct.unpack(end + "i", hdr[:4])[0] == 348:
            dims = struct.unpack(end + "8h", hdr[40:56])
            break
        if struct.unpack(end + "i", hdr[:4])[0] == 540:
            dims = struct.unpack(end + "8q", hdr[16:80])
            break
    else:
        return "?"
    return " x ".join(str(int(d)) for d in dims[1 : int(dims[0]) + 1])


def _nifti_layout(hdr: bytes, path: Path) -> tuple[int, int, np.dtype | None]:
    """(bytes the file must hold, voxel data offset, float dtype of the voxels or None)."""
    for end in "<>":
        sizeof = struct.unpack(end + "i", hdr[:4])[0]
        if sizeof == 348:
            dims = struct.unpack(end + "8h", hdr[40:56])
            bitpix = struct.unpack(end + "h", hdr[72:74])[0]
            datatype = struct.unpack(end + "h", hdr[70:72])[0]
            vox_offset = struct.unpack(end + "f", hdr[108:112])[0]
            magic = hdr[344:348]
            if magic not in (b"n+1\x00", b"ni1\x00"):
                continue
            if magic == b"ni1\x00":
                raise ImageLoadError(
                    f"{path.name} is a NIfTI header-only file (.hdr/.img pair); open the .hdr/.img or "
                    "convert it to a single .nii.gz"
                )
            break
        if sizeof == 540 and len(hdr) >= 540:
            datatype, bitpix = struct.unpack(end + "2h", hdr[12:16])
            dims = struct.unpack(end + "8q", hdr[16:80])
            vox_offset = struct.unpack(end + "q", hdr[168:176])[0]
            break
    else:
        raise ImageLoadError(
            f"{path.name} is not a NIfTI file (no NIfTI header found); if it holds another format, "
            "give it that format's extension"
        )
    ndim = int(dims[0])
    if not 1 <= ndim <= 7:
        raise ImageLoadError(f"{path.name} has a corrupt NIfTI header (dim[0] = {ndim})")
    if any(d < 1 for d in dims[1 : ndim + 1]):
        raise ImageLoadError(f"{path.name} has a corrupt NIfTI header (image size {dims[1 : ndim + 1]})")
    bits = bitpix if bitpix > 0 else _NIFTI_DTYPE_BITS.get(datatype, 8)
    voxels = math.prod(int(d) for d in dims[1 : ndim + 1])
    floats = {16: "f4", 64: "f8"}.get(int(datatype))
    return (
        int(vox_offset) + voxels * bits // 8,
        int(vox_offset),
        np.dtype(end + floats) if floats else None,
    )


def _check_gzip_length(path: Path, expected: int) -> None:
    # Fast path: the gzip trailer stores the uncompressed length (mod 2**32). A truncated file ends
    # in compressed data instead, which matches by chance with probability 2**-32.
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(size - 4, 0))
        isize = struct.unpack("<I", fh.read(4))[0] if size >= 22 else -1
    if isize == expected % 2**32:
        return
    # Slow path (multi-member gzip such as bgzip, or a damaged file): decompress and count.
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total < expected and (chunk := fh.read(1 << 22)):  # enough is enough: no bomb runs on
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageLoadError(
            f"{path.name} is truncated or damaged (gzip: {exc}); copy the file again from its source"
        ) from exc
    if total < expected:
        raise ImageLoadError(
            f"{path.name} is truncated: it holds {total} bytes of image data, its header needs {expected}"
        )


def _check_tiff_ifd_chain(path: Path, size: int) -> None:
    """Follow the chain of page directories: a pointer past the end means pages were cut off."""
    with open(path, "rb") as fh:
        head = fh.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            raise ImageLoadError(f"{path.name} is not a TIFF file (no TIFF header)")
        end = "<" if head[:2] == b"II" else ">"
        magic = struct.unpack(end + "H", head[2:4])[0]
        if magic == 42:
            cnt_fmt, entry, off_fmt = "H", 12, "I"
            offset = struct.unpack(end + "I", head[4:8])[0]
        elif magic == 43 and len(head) >= 16:
            cnt_fmt, entry, off_fmt = "Q", 20, "Q"
            offset = struct.unpack(end + "Q", head[8:16])[0]
        else:
            raise ImageLoadError(f"{path.name} is not a TIFF file (bad TIFF header)")
        seen = set()
        cnt_size, off_size = struct.calcsize(cnt_fmt), struct.calcsize(off_fmt)
        while offset:
            if offset in seen or offset + cnt_size > size:
                raise ImageLoadError(
                    f"{path.name} is truncated or damaged: page {len(seen) + 1} lies past the end of the file"
                )
            seen.add(offset)
            fh.seek(offset)
            n = struct.unpack(end + cnt_fmt, fh.read(cnt_size))[0]
            fh.seek(offset + cnt_size + n * entry)
            raw = fh.read(off_size)
            if len(raw) < off_size:
                raise ImageLoadError(f"{path.name} is truncated: page {len(seen)} is cut off")
            offset = struct.unpack(end + off_fmt, raw)[0]


def check_tiff(path: Path) -> None:
    """Refuse TIFFs whose pages point past the end of the file (ITK would read them as garbage)."""
    from PIL import Image, UnidentifiedImageError

    size = path.stat().st_size
    _check_tiff_ifd_chain(path, size)
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        log.debug("Pillow cannot parse %s; leaving the TIFF checks to ITK", path)
        return
    except (OSError, EOFError, struct.error, ValueError) as exc:
        raise ImageLoadError(f"{path.name} is not a readable TIFF file ({exc})") from exc
    try:
        with img:
            for page in range(getattr(img, "n_frames", 1)):
                img.seek(page)
                tags = img.tag_v2
                offsets = tags.get(273) or tags.get(324) or ()
                counts = tags.get(279) or tags.get(325) or ()
                if offsets and counts:
                    end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
                    if end > size:
                        raise ImageLoadError(
                            f"{path.name} is truncated: page {page + 1} needs {end} bytes, the file has {size}"
                        )
    except ImageLoadError:
        raise
    except (OSError, EOFError, struct.error, ValueError) as exc:
        raise ImageLoadError(f"{path.name} is truncated or damaged ({exc})") from exc


def _header_fields(path: Path, sep: str, stop_at_blank: bool) -> tuple[dict[str, str], list[str]]:
    """``key<sep>value`` lines of a text header (first 64 KB), keys lower-cased; and every line."""
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        lines = fh.read(64 * 1024).decode("latin-1").splitlines()
    for i, raw in enumerate(lines):
        if stop_at_blank and i > 0 and not raw.strip():
            break
        key, found, value = raw.partition(sep)
        if found and key.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    return fields, lines


def _data_files(spec: str, lines: list[str], key_prefix: str) -> list[str]:
    """The file names a data-file field refers to: one name, a LIST (the lines after the field) or a
    printf pattern (``slice%03d.raw 1 10 1``: only its folder matters)."""
    if spec.upper().startswith("LIST"):
        after = [i for i, ln in enumerate(lines) if ln.strip().lower().startswith(key_prefix)]
        return [ln.strip() for ln in lines[after[0] + 1 :] if ln.strip()] if after else []
    if "%" in spec:
        return [spec.split()[0]]
    return [spec]


def _outside(path: Path, name: str) -> bool:
    base = path.parent.resolve()
    target = (path.parent / name).resolve()
    return target != base and base not in target.parents


def _refuse_outside(path: Path, names: list[str], allowed: bool) -> None:
    outside = [n for n in names if _outside(path, n)]
    if outside and not allowed:
        raise ImageLoadError(
            f"{path.name} takes its pixels from {outside[0]!r}, outside the header's folder {path.parent}; "
            "a header could point at any file on this computer, so only data files beside their header are "
            "read: move the data file next to the header, or pass --allow-external-data if you trust it"
        )


def external_data_allowed() -> bool:
    """``--allow-external-data`` (the CLI sets ``SEG_STUDIO_ALLOW_EXTERNAL_DATA=1`` for one command)."""
    import os

    return os.environ.get("SEG_STUDIO_ALLOW_EXTERNAL_DATA", "") not in ("", "0")


def check_mhd(path: Path, allow_external: bool | None = None) -> None:
    """A ``.mhd`` header names its pixel file: it must exist, and lie in the header's own folder."""
    fields, lines = _header_fields(path, "=", stop_at_blank=False)
    data = fields.get("elementdatafile")
    if data is None:
        raise ImageLoadError(f"{path.name} is not a MetaImage header (no ElementDataFile line)")
    if data == "LOCAL":
        return
    allowed = external_data_allowed() if allow_external is None else allow_external
    names = _data_files(data, lines, "elementdatafile")
    _refuse_outside(path, names, allowed)
    if data.startswith("LIST") or "%" in data:
        return
    target = path.parent / data
    if not target.is_file():
        raise ImageLoadError(
            f"{path.name} keeps its pixels in {data}, which is missing; keep the .mhd and its {Path(data).suffix} "
            "file together in one folder"
        )


def check_nrrd(path: Path, allow_external: bool | None = None) -> None:
    """A ``.nrrd`` may be a detached header (``data file:`` field): its data must lie beside it."""
    with open(path, "rb") as fh:
        if not fh.read(4) == b"NRRD":
            raise ImageLoadError(f"{path.name} is not a NRRD file (it does not start with 'NRRD')")
    fields, lines = _header_fields(path, ":", stop_at_blank=True)
    data = fields.get("data file") or fields.get("datafile")
    if not data:
        return
    allowed = external_data_allowed() if allow_external is None else allow_external
    _refuse_outside(
        path, _data_files(data, lines, "data file" if "data file" in fields else "datafile"), allowed
    )


def check_values(vol: Volume, name: str) -> None:
    """NaN/Inf break normalisation and training silently, so they are refused at the door."""
    a = vol.array
    if a.dtype.kind == "f" or a.dtype.kind == "c":
        finite = np.isfinite(a)
        if not finite.all():
            bad = a[~finite]
            n_nan = int(np.isnan(bad).sum())
            n_inf = int(bad.size - n_nan)
            raise ImageLoadError(
                f"{name} contains {n_nan} NaN and {n_inf} infinite voxel values; replace them (e.g. with 0) "
                "in the program that made the file, then open it again"
            )


def check_direction(vol: Volume, name: str, atol: float = 1e-4) -> None:
    """A sheared (non-orthonormal) direction cannot be shown or resampled faithfully: refuse it."""
    d = vol.direction_matrix
    gram = d.T @ d
    err = float(np.abs(gram - np.eye(vol.ndim)).max())
    if not np.isfinite(d).all() or err > atol:
        raise ImageLoadError(
            f"{name} has a sheared or scaled direction matrix (not orthonormal, deviation {err:.3g}); "
            "resample it to an orthogonal grid first (e.g. with 3D Slicer's 'Harden transform')"
        )
