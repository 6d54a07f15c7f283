"""The window a scan opens with follows its modality (real scans from ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seg_studio.core import io
from seg_studio.core.display import (
    CT_PRESETS,
    initial_window,
    percentile_window,
    preset_fits,
    preset_window,
    scan_modality,
)
from seg_studio.core.volume import Volume


def test_mr_opens_on_a_percentile_window_not_min_max(data_dir: Path) -> None:
    vol = io.read(data_dir / "msd_task04_hippocampus" / "images" / "hippocampus_003.nii.gz")
    lo, hi = initial_window(vol)
    a = np.asarray(vol.array)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(a, (1.0, 99.5))), rel=1e-3)
    assert hi < 0.5 * float(a.max())  # min-max put 99.5 % of the voxels in the bottom third: dim


def test_ct_opens_on_soft_tissue_recognised_by_hounsfield_units(data_dir: Path) -> None:
    vol = io.read(data_dir / "totalsegmentator_ct_examples" / "images" / "example_ct_sm.nii.gz")
    assert vol.meta.get("modality") is None and scan_modality(vol) == "CT"
    width, level = CT_PRESETS["soft tissue"]
    assert initial_window(vol) == (level - width / 2, level + width / 2)
    mr = io.read(data_dir / "totalsegmentator_ct_examples" / "images" / "example_mr_sm.nii.gz")
    assert scan_modality(mr) is None  # an MR in NIfTI says nothing, and has no air at -1000


def test_a_dicom_window_wins(data_dir: Path) -> None:
    vol = io.read(data_dir / "totalsegmentator_ct_examples" / "dicom" / "example_ct_dicom")
    assert scan_modality(vol) == "CT"
    c, w = float(vol.meta["window_center"]), float(vol.meta["window_width"])
    assert initial_window(vol) == (c - w / 2, c + w / 2)
    mr = io.read(data_dir / "tcia_brain_tumor_progression_dicom" / "images" / "PGBM-003_19950329")
    assert scan_modality(mr) == "MR"


def test_eight_bit_pictures_and_x_rays_open_on_their_full_range(data_dir: Path) -> None:
    xray = io.read(data_dir / "jsrt_chest_xray_heart_lungs" / "images" / "JPCLN002.png")
    assert initial_window(xray) == (0.0, 255.0)
    em = io.read(data_dir / "isbi2012_em_membrane" / "images" / "1.png")
    assert initial_window(em) == (0.0, 255.0)
    dx16 = Volume(
        np.arange(4096, dtype=np.uint16).reshape(64, 64),
        (1.0, 1.0),
        (0.0, 0.0),
        (1.0, 0.0, 0.0, 1.0),
        meta={"modality": "DX"},
    )
    assert initial_window(dx16) == (0.0, 4095.0)
    rgb = io.read(data_dir / "drive_retina_vessels" / "images" / "22_training.tif")
    assert initial_window(rgb) is None and scan_modality(rgb) == "photo"


def test_ct_presets_fit_only_ct() -> None:
    assert preset_fits("brain", "CT") and not preset_fits("brain", "MR") and not preset_fits("lung", None)
    assert preset_fits("MR (percentile)", "MR") and preset_fits("MR (percentile)", "CT")
    data = np.linspace(0, 100, 1000)
    assert preset_window("MR (percentile)", data) == percentile_window(data)
    with pytest.raises(ValueError, match="unknown window preset"):
        preset_window("bogus", data)
