"""Self-describing checkpoints: one ``.segmodel`` file = safetensors weights + one JSON record.

The JSON record (stored in the safetensors header's ``__metadata__`` under ``"seg_studio"``) says
everything needed to rebuild and use the model: the architecture *name* (looked up in our registry,
never an import path) and its arguments, dims and channels, the classes with names and colours, the
intensity normalisation, target spacing and patch size, and where the weights came from. Loading
never unpickles anything; a plain PyTorch state dict can only come in through ``import_weights``,
which uses ``torch.load(weights_only=True)``.

Every failure is a ``CheckpointError`` with one line that says what is wrong with which file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .domain import Domain
from .errors import CheckpointError, ModelError
from .models import SegModel, create_model

log = logging.getLogger(__name__)

#: Bump when the JSON record changes incompatibly; ``load`` refuses records newer than this.
SCHEMA_VERSION = 1
SUFFIX = ".segmodel"
_META_KEY = "seg_studio"
_FORMAT = "seg_studio.segmodel"
#: Headers larger than this are not ours (ours are a few KB; the weights live after the header).
_MAX_HEADER = 100 * 1024 * 1024
_PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

#: Distinct colours for classes 1..n (background is transparent black).
_PALETTE: list[tuple[int, int, int]] = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
]


@dataclass(frozen=True)
class ClassInfo:
    """One output class: the label value written for it, a name and an RGB colour (0..255)."""

    value: int
    name: str
    color: tuple[int, int, int] = (255, 0, 0)


def default_classes(out_channels: int, names: list[str] | None = None) -> list[ClassInfo]:
    """Background + ``class_1..n`` (or ``names``) with palette colours; a 1-logit model is binary."""
    n = max(2, out_channels)
    names = list(names) if names else ["background", *[f"class_{i}" for i in range(1, n)]]
    if len(names) != n:
        raise CheckpointError(f"{len(names)} class names given for a model with {n} classes")
    return [
        ClassInfo(i, name, (0, 0, 0) if i == 0 else _PALETTE[(i - 1) % len(_PALETTE)])
        for i, name in enumerate(names)
    ]


@dataclass
class ModelMeta:
    """Everything about a model except its weights; stored as JSON in the checkpoint.

    ``spacing`` is x,y(,z) like ``Volume.spacing`` (None: run at the scan's own spacing);
    ``patch_size`` is in array order (z,y,x or y,x). ``classes[i]`` is logit channel ``i``
    (for a single-logit binary model, classes are [background, foreground]).
    """

    architecture: str
    arch_args: dict[str, Any]
    spatial_dims: int
    in_channels: int
    out_channels: int
    channel_names: list[str]
    classes: list[ClassInfo]
    normalization: dict[str, Any] = field(default_factory=lambda: {"mode": "zscore"})
    spacing: tuple[float, ...] | None = None
    patch_size: tuple[int, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    #: what the model was trained on (``core.domain``); optional: older files have none
    domain: Domain | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("domain")
        if self.domain is not None:
            d["domain"] = self.domain.to_dict()
        d["classes"] = [{"value": c.value, "name": c.name, "color": list(c.color)} for c in self.classes]
        d["spacing"] = None if self.spacing is None else list(self.spacing)
        d["patch_size"] = list(self.patch_size)
        return {"format": _FORMAT, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "checkpoint") -> ModelMeta:
        """Validate and convert a JSON record; a missing or ill-typed field is a ``CheckpointError``."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"{where}: metadata is not a JSON object")
        version = d.get("schema_version")
        if not isinstance(version, int):
            raise CheckpointError(
                f"{where}: metadata has no schema_version; it was not written by seg_studio"
            )
        if version > SCHEMA_VERSION:
            raise CheckpointError(
                f"{where}: written by a newer seg_studio (schema {version} > {SCHEMA_VERSION}); update seg_studio"
            )
        try:
            classes = [
                ClassInfo(int(c["value"]), str(c["name"]), tuple(int(v) for v in c["color"]))  # type: ignore[arg-type]
                for c in d["classes"]
            ]
            spacing = d.get("spacing")
            return cls(
                architecture=str(d["architecture"]),
                arch_args=dict(d.get("arch_args") or {}),
                spatial_dims=int(d["spatial_dims"]),
                in_channels=int(d["in_channels"]),
                out_channels=int(d["out_channels"]),
                channel_names=[str(n) for n in d.get("channel_names") or []],
                classes=classes,
                normalization=dict(d.get("normalization") or {"mode": "none"}),
                spacing=None if spacing is None else tuple(float(s) for s in spacing),
                patch_size=tuple(int(p) for p in d.get("patch_size") or ()),
                provenance=dict(d.get("provenance") or {}),
                card=dict(d.get("card") or {}),
                schema_version=version,
                domain=None if d.get("domain") is None else Domain.from_dict(d["domain"], where),
            )
        except KeyError as exc:
            raise CheckpointError(f"{where}: metadata lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: metadata has an ill-typed field ({exc})") from None

    def label_infos(self) -> dict[int, Any]:
        """The classes as ``Volume.labels`` (value -> LabelInfo), background included."""
        from .volume import LabelInfo

        return {c.value: LabelInfo(c.value, c.name, tuple(c.color)) for c in self.classes}  # type: ignore[arg-type]


def new_meta(
    model: SegModel,
    architecture: str,
    arch_args: Mapping[str, Any] | None = None,
    *,
    classes: list[ClassInfo] | list[str] | None = None,
    channel_names: list[str] | None = None,
    normalization: Mapping[str, Any] | None = None,
    spacing: tuple[float, ...] | None = None,
    patch_size: tuple[int, ...] | None = None,
    provenance: Mapping[str, Any] | None = None,
    card: Mapping[str, Any] | None = None,
    domain: Domain | None = None,
) -> ModelMeta:
    """Describe ``model`` (built with ``create_model(architecture, ..., **arch_args)``).

    ``classes`` may be ClassInfo records or just names (colours then come from the palette).
    The patch size defaults to 96^3 in 3D and 256^2 in 2D.
    """
    dims = model.spatial_dims
    if classes and isinstance(classes[0], str):
        classes = default_classes(model.out_channels, list(classes))  # type: ignore[arg-type]
    cls_list: list[ClassInfo] = list(classes) if classes else default_classes(model.out_channels)  # type: ignore[arg-type]
    if len(cls_list) != max(2, model.out_channels):
        raise CheckpointError(
            f"{len(cls_list)} classes given for a model with {model.out_channels} output channel(s)"
        )
    if patch_size is None:
        patch_size = (96,) * 3 if dims == 3 else (256, 256)
    if len(patch_size) != dims:
        raise CheckpointError(f"patch size {tuple(patch_size)} does not match a {dims}D model")
    if spacing is not None and len(spacing) != dims:
        raise CheckpointError(f"spacing {tuple(spacing)} does not match a {dims}D model")
    return ModelMeta(
        architecture=architecture,
        arch_args=dict(arch_args or {}),
        spatial_dims=dims,
        in_channels=model.in_channels,
        out_channels=model.out_channels,
        channel_names=list(channel_names) if channel_names else [f"ch{i}" for i in range(model.in_channels)],
        classes=cls_list,
        normalization=dict(normalization or {"mode": "zscore"}),
        spacing=None if spacing is None else tuple(float(s) for s in spacing),
        patch_size=tuple(int(p) for p in patch_size),
        provenance=dict(provenance or {}),
        card=dict(card or {}),
        domain=domain,
    )


def file_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the file's bytes (hex): names a parent checkpoint or a training file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import numpy

    from .. import __version__

    return {
        "seg_studio": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


# --- save -----------------------------------------------------------------------------------------


def _state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, int], str] = {}
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        # safetensors refuses tensors that share memory; tied weights get their own copy.
        out[k] = t.clone() if key in seen and t.numel() else t
        seen[key] = k
    return out


def save(
    path: str | os.PathLike[str], model: SegModel, meta: ModelMeta, dtype: torch.dtype | None = None
) -> Path:
    """Write ``model``'s weights and ``meta`` to one ``.segmodel`` file, atomically.

    Library versions and the date are added to the provenance; the file is re-read and checked
    before it replaces anything at ``path``. ``dtype`` (e.g. ``torch.float16``) stores floating-point
    tensors in that type, halving bundled files; ``load`` casts them back to the model's own dtype.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SUFFIX:
        raise CheckpointError(f"{path.name}: a checkpoint file must end in {SUFFIX}")
    if (model.spatial_dims, model.in_channels, model.out_channels) != (
        meta.spatial_dims,
        meta.in_channels,
        meta.out_channels,
    ):
        raise CheckpointError(
            f"metadata says {meta.spatial_dims}D {meta.in_channels}->{meta.out_channels} channels but the model is "
            f"{model.spatial_dims}D {model.in_channels}->{model.out_channels}"
        )
    prov = dict(meta.provenance)
    prov.setdefault("versions", library_versions())
    prov.setdefault("date", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    meta.provenance = prov
    record = json.dumps(meta.to_dict(), sort_keys=True)
    tensors = _state_tensors(model)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata={_META_KEY: record})

    def verify(tmp: Path) -> None:
        header, _ = _read_header(tmp)
        names = set(header) - {"__metadata__"}
        if names != set(tensors):
            raise CheckpointError(f"{path.name}: written file lacks tensors; nothing was saved")

    from .atomic import atomic_write

    return atomic_write(path, write, verify)


# --- load -----------------------------------------------------------------------------------------


def _sniff(head: bytes) -> str | None:
    """Name the format of a file that is not a safetensors checkpoint, for the error message."""
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch (zip/pickle) file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 (Keras) file"
    if head.startswith(b"{"):
        return "a JSON file"
    return None


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse the safetensors header with our own checks, so each bad file gets a precise message."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path.name}: empty or truncated file ({size} bytes); not a checkpoint"
                )
            kind = _sniff(head)
            if kind:
                raise CheckpointError(
                    f"{path.name}: is {kind}, not a {SUFFIX} checkpoint; nothing in it was run. "
                    "A plain state dict can be imported with 'seg-studio import-weights'"
                )
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise CheckpointError(f"{path.name}: not a {SUFFIX} checkpoint (unrecognised header)")
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if len(raw) < n:
        raise CheckpointError(
            f"{path.name}: truncated file ({size} bytes, header alone needs {n + 8}); re-copy it"
        )
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path.name}: not a {SUFFIX} checkpoint (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: not a {SUFFIX} checkpoint (header is not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise CheckpointError(f"{path.name}: corrupt tensor table (entry {name!r})") from None
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path.name}: truncated file ({size} bytes of {8 + n + end}); the copy or download was cut short"
        )
    return header, n


def read_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """The metadata alone, without reading the weights (for ``inspect`` and the GUI's model picker)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix.lower() in _PT_SUFFIXES:
        raise CheckpointError(
            f"{path.name}: a plain PyTorch file has no metadata; import it with "
            "'seg-studio import-weights FILE --arch NAME --dims N ...' to make a .segmodel"
        )
    header, _ = _read_header(path)
    meta_map = header.get("__metadata__") or {}
    if _META_KEY not in meta_map:
        raise CheckpointError(
            f"{path.name}: a safetensors file without seg_studio metadata; import it with "
            "'seg-studio import-weights FILE --arch NAME --dims N ...'"
        )
    try:
        record = json.loads(meta_map[_META_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name}: the metadata record is not valid JSON ({exc})") from None
    return ModelMeta.from_dict(record, where=path.name)


def build_model(meta: ModelMeta, where: str = "checkpoint") -> SegModel:
    """Instantiate the registered architecture the metadata names (never an import path)."""
    try:
        return create_model(
            meta.architecture,
            spatial_dims=meta.spatial_dims,
            in_channels=meta.in_channels,
            out_channels=meta.out_channels,
            **meta.arch_args,
        )
    except ModelError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def _check_and_load(model: SegModel, state: Mapping[str, torch.Tensor], where: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]!r})")
        raise CheckpointError(
            f"{where}: weights do not fit the architecture: {', '.join(parts)}; check --arch and its arguments"
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{where}: tensor {k!r} has shape {tuple(state[k].shape)} but the architecture expects "
                f"{tuple(v.shape)}; check the architecture arguments"
            )
    model.load_state_dict(dict(state), strict=True)


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[SegModel, ModelMeta]:
    """Rebuild the model from a ``.segmodel`` file; returns it in eval mode on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_meta(path)
    model = build_model(meta, where=path.name)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: corrupt weights ({exc})") from None
    _check_and_load(model, state, path.name)
    return model.to(device).eval(), meta


# --- import of plain PyTorch weights ---------------------------------------------------------------


def _unwrap_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the usual wrappers ({"state_dict": ...}, {"model": ...})."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net", "weights"):
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            if all(k.startswith("module.") for k in tensors):  # saved from DataParallel/DDP
                tensors = {k[len("module.") :]: v for k, v in tensors.items()}
            return tensors
    raise CheckpointError(f"{where}: holds no state dict (a mapping of parameter names to tensors)")


def import_weights(
    path: str | os.PathLike[str],
    architecture: str,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    arch_args: Mapping[str, Any] | None = None,
    **meta_kwargs: Any,
) -> tuple[SegModel, ModelMeta]:
    """Load a plain state dict (``.pt``/``.pth`` via ``torch.load(weights_only=True)``, or a bare
    ``.safetensors``) into a registered architecture and describe it; ``save`` it to make a
    ``.segmodel``. A pickle that holds anything but tensors and plain containers is refused and
    nothing in it runs.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such weights file")
    meta_probe = ModelMeta(
        architecture, dict(arch_args or {}), spatial_dims, in_channels, out_channels, [], []
    )
    model = build_model(meta_probe, where=path.name)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if _sniff(head) or path.suffix.lower() in _PT_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - the unpickler raises many types; all mean "refused"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "Unsupported global" in str(exc) or "weights_only" in str(exc).lower():
                raise CheckpointError(
                    f"{path.name}: refused: the pickle references Python objects other than tensors "
                    f"({_global_name(str(exc))}); nothing in it was run. Re-save it as a plain state dict"
                ) from None
            raise CheckpointError(f"{path.name}: not a readable PyTorch weights file ({first})") from None
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        _read_header(path)
        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name}: corrupt weights ({exc})") from None
    state = _unwrap_state_dict(obj, path.name)
    _check_and_load(model, state, path.name)
    prov = dict(meta_kwargs.pop("provenance", None) or {})
    prov.setdefault("imported_from", {"file": path.name, "sha256": file_hash(path)})
    meta = new_meta(model, architecture, arch_args, provenance=prov, **meta_kwargs)
    return model.eval(), meta


def _global_name(msg: str) -> str:
    for line in msg.splitlines():
        if "Unsupported global" in line:
            return line.split("Unsupported global:", 1)[-1].strip().split(" ")[-1].rstrip(".")
    return "unsupported object"


def model_card(meta: ModelMeta, path: str | os.PathLike[str] | None = None) -> str:
    """Human-readable summary of a checkpoint (what ``seg-studio inspect`` prints)."""
    lines = []
    if path is not None:
        p = Path(path)
        lines.append(
            f"checkpoint     {p.name}  ({p.stat().st_size / 1e6:.2f} MB, sha256 {file_hash(p)[:16]}…)"
        )
    args = ", ".join(f"{k}={v}" for k, v in sorted(meta.arch_args.items())) or "defaults"
    lines += [
        f"architecture   {meta.architecture} ({args})",
        f"dims/channels  {meta.spatial_dims}D, in {meta.in_channels} ({', '.join(meta.channel_names)}), "
        f"out {meta.out_channels}",
        "classes        "
        + ", ".join(
            f"{c.value}={c.name} #{c.color[0]:02x}{c.color[1]:02x}{c.color[2]:02x}" for c in meta.classes
        ),
        "normalisation  " + ", ".join(f"{k}={v}" for k, v in meta.normalization.items()),
        f"spacing        {'native' if meta.spacing is None else ' x '.join(f'{s:g}' for s in meta.spacing)}"
        + ("" if meta.spacing is None else " (x,y,z)"),
        f"patch size     {' x '.join(str(p) for p in meta.patch_size)}",
        f"schema         {meta.schema_version}",
    ]
    from .domain import describe

    lines += [f"{'domain' if i == 0 else '':<14} {line}" for i, line in enumerate(describe(meta.domain))]
    for k, v in sorted(meta.card.items()):
        lines.append(f"card.{k:<10} {v}")
    for k, v in sorted(meta.provenance.items()):
        lines.append(f"{k:<14} {json.dumps(v, sort_keys=True) if not isinstance(v, str) else v}")
    return "\n".join(lines)


def replace_meta(path: str | os.PathLike[str], meta: ModelMeta) -> Path:
    """Rewrite a checkpoint's JSON record and keep its tensors byte for byte (same dtype, same values):
    adding a domain or a card to a shipped file must not touch its weights. Atomic, like ``save``."""
    from safetensors.torch import load_file, save_file

    from .atomic import atomic_write

    path = Path(path)
    read_meta(path)  # refuse anything that is not a readable checkpoint
    tensors = load_file(str(path), device="cpu")
    build = build_model(meta, where=path.name)
    own = build.state_dict()
    if set(own) != set(tensors) or any(tuple(own[k].shape) != tuple(v.shape) for k, v in tensors.items()):
        raise CheckpointError(
            f"{path.name}: the new metadata describes another architecture; nothing was changed"
        )
    record = json.dumps(meta.to_dict(), sort_keys=True)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={_META_KEY: record}))
