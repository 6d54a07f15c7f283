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
import math
import os
import platform
import struct
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .domain import Domain
from .errors import CheckpointError, ModelError
from .models import ModelPlan, SegModel, create_model, plan_model
from .text import printable

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
    #: an interactive (click) model's guidance channels (``core.interactive.GuidanceSpec.to_dict``)
    interactive: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("domain")
        if self.interactive is None:
            d.pop("interactive")
        if self.domain is not None:
            d["domain"] = self.domain.to_dict()
        d["classes"] = [{"value": c.value, "name": c.name, "color": list(c.color)} for c in self.classes]
        d["spacing"] = None if self.spacing is None else list(self.spacing)
        d["patch_size"] = list(self.patch_size)
        return {"format": _FORMAT, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "checkpoint") -> ModelMeta:
        """Validate and convert a JSON record; a missing or ill-typed field is a ``CheckpointError``."""
        from .checkpoint_schema import validate_record

        d = validate_record(d, where)
        version = d["schema_version"]
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
                interactive=None if d.get("interactive") is None else dict(d["interactive"]),
            )
        except KeyError as exc:
            raise CheckpointError(f"{where}: metadata lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
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
    interactive: Mapping[str, Any] | None = None,
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
        interactive=None if interactive is None else dict(interactive),
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
    from .checkpoint_schema import validate_record

    validate_record(meta.to_dict(), path.name)  # never write a file that load would refuse
    record = json.dumps(meta.to_dict(), sort_keys=True)
    tensors = _state_tensors(model)
    check_finite(tensors, path.name, saving=True)  # load would refuse a diverged model: do not write it
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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
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
    return _read_header_and_meta(Path(path))[1]


def _read_header_and_meta(path: Path) -> tuple[dict[str, Any], ModelMeta]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise CheckpointError(f"{path}: is {kind}; give a {SUFFIX} file")
    if path.suffix.lower() in _PT_SUFFIXES:
        raise CheckpointError(
            f"{path.name}: a plain PyTorch file has no metadata; import it with "
            "'seg-studio import-weights FILE --arch NAME --dims N ...' to make a .segmodel"
        )
    header, _ = _read_header(path)
    meta_map = header.get("__metadata__") or {}
    if not isinstance(meta_map, dict) or _META_KEY not in meta_map:
        raise CheckpointError(
            f"{path.name}: a safetensors file without seg_studio metadata; import it with "
            "'seg-studio import-weights FILE --arch NAME --dims N ...'"
        )
    try:
        record = json.loads(meta_map[_META_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name}: the metadata record is not valid JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path.name}: the metadata record is nested too deeply to be ours") from None
    return header, ModelMeta.from_dict(record, where=path.name)


def plan(meta: ModelMeta, where: str = "checkpoint") -> ModelPlan:
    """What ``meta`` would build, found without allocating it; refused when it cannot fit in memory."""
    from .limits import check_fits

    try:
        p = plan_model(
            meta.architecture, meta.spatial_dims, meta.in_channels, meta.out_channels, **meta.arch_args
        )
    except ModelError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    check_fits(
        3 * p.nbytes,  # the model, the weights read from the file, and the working copy of a device
        f"{where}: the model its metadata describes ({p.parameters:,} parameters) needs about",
        "use a smaller model or a machine with more memory",
        CheckpointError,
    )
    return p


def build_model(meta: ModelMeta, where: str = "checkpoint", planned: bool = False) -> SegModel:
    """Instantiate the registered architecture the metadata names (never an import path), after
    checking on the meta device that its size is bounded (unless the caller did: ``planned``)."""
    if not planned:
        plan(meta, where)
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


#: safetensors dtype names -> (floating point, bytes per element)
_ST_DTYPES = {
    "F64": (True, 8),
    "F32": (True, 4),
    "F16": (True, 2),
    "BF16": (True, 2),
    "I64": (False, 8),
    "I32": (False, 4),
    "I16": (False, 2),
    "I8": (False, 1),
    "U8": (False, 1),
    "BOOL": (False, 1),
}


def check_header_tensors(header: Mapping[str, Any], p: ModelPlan, where: str) -> None:
    """The file's tensor table against the planned model: names, shapes and types, before any
    tensor is read or any model is built (a 2.8 MB file must not make us allocate 23 GB)."""
    table = {k: v for k, v in header.items() if k != "__metadata__"}
    missing = [k for k in p.tensors if k not in table]
    extra = [k for k in table if k not in p.tensors]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {printable(missing[0])!r})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {printable(extra[0])[:80]!r})")
        raise CheckpointError(
            f"{where}: weights do not fit the architecture its metadata names: {', '.join(parts)}"
        )
    for k, (shape, floating) in p.tensors.items():
        info = table[k]
        try:
            got = tuple(int(v) for v in info["shape"])
            kind = _ST_DTYPES[info["dtype"]]
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: corrupt tensor table (entry {k!r})") from None
        if got != shape:
            raise CheckpointError(
                f"{where}: tensor {k!r} has shape {got} but the architecture in the metadata expects {shape}; "
                "the metadata does not describe these weights"
            )
        if kind[0] != floating:
            raise CheckpointError(
                f"{where}: tensor {k!r} is stored as {info['dtype']}, which does not fit it"
            )
        if end - begin != math.prod(shape) * kind[1]:
            raise CheckpointError(f"{where}: corrupt tensor table (entry {k!r} has the wrong byte size)")


def check_finite(state: Mapping[str, torch.Tensor], where: str, saving: bool = False) -> None:
    """NaN or infinite weights give an empty or random mask with no error: refuse them."""
    for k, t in state.items():
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad and saving:
                raise CheckpointError(
                    f"{where}: the model's tensor {printable(k)!r} holds {bad} NaN or infinite value(s): training "
                    "diverged; nothing was saved (lower the learning rate or check the data)"
                )
            if bad:
                raise CheckpointError(
                    f"{where}: tensor {printable(k)!r} holds {bad} NaN or infinite value(s) of {t.numel()}; "
                    "the model is broken (training diverged or the file was damaged); use another checkpoint"
                )


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
    """Rebuild the model from a ``.segmodel`` file; returns it in eval mode on ``device``.

    Order matters, because everything in the file is untrusted: the metadata is validated, the model
    it describes is planned without memory and its tensor table compared with the file's, and only
    then is the model built and the weights read (and refused if any is NaN or infinite).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    header, meta = _read_header_and_meta(path)
    check_header_tensors(header, plan(meta, path.name), path.name)
    model = build_model(meta, where=path.name, planned=True)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: corrupt weights ({exc})") from None
    except MemoryError as exc:
        from .limits import memory_error_line

        raise CheckpointError(f"{path.name}: {memory_error_line(exc, 'reading the weights')}") from None
    check_finite(state, path.name)
    _check_and_load(model, state, path.name)
    return model.to(device).eval(), meta


# --- the optimiser state of a training run ---------------------------------------------------------

_RESUME_FIELDS = {"step": int, "best": float, "best_step": int, "bad_validations": int, "elapsed_s": float}


def load_resume_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``resume.pt`` of a run: read with ``weights_only=True`` (tensors and plain containers only)
    and checked field by field, so a random or malicious file is one line, never a traceback."""
    from .limits import check_fits

    path = Path(path)
    advice = f"delete {path.name} to resume from last.segmodel with a fresh optimiser, or drop --resume"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the resume state ({exc.strerror or exc})") from None
    check_fits(2 * size, f"{path.name}: reading it needs", advice, CheckpointError)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: not for the user
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError as exc:
        from .limits import memory_error_line

        raise CheckpointError(f"{path.name}: {memory_error_line(exc, 'reading the resume state')}") from None
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many types; all mean "refused"
        why = (
            f"it references Python objects other than tensors ({_global_name(str(exc))}); nothing in it was run"
            if "Unsupported global" in str(exc) or "weights_only" in str(exc).lower()
            else "not a readable PyTorch file"
        )
        raise CheckpointError(f"{path.name}: not a seg_studio resume state ({why}); {advice}") from None
    problem = _resume_problem(obj)
    if problem:
        raise CheckpointError(f"{path.name}: not a seg_studio resume state ({problem}); {advice}")
    return obj


def _resume_problem(obj: Any) -> str | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("optimizer"), dict):
        return "no optimiser state"
    opt = obj["optimizer"]
    if not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
        return "the optimiser state lacks 'state' or 'param_groups'"
    st = obj.get("state")
    if not isinstance(st, dict):
        return "no loop state"
    for key, kind in _RESUME_FIELDS.items():
        v = st.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not isinstance(v, int)):
            return f"the loop state's {key!r} is not a number"
        if kind is int and v < 0:
            return f"the loop state's {key!r} is negative"
    try:
        history = json.loads(st.get("history", "[]"))
    except (TypeError, ValueError, RecursionError):
        return "its history is not JSON"
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "its history is not a list of records"
    return None


def restore_optimizer(opt: torch.optim.Optimizer, state: Mapping[str, Any], where: str) -> None:
    """``opt.load_state_dict`` with a mismatch (another model, another optimiser) as one line."""
    try:
        opt.load_state_dict(dict(state))
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(
            f"{where}: the saved optimiser state does not fit this model ({first}); delete it to resume "
            "from last.segmodel with a fresh optimiser"
        ) from None


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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
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
    check_finite(state, path.name)
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
    """Human-readable summary of a checkpoint (what ``seg-studio inspect`` prints), control
    characters escaped."""
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
    # every name and value came from the file: escape what a terminal would act on
    return "\n".join(printable(line) for line in lines)


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
