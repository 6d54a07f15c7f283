"""Which file is which format: one table for reading, writing, the napari manifest and messages."""

from __future__ import annotations

from pathlib import Path

from ..atomic import split_suffix
from ..errors import ImageLoadError

#: suffix -> format name. Files without a known suffix are sniffed for the DICOM preamble.
READ_FORMATS: dict[str, str] = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".nrrd": "NRRD",
    ".dcm": "DICOM",
    ".dicom": "DICOM",
    ".ima": "DICOM",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".gif": "GIF",
}

#: Formats we write. JPEG is lossy and GIF/DICOM writing is out of scope: results would not
#: round-trip, so they are refused rather than silently degraded.
WRITE_FORMATS: dict[str, str] = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".nrrd": "NRRD",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".png": "PNG",
    ".bmp": "BMP",
}

#: Formats that hold one 2D picture (and GIF: its frames): no origin or direction, maybe spacing.
RASTER_FORMATS = {"PNG", "JPEG", "BMP", "GIF", "TIFF"}


def suffix_of(path: str | Path) -> str:
    """The format-deciding suffix, lower case: ``.nii.gz`` for ``A.NII.GZ``, ``""`` for none."""
    return split_suffix(path)[1].lower()


def case_name(path: str | Path) -> str:
    """A case's name: the file name without a readable image suffix (``case_01.nii.gz`` -> ``case_01``).

    Images and labels of a case share it, so training pairs and evaluation match files by it;
    folders (DICOM series) and unknown suffixes keep their whole name.
    """
    name = Path(path).name
    suffix = suffix_of(name)
    return name[: -len(suffix)] if suffix in READ_FORMATS and len(name) > len(suffix) else name


def has_dicom_preamble(path: Path) -> bool:
    """DICOM Part 10 files carry ``DICM`` at byte 128; files without an extension are checked so."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def detect_format(path: Path) -> str:
    """Format name of an existing file, or ``ImageLoadError`` naming what we do read."""
    fmt = READ_FORMATS.get(suffix_of(path))
    if fmt is not None:
        return fmt
    if has_dicom_preamble(path):
        return "DICOM"
    suffix = suffix_of(path) or "(no extension)"
    raise ImageLoadError(
        f"unsupported file type {suffix} for {path.name}; seg_studio reads {supported_read_list()}"
    )


def supported_read_list() -> str:
    return ", ".join(READ_FORMATS) + ", DICOM folders"


def supported_write_list() -> str:
    return ", ".join(WRITE_FORMATS)
