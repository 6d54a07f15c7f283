"""What a trained checkpoint says about the data it learnt from: the one place fit and fine-tune write it.

Both ``fit`` and ``finetune`` call ``training_data_record`` for the provenance's ``"data"`` entry just
before they save, with every preloaded training case (normalised image, class targets, spacing), so a
new record about the training data is added here once and lands in every checkpoint training writes.
The model's domain (``core/domain.py``) is written by ``fit.stamp_domain`` for a trained model (it also
runs the model on the validation cases) and by ``child_domain`` for a fine-tuned child.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..volume import Volume
from .data import Case


def training_data_record(
    cases: Sequence[Case], label_map: Mapping[int, int], source: str | None = None
) -> dict[str, Any]:
    """The provenance ``data`` entry: the cases by image hash (-> name), the label map, the source."""
    record: dict[str, Any] = {}
    if source is not None:
        record["source"] = source
    record["label_map"] = {str(k): v for k, v in label_map.items()}
    record["cases"] = {c.hash: c.name for c in cases}
    return record


def child_domain(
    parent_meta: Any, child_meta: Any, pairs: Sequence[tuple[Volume, np.ndarray]], fresh: bool
) -> Any:
    """A fine-tuned child's domain: its parent's, widened by the scans it was fine-tuned on; for a child
    trained fresh (its parent did not fit), the domain of those scans alone. None when the parent has
    none (an older file) and the child started from it: a domain of the few new scans would understate
    what the model knows."""
    from ..domain import domain_from_pairs, widen

    if fresh and pairs:
        return domain_from_pairs(
            list(pairs), child_meta, expected_input="scans like the ones it was fine-tuned on"
        )
    if parent_meta.domain is None:
        return None
    return widen(parent_meta.domain, [img for img, _ in pairs])
