"""Model panel: pick a variant and a checkpoint, see its card, choose the device and the outputs.

The variant list comes from the registry and the devices from torch, both probed in a worker so
that the window shows before torch is imported. Checkpoints are found in the bundled
``resources/models/`` folder and the user's model folder; "Open checkpoint..." adds any
``.segmodel``. Picking a variant with no checkpoint builds an untrained model (with a warning).
Until the user picks a model, the default is the checkpoint whose recorded domain fits the scan in view
best (``core.domain.rank_checkpoints``); when none fits, nothing is selected and the panel says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QWidget,
)

from ..core.defaults import FRESH_ARCH_ARGS, OVERLAP
from ..core.errors import CheckpointError

log = logging.getLogger(__name__)

ANY_VARIANT = "(any variant)"
CHECKPOINT_SUFFIX = ".segmodel"
NO_FIT_ITEM = "(no model fits this scan)"


def bundled_model_dirs() -> list[Path]:
    """``resources/models`` next to the package (a source checkout) or inside it (a wheel)."""
    pkg = Path(__file__).resolve().parents[1]
    return [d for d in (pkg.parent / "resources" / "models", pkg / "resources" / "models") if d.is_dir()]


def find_checkpoints(extra: list[Path] | None = None) -> list[Path]:
    """Every ``.segmodel`` in the bundled folder, the user's model folder and ``extra`` files."""
    from ..core.atomic import clean_stale_temps, is_temp_name
    from ..core.autosave import user_model_dir

    clean_stale_temps(user_model_dir(), force=True)  # what a fine-tune killed mid-save left behind
    found: dict[Path, None] = {}
    for d in [*bundled_model_dirs(), user_model_dir()]:
        for p in sorted(d.rglob(f"*{CHECKPOINT_SUFFIX}")):
            if not is_temp_name(p.name):  # a save in progress, or one a killed run left
                found[p.resolve()] = None
    for p in extra or []:
        if p.is_file():
            found[p.resolve()] = None
    return list(found)


@dataclass
class CheckpointInfo:
    """What the picker shows about a checkpoint without loading its weights."""

    path: Path
    meta: Any  # checkpoint.ModelMeta
    error: str = ""

    @property
    def architecture(self) -> str:
        return getattr(self.meta, "architecture", "?") if self.meta is not None else "?"


@dataclass
class ModelChoice:
    """What predict/fine-tune will use: a checkpoint file, or an untrained registry variant."""

    variant: str
    checkpoint: Path | None = None
    meta: Any = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def untrained(self) -> bool:
        return self.checkpoint is None

    @property
    def label(self) -> str:
        return self.checkpoint.name if self.checkpoint else f"untrained {self.variant}"


def read_checkpoint_meta(path: Path) -> Any:
    """The checkpoint's metadata (``ModelMeta``) without building the model when the core allows it."""
    from ..core import checkpoint

    reader = getattr(checkpoint, "read_meta", None)
    if reader is not None:
        return reader(path)
    return checkpoint.load(path, device="cpu")[1]


def _args(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(config.items()))


def _dice_row(m: Any) -> str | None:
    """Validation Dice as recorded: a fine-tune's before/after, else the model card's, else training's."""
    prov = getattr(m, "provenance", {}) or {}
    card = getattr(m, "card", {}) or {}
    if prov.get("kind") == "finetune" and prov.get("dice_after") is not None:
        before = prov.get("dice_before")
        text = f"{float(before):.3f} &rarr; " if before is not None else ""
        return (
            f"Dice (fine-tune): {text}{float(prov['dice_after']):.3f} on {prov.get('dice_on') or 'its cases'}"
        )
    val = card.get("validation") or {}
    if val.get("mean_dice") is not None:
        per = ", ".join(f"{k} {float(v):.3f}" for k, v in (val.get("dice") or {}).items() if v is not None)
        n = len(val.get("cases") or [])
        return (
            f"validation Dice: <b>{float(val['mean_dice']):.3f}</b>"
            + (f" ({per})" if per else "")
            + (f" on {n} held-back case(s)" if n else "")
        )
    metrics = prov.get("metrics") or {}
    best = metrics.get("best_val_dice", metrics.get("val_dice"))
    if best is not None:
        return f"validation Dice: {float(best):.3f} (training, {metrics.get('val_cases', '?')} case(s))"
    return None


def card_html(info: CheckpointInfo | None, choice: ModelChoice | None) -> str:
    """The model card as compact rich text: classes, dims, spacing, validation Dice, data, terms, the
    expected input and the domain (what it was trained on), parent."""
    import html

    from ..core.domain import describe, format_spans, meta_domain

    if choice is not None and choice.untrained:
        return (
            f"<b>{choice.variant}</b> &mdash; <span style='color:#f0a030'><b>untrained</b>: random weights, "
            "the mask will be noise until you fine-tune it on corrected labels</span>"
            + (f" (built with {_args(choice.config)})" if choice.config else "")
        )
    if info is None:
        return "<i>no model selected</i>"
    if info.error:
        return f"<span style='color:#ff6060'>{info.error}</span>"
    m = info.meta
    esc = html.escape
    classes = " ".join(
        f"<span style='color:rgb{tuple(c.color)}'>&#9632;</span>&nbsp;{esc(c.name)}"
        for c in getattr(m, "classes", [])
        if int(c.value) != 0
    )
    spacing = getattr(m, "spacing", None)
    dom = meta_domain(m)
    if spacing:
        spacing_txt = "resampled to " + " x ".join(f"{s:g}" for s in spacing) + " mm"
    elif dom is not None and dom.physical_spacing:
        spacing_txt = f"runs at the scan's own spacing (trained on {format_spans(dom.spacing, 'mm')})"
    else:
        spacing_txt = "runs at the scan's own spacing"
    prov = getattr(m, "provenance", {}) or {}
    card = getattr(m, "card", {}) or {}
    parent = prov.get("parent_name") or prov.get("parent") or card.get("parent")
    if isinstance(parent, dict):
        parent = parent.get("name") or parent.get("hash")
    rows = []
    if card.get("title") or card.get("description"):
        rows.append(f"<i>{esc(str(card.get('title') or card.get('description')))}</i>")
    rows += [
        f"<b>{m.architecture}</b> {m.spatial_dims}D, {m.in_channels} channel(s) &rarr; {len(m.classes)} classes",
        f"classes: {classes or '-'}",
        f"spacing: {spacing_txt}; patch {' x '.join(str(p) for p in m.patch_size)}",
    ]
    dice = _dice_row(m)
    if dice:
        rows.append(dice)
    if dom is not None and dom.expected_input:
        rows.append(f"<b>expects</b> {esc(dom.expected_input)}")
    rows.append("trained on: " + esc("; ".join(describe(dom)[:2])) if dom else "domain: <i>not recorded</i>")
    for key, label in (("data", "data"), ("terms", "terms")):
        if card.get(key):
            rows.append(f"{label}: {esc(str(card[key]))}")
    if parent:
        rows.append(f"parent: {esc(str(parent)[:40])}")
    return "<br>".join(rows)


class ModelSection(QGroupBox):
    """Variant, checkpoint, card, device and prediction options."""

    #: emitted when the chosen model changes (argument: the ModelChoice or None)
    choice_changed = Signal(object)
    #: emitted once the registry and devices were probed
    probed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Model", parent)
        self._infos: dict[Path, CheckpointInfo] = {}
        self._extra: list[Path] = []
        self._variants: list[str] = []
        #: build arguments for untrained variants (e.g. {"features": 8}), set by select_variant
        self._variant_config: dict[str, dict[str, Any]] = {}
        self._jobs: list[Any] = []
        self._cache: tuple[tuple[Any, ...], Any, Any] | None = None
        #: the scan in view (a Volume), and whether the user chose a model themselves: until they do,
        #: the default is the checkpoint whose domain fits the scan best, or none when none fits
        self._scan: Any = None
        self._ranking: dict[Path, Any] = {}
        self._order: list[Path] = []
        self._user_picked = False
        #: True while no listed checkpoint fits the scan and the user has not picked one
        self.no_fit = False
        self._probed = False

        self.variant = QComboBox()
        self.variant.addItem(ANY_VARIANT)
        self.variant.setToolTip("U-Net variants from the registry; filters the checkpoints below")
        self.checkpoint = QComboBox()
        self.checkpoint.setToolTip("checkpoints in resources/models and your model folder")
        # long entries must not widen the panel past its dock
        self.checkpoint.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.checkpoint.setMinimumContentsLength(14)
        self.open_button = QPushButton("Open checkpoint...")
        self.card = QLabel("<i>looking for models...</i>")
        self.card.setWordWrap(True)
        self.card.setTextFormat(Qt.TextFormat.RichText)
        self.device = QComboBox()
        self.device.addItem("auto (best available)", "auto")
        self.device.addItem("CPU", "cpu")
        self.overlap = QDoubleSpinBox()
        self.overlap.setRange(0.0, 0.9)
        self.overlap.setSingleStep(0.125)
        self.overlap.setValue(OVERLAP)  # the CLI's default too (core/defaults.py)
        self.overlap.setToolTip("overlap between sliding windows: more is smoother and slower")
        self.tta = QCheckBox("test-time augmentation (flips)")
        self.want_probabilities = QCheckBox("probabilities")
        self.want_uncertainty = QCheckBox("uncertainty")
        self.want_attention = QCheckBox("attention maps")
        self.want_uncertainty.setToolTip(
            "spread over flipped copies: turns test-time augmentation on (slower)"
        )
        for box in (self.want_probabilities, self.want_attention):
            box.setChecked(True)
        self.want_attention.setVisible(False)  # offered for models with attention gates only

        for combo in (self.variant, self.checkpoint, self.device):
            # long names must not widen the docked panel (and squeeze napari's canvas): they elide
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(10)
        self.open_button.setToolTip("add a .segmodel file to the list and select it")
        form = QFormLayout(self)
        form.addRow("Variant", self.variant)
        form.addRow("Checkpoint", self.checkpoint)
        form.addRow("", self.open_button)
        form.addRow(self.card)
        form.addRow("Device", self.device)
        form.addRow("Overlap", self.overlap)
        form.addRow(self.tta)
        outs = QGridLayout()
        outs.addWidget(self.want_probabilities, 0, 0)
        outs.addWidget(self.want_uncertainty, 0, 1)
        outs.addWidget(self.want_attention, 1, 0)
        form.addRow("Show", outs)

        self.variant.currentIndexChanged.connect(self._variant_changed)
        self.checkpoint.currentIndexChanged.connect(self._checkpoint_changed)
        # ``activated`` fires for a user's choice only, never for a programmatic one
        self.checkpoint.activated.connect(lambda _: self._mark_user_picked())
        self.variant.activated.connect(lambda _: self._mark_user_picked())
        self.open_button.clicked.connect(self._open_dialog)

    # --- probing -----------------------------------------------------------------------------------
    def start_probe(self) -> None:
        """Probe devices, variants and checkpoint cards in a worker (torch imports off the UI thread)."""
        from .workers import Job

        extra = list(self._extra)

        def factory(token: Any):  # noqa: ANN202 - a generator
            return _probe(extra)

        self._jobs.append(
            Job(factory, on_done=self._probe_done, on_error=self._probe_error, name="probing models")
        )

    def _probe_error(self, message: str, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        show_error(f"seg_studio could not list the models: {message}")

    def _probe_done(self, result: tuple[list[tuple[str, str]], list[str], list[CheckpointInfo]]) -> None:
        devices, variants, infos = result
        current = self.device_name()
        self.device.blockSignals(True)
        self.device.clear()
        for key, text in devices:
            self.device.addItem(text, key)
        idx = self.device.findData(current)
        self.device.setCurrentIndex(max(0, idx))
        self.device.blockSignals(False)
        self._variants = variants
        keep_variant = self.variant.currentText()
        self.variant.blockSignals(True)
        self.variant.clear()
        self.variant.addItem(ANY_VARIANT)
        self.variant.addItems(variants)
        self.variant.setCurrentIndex(max(0, self.variant.findText(keep_variant)))
        self.variant.blockSignals(False)
        for info in infos:
            self._infos[info.path] = info
        self._probed = True
        self._refill_checkpoints()
        self.probed.emit()

    # --- choices -----------------------------------------------------------------------------------
    def device_name(self) -> str:
        return str(self.device.currentData() or "auto")

    def set_device(self, name: str) -> None:
        idx = self.device.findData(name)
        if idx < 0:
            raise ValueError(f"device {name!r} is not available here; choose one of {self.devices()}")
        self.device.setCurrentIndex(idx)

    def devices(self) -> list[str]:
        return [str(self.device.itemData(i)) for i in range(self.device.count())]

    def variants(self) -> list[str]:
        return list(self._variants)

    def info(self, path: Path) -> CheckpointInfo | None:
        return self._infos.get(Path(path).resolve())

    def checkpoints(self) -> list[Path]:
        return [p for p in self._infos if not self._infos[p].error]

    def current_choice(self) -> ModelChoice | None:
        data = self.checkpoint.currentData()
        if isinstance(data, str) and data.startswith("variant:"):
            name = data.split(":", 1)[1]
            return ModelChoice(variant=name, config=dict(self._variant_config.get(name, FRESH_ARCH_ARGS)))
        if isinstance(data, str) and data:
            info = self._infos.get(Path(data))
            if info is None or info.error:
                return None
            return ModelChoice(variant=info.architecture, checkpoint=info.path, meta=info.meta)
        return None

    def current_info(self) -> CheckpointInfo | None:
        path = self._item_path(self.checkpoint.currentIndex())
        return self._infos.get(path) if path is not None else None

    def add_checkpoint(self, path: Path, select: bool = True) -> CheckpointInfo:
        """Read a checkpoint's card, list it and (by default) select it; errors become a red card."""
        path = Path(path).expanduser().resolve()
        try:
            meta = read_checkpoint_meta(path)
            info = CheckpointInfo(path, meta)
        except CheckpointError as exc:
            info = CheckpointInfo(path, None, str(exc))
        except Exception as exc:  # noqa: BLE001 - any broken file becomes a message, never a crash
            from .workers import user_message

            info = CheckpointInfo(
                path, None, f"{path.name} is not a readable checkpoint: {user_message(exc)}"
            )
        if info.error:
            return info
        self._infos[path] = info
        if path not in self._extra:
            self._extra.append(path)
        if select:
            self._user_picked = True
        self._refill_checkpoints(select=path if select else None)
        return info

    def select_checkpoint(self, path: Path) -> None:
        path = Path(path).expanduser().resolve()
        self._user_picked = True
        if path not in self._infos:
            info = self.add_checkpoint(path)
            if info.error:
                raise CheckpointError(info.error)
            return
        self.variant.setCurrentIndex(0)
        idx = self.checkpoint.findData(str(path))
        self.checkpoint.setCurrentIndex(idx)

    def select_variant(self, name: str, untrained: bool = False, **config: Any) -> None:
        """Filter to ``name``; ``untrained=True`` also picks the untrained entry of that variant,
        built with ``config`` (e.g. ``features=8``) instead of the registry's defaults."""
        self._user_picked = True
        if config:
            self._variant_config[name] = dict(config)
        idx = self.variant.findText(name)
        if idx < 0:
            from ..core.models import get_spec

            get_spec(name)  # raises ModelError with suggestions
            self.variant.addItem(name)
            idx = self.variant.findText(name)
        self.variant.setCurrentIndex(idx)
        if untrained:
            self.checkpoint.setCurrentIndex(self.checkpoint.findData(f"variant:{name}"))

    def _variant_changed(self) -> None:
        self._refill_checkpoints()

    def _refill_checkpoints(self, select: Path | None = None) -> None:
        variant = self.variant.currentText()
        if select is not None and variant != ANY_VARIANT and self._infos[select].architecture != variant:
            self.variant.blockSignals(True)
            self.variant.setCurrentIndex(0)
            self.variant.blockSignals(False)
            variant = ANY_VARIANT
        # the entry to keep: a checkpoint path or an untrained variant ("variant:NAME")
        keep = str(select) if select is not None else self.checkpoint.currentData()
        self.checkpoint.blockSignals(True)
        self.checkpoint.clear()
        for path, info in self._infos.items():
            if info.error or (variant != ANY_VARIANT and info.architecture != variant):
                continue
            dims = getattr(info.meta, "spatial_dims", "?")
            self.checkpoint.addItem(f"{path.stem}  ({info.architecture}, {dims}D)", str(path))
            self.checkpoint.setItemData(self.checkpoint.count() - 1, str(path), 3)  # tooltip role
        if variant != ANY_VARIANT:
            self.checkpoint.addItem(f"untrained {variant} (random weights)", f"variant:{variant}")
        self._rank()
        if self.no_fit:
            self.checkpoint.insertItem(0, NO_FIT_ITEM, "")
        if self.checkpoint.count() == 0:
            self.checkpoint.addItem("(no checkpoint: pick a variant or open one)", "")
        idx = self.checkpoint.findData(keep) if isinstance(keep, str) and keep else -1
        if select is None and not self._user_picked and self._scan is not None:
            idx = self._best_index()
        elif idx < 0:
            idx = self._best_index()
        self.checkpoint.setCurrentIndex(max(0, idx))
        self.checkpoint.blockSignals(False)
        self._checkpoint_changed()

    def _mark_user_picked(self) -> None:
        self._user_picked = True

    def suit_scan(self, volume: Any) -> None:
        """The scan in view changed (a ``Volume``, or None): until the user picks a model, select the
        checkpoint whose domain fits it best; when none fits, select nothing (``no_fit``)."""
        self._scan = volume
        self._refill_checkpoints()

    def _rank(self) -> None:
        """Score every listed checkpoint against the scan; ``no_fit`` when none fits (and no user pick)."""
        from ..core.domain import rank_checkpoints

        self._ranking = {}
        self.no_fit = False
        if self._scan is None or not self._probed:  # nothing listed yet: nothing to judge
            return
        candidates = [(p, info.meta) for p, info in self._infos.items() if not info.error]
        ranked = rank_checkpoints(candidates, self._scan)
        self._ranking = {r.key: r for r in ranked}
        self._order = [r.key for r in ranked]
        self.no_fit = not self._user_picked and not any(r.fits for r in ranked)

    def no_fit_reasons(self) -> list[str]:
        """Why the closest checkpoint does not fit the scan (its warnings), for the banner."""
        for key in self._order:
            r = self._ranking[key]
            return [f"{Path(key).stem}: {w}" for w in r.warnings if w.severity != "note"][:3]
        return []

    def ranking(self) -> list[Any]:
        """The checkpoints ranked against the scan in view, best first (``core.domain.Ranked``)."""
        return [self._ranking[k] for k in self._order if k in self._ranking]

    def _item_path(self, idx: int) -> Path | None:
        """The checkpoint file behind list entry ``idx``; None for an untrained variant or the placeholder."""
        data = self.checkpoint.itemData(idx) if idx >= 0 else None
        if isinstance(data, str) and data and not data.startswith("variant:"):
            return Path(data)
        return None

    def _best_index(self) -> int:
        """The list entry of the best-fitting checkpoint; the "no model fits" entry when none fits."""
        if self.no_fit:
            return 0
        if self._scan is None:
            return 0
        for key in self._order:
            if not self._ranking[key].fits:
                break
            idx = self.checkpoint.findData(str(key))
            if idx >= 0:
                return idx
        return 0

    def _checkpoint_changed(self) -> None:
        choice = self.current_choice()
        self.card.setText(card_html(self.current_info(), choice))
        self._offer_attention(choice)
        self.choice_changed.emit(choice)

    def _offer_attention(self, choice: ModelChoice | None) -> None:
        """Show "attention maps" only for a model that has attention gates (a plain U-Net has none)."""
        has = False
        if choice is not None:
            from ..core.models import makes_attention_maps  # torch is in after the probe

            args = choice.config if choice.untrained else getattr(choice.meta, "arch_args", {})
            has = makes_attention_maps(choice.variant, args)
        self.want_attention.setVisible(has)

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open checkpoint", "", f"seg_studio models (*{CHECKPOINT_SUFFIX})"
        )
        if path:
            self.open_checkpoint(Path(path))

    def open_checkpoint(self, path: Path) -> CheckpointInfo:
        """Add and select ``path``; a bad file shows a notification and changes nothing."""
        from napari.utils.notifications import show_error

        info = self.add_checkpoint(Path(path))
        if info.error:
            show_error(info.error)
        return info

    # --- options and loading -------------------------------------------------------------------------
    def outputs(self) -> dict[str, bool]:
        return {
            "probabilities": self.want_probabilities.isChecked(),
            "uncertainty": self.want_uncertainty.isChecked(),
            "attention": self.want_attention.isChecked() and not self.want_attention.isHidden(),
        }

    def predict_options(self) -> dict[str, Any]:
        """Keyword arguments of ``inference.PredictOptions``."""
        return {
            "device": self.device_name(),
            "overlap": float(self.overlap.value()),
            "tta": self.tta.isChecked(),
            **self.outputs(),
        }

    def cached_model(self, key: tuple[Any, ...]) -> tuple[Any, Any] | None:
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        return None

    def last_meta(self) -> Any:
        """The metadata of the model the last prediction ran (None before the first)."""
        return self._cache[2] if self._cache is not None else None

    def remember_model(self, key: tuple[Any, ...], model: Any, meta: Any) -> None:
        """Keep the last loaded model (one only) so a re-run skips loading; lives on this widget."""
        self._cache = (key, model, meta)


def _probe(extra: list[Path]):  # noqa: ANN202 - a generator for Job
    """Worker side of ``start_probe``: devices, variants, and the cards of all checkpoints found."""
    import torch

    from ..core.models import list_models

    devices: list[tuple[str, str]] = [("auto", "auto (best available)")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append((f"cuda:{i}", f"CUDA {i}: {props.name}, {props.total_memory / 2**30:.0f} GiB"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append(("mps", "Apple MPS"))
    devices.append(("cpu", f"CPU ({torch.get_num_threads()} threads)"))
    variants = list_models(trainable_only=True)
    infos: list[CheckpointInfo] = []
    for path in find_checkpoints(extra):
        try:
            infos.append(CheckpointInfo(path, read_checkpoint_meta(path)))
        except Exception as exc:  # noqa: BLE001 - one bad file must not hide the others
            log.warning("skipping %s: %s", path, exc)
            infos.append(CheckpointInfo(path, None, str(exc)))
    return devices, variants, infos
    yield  # pragma: no cover - makes this a generator
