"""DICOM series made from the real TotalSegmentator CT slices: one gantry-tilted, one with a gap.

The CT example ships without SOP/series/study UIDs (a DICOM SEG cannot reference it), so the copies
get UIDs; pixels are the real ones (decoded by SimpleITK), cropped to 256 x 256 to stay light.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np

CT_DIR = ("totalsegmentator_ct_examples", "dicom", "example_ct_dicom")


def ct_slices(data_dir: Path) -> list:
    import pydicom

    folder = data_dir.joinpath(*CT_DIR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dss = [pydicom.dcmread(f) for f in sorted(folder.iterdir()) if f.is_file()]
    return sorted(dss, key=lambda d: float(d.ImagePositionPatient[2]))


def write_series(
    data_dir: Path, out: Path, tilt_deg: float = 0.0, drop: tuple[int, ...] = (), crop: int = 128
) -> Path:
    """Write the CT as a new series in ``out``: sheared by ``tilt_deg`` along y, slices ``drop`` left out."""
    import SimpleITK as sitk
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    out.mkdir(parents=True, exist_ok=True)
    dss = ct_slices(data_dir)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    z0 = float(dss[0].ImagePositionPatient[2])
    shear = math.tan(math.radians(tilt_deg))
    for k, ds in enumerate(dss):
        if k in drop:
            continue
        hu = sitk.GetArrayFromImage(sitk.ReadImage(ds.filename))[0]
        raw = (hu[crop : crop + 256, crop : crop + 256] - int(ds.RescaleIntercept)).astype(np.uint16)
        new = copy.deepcopy(ds)
        new.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        new.Rows, new.Columns = raw.shape
        new.PixelData = raw.tobytes()
        new.SOPClassUID = new.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        new.SOPInstanceUID = new.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        new.StudyInstanceUID, new.SeriesInstanceUID, new.FrameOfReferenceUID = study, series, frame
        new.PatientID = new.PatientName = "SYNTH_CT"
        new.SeriesNumber = 7
        new.SeriesDescription = f"CT tilt {tilt_deg:g} gap {len(drop)}"
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ps = [float(v) for v in ds.PixelSpacing]
        new.ImagePositionPatient = [x + crop * ps[1], y + crop * ps[0] + (z - z0) * shear, z]
        new.GantryDetectorTilt = tilt_deg
        new.save_as(out / f"{k:03d}.dcm", enforce_file_format=True)
    return out
