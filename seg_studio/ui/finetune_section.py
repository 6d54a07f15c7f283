"""Fine-tune with one click: the open scan + the corrected mask -> a new checkpoint beside its parent.

The worker runs ``training.iter_finetune`` with a live loss/Dice plot and Cancel. "Only what I
changed" marks every voxel the user left as the model predicted it with the training ignore
value, so the model learns from the corrections alone. Parent and child are scored on the corrected
region (the slices the user changed, or the whole 2D image: ``acceptance.corrected_region_labels``).
The new checkpoint goes next to the parent, or into the user's model folder when the parent's folder
is read-only (e.g. the bundled resources/). Only a child that beats its parent is selected (then
"Re-run prediction" applies it); one that does not is saved as ``*.notbetter.segmodel``, listed, and
the parent stays selected, which the section says. With "keep learning from earlier scans" (on by
default) each fine-tune of a lineage also trains on the pairs corrected before it (``training.replay``);
the lineage is listed after each fine-tune, and "use this version" selects any model along it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.progress import Progress
from . import layers as L
from .model_section import CHECKPOINT_SUFFIX, ModelChoice, ModelSection, bundled_model_dirs
from .plot_widget import LossPlot
from .run_section import RunSection, build_untrained, format_progress
from .staging import set_progress
from .workers import FINETUNE_NICE

log = logging.getLogger(__name__)


def finetune_destination(parent: Path, stamp: str | None = None) -> Path:
    """Where the fine-tuned child of ``parent`` goes: beside it if writable, else the user model folder."""
    from ..core.autosave import user_model_dir

    folder = parent.parent
    bundled = any(folder.resolve().is_relative_to(d.resolve()) for d in bundled_model_dirs())
    if bundled or not os.access(folder, os.W_OK):
        folder = user_model_dir()
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    stem = parent.name[: -len(CHECKPOINT_SUFFIX)] if parent.name.endswith(CHECKPOINT_SUFFIX) else parent.stem
    out = folder / f"{stem}-ft-{stamp}{CHECKPOINT_SUFFIX}"
    n = 2
    while out.exists():
        out = folder / f"{stem}-ft-{stamp}-{n}{CHECKPOINT_SUFFIX}"
        n += 1
    return out


def _finetune_job(choice, scan, labels, val_labels, out, budget_s, device, series, token, clicks=None):  # noqa: ANN001, ANN202 - worker generator
    from ..core import checkpoint
    from ..core.training import iter_finetune

    parent = choice.checkpoint
    if parent is None:
        # An untrained variant has no file yet: save its random start as the parent, so the child's
        # provenance names a real file (in the user's model folder).
        yield Progress(0, 1, "saving the untrained start")
        classes = sorted(labels.labels.values(), key=lambda c: c.value)
        model, meta = build_untrained(choice, scan, classes)
        parent = out.with_name(
            f"{choice.variant}-untrained-{time.strftime('%Y%m%d-%H%M%S')}{CHECKPOINT_SUFFIX}"
        )
        checkpoint.save(parent, model, meta)
    val_pairs = [(scan, val_labels)] if val_labels is not None else None
    result = yield from iter_finetune(
        parent,
        [(scan, labels)],
        out,
        budget_s=budget_s,
        val_pairs=val_pairs,
        device=device,
        name_not_better=True,
        replay=series,
        clicks=[clicks] if clicks else None,
        cancel=token,
    )
    # the lineage hashes every checkpoint in the model folders: here, not on the GUI thread (110-150 ms
    # of the landing turn measured with ``ui_responsiveness.py --trace``)
    return result, lineage_of(Path(result.path))


def lineage_of(path: Path) -> list[Any]:
    """``path``'s versions (it, its parent, ...) found in the user's and the bundled model folders."""
    from ..core.autosave import user_model_dir
    from ..core.training.lineage import lineage

    return lineage(path, [user_model_dir(), *bundled_model_dirs()])


class FinetuneSection(QGroupBox):
    """Fine-tune button, options, live plot, Cancel, and the offer to re-run."""

    #: emitted when a fine-tune job ends: "done", "cancelled" or "error"
    finished = Signal(str)

    def __init__(
        self,
        viewer: Any,
        models: ModelSection,
        run: RunSection,
        scan_layer: Callable[[], Any],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__("Fine-tune", parent)
        self.viewer = viewer
        self.models = models
        self.run = run
        self._scan_layer = scan_layer
        self.job: Any = None
        self.last_result: Any = None
        self.last_error = ""
        self._outcome = "done"
        self._out: Path | None = None
        #: the clicks made on a scan layer (the Clicks section's), which go with its corrected mask
        self.clicks_on: Callable[[Any], list[Any]] = lambda layer: []
        #: lists an interactive child where interactive models are chosen (the Clicks section)
        self.on_interactive_child: Callable[[Path, bool], None] | None = None

        self.only_changed = QCheckBox("learn only from what I changed")
        self.only_changed.setToolTip("voxels you left as predicted are ignored by the loss")
        from ..core.defaults import FINETUNE_BUDGET_2D_S, FINETUNE_BUDGET_3D_S

        self.budget = QSpinBox()
        self.budget.setRange(0, 3600)
        self.budget.setSuffix(" s")
        # 0 = the default budget that the CLI uses too (core.defaults), by the model's dims
        self.budget.setSpecialValueText(
            f"auto ({FINETUNE_BUDGET_2D_S:g} s 2D, {FINETUNE_BUDGET_3D_S:g} s 3D)"
        )
        self.budget.setValue(0)
        self.budget.setToolTip("time budget of the fine-tune, scoring and saving included")
        self.series = QCheckBox("keep learning from earlier scans of this series")
        self.series.setChecked(True)
        self.series.setToolTip(
            "each fine-tune also trains on the scans corrected before it in the same lineage; the corrected "
            "pairs are kept in a '.replay' folder beside the first fine-tuned model"
        )
        self.versions = QComboBox()
        self.versions.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.versions.setMinimumContentsLength(12)  # long file names must not widen the narrow panel
        self.versions.setToolTip("this model's lineage: each fine-tune back to the model it started from")
        self.use_version_button = QPushButton("use this version")
        self.finetune_button = QPushButton("Fine-tune on my corrections")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.rerun_button = QPushButton("Re-run prediction with the new model")
        self.rerun_button.setVisible(False)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.status = QLabel("correct the mask, then fine-tune")
        self.status.setWordWrap(True)
        self.plot = LossPlot()

        lay = QVBoxLayout(self)
        lay.addWidget(self.only_changed)  # on its own row: the panel is narrow (see panel.PANEL_WIDTH)
        row = QHBoxLayout()
        row.addWidget(QLabel("budget"))
        row.addWidget(self.budget)
        row.addStretch(1)
        lay.addLayout(row)
        lay.addWidget(self.series)
        row = QHBoxLayout()
        row.addWidget(self.finetune_button, 2)
        row.addWidget(self.cancel_button, 1)
        lay.addLayout(row)
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        lay.addWidget(self.plot)
        lay.addWidget(self.rerun_button)
        self.versions_row = QWidget()
        row = QHBoxLayout(self.versions_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.versions, 1)
        row.addWidget(self.use_version_button)
        self.versions_row.setVisible(False)
        lay.addWidget(self.versions_row)
        self.use_version_button.clicked.connect(lambda: self.use_version())
        self.finetune_button.clicked.connect(lambda: self.finetune())
        self.cancel_button.clicked.connect(self.cancel)
        self.rerun_button.clicked.connect(self.rerun)

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def _changed(self, mask: Any, arr: np.ndarray) -> np.ndarray | None:
        """The voxels the user corrected (None: no prediction of ours to compare with)."""
        changed = self.run.user_voxels(mask)
        return changed if changed is not None and changed.shape == arr.shape else None

    def training_labels(self, mask: Any, scan: Any, only_changed: bool) -> Any:
        """The mask as a label Volume; with ``only_changed``, untouched voxels get the ignore value."""
        from ..core.training.data import IGNORE_INDEX

        vol = L.labels_volume(mask, scan)
        arr = np.asarray(vol.array)
        if only_changed:
            changed = self._changed(mask, arr)
            if changed is None:
                raise ValueError(
                    "nothing to compare with: run a prediction first, or untick 'only what I changed'"
                )
            if not changed.any():
                raise ValueError("you have not changed the mask yet: paint a correction first")
            train = np.full(arr.shape, IGNORE_INDEX, dtype=np.int32)
            train[changed] = arr[changed]
            arr = train
        else:
            arr = arr.astype(np.int32, copy=True)
        return vol.with_array(arr, meta={"kind": "labels"})

    def validation_labels(self, mask: Any, scan: Any) -> Any:
        """The corrected region of the mask (the slices the user changed in 3D, the whole 2D image) as
        the labels parent and child are scored on; None when nothing was corrected on a prediction."""
        from ..core.training.acceptance import corrected_region_labels

        vol = L.labels_volume(mask, scan)
        arr = np.asarray(vol.array)
        changed = self._changed(mask, arr)
        if changed is None or not changed.any():
            return None
        return vol.with_array(corrected_region_labels(arr, changed), meta={"kind": "labels"})

    def finetune(
        self,
        budget_s: float | None = None,
        only_changed: bool | None = None,
        checkpoint: Path | None = None,
        clicks: list[Any] | None = None,
    ) -> bool:
        """Start fine-tuning on the scan, its corrected mask and the clicks made on it (they train an
        interactive model); ``checkpoint`` instead of the Model section's choice (the Clicks section's
        interactive model). False (and a notification) if it cannot."""
        from napari.utils.notifications import show_error, show_warning

        from .workers import Job

        if self.busy:
            show_warning("a fine-tune is already running; cancel it first")
            return False
        layer = self._scan_layer()
        mask = self.run.mask_layer(layer) if layer is not None else None
        if layer is None or mask is None:
            show_error("fine-tuning needs a scan and its mask: run Predict (or open a label map) first")
            return False
        choice: ModelChoice | None = self.models.current_choice()
        if checkpoint is not None:
            from ..core.checkpoint import read_meta

            choice = ModelChoice(read_meta(checkpoint).architecture, Path(checkpoint), read_meta(checkpoint))
        if choice is None:
            show_error("pick the model to fine-tune first")
            return False
        try:
            scan = L.layer_volume(layer)
            labels = self.training_labels(
                mask, scan, self.only_changed.isChecked() if only_changed is None else only_changed
            )
            val_labels = self.validation_labels(mask, scan)
        except (ValueError, ImportError) as exc:
            show_error(str(exc))
            return False
        from ..core.autosave import user_model_dir

        # an untrained variant's child goes to the user's model folder (its parent is saved there too)
        parent = choice.checkpoint or (user_model_dir() / f"{choice.variant}{CHECKPOINT_SUFFIX}")
        out = finetune_destination(parent)
        self._out = out
        budget = budget_s if budget_s is not None else (self.budget.value() or None)  # None: the default
        device = self.models.device_name()
        self.plot.clear(f"fine-tune {choice.label}")
        set_progress(self.bar, 0)
        self.status.setText(f"fine-tuning {choice.label}...")
        self.rerun_button.setVisible(False)
        self.finetune_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._outcome = "done"
        self.last_error = ""
        clicks = self.clicks_on(layer) if clicks is None else clicks
        self.job = Job(
            lambda token: _finetune_job(
                choice, scan, labels, val_labels, out, budget, device, self.series.isChecked(), token, clicks
            ),
            on_progress=self._progress,
            on_done=self._done,
            on_error=self._error,
            on_cancelled=self._cancelled,
            on_finished=self._job_finished,
            name="fine-tune",
            nice=FINETUNE_NICE,
        )
        return True

    def cancel(self) -> None:
        """Stop fine-tuning; no checkpoint is written."""
        if self.busy:
            self.status.setText("cancelling...")
            self.job.cancel()

    def show_lineage(self, path: Path, chain: list[Any] | None = None) -> list[Any]:
        """List ``path``'s lineage (it, its parent, ...) for "use this version"; returns the versions.

        ``chain``: the lineage already found (by the worker); without it, it is found here."""
        if chain is None:
            chain = lineage_of(path)
        self.versions.clear()
        for v in chain:
            self.versions.addItem(v.label(), str(v.path))
        self.versions_row.setVisible(len(chain) > 1)
        return chain

    def use_version(self, index: int | None = None) -> Path | None:
        """Select the version picked in the lineage list (an earlier model of the series) for predicting."""
        i = self.versions.currentIndex() if index is None else index
        data = self.versions.itemData(i) if i >= 0 else None
        if not data:
            return None
        path = Path(data)
        self.models.select_checkpoint(path)
        self.status.setText(f"using {path.name}; press Re-run prediction to apply it")
        self.rerun_button.setVisible(True)
        return path

    def rerun(self) -> bool:
        """Predict again with the model that is selected now (the new checkpoint after a fine-tune)."""
        self.rerun_button.setVisible(False)
        return self.run.predict()

    # --- worker callbacks (main thread) -------------------------------------------------------------
    def _progress(self, p: Progress) -> None:
        set_progress(self.bar, int(p.fraction * 1000))
        self.status.setText(format_progress(p))
        m = p.metrics or {}
        loss = m.get("loss")
        dice = m.get("dice", m.get("val_dice"))
        if loss is not None or dice is not None:
            self.plot.add(m.get("step", p.done), loss, dice)

    def _done(self, done: Any) -> None:
        from napari.utils.notifications import show_info, show_warning

        result, chain = done
        self.last_result = result
        path = Path(result.path)
        before, after = result.dice_before, result.dice_after
        scores = f"Dice {before:.3f} -> {after:.3f} on the {result.dice_on}"
        set_progress(self.bar, 1000)
        self.show_lineage(path, chain)
        c = result.clicks or {}
        if c.get("given"):
            scores += f"; {c['used']} of {c['given']} click(s) used" + (
                f" ({c['reason']})" if c.get("reason") else ""
            )
        if getattr(result, "interactive", False) and self.on_interactive_child is not None:
            # An interactive child is chosen where clicks are made, never for an automatic prediction, and
            # only when it is better on held-back cases: one scan's fine-tune scored on that scan measured
            # better there and needed more clicks on the other held-back hippocampi (docs/clicks.md).
            chosen = result.better and result.dice_on == "validation"
            self.on_interactive_child(path, chosen)
            why = "not better" if not result.better else f"scored only on the {result.dice_on}"
            self.status.setText(
                f"saved {path.name} ({scores})"
                + (
                    "; the Clicks tab uses it"
                    if chosen
                    else f"; {why}: the parent stays chosen (pick it in the list to try it)"
                )
            )
            return
        if result.better:
            self.models.add_checkpoint(path, select=True)
            self.status.setText(f"saved {path.name} ({scores}); it is selected")
            self.rerun_button.setVisible(True)
            show_info(f"fine-tuned model saved as {path} ({scores}); press 'Re-run prediction' to apply it")
            return
        self.models.add_checkpoint(path, select=False)  # listed, never selected
        self.status.setText(
            f"not better than its parent, which stays selected: {result.not_better_reason}. Saved as {path.name}"
        )
        self.rerun_button.setVisible(False)
        show_warning(
            f"the fine-tuned model is not better than its parent ({scores}); the parent stays selected"
        )

    def _error(self, message: str, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._outcome = "error"
        self.last_error = message
        self.status.setText(f"failed: {message}")
        show_error(message)

    def _cancelled(self) -> None:
        self._outcome = "cancelled"
        set_progress(self.bar, 0)
        self.status.setText("cancelled; no checkpoint was written")

    def _job_finished(self) -> None:
        self.finetune_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.finished.emit(self._outcome)
