"""napari reader: any file or DICOM folder ``core.io`` reads becomes a layer in physical units.

Layer placement, chosen once for every layer seg_studio adds (``ui/layers.placement``):
``scale = spacing_zyx`` and ``translate = origin_zyx``, with a negative scale on each axis the
direction matrix flips. Millimetres are the world unit, so anisotropic scans look right, and the
world is the scanner's frame: a NIfTI stored right-to-left lands on the DICOM series it was made
from, and every scan shows as radiologists read it (patient's left on the right, anterior at the
top). A rotated or permuted direction is *not* applied: napari would then slice and paint obliquely
through the data. The full geometry is kept in ``layer.metadata["seg_studio"]``, from which the
writer rebuilds the ``Volume`` exactly. Masks made on a scan get the scan's scale and translate, so
they always line up with it.

Only numpy and ``seg_studio.core.io`` are imported at module level: napari starts fast and torch
stays out of the reading path.

In plain napari nothing of ours runs before napari asks which reader to use, and napari's own
reader claims these patterns too: ``seg-studio napari-reader`` (run by the README's set-up) records
seg_studio as the preferred reader for the medical formats and for folders, keeping a choice the
user made; a folder without DICOM is then handed to napari's own reader, so it opens as before.
Without it napari asks once, with seg_studio preselected (napari lists readers by display name, and
ours sorts first), and every read through this reader records the same preference
(``prefer_seg_studio_reader``) and one for the DICOM folders beside the one opened. A file that
cannot be read becomes one error notification and no layer: an exception here would end
``napari bad.nii.gz`` before its window opens.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.display import initial_window
from ..core.volume import Volume
from .layers import class_colormap, class_features, layer_metadata, placement

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]


def _is_uid(text: str) -> bool:
    """A DICOM UID (digits and dots, e.g. 1.2.826.0.1.3680043...): no name a user would read."""
    return len(text) > 16 and text.count(".") >= 3 and text.replace(".", "").isdigit()


def _layer_name(volume: Volume, name: str | None) -> str:
    if name:
        return name
    src = volume.source
    if src is None:
        return str(volume.meta.get("name", "scan"))
    if Path(src).is_dir():
        desc = volume.meta.get("series_description")
        folder = Path(src).name
        if desc and _is_uid(folder):  # a series pulled from a PACS sits in a folder named by its UID
            return f"{volume.meta.get('modality', '')} {desc}".strip()
        return f"{folder} {desc}".strip() if desc else folder
    from ..core.atomic import split_suffix

    return split_suffix(src)[0]


def volume_layer_data(volume: Volume, name: str | None = None, kind: str | None = None) -> LayerData:
    """``(data, add_kwargs, layer_type)`` for a Volume: the one adapter between Volume and napari.

    Colour 2D pictures become ``rgb=True`` with the channel axis last (napari's layout); other
    multi-channel volumes keep the channel axis first, as an extra slider with scale 1.
    """
    kind = kind or ("labels" if volume.meta.get("kind") == "labels" else "image")
    nd = volume.ndim
    place = placement(volume)
    scale, translate = list(place["scale"]), list(place["translate"])
    kwargs: dict[str, Any] = {"name": _layer_name(volume, name), "metadata": layer_metadata(volume)}
    data = volume.array
    if kind == "labels":
        if data.dtype.kind not in "iu":
            from ..core.io import smallest_int_dtype

            data = data.astype(smallest_int_dtype(np.round(data)))
        named = [li for li in volume.labels.values()]
        if named and len(named) <= 512:
            kwargs["colormap"] = class_colormap(named)
            kwargs["features"] = class_features(sorted(named, key=lambda li: li.value))
    elif volume.channels > 1 and nd == 2 and volume.meta.get("rgb"):
        data = np.moveaxis(data, 0, -1)
        kwargs["rgb"] = True
    else:
        if volume.channels > 1:
            scale, translate = [1.0] + scale, [0.0] + translate
        kwargs["colormap"] = "gray"
        window = initial_window(volume)  # by modality: a DICOM window, CT soft tissue, MR percentiles...
        if window is not None:
            kwargs["contrast_limits"] = list(window)
    kwargs["scale"] = scale
    kwargs["translate"] = translate
    # napari would label the slider "-3": name the axes (array order z,y,x, as scale and translate)
    kwargs["axis_labels"] = (("channel",) if len(scale) > nd else ()) + SPATIAL_AXES[-nd:]
    return data, kwargs, kind


#: Axis names in array order (napari's), the slowest first: z is the slice index of a 3D scan.
SPATIAL_AXES = ("z", "y", "x")


def read_layers(path: str | Path | list[str | Path]) -> list[LayerData]:
    """Read one path (or several) with ``core.io.read``; errors propagate as ``ImageLoadError``."""
    from ..core import io

    paths = path if isinstance(path, list | tuple) else [path]
    return [volume_layer_data(io.read(p)) for p in paths]


#: What a napari reader returns to say "claimed, but no layer" (napari's documented null sentinel).
NO_LAYER: list[tuple[None]] = [(None,)]


def read_for_napari(path: str | Path | list[str | Path]) -> list[Any]:
    """The reader napari calls: ``read_layers``, with any failure shown as one line instead of raised."""
    from napari.utils.notifications import show_error

    from ..core.errors import SegStudioError

    try:
        layers = read_layers(path)
    except SegStudioError as exc:
        show_error(str(exc).splitlines()[0])
        return NO_LAYER
    except Exception as exc:  # noqa: BLE001 - napari's start-up must survive any bad file
        from .workers import user_message

        log.warning("reading %s failed", path, exc_info=True)
        show_error(f"{path}: {user_message(exc)}")
        return NO_LAYER
    try:
        remember_reader_choice(path)
    except Exception:  # noqa: BLE001 - a preference is a convenience, the scan is read
        log.debug("could not record seg_studio as the preferred reader", exc_info=True)
    return layers


def _maybe_dicom_folder(folder: Path, depth: int = 1) -> bool:
    """Cheap check before claiming a folder: a DICOM file in it, or in a subfolder (the reader then
    explains which subfolder to open)."""
    from ..core.io._formats import has_dicom_preamble

    try:
        entries = sorted(folder.iterdir())[:200]
    except OSError:
        return False
    for p in entries:
        if p.is_file() and (p.suffix.lower() in (".dcm", ".dicom", ".ima") or has_dicom_preamble(p)):
            return True
    if depth > 0:
        return any(_maybe_dicom_folder(p, depth - 1) for p in entries if p.is_dir())
    return False


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: return ``read_layers`` for paths we read, ``None`` to let others try."""
    from ..core.io._formats import READ_FORMATS, has_dicom_preamble, suffix_of

    paths = path if isinstance(path, list | tuple) else [path]
    folders = [p for p in map(Path, paths) if p.is_dir()]
    if folders and not all(map(_maybe_dicom_folder, folders)):
        return _other_folder_reader(path)
    for p in map(Path, paths):
        if not p.is_dir() and suffix_of(p) not in READ_FORMATS and not has_dicom_preamble(p):
            return None
    return read_for_napari


def _other_folder_readers(path: str | list[str]) -> list[Any]:
    """The npe2 reader contributions of other plugins that accept this folder (usually napari's own)."""
    import npe2

    readers = npe2.PluginManager.instance().iter_compatible_readers(path)
    return [r for r in readers if r.plugin_name != PLUGIN_NAME and r.accepts_directories]


def _other_folder_reader(path: str | list[str]) -> Callable[[Any], Any] | None:
    """A folder without DICOM goes to the one other plugin that reads folders, as napari would have.

    The set-up prefers seg_studio for every folder (``FOLDER_PATTERN``) so a DICOM series opens
    without napari's dialog; a folder of PNGs or a zarr store must still open as before. With
    several other candidates there is no choice to make for the user: ``None`` lets napari ask.
    """
    stack = isinstance(path, list | tuple)  # npe2 hands v1 readers one path, or a list to stack
    paths = list(path) if stack else [path]
    try:
        (other,) = _other_folder_readers(path)
        read = other.exec(kwargs={"path": paths, "stack": stack})
    except ValueError:  # none or several other folder readers
        return None
    except Exception:  # noqa: BLE001 - another plugin's failure must not end napari
        log.warning("the other folder reader for %s failed", path, exc_info=True)
        return None
    return None if read is None else lambda _path: read(paths, stack=stack)


#: Formats napari's own reader claims but cannot read with geometry (it fails on .nii.gz outright).
PREFERRED_PATTERNS = ("*.nii", "*.nii.gz", "*.mha", "*.mhd", "*.nrrd")
#: napari's preference pattern for every folder (it matches a folder as its real path plus a
#: separator): DICOM series are folders, and napari's own reader claims folders too.
FOLDER_PATTERN = "*" + os.sep


def prefer_seg_studio_reader(overwrite: bool = False) -> list[str]:
    """Make plain ``napari scan.nii.gz`` open with this reader instead of asking which plugin to use.

    napari's built-in reader also claims these patterns, so without a preference napari shows a
    reader-choice dialog. This records seg_studio as the preferred reader in napari's settings for
    the medical formats only, never replacing a choice the user made (unless ``overwrite``).
    Returns the patterns it set. Called by the seg_studio app at start-up; safe to call again.
    """
    from napari.settings import get_settings

    prefs = get_settings().plugins.extension2reader
    changed = [p for p in PREFERRED_PATTERNS if overwrite or p not in prefs]
    if (overwrite or FOLDER_PATTERN not in prefs) and _folders_can_be_claimed():
        changed.append(FOLDER_PATTERN)
    if changed:
        get_settings().plugins.extension2reader = {**prefs, **dict.fromkeys(changed, PLUGIN_NAME)}
    return changed


PLUGIN_NAME = "seg-studio"


def _folders_can_be_claimed() -> bool:
    """Prefer seg_studio for folders only where napari's own reader is the one other folder reader,
    which a folder without DICOM is handed to (``_other_folder_reader``): a user with, say, a zarr
    plugin keeps napari's question for folders."""
    try:
        import npe2

        npe2.PluginManager.instance().discover()  # a bare `seg-studio napari-reader` has not yet
        others = _other_folder_readers(str(Path.home()))
    except Exception:  # noqa: BLE001 - without npe2's answer, claim nothing
        return False
    return [r.plugin_name for r in others] in ([], ["napari"])


def dicom_folder_pattern(folder: Path) -> str:
    """napari's preference pattern for the folders beside ``folder`` (``/data/tcia/images/*/``).

    napari matches a folder as its real path plus a separator; series folders sit side by side, so
    the one opened stands for its siblings, and nothing outside its parent is claimed.
    """
    import glob
    import os

    return os.path.join(glob.escape(os.path.realpath(folder.parent)), "*") + os.sep


def remember_reader_choice(path: str | Path | list[str | Path]) -> list[str]:
    """After a read through this reader: prefer it for the medical formats, and for the DICOM
    folders beside one just read, unless the user chose otherwise. Returns the patterns it set."""
    from napari.settings import get_settings

    changed = prefer_seg_studio_reader()
    paths = path if isinstance(path, list | tuple) else [path]
    folders = [Path(p) for p in paths if Path(p).is_dir()]
    if folders:
        prefs = get_settings().plugins.extension2reader
        new = [pat for pat in map(dicom_folder_pattern, folders) if pat not in prefs]
        if new:
            get_settings().plugins.extension2reader = {**prefs, **dict.fromkeys(new, PLUGIN_NAME)}
            changed += new
    return changed
