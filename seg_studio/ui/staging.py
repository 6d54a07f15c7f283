"""Work on the main thread in pieces of one event-loop turn each, so that the window never stalls.

napari does all of a new layer's GUI work in the turn that inserts it: its vispy visual (45-75 ms of
main-thread CPU for an Image or Labels layer, more when the machine is loaded) and its layer
controls (30-55 ms), then the window repaints. ``insert_staged`` inserts the layer model alone and
queues the visual and the controls as the next two turns of a ``TurnQueue`` (a map's controls wait
until the user first selects it).

It uses two private pieces of napari (checked by
``tests/ui/test_panel.py::test_a_new_mask_lands_over_several_event_loop_turns`` and
``test_a_map_shows_over_several_event_loop_turns``, which fail if napari renames them): the
``QtViewer._on_add_layer_change`` / ``_add_layer`` pair that makes the visual and the layer controls
container's ``_add`` / ``_populate``. Both are held back with napari's own ``EventEmitter.block``
(nothing of napari is replaced); where they are missing (another napari, no window) the layer is
inserted the ordinary way, in one turn.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


#: Milliseconds between two steps: with a zero timer the next step came before the repaint of the
#: last one (Qt sorts the window's update request after other posted events), so one turn held a
#: step and a paint; a timer lets the paint and the user's input come between two steps.
STEP_GAP_MS = 10


class TurnQueue:
    """Steps run one per event-loop turn (``STEP_GAP_MS`` apart), in the order they were added.

    ``kind`` tags a step ("landing": part of a result; "map": a map being shown) so that a caller can
    ask what is left of one kind; ``on_drained(kind)`` runs when the last step of a kind is done.
    """

    def __init__(self, on_drained: Callable[[str], None] | None = None) -> None:
        self._steps: list[tuple[Callable[[], Any], str]] = []
        self._scheduled = False
        self._on_drained = on_drained

    def add(self, step: Callable[[], Any], kind: str = "landing") -> None:
        self._steps.append((step, kind))
        self._schedule()

    def pending(self, kind: str | None = None) -> int:
        """How many steps (of ``kind``, or all) are still to run."""
        return sum(1 for _, k in self._steps if kind is None or k == kind)

    def run_all(self) -> None:
        """Run every step left now, in order (e.g. before the user paints into a mask still landing)."""
        while self._steps:
            self._run_one()

    def _schedule(self) -> None:
        if self._steps and not self._scheduled:
            from qtpy.QtCore import QTimer

            self._scheduled = True
            QTimer.singleShot(STEP_GAP_MS, self._next)

    def _next(self) -> None:
        self._scheduled = False
        if self._steps:
            self._run_one()
        self._schedule()

    def _run_one(self) -> None:
        step, kind = self._steps.pop(0)
        try:
            step()
        except Exception:  # noqa: BLE001 - a step is one piece (a visual, an overlay); the rest must go on
            log.warning("a deferred step on the main thread failed", exc_info=True)
        if self._on_drained is not None and not any(k == kind for _, k in self._steps):
            self._on_drained(kind)


def _unproxied(obj: Any) -> Any:
    """The object behind napari's ``PublicOnlyProxy`` (what a dock widget is given as its viewer), which
    warns on, and will refuse, the private attributes used here; anything else as it is."""
    return getattr(obj, "__wrapped__", obj)


def _pieces(viewer: Any) -> tuple[Any, Any] | None:
    """napari's QtViewer and layer controls container, if they have what ``insert_staged`` defers."""
    qt_viewer = getattr(getattr(_unproxied(viewer), "window", None), "_qt_viewer", None)
    controls = getattr(qt_viewer, "controls", None)
    needed = [(qt_viewer, "_on_add_layer_change"), (qt_viewer, "_add_layer"), (controls, "_add")]
    needed += [(controls, "_populate"), (controls, "widgets")]
    if qt_viewer is None or controls is None or not all(hasattr(o, n) for o, n in needed):
        return None
    return qt_viewer, controls


def insert_unselected(viewer: Any, layer: Any) -> None:
    """Append ``layer`` without selecting it (a selection rebuilds the shown layer controls)."""
    layers = _unproxied(viewer).layers
    keep = getattr(layers, "_activate_on_insert", None)
    if keep is not None:
        layers._activate_on_insert = False
    try:
        layers.append(layer)
    finally:
        if keep is not None:
            layers._activate_on_insert = keep


#: layer controls container -> the insertions whose controls are still to come, oldest first; the
#: oldest stands in for napari's held-back ``_populate`` (one call per selection change, not one each)
_WAITING: weakref.WeakKeyDictionary[Any, list[object]] = weakref.WeakKeyDictionary()


def _show_controls(box: Any, layers: Any) -> None:
    """What napari's ``_populate`` does on a selection change, unless the active layer's controls are
    still to come (napari's own call is held back meanwhile)."""
    active = layers.selection.active
    if active is None or active in box.widgets:
        box._populate()


def insert_staged(
    viewer: Any, layer: Any, turns: TurnQueue, kind: str = "landing", controls_when_selected: bool = False
) -> None:
    """Insert ``layer`` unselected now; its vispy visual comes in the next turn of ``turns`` and its
    layer controls in the turn after (or, with ``controls_when_selected``, when the user first selects
    it: a map that is only looked at never needs them). Removing the layer first makes them at once,
    so napari's own removal finds them."""
    pieces = _pieces(viewer)
    if pieces is None:
        insert_unselected(viewer, layer)
        return
    qt_viewer, controls = pieces
    layers = _unproxied(viewer).layers
    layers.events.inserted.block(qt_viewer._on_add_layer_change)
    layers.events.inserted.block(controls._add)
    try:
        insert_unselected(viewer, layer)
    finally:
        layers.events.inserted.unblock(qt_viewer._on_add_layer_change)
        layers.events.inserted.unblock(controls._add)
    # until its controls exist, napari must not show the controls of a selection that holds it:
    # ``on_selection`` does what napari would have done, where it can
    layers.selection.events.changed.block(controls._populate)
    token = object()
    _WAITING.setdefault(controls, []).append(token)
    # the steps must not keep a closed window alive
    qt_viewer, controls = weakref.ref(qt_viewer), weakref.ref(controls)
    left = ["visual", "controls"]

    def visual() -> None:
        if "visual" in left:
            left.remove("visual")
            qv = qt_viewer()
            if qv is not None and layer in layers:
                qv._add_layer(layer)

    def layer_controls() -> None:
        visual()
        if "controls" not in left:
            return
        left.remove("controls")
        layers.events.removing.disconnect(before_removal)
        layers.selection.events.changed.disconnect(on_selection)
        box = controls()
        if box is None:
            return
        waiting = _WAITING.get(box, [])
        if token in waiting:
            waiting.remove(token)
        try:
            if layer in layers:
                from napari.utils.events import Event

                box._add(Event("inserted", value=layer))
        finally:
            layers.selection.events.changed.unblock(box._populate)
            _show_controls(box, layers)

    def before_removal(event: Any) -> None:
        if 0 <= event.index < len(layers) and layers[event.index] is layer:
            layer_controls()

    def on_selection(event: Any = None) -> None:
        box = controls()
        if box is None:
            return
        if controls_when_selected and layer in layers.selection:
            layer_controls()
        elif (_WAITING.get(box) or [None])[0] is token:
            _show_controls(box, layers)

    layers.events.removing.connect(before_removal)
    layers.selection.events.changed.connect(on_selection)
    turns.add(visual, kind)
    if not controls_when_selected:
        turns.add(layer_controls, kind)


def set_progress(bar: Any, value: int) -> None:
    """``bar.setValue(value)`` without its synchronous repaint: QProgressBar repaints at once when its
    text changes, and with napari's GL canvas in the window each repaint composes the whole window
    (40-100 ms of main thread under Xvfb, measured in a fine-tune's first turn). Disabling updates
    around it turns that into an ordinary update, painted with the rest in the next paint."""
    if bar.value() == value:
        return
    bar.setUpdatesEnabled(False)
    try:
        bar.setValue(value)
    finally:
        bar.setUpdatesEnabled(True)
