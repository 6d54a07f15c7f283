"""The schema of a checkpoint's JSON record, with bounds: the metadata is untrusted input.

A ``.segmodel`` may come from anywhere. Its record decides how big a model is built, how a scan is
resampled, which label values are written and what is printed on a terminal, so every field is
checked here against a type *and* a bound before any of it is used: ``depth=60`` must not take the
machine's memory, ``patch_size=0`` must not crash the window loop, a class value of ``2**40`` must
not overflow a label type, a colour must have three components. Keys this version does not know
are ignored (older and newer minor additions keep loading); an optional ``domain`` object (what the
model was trained on) is checked loosely, as a bounded JSON object.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import CheckpointError, ModelError

#: Largest label value a class may have (label maps are written as uint16 at most).
MAX_CLASS_VALUE = 65535
MAX_CLASSES = 1000
MAX_IN_CHANNELS = 64
MAX_NAME = 200
#: Spacing in mm: 1 nm (electron microscopy) to 100 m.
MIN_SPACING, MAX_SPACING = 1e-6, 1e5
MAX_PATCH_SIDE = 4096
#: 2**25 voxels (e.g. 512 x 256 x 256): a float32 window of 128 MB per channel.
MAX_PATCH_VOXELS = 1 << 25
#: A free-form object (provenance, card, domain) may take this much JSON at most.
MAX_OBJECT_BYTES = 8 << 20
MAX_DOMAIN_BYTES = 64 << 10
_NORM_NUMBERS = ("low", "high", "mean", "std")


def _fail(where: str, text: str) -> CheckpointError:
    return CheckpointError(
        f"{where}: bad metadata: {text}; the file is damaged or was not written by seg_studio"
    )


def _int(d: Mapping[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    if key not in d:
        raise CheckpointError(f"{where}: metadata lacks the field {key!r}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(where, f"field {key!r} must be an integer, got {json.dumps(v)[:40]}")
    if not lo <= v <= hi:
        raise _fail(where, f"field {key!r} = {v} is outside {lo}..{hi}")
    return v


def _text(v: Any, what: str, where: str, limit: int = MAX_NAME) -> str:
    if not isinstance(v, str):
        raise _fail(where, f"{what} must be a string, got {json.dumps(v)[:40]}")
    if len(v) > limit:
        raise _fail(where, f"{what} is {len(v)} characters long (at most {limit})")
    return v


def _object(v: Any, what: str, where: str, limit: int = MAX_OBJECT_BYTES) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise _fail(where, f"field {what!r} must be a JSON object")
    try:
        size = len(json.dumps(v))
    except (TypeError, ValueError, RecursionError):
        raise _fail(where, f"field {what!r} is not plain JSON") from None
    if size > limit:
        raise _fail(where, f"field {what!r} takes {size} bytes (at most {limit})")
    return dict(v)


def validate_record(d: Any, where: str = "checkpoint") -> Mapping[str, Any]:
    """Check every field of a checkpoint record; returns it unchanged, or raises ``CheckpointError``."""
    from .checkpoint import SCHEMA_VERSION

    if not isinstance(d, Mapping):
        raise CheckpointError(f"{where}: metadata is not a JSON object")
    if "format" in d and d["format"] != "seg_studio.segmodel":
        raise _fail(where, f"the format {str(d['format'])[:40]!r} is not seg_studio.segmodel")
    version = d.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{where}: metadata has no schema_version; it was not written by seg_studio")
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{where}: written by a newer seg_studio (schema {version} > {SCHEMA_VERSION}); update seg_studio"
        )
    if version < 1:
        raise _fail(where, f"schema_version {version} is not a version")
    dims = _int(d, "spatial_dims", 2, 3, where)
    cin = _int(d, "in_channels", 1, MAX_IN_CHANNELS, where)
    cout = _int(d, "out_channels", 1, MAX_CLASSES, where)
    _check_architecture(d, dims, where)
    _check_channel_names(d.get("channel_names"), cin, where)
    _check_classes(d.get("classes", ...), cout, where)
    _check_normalization(d.get("normalization"), where)
    _check_spacing(d.get("spacing"), dims, where)
    _check_patch(d.get("patch_size"), dims, where)
    for key in ("provenance", "card"):
        _object(d.get(key), key, where)
    _object(d.get("domain"), "domain", where, MAX_DOMAIN_BYTES)
    _check_interactive(d.get("interactive"), cin, cout, where)
    return d


def _check_interactive(record: Any, cin: int, cout: int, where: str) -> None:
    """An interactive model's guidance record: bounded, adding up to the input channels, and a
    two-class (background / the clicked structure) output."""
    if record is None:
        return
    from .interactive.guidance import GuidanceSpec

    GuidanceSpec.from_dict(record, cin, where)
    if cout not in (1, 2):
        raise _fail(where, f"an interactive model segments one structure, but it has {cout} output channels")


def _check_architecture(d: Mapping[str, Any], dims: int, where: str) -> None:
    from .models import check_config, get_spec

    if "architecture" not in d:
        raise CheckpointError(f"{where}: metadata lacks the field 'architecture'")
    name = _text(d["architecture"], "the architecture name", where, 64)
    args = d.get("arch_args") or {}
    try:
        spec = get_spec(name)
        if dims not in spec.dims:
            raise ModelError(f"model {name!r} supports {spec.dims}D inputs, not {dims}D")
        check_config(name, args)
    except ModelError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    files = [k for k in ("encoder_weights",) if args.get(k) is not None]
    if files:
        raise _fail(where, f"arch_args.{files[0]} names a file; a checkpoint carries its own weights")


def _check_channel_names(names: Any, cin: int, where: str) -> None:
    if names is None or names == []:
        return
    if not isinstance(names, list) or len(names) != cin:
        raise _fail(where, f"channel_names must list {cin} name(s)")
    for n in names:
        _text(n, "a channel name", where)


def _check_classes(classes: Any, cout: int, where: str) -> None:
    if classes is ...:
        raise CheckpointError(f"{where}: metadata lacks the field 'classes'")
    want = max(2, cout)
    if not isinstance(classes, list) or len(classes) != want:
        got = len(classes) if isinstance(classes, list) else type(classes).__name__
        raise _fail(where, f"{got} classes listed for a model with {cout} output channel(s) (needs {want})")
    seen: dict[int, int] = {}
    for i, c in enumerate(classes):
        if not isinstance(c, Mapping) or not {"value", "name", "color"} <= set(c):
            raise _fail(where, f"class {i} is not a {{value, name, color}} record")
        v = c["value"]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_CLASS_VALUE:
            raise _fail(
                where, f"class {i} has the label value {json.dumps(v)[:40]} (must be 0..{MAX_CLASS_VALUE})"
            )
        if v in seen:
            raise _fail(where, f"classes {seen[v]} and {i} share the label value {v}")
        seen[v] = i
        _text(c["name"], f"the name of class {i}", where)
        col = c["color"]
        if (
            not isinstance(col, list)
            or len(col) != 3
            or any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= 255 for x in col)
        ):
            raise _fail(
                where, f"class {i} has the colour {json.dumps(col)[:40]} (must be [r, g, b] in 0..255)"
            )


def _check_normalization(norm: Any, where: str) -> None:
    from .transforms import NORMALIZATION_MODES

    if norm is None:
        return
    norm = _object(norm, "normalization", where, 4096)
    mode = norm.get("mode", "none")
    if mode not in NORMALIZATION_MODES:
        raise _fail(
            where,
            f"the normalisation mode {str(mode)[:40]!r} is not one of {', '.join(NORMALIZATION_MODES)}",
        )
    for k in _NORM_NUMBERS:
        if k in norm:
            v = norm[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise _fail(where, f"normalisation {k} = {json.dumps(v)[:40]} is not a finite number")
    if mode == "ct_window" and not ("low" in norm and "high" in norm and norm["low"] < norm["high"]):
        raise _fail(where, "a ct_window normalisation needs low < high")
    if mode == "percentile" and not 0 <= norm.get("low", 0.5) < norm.get("high", 99.5) <= 100:
        raise _fail(where, "percentile bounds must satisfy 0 <= low < high <= 100")
    if "std" in norm and not norm["std"] > 0:
        raise _fail(where, f"normalisation std = {norm['std']} (must be > 0)")


def _check_spacing(spacing: Any, dims: int, where: str) -> None:
    if spacing is None:
        return
    if not isinstance(spacing, list) or len(spacing) != dims:
        raise _fail(where, f"spacing must be null or {dims} numbers, got {json.dumps(spacing)[:60]}")
    for s in spacing:
        if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s):
            raise _fail(
                where, f"spacing {json.dumps(spacing)[:60]} holds a value that is not a finite number"
            )
        if not MIN_SPACING <= s <= MAX_SPACING:
            raise _fail(where, f"spacing {s:g} mm is outside {MIN_SPACING:g}..{MAX_SPACING:g} mm")


def _check_patch(patch: Any, dims: int, where: str) -> None:
    if patch is None or patch == []:
        return
    if not isinstance(patch, list) or len(patch) != dims:
        raise _fail(where, f"patch_size must be {dims} integers, got {json.dumps(patch)[:60]}")
    for p in patch:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= MAX_PATCH_SIDE:
            raise _fail(
                where, f"patch_size {json.dumps(patch)[:60]} must hold integers in 1..{MAX_PATCH_SIDE}"
            )
    if math.prod(patch) > MAX_PATCH_VOXELS:
        raise _fail(
            where, f"patch_size {patch} has {math.prod(patch):,} voxels (at most {MAX_PATCH_VOXELS:,})"
        )
