"""SimpleITK <-> Volume, in one place.

ITK's native code writes warnings straight to the process's stderr (file descriptor 2), which would
put stray lines around the CLI's one-line errors; ``native_stderr_to_log`` captures them and passes
them on to ``logging`` at debug level instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ImageLoadError
from ..volume import Volume

log = logging.getLogger(__name__)
_STDERR_LOCK = threading.RLock()

sitk.ProcessObject.SetGlobalWarningDisplay(False)


@contextlib.contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """Capture what C++ code prints on fd 2 while ITK runs, and log it at debug level."""
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            yield
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                text = sink.read().decode("utf-8", "replace").strip()
                if text:
                    log.debug("ITK said: %s", text)


def sitk_reason(exc: Exception) -> str:
    """The informative part of an ITK exception, on one line (paths and class addresses dropped)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [
        ln
        for ln in lines
        if not ln.startswith(("Exception thrown", "Reason: No such file"))
        and "sitk::ERROR: Exception thrown" not in ln
    ]
    text = (useful or lines or [type(exc).__name__])[-1]
    text = re.sub(r"^(sitk::ERROR|ITK ERROR):\s*", "", text)
    text = re.sub(r"^\w+\(0x[0-9a-f]+\):\s*", "", text)
    text = re.sub(r"^\[nrrd\]\s*", "", text)
    return text[:200]


def image_nbytes(size: tuple[int, ...], pixel_id: int, components: int) -> int:
    """Bytes of an image of this size and pixel type, without making it."""
    import math

    probe = (
        sitk.Image([1] * len(size), pixel_id, components)
        if components > 1
        else sitk.Image([1] * len(size), pixel_id)
    )
    per_voxel = probe.GetSizeOfPixelComponent() * max(1, components)
    return math.prod(int(s) for s in size) * per_voxel


def check_header_size(path: Path, fmt: str) -> None:
    """Read only the header and refuse an image that cannot fit in memory, before its data is
    decompressed: a 4 MB gzip or a header that claims 100000^3 voxels must not be allocated."""
    from ..limits import check_fits

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        with native_stderr_to_log():
            r.ReadImageInformation()
        size = tuple(int(v) for v in r.GetSize())
        comps = int(r.GetNumberOfComponents())
        nbytes = image_nbytes(size, r.GetPixelID(), comps)
    except RuntimeError:
        return  # unreadable header: ReadImage says why, in its own words
    shown = " x ".join(str(s) for s in size)
    check_fits(
        2 * nbytes,  # ITK's image and the numpy copy
        f"{path.name} ({shown} voxels of {sitk.GetPixelIDValueAsString(r.GetPixelID())}) needs",
        "crop or downsample it first, or use a machine with more memory",
        ImageLoadError,
    )


def read_image(path: Path, fmt: str) -> sitk.Image:
    """``sitk.ReadImage`` with ITK's errors turned into one-line ``ImageLoadError``s; the header's
    size is checked against the free memory first."""
    check_header_size(path, fmt)
    try:
        with native_stderr_to_log():
            return sitk.ReadImage(str(path))
    except MemoryError as exc:
        from ..limits import memory_error_line

        raise ImageLoadError(f"{path.name}: {memory_error_line(exc, 'reading it')}") from exc
    except RuntimeError as exc:
        reason = sitk_reason(exc)
        if "Unable to determine ImageIO reader" in str(exc):
            from ._formats import has_dicom_preamble

            if has_dicom_preamble(path):
                raise ImageLoadError(
                    f"{path.name} starts like a DICOM file but cannot be read: it is damaged or truncated; "
                    "copy it again from its source"
                ) from exc
            raise ImageLoadError(
                f"{path.name} is not a readable {fmt} file (no reader recognises its contents)"
            ) from exc
        raise ImageLoadError(
            f"{path.name} is damaged, truncated or not a valid {fmt} file: {reason}"
        ) from exc


def image_to_volume(img: sitk.Image, name: str) -> Volume:
    """Pixels as numpy (z,y,x; channels first) plus spacing/origin/direction in SimpleITK order."""
    dim = img.GetDimension()
    if dim > 3:
        size = " x ".join(str(s) for s in img.GetSize())
        raise ImageLoadError(
            f"{name} is a {dim}D image ({size}); seg_studio reads 2D and 3D scans, so extract one "
            "3D volume (one time point or channel) first"
        )
    if dim < 2:
        raise ImageLoadError(f"{name} is a {dim}D signal, not an image")
    arr = sitk.GetArrayFromImage(img)
    comps = img.GetNumberOfComponentsPerPixel()
    if comps > 1:
        arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
    return Volume(
        array=arr,
        spacing=img.GetSpacing(),
        origin=img.GetOrigin(),
        direction=img.GetDirection(),
        channels=comps,
    )


def volume_to_image(vol: Volume, array: np.ndarray | None = None) -> sitk.Image:
    """The inverse of ``image_to_volume`` (``array`` replaces the Volume's pixels, e.g. a cast)."""
    arr = vol.array if array is None else array
    if vol.channels > 1:
        img = sitk.GetImageFromArray(np.moveaxis(arr, 0, -1), isVector=True)
    else:
        img = sitk.GetImageFromArray(arr, isVector=False)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    return img


def write_image(img: sitk.Image, path: Path, compress: bool) -> None:
    try:
        with native_stderr_to_log():
            sitk.WriteImage(img, str(path), useCompression=compress)
    except RuntimeError as exc:
        from ..errors import ImageWriteError

        raise ImageWriteError(f"could not write {path.name}: {sitk_reason(exc)}") from exc
