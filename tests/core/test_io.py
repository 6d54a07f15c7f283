"""core.io and core.atomic on files written at test time: round trips, label dtypes, bad input."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from seg_studio.cli import main
from seg_studio.core import io
from seg_studio.core.atomic import atomic_write, split_suffix
from seg_studio.core.errors import ImageLoadError, ImageWriteError
from seg_studio.core.volume import Volume


def _rotation(theta: float) -> tuple[float, ...]:
    c, s = math.cos(theta), math.sin(theta)
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def _volume_3d(dtype=np.float32, kind: str = "image") -> Volume:
    rng = np.random.default_rng(1)
    arr = (rng.random((5, 7, 9)) * 1000).astype(dtype)
    # float32-representable geometry: NIfTI stores spacing/origin as float32
    return Volume(
        array=arr,
        spacing=(0.75, 1.25, 3.5),
        origin=(-120.5, 33.25, 7.125),
        direction=_rotation(0.3),
        meta={"kind": kind},
    )


def _files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"])
def test_3d_round_trip_keeps_array_and_geometry(tmp_path: Path, suffix: str) -> None:
    vol = _volume_3d()
    out = io.write(vol, tmp_path / f"scan{suffix}")
    got = io.read(out)
    assert got.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(got.array, vol.array)
    if suffix in (".nii.gz", ".nii"):
        # NIfTI keeps geometry in float32 (spacing exactly here; origin/direction via the quaternion)
        np.testing.assert_array_equal(got.spacing, vol.spacing)
        np.testing.assert_allclose(got.origin, vol.origin, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.direction, vol.direction, rtol=0, atol=1e-6)
    else:
        assert got.spacing == vol.spacing
        assert got.origin == vol.origin
        np.testing.assert_allclose(got.direction, vol.direction, rtol=0, atol=1e-15)
    assert _files_in(tmp_path) == ({"scan.mhd", "scan.raw"} if suffix == ".mhd" else {f"scan{suffix}"})


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
@pytest.mark.parametrize("rgb", [False, True])
def test_2d_round_trip_grey_and_rgb(tmp_path: Path, suffix: str, rgb: bool) -> None:
    rng = np.random.default_rng(2)
    shape = (3, 20, 30) if rgb else (20, 30)
    vol = Volume.from_array(rng.integers(0, 256, shape).astype(np.uint8), channels=3 if rgb else 1)
    got = io.read(io.write(vol, tmp_path / f"pic{suffix}"))
    assert got.channels == vol.channels and got.meta.get("rgb", False) == rgb
    np.testing.assert_array_equal(got.array, vol.array)
    assert got.spacing == (1.0, 1.0) and got.origin == (0.0, 0.0) and got.direction == (1.0, 0.0, 0.0, 1.0)


def test_png_keeps_spacing_and_16_bit(tmp_path: Path) -> None:
    vol = Volume.from_array(np.array([[0, 1000], [65535, 7]], np.uint16), spacing=(0.25, 0.5))
    got = io.read(io.write(vol, tmp_path / "a.png"))
    np.testing.assert_array_equal(got.array, vol.array)
    assert got.spacing == (0.25, 0.5)


def test_multipage_tiff_is_3d(tmp_path: Path) -> None:
    arr = (np.arange(4 * 6 * 8) % 251).astype(np.uint16).reshape(4, 6, 8)
    vol = Volume.from_array(arr, spacing=(0.5, 0.25, 1.0))
    got = io.read(io.write(vol, tmp_path / "stack.tif"))
    assert got.spatial_shape == (4, 6, 8)
    np.testing.assert_array_equal(got.array, arr)
    assert got.spacing == (0.5, 0.25, 1.0)


def test_format_that_cannot_hold_geometry_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    vol = Volume.from_array(np.zeros((4, 5), np.uint8), origin=(10.0, 2.0))
    with pytest.raises(ImageWriteError, match="origin"):
        io.write(vol, tmp_path / "x.png")
    with pytest.raises(ImageWriteError, match="PNG holds"):
        io.write(Volume.from_array(np.zeros((4, 5), np.float32)), tmp_path / "x.png")
    with pytest.raises(ImageWriteError, match="cannot save as .jpg"):
        io.write(Volume.from_array(np.zeros((4, 5), np.uint8)), tmp_path / "x.jpg")
    assert _files_in(tmp_path) == set()


def test_jpeg_and_gif_read_grey_rgb_and_palette(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=100)
    got = io.read(tmp_path / "c.jpg")
    assert got.channels == 3 and got.meta["rgb"] and got.spatial_shape == (10, 12)
    assert abs(int(got.array[0].mean()) - 200) <= 2 and got.array[1].max() <= 3

    idx = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every index used: nothing to re-number
    pal = Image.fromarray(idx, mode="P")
    pal.putpalette([c for i in range(256) for c in (255 - i, i // 2, 7)])  # colours != indices
    pal.save(tmp_path / "m.gif")
    pal.save(tmp_path / "m.png")
    for name in ("m.gif", "m.png"):
        got = io.read(tmp_path / name)
        assert got.channels == 1, name
        np.testing.assert_array_equal(got.array, idx)  # raw indices, not the palette's colours


def test_single_frame_dicom_slice_reads_as_2d(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.arange(12, dtype=np.int16).reshape(1, 3, 4))
    img.SetSpacing((0.5, 0.7, 2.0))
    f = tmp_path / "IM0001"  # no extension: sniffed by the DICM preamble
    sitk.WriteImage(img, str(f), imageIO="GDCMImageIO")
    got = io.read(f)
    assert got.ndim == 2 and got.spatial_shape == (3, 4)
    np.testing.assert_array_equal(got.array, np.arange(12).reshape(3, 4))
    assert got.spacing == pytest.approx((0.5, 0.7))
    assert "patient_geometry" in got.meta


# --- labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "dtype"),
    [((0, 1, 3), np.uint8), ((0, 300), np.uint16), ((-1, 0, 5), np.int8), ((0, 70000), np.uint32)],
)
def test_labels_written_with_smallest_integer_type(tmp_path: Path, values: tuple, dtype: type) -> None:
    arr = np.zeros((5, 7, 9), np.int64)
    arr.flat[: len(values)] = values
    vol = _volume_3d().with_array(arr, meta={"kind": "labels"})
    got = io.read(io.write(vol, tmp_path / "seg.nii.gz"))
    assert got.array.dtype == dtype
    np.testing.assert_array_equal(got.array, arr)


def test_float_labels_become_integers_and_fractions_are_refused(tmp_path: Path) -> None:
    vol = _volume_3d()
    lab = vol.with_array(np.round(vol.array / 400).astype(np.float32), meta={"kind": "labels"})
    got = io.read(io.write(lab, tmp_path / "lab.mha"))
    assert got.array.dtype == np.uint8 and got.array.max() == 2
    with pytest.raises(ImageWriteError, match="whole numbers"):
        io.write(vol.with_array(vol.array, meta={"kind": "labels"}), tmp_path / "bad.mha")


def test_labels_in_source_geometry_never_over_the_scan(tmp_path: Path) -> None:
    scan_path = io.write(_volume_3d(), tmp_path / "scan.nii.gz")
    before = scan_path.read_bytes()
    scan = io.read(scan_path)
    labels = scan.with_array((scan.array > 500).astype(np.uint8), meta={**scan.meta, "kind": "labels"})
    with pytest.raises(ImageWriteError, match="refusing to overwrite the input scan"):
        io.write(labels, scan_path)
    with pytest.raises(ImageWriteError, match="refusing"):
        io.write(labels, tmp_path / "sub" / ".." / "scan.nii.gz")  # same file, other spelling
    assert scan_path.read_bytes() == before
    got = io.read(io.write(labels, tmp_path / "scan_labels.nrrd"))
    assert got.same_geometry(scan) and got.meta["kind"] == "labels"


def test_no_save_replaces_a_scan_read_in_this_process(tmp_path: Path) -> None:
    scan_path = io.write(_volume_3d(), tmp_path / "other_scan.mha")
    io.read(scan_path)
    stray = Volume.from_array(np.zeros((5, 7, 9), np.uint8), meta={"kind": "labels"})  # no source at all
    with pytest.raises(ImageWriteError, match="refusing"):
        io.write(stray, scan_path)
    np.testing.assert_array_equal(io.read(scan_path).array, _volume_3d().array)


def test_label_names_and_colours_survive_nrrd_and_mha(tmp_path: Path) -> None:
    from seg_studio.core.samples import make_sample_3d

    _, labels = make_sample_3d()
    for suffix in (".nrrd", ".mha"):
        got = io.read(io.write(labels, tmp_path / f"anything{suffix}"))  # no 'label' in the name
        assert got.meta["kind"] == "labels" and got.labels == labels.labels


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".tif", ".png"])
def test_label_names_travel_in_a_sidecar_where_the_header_has_no_room(tmp_path: Path, suffix: str) -> None:
    from seg_studio.core.samples import make_sample_2d, make_sample_3d

    _, labels = (make_sample_2d if suffix in (".png", ".tif") else make_sample_3d)()
    out = io.write(labels, tmp_path / f"result{suffix}")  # no 'label' in the name: the sidecar says so
    side = io.sidecar_path(out)
    assert side == tmp_path / "result.labels.json" and side.is_file()
    got = io.read(out)
    assert got.meta["kind"] == "labels" and got.labels == labels.labels
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, side.name])  # no temp left
    # saved again without names: the old names must not come back with other data
    io.write(labels.with_array(np.asarray(labels.array), labels={}, meta={"kind": "labels"}), out)
    assert not side.exists()


def test_cli_info_lists_the_saved_class_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from seg_studio.core.samples import make_sample_3d

    _, labels = make_sample_3d()
    out = io.write(labels, tmp_path / "result.nii.gz")
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(labels)" in text and "1=organ" in text and "3=vessel" in text


def test_info_says_when_a_picture_has_no_pixel_size(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    png = data_dir / "jsrt_chest_xray_heart_lungs" / "images" / "JPCLN002.png"
    assert not io.has_physical_spacing(io.read(png))
    assert io.has_physical_spacing(io.read(data_dir / "msd_task04_hippocampus/images/hippocampus_003.nii.gz"))
    assert main(["info", str(png)]) == 0
    text = capsys.readouterr().out
    spacing = next(line for line in text.splitlines() if line.startswith("spacing:"))
    assert "mm" not in spacing and "px" in spacing
    assert main(["info", str(png), "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["physical_spacing"] is False


def test_a_label_file_can_be_saved_over_itself(tmp_path: Path) -> None:
    """An opened mask being corrected is not an input scan: saving the edit in place is allowed."""
    arr = np.zeros((4, 5, 6), np.uint8)
    arr[1:3, 2:4, 2:5] = 2
    path = io.write(Volume.from_array(arr, meta={"kind": "labels"}), tmp_path / "case_mask.nii.gz")
    lab = io.read(path)
    assert lab.meta["kind"] == lab.meta["source_kind"] == "labels"
    lab.array[0, 0, 0] = 1
    io.write(lab, path)
    assert io.read(path).array[0, 0, 0] == 1


# --- atomic_write ----------------------------------------------------------------------------------


def test_atomic_write_failed_verify_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "keep.nii.gz"
    target.write_bytes(b"old")
    seen = []

    def write(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_bytes(b"new")

    def verify(tmp: Path) -> None:
        raise ImageWriteError("verification failed")

    with pytest.raises(ImageWriteError, match="verification failed"):
        atomic_write(target, write, verify)
    assert target.read_bytes() == b"old"
    assert _files_in(tmp_path) == {"keep.nii.gz"}
    assert seen[0].startswith(".keep.tmp-") and seen[0].endswith(".nii.gz")

    def crash(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(ImageWriteError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old" and _files_in(tmp_path) == {"keep.nii.gz"}
    atomic_write(target, lambda t: t.write_bytes(b"new"))
    assert target.read_bytes() == b"new"


def test_split_suffix() -> None:
    assert split_suffix("a/b/Scan.NII.GZ") == ("Scan", ".NII.GZ")
    assert split_suffix("x.mha") == ("x", ".mha")
    assert split_suffix("IM0001") == ("IM0001", "")


# --- bad input: one typed error, one line at the CLI -------------------------------------------------


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a phrase the message must contain); every file built here, at test time."""
    good = tmp / "good.nii.gz"
    io.write(_volume_3d(), good)
    data = good.read_bytes()
    cases: dict[str, tuple[Path, str]] = {"missing": (tmp / "nope.nii.gz", "does not exist")}
    (tmp / "empty.nii.gz").write_bytes(b"")
    cases["empty"] = (tmp / "empty.nii.gz", "empty")
    (tmp / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    cases["truncated nii.gz"] = (tmp / "trunc.nii.gz", "truncated")
    raw = gzip.decompress(data)
    (tmp / "trunc.nii").write_bytes(raw[: len(raw) - 100])
    cases["truncated nii"] = (tmp / "trunc.nii", "truncated")
    (tmp / "text.nii.gz").write_text("this is not an image\n" * 30)
    cases["text named .nii.gz"] = (tmp / "text.nii.gz", "not a NIfTI file")
    (tmp / "scan.xyz").write_bytes(b"1234")
    cases["unsupported extension"] = (tmp / "scan.xyz", "unsupported file type .xyz")
    nan = np.ones((3, 4, 5), np.float32)
    nan[1, 1, 1], nan[2, 2, 2] = np.nan, np.inf
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp / "nan.nii.gz"))
    cases["nan/inf"] = (tmp / "nan.nii.gz", "1 NaN and 1 infinite")  # ITK alone would read zeros here
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp / "nan.mha"))
    cases["nan/inf mha"] = (tmp / "nan.mha", "1 NaN and 1 infinite")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False), str(tmp / "t4.nii.gz")
    )
    cases["4d"] = (tmp / "t4.nii.gz", "4D image")
    five = sitk.GetImageFromArray(np.zeros((2, 2, 3, 4, 5), np.float32), isVector=False)
    sitk.WriteImage(five, str(tmp / "t5.nii.gz"))
    cases["5d"] = (tmp / "t5.nii.gz", "5D image")
    sheared = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))
    sheared.SetDirection((1, 0.3, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(sheared, str(tmp / "shear.mha"))
    cases["sheared"] = (tmp / "shear.mha", "sheared")
    tif = tmp / "stack.tif"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 40, 50), np.uint16)), str(tif))
    (tmp / "trunc.tif").write_bytes(tif.read_bytes()[: tif.stat().st_size * 2 // 3])
    cases["truncated tiff"] = (tmp / "trunc.tif", "truncated")
    io.write(_volume_3d(), tmp / "lost.mhd")
    (tmp / "lost.raw").unlink()
    cases["mhd without its raw"] = (tmp / "lost.mhd", "lost.raw, which is missing")
    (tmp / "nodicom").mkdir()
    (tmp / "nodicom" / "a.txt").write_text("x")
    cases["folder without dicom"] = (tmp / "nodicom", "no DICOM series")
    return cases


def test_bad_inputs_raise_image_load_error(tmp_path: Path) -> None:
    for name, (path, phrase) in _bad_inputs(tmp_path).items():
        with pytest.raises(ImageLoadError) as err:
            io.read(path)
        msg = str(err.value)
        assert phrase in msg, (name, msg)
        assert "\n" not in msg, name


def test_cli_prints_bad_input_as_one_line_exit_2(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    for name, (path, phrase) in _bad_inputs(tmp_path).items():
        capfd.readouterr()
        assert main(["info", str(path)]) == 2, name
        out, err = capfd.readouterr()  # fd-level: ITK's own stderr chatter would show up here
        lines = err.strip().splitlines()
        assert len(lines) == 1 and phrase in lines[0] and "Traceback" not in err, (name, err)
        assert out == ""


# --- CLI on good input -----------------------------------------------------------------------------


def test_cli_info_json_and_convert(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    src = io.write(_volume_3d(np.int16), tmp_path / "ct.mha")
    assert main(["info", str(src), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size_xyz"] == [9, 7, 5] and info["spacing"] == [0.75, 1.25, 3.5] and info["dtype"] == "int16"
    assert main(["convert", str(src), str(tmp_path / "ct.nii.gz")]) == 0
    assert "wrote" in capsys.readouterr().out
    got = io.read(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(got.array, io.read(src).array)
    assert main(["convert", str(src), str(src)]) == 2
    assert "refusing" in capsys.readouterr().err


def test_demo_writes_the_sample_and_describes_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "0.9 x 0.9 x 2.5 mm" in out and "1=organ" in out and "3=heart" in out
    img = io.read(tmp_path / "s" / "3d" / "sample_3d.nii.gz")
    lab = io.read(tmp_path / "s" / "3d" / "sample_3d_labels.nii.gz")
    assert lab.meta["kind"] == "labels" and lab.same_geometry(img) and lab.array.dtype == np.uint8
    # ... then segments the 2D sample with the bundled model, in the scan's geometry, and scores it
    mask = io.read(tmp_path / "s" / "2d" / "sample_2d_predicted.nii.gz")
    assert mask.same_geometry(io.read(tmp_path / "s" / "2d" / "sample_2d.nii.gz"))
    dices = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("dice:")]
    assert len(dices) == 3 and min(dices) > 0.8, out


def test_demo_without_out_writes_into_the_user_folder_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("SEG_STUDIO_HOME", str(home))
    monkeypatch.chdir(cwd)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert f"seg_studio sample written to {home.resolve() / 'sample'}/" in out
    assert (home / "sample" / "2d" / "sample_2d.nii.gz").is_file()
    assert list(cwd.iterdir()) == []  # nothing in the folder the shell was in


def test_align_to_undoes_axis_flips_and_permutations_exactly() -> None:
    scan = _volume_3d()
    lab = scan.with_array((scan.array > 500).astype(np.uint8), meta={"kind": "labels"})
    # the same voxels stored another way: numpy axes (z,y,x) -> (x,z,y) with x flipped
    d = scan.direction_matrix
    arr = np.flip(np.transpose(lab.array, (2, 0, 1)), axis=0)
    # new sitk axes (x', y', z') = (old y, old z, old x reversed)
    new_dir = np.stack([d[:, 1], d[:, 2], -d[:, 0]], axis=1)
    nx = scan.spatial_shape[2]
    new_origin = np.asarray(scan.origin) + d[:, 0] * scan.spacing[0] * (nx - 1)
    other = Volume(
        array=arr,
        spacing=(scan.spacing[1], scan.spacing[2], scan.spacing[0]),
        origin=tuple(new_origin),
        direction=tuple(new_dir.ravel()),
        meta={"kind": "labels"},
    )
    back = io.align_to(other, scan)
    assert back.same_geometry(scan)
    np.testing.assert_array_equal(back.array, lab.array)
    shifted = Volume(**{**other.__dict__, "origin": tuple(new_origin + 0.5)})
    with pytest.raises(ImageLoadError, match="other voxels"):
        io.align_to(shifted, scan)


def test_folder_names_call_a_map_labels_only_when_the_whole_name_says_so(tmp_path: Path) -> None:
    # an 8-bit scan with few grey values, in a user's folder that merely contains "seg" as a word
    arr = np.random.default_rng(0).integers(0, 6, (6, 20, 20)).astype(np.uint8)
    vol = Volume.from_array(arr, spacing=(0.8, 0.8, 2.0))
    scan = io.write(vol, tmp_path / "seg-studio-work" / "scans" / "ct.nii.gz")
    assert io.read(scan).meta["kind"] == "image"
    mask = io.write(vol, tmp_path / "seg-studio-work" / "labelsTr" / "ct.nii.gz")
    assert io.read(mask).meta["kind"] == "labels"
    named = io.write(vol, tmp_path / "seg-studio-work" / "scans" / "ct_seg.nii.gz")
    assert io.read(named).meta["kind"] == "labels"
