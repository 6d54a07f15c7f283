"""Raster files SimpleITK gets wrong for us: GIF (no ITK reader), BMP and palette PNGs.

ITK expands palette images to RGB and reads 8-bit grey BMPs as RGB; label masks are usually palette
images whose *indices* are the labels (DRIVE's GIFs: indices 0/255), so we keep the raw indices.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import ImageLoadError
from ..volume import Volume

log = logging.getLogger(__name__)


def is_palette_png(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.mode in ("P", "PA")
    except Exception:  # not our call: ITK reports unreadable PNGs with its own reason
        return False


def _frame_array(img) -> tuple[np.ndarray, dict]:  # noqa: ANN001 - PIL.Image.Image, imported late
    info: dict = {}
    mode = img.mode
    if mode in ("P", "PA"):
        info["palette"] = True
        arr = np.asarray(img.getchannel(0) if mode == "PA" else img)
        if mode == "PA":
            alpha = np.asarray(img.getchannel(1))
            if not (alpha == 255).all():
                info["alpha_dropped"] = True
                log.warning("the transparency of a palette image was dropped; the indices are kept")
        return arr.astype(np.uint8, copy=False), info
    if mode == "1":
        return np.asarray(img, dtype=np.uint8), info
    if mode == "CMYK":
        img = img.convert("RGB")
        mode = "RGB"
    arr = np.asarray(img)
    if mode in ("LA", "RGBA") and (arr[..., -1] == arr.dtype.type(255)).all():
        arr = arr[..., :-1]  # fully opaque alpha carries nothing
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    return np.array(arr), info


def read_pillow(path: Path, fmt: str) -> Volume:
    """Grey -> (y,x); RGB -> (3,y,x); multi-frame GIF -> (z,y,x). Spacing 1.0: these files store none."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageLoadError(f"{path.name} is not a readable {fmt} file ({exc})") from exc
    from ..limits import check_fits

    frames = []
    info: dict = {}
    try:
        n_frames = int(getattr(img, "n_frames", 1))
    except (OSError, EOFError, ValueError) as exc:
        raise ImageLoadError(f"{path.name} is truncated or damaged ({exc})") from exc
    w, h = img.size
    check_fits(
        2 * w * h * n_frames * max(1, len(img.getbands())),
        f"{path.name} ({w} x {h} pixels, {n_frames} frame(s)) needs",
        "crop or downsample it first",
        ImageLoadError,
    )
    try:
        with img:
            for i in range(n_frames):
                img.seek(i)
                arr, info = _frame_array(img)
                frames.append(arr)
    except (OSError, EOFError, ValueError) as exc:
        raise ImageLoadError(f"{path.name} is truncated or damaged ({exc})") from exc
    if len({f.shape for f in frames}) != 1:
        raise ImageLoadError(f"{path.name} has frames of different sizes; save each frame separately")
    arr = frames[0] if len(frames) == 1 else np.stack(frames)
    channels = 1
    if arr.ndim == 3 and len(frames) == 1:
        arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
        channels = arr.shape[0]
    elif arr.ndim == 4:
        arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
        channels = arr.shape[0]
    vol = Volume.from_array(arr, channels=channels)
    vol.meta.update(info)
    return vol
