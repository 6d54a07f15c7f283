"""The napari reader, writers and sample data through a real viewer (Xvfb via pytest-xvfb)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from seg_studio.core import io
from seg_studio.core.volume import Volume
from seg_studio.ui.reader import napari_get_reader

PLUGIN = "seg-studio"


def _md(layer) -> dict:
    return layer.metadata["seg_studio"]


def test_nifti_opens_with_physical_scale_and_geometry(make_napari_viewer, data_dir: Path) -> None:
    path = data_dir / "totalsegmentator_ct_examples" / "images" / "example_ct_sm.nii.gz"
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin=PLUGIN)
    vol = io.read(path)
    assert type(layer).__name__ == "Image" and layer.data.shape == (30, 101, 122)
    # stored right-to-left and front-to-back (direction diag(-1, -1, 1)): napari flips x and y
    np.testing.assert_allclose(layer.scale, (3.0, -3.0, -3.0))
    np.testing.assert_allclose(layer.translate, vol.origin_zyx)
    md = _md(layer)
    assert md["spacing"] == list(vol.spacing) and md["direction"] == list(vol.direction)
    assert md["origin"] == list(vol.origin) and md["source"] == str(path)

    (labels,) = viewer.open(
        data_dir / "totalsegmentator_ct_examples" / "labels" / "example_ct_sm.nii.gz", plugin=PLUGIN
    )
    assert type(labels).__name__ == "Labels"
    np.testing.assert_allclose(labels.scale, layer.scale)
    np.testing.assert_allclose(labels.translate, layer.translate)  # the mask lies on the scan
    names = dict(zip(labels.features["index"], labels.features["class"], strict=True))
    assert names[5] == "liver"


def test_a_nifti_mask_stored_flipped_lies_on_its_dicom_series(make_napari_viewer, data_dir: Path) -> None:
    """TotalSegmentator's organ labels for its CT DICOM series are a NIfTI stored front-to-back
    (direction y = -1, origin at the other end): in the world they cover the same voxels, and the
    liver lies on the liver, not 499 mm away."""
    ct = data_dir / "totalsegmentator_ct_examples"
    viewer = make_napari_viewer()
    (series,) = viewer.open(ct / "dicom" / "example_ct_dicom", plugin=PLUGIN)
    (organs,) = viewer.open(ct / "labels" / "example_ct_dicom.nii.gz", plugin=PLUGIN)
    assert io.read(ct / "labels" / "example_ct_dicom.nii.gz").direction[4] == -1.0
    np.testing.assert_allclose(organs.extent.world, series.extent.world, atol=1e-3)
    liver = np.argwhere(np.asarray(organs.data) == 5)[len(np.argwhere(np.asarray(organs.data) == 5)) // 2]
    world = organs.data_to_world(liver)
    index = np.round(series.world_to_data(world)).astype(int)
    np.testing.assert_array_equal(index[[0, 2]], liver[[0, 2]])  # same slice, same column...
    assert index[1] == series.data.shape[1] - 1 - liver[1]  # ...and the row counted from the other end


def test_dicom_folder_opens_in_millimetres_with_its_window(make_napari_viewer, data_dir: Path) -> None:
    folder = data_dir / "tcia_brain_tumor_progression_dicom" / "images" / "PGBM-003_19950329"
    viewer = make_napari_viewer()
    (layer,) = viewer.open(folder, plugin=PLUGIN)
    assert layer.data.shape == (22, 320, 280)
    np.testing.assert_allclose(layer.scale, (6.5, 0.6875, 0.6875), atol=1e-4)
    meta = _md(layer)["meta"]
    assert meta["modality"] == "MR" and meta["series_description"] == "T1post"
    c, w = meta["window_center"], meta["window_width"]
    np.testing.assert_allclose(layer.contrast_limits, (c - w / 2, c + w / 2))
    (mask,) = viewer.open(
        data_dir / "tcia_brain_tumor_progression_dicom" / "labels" / "PGBM-003_19950329", plugin=PLUGIN
    )
    assert type(mask).__name__ == "Labels"
    np.testing.assert_allclose(mask.translate, layer.translate, atol=1e-4)


def test_rgb_picture_is_an_rgb_layer(make_napari_viewer, data_dir: Path) -> None:
    viewer = make_napari_viewer()
    (layer,) = viewer.open(data_dir / "drive_retina_vessels" / "images" / "22_training.tif", plugin=PLUGIN)
    assert layer.rgb and layer.data.shape == (584, 565, 3)


def test_reader_declines_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "a.png").write_bytes(b"")
    import npe2

    from seg_studio.ui.reader import read_for_napari

    npe2.PluginManager.instance().discover()
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    other = napari_get_reader(str(tmp_path / "pngs"))  # a folder without DICOM: napari's own reader's
    assert other is not None and other is not read_for_napari
    assert napari_get_reader(str(tmp_path / "x.nii.gz")) is read_for_napari


def test_two_series_folder_is_an_error_not_the_first_series(
    make_napari_viewer, data_dir: Path, tmp_path: Path
) -> None:
    root = data_dir / "tcia_brain_tumor_progression_dicom"
    both = tmp_path / "both"
    both.mkdir()
    for sub, prefix in (("images", "i"), ("labels", "m")):
        for f in (root / sub / "PGBM-008_19930610").glob("*.dcm"):
            shutil.copy(f, both / f"{prefix}{f.name}")
    from napari.utils.notifications import notification_manager

    from seg_studio.core.errors import ImageLoadError
    from seg_studio.ui.reader import read_layers

    with pytest.raises(ImageLoadError, match="2 DICOM series"):  # the reader's own error, for code
        read_layers(both)
    viewer = make_napari_viewer()
    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        # through napari: one line for the user and no layer, never an exception (it ended napari)
        assert viewer.open(both, plugin=PLUGIN) == []
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    msgs = [str(n.message) for n in seen]
    assert any("2 DICOM series" in m and "T1post" in m and "Mask_Tumor" in m for m in msgs), msgs
    assert all("\n" not in m for m in msgs)
    assert len(viewer.layers) == 0


def test_saving_an_edited_labels_layer_keeps_the_scan_geometry(make_napari_viewer, tmp_path: Path) -> None:
    import napari

    rot = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a 90-degree in-plane rotation
    scan = Volume(
        array=np.linspace(0, 1000, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6),
        spacing=(0.7, 0.8, 2.5),
        origin=(10.5, -20.25, 33.0),
        direction=rot,
        meta={"kind": "image"},
    )
    scan_path = io.write(scan, tmp_path / "scan.nii.gz")
    before = scan_path.read_bytes()
    viewer = make_napari_viewer()
    (image,) = viewer.open(scan_path, plugin=PLUGIN)
    # a mask made on the scan, as the panel makes it: the scan's metadata, a Labels layer
    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.int32),
        scale=image.scale,
        translate=image.translate,
        metadata={"seg_studio": dict(_md(image), meta={"kind": "labels"})},
    )
    labels.data[1, 2:4, 1:5] = 2
    labels.data[2, 0, 0] = 7
    out = napari.save_layers(str(tmp_path / "mask.nii.gz"), [labels], plugin=PLUGIN)
    assert out == [str(tmp_path / "mask.nii.gz")]
    got = io.read(tmp_path / "mask.nii.gz")
    assert got.array.dtype == np.uint8  # smallest type, not the layer's int32
    np.testing.assert_array_equal(got.array, labels.data)
    assert got.same_geometry(io.read(scan_path))
    np.testing.assert_allclose(got.direction, rot, atol=1e-6)
    with pytest.raises(Exception) as err:
        napari.save_layers(str(scan_path), [labels], plugin=PLUGIN)
    assert "refusing to overwrite the input scan" in repr(err.value) + str(err.value.__cause__)
    assert scan_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz", "scan.nii.gz"]


def test_opened_mask_round_trips_through_the_writer(
    make_napari_viewer, data_dir: Path, tmp_path: Path
) -> None:
    import napari

    src = data_dir / "msd_task04_hippocampus" / "labels" / "hippocampus_003.nii.gz"  # float32 on disk
    viewer = make_napari_viewer()
    (layer,) = viewer.open(src, plugin=PLUGIN)
    assert type(layer).__name__ == "Labels" and layer.data.dtype.kind in "iu"
    napari.save_layers(str(tmp_path / "h.mha"), [layer], plugin=PLUGIN)
    got, ref = io.read(tmp_path / "h.mha"), io.read(src)
    np.testing.assert_array_equal(got.array, ref.array)
    assert got.array.dtype == np.uint8 and got.same_geometry(ref)


def test_sample_data_opens_image_and_labels(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "sample-3d")
    assert [type(ly).__name__ for ly in layers] == ["Image", "Labels"]
    np.testing.assert_allclose(layers[0].scale, (2.5, 0.9, 0.9))
    np.testing.assert_allclose(layers[1].scale, layers[0].scale)
    layers2 = viewer.open_sample(PLUGIN, "sample-2d")
    assert layers2[0].data.shape == (128, 128) and "heart" in list(layers2[1].features["class"])


def test_plain_open_uses_our_reader_once_preferred(make_napari_viewer, data_dir: Path) -> None:
    from napari.settings import get_settings

    from seg_studio.ui.reader import prefer_seg_studio_reader

    path = data_dir / "msd_task04_hippocampus" / "images" / "hippocampus_014.nii.gz"
    viewer = make_napari_viewer()
    get_settings().plugins.extension2reader = {"*.mha": "napari"}  # a choice the user made
    assert "*.nii.gz" in prefer_seg_studio_reader()
    assert get_settings().plugins.extension2reader["*.mha"] == "napari"
    (layer,) = viewer.open(path, plugin=None)  # what `napari scan.nii.gz` does: no plugin named
    assert layer.metadata["seg_studio"]["source"] == str(path)
    assert prefer_seg_studio_reader() == []


def test_multichannel_volume_keeps_its_channel_axis(make_napari_viewer, tmp_path: Path) -> None:
    import napari

    arr = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    vol = Volume(
        arr, spacing=(0.5, 0.6, 2.0), origin=(1.0, 2.0, 3.0), direction=tuple(np.eye(3).ravel()), channels=2
    )
    src = io.write(vol, tmp_path / "two.mha")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(src, plugin=PLUGIN)
    assert layer.data.shape == (2, 3, 4, 5) and not layer.rgb
    np.testing.assert_allclose(layer.scale, (1.0, 2.0, 0.6, 0.5))
    napari.save_layers(str(tmp_path / "copy.nrrd"), [layer], plugin=PLUGIN)
    got = io.read(tmp_path / "copy.nrrd")
    assert got.channels == 2 and got.same_geometry(vol)
    np.testing.assert_array_equal(got.array, arr)
    with pytest.raises(Exception, match="refusing|input scan"):
        napari.save_layers(str(src), [layer], plugin=PLUGIN)


def test_napari_new_labels_layer_is_saved_in_the_oblique_scan_geometry(
    make_napari_viewer, data_dir, tmp_path
) -> None:
    """napari's own 'new labels' copies scale/translate, not the direction; the writer recovers it."""
    import napari

    folder = data_dir / "tcia_brain_tumor_progression_dicom" / "images" / "PGBM-003_19950329"
    viewer = make_napari_viewer()
    (image,) = viewer.open(folder, plugin=PLUGIN)
    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.uint8), scale=image.scale, translate=image.translate
    )
    assert not labels.metadata
    labels.data[10, 100:120, 100:140] = 1
    napari.save_layers(str(tmp_path / "drawn.nii.gz"), [labels], plugin=PLUGIN)
    got, scan = io.read(tmp_path / "drawn.nii.gz"), io.read(folder)
    assert abs(scan.direction_matrix[2, 1]) > 0.1  # really oblique
    assert got.same_geometry(scan, atol=1e-4)
    np.testing.assert_array_equal(got.array, labels.data)


def test_label_values_the_checkpoint_does_not_know_stay_visible(make_napari_viewer) -> None:
    """A new class painted for fine-tuning (value absent from the class list) must show, in a colour
    no known class uses; background stays transparent."""
    from seg_studio.core.volume import LabelInfo
    from seg_studio.ui.layers import class_colormap

    classes = [LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "liver", (255, 0, 0))]
    classes.append(LabelInfo(2, "tumour", (255, 255, 0)))  # takes the first candidate colour
    data = np.zeros((8, 8), np.uint8)
    viewer = make_napari_viewer()
    layer = viewer.add_labels(data, colormap=class_colormap(classes))
    layer.paint((4, 4), 7)  # a value the checkpoint has no class for
    assert layer.data[4, 4] == 7
    known = {tuple(np.round(layer.colormap.map(c.value)[:3], 3)) for c in classes[1:]}
    for value in (7, 3, 200):
        rgba = np.asarray(layer.colormap.map(value)).ravel()
        assert rgba[3] == 1.0, f"value {value} is invisible"
        assert tuple(np.round(rgba[:3], 3)) not in known
    assert np.asarray(layer.colormap.map(0)).ravel()[3] == 0.0
    np.testing.assert_allclose(layer.colormap.map(1)[:3], (1, 0, 0), atol=1e-3)
