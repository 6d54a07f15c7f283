"""How a scan is first shown: a window (contrast limits) that follows its modality.

napari shows an image from its minimum to its maximum. That is right for an 8-bit picture and an
X-ray, but an MR opens dim (a few bright voxels set the top: the MSD hippocampus crops hold 0-2777
with 99.5 % of voxels below 852) and a CT shows bone and air instead of soft tissue. So: a window
stored in the DICOM file wins; a CT (by its DICOM tag, or Hounsfield units: air near -1000) gets the
soft-tissue preset; an X-ray or an 8-bit picture its full range; anything else (MR, and scans that
do not say) a percentile window. The CT presets are Hounsfield windows and mean nothing elsewhere,
so ``preset_fits`` tells the viewer when to warn.
"""

from __future__ import annotations

import numpy as np

from .volume import Volume

#: (window, level) in Hounsfield units, as radiology workstations define them.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}
#: The preset a CT opens with.
CT_DEFAULT = "soft tissue"
#: MR has no absolute scale: a percentile window of the voxels.
MR_PERCENTILES = (1.0, 99.5)
MR_PRESET = "MR (percentile)"
PRESETS = (*CT_PRESETS, MR_PRESET)
#: DICOM modality codes -> the names shown to the user.
MODALITY_NAMES = {
    "MR": "MR",
    "CT": "CT",
    "DX": "X-ray",
    "CR": "X-ray",
    "RG": "X-ray",
    "DR": "X-ray",
    "MG": "X-ray",
    "US": "US",
    "EM": "EM",
    "OP": "photo",
    "XC": "photo",
    "SM": "microscopy",
    "PT": "PET",
    "NM": "NM",
}
#: Enough voxels for a percentile or a range (a strided sample of bigger volumes).
SAMPLE_VOXELS = 1_000_000


def _sample(data: np.ndarray) -> np.ndarray:
    flat = np.asarray(data).reshape(-1)
    step = max(1, flat.size // SAMPLE_VOXELS)
    return flat[::step]


def scan_modality(volume: Volume) -> str | None:
    """ "CT", "MR", "X-ray", "photo"... from the DICOM tag (or a sample's own), colour, or Hounsfield units
    (air near -1000); None when the file does not say (an MR in NIfTI, a PNG). The window presets and a
    model's domain both ask it, so they never disagree on what a scan is."""
    code = str(volume.meta.get("modality") or "").strip().upper()
    if code in MODALITY_NAMES:
        return MODALITY_NAMES[code]
    if volume.meta.get("rgb") or volume.channels in (3, 4) and volume.ndim == 2:
        return "photo"
    a = np.asarray(volume.array)
    if a.size and np.issubdtype(a.dtype, np.integer):
        s = _sample(a)
        if float(s.min()) <= -900 and float(s.max()) >= 100:  # air and soft tissue in HU
            return "CT"
    return None


def preset_window(preset: str, data: np.ndarray) -> tuple[float, float]:
    """Contrast limits of ``preset`` (a CT preset or ``MR_PRESET``) for an image with voxels ``data``."""
    if preset in CT_PRESETS:
        width, level = CT_PRESETS[preset]
        return level - width / 2, level + width / 2
    if preset == MR_PRESET or preset.startswith("MR"):
        return percentile_window(data)
    raise ValueError(f"unknown window preset {preset!r}; choose one of {', '.join(PRESETS)}")


def percentile_window(
    data: np.ndarray, percentiles: tuple[float, float] = MR_PERCENTILES
) -> tuple[float, float]:
    s = _sample(data)
    if s.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(s, percentiles)
    return float(lo), float(max(hi, lo + 1e-6))


def full_range(data: np.ndarray) -> tuple[float, float]:
    a = np.asarray(data)
    if a.dtype == np.uint8:
        return 0.0, 255.0
    s = _sample(a)
    if s.size == 0:
        return 0.0, 1.0
    lo, hi = float(s.min()), float(s.max())
    return lo, max(hi, lo + 1e-6)


def initial_window(volume: Volume) -> tuple[float, float] | None:
    """The contrast limits a scan opens with (None for colour pictures, shown as they are)."""
    if volume.meta.get("rgb"):
        return None
    center, width = volume.meta.get("window_center"), volume.meta.get("window_width")
    if center is not None and width and float(width) > 1:
        return float(center) - float(width) / 2, float(center) + float(width) / 2
    modality = scan_modality(volume)
    if modality == "CT":
        return preset_window(CT_DEFAULT, volume.array)
    if modality in ("X-ray", "photo") or np.asarray(volume.array).dtype == np.uint8:
        return full_range(volume.array)
    return percentile_window(volume.array)


def preset_fits(preset: str, modality: str | None) -> bool:
    """False for a Hounsfield preset on a scan that is not a CT (an MR 'brain' window is all white)."""
    return preset not in CT_PRESETS or modality == "CT"
