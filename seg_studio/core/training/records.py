"""What a trained checkpoint says about the data it learnt from: the one place fit and fine-tune write it.

Both ``fit`` and ``finetune`` call ``training_data_record`` for the provenance's ``"data"`` entry just
before they save, with every preloaded training case (normalised image, class targets, spacing), so a
new record about the training data (e.g. the model's domain: dims, spacing and field-of-view ranges,
intensity statistics after normalisation) is added here once and lands in every checkpoint training
writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
