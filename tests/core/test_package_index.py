"""``resources/recipes/package.py --index`` writes a row for every shipped checkpoint, interactive ones too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "resources" / "models"


@pytest.fixture(scope="module")
def package():  # noqa: ANN201
    sys.path.insert(0, str(REPO / "resources" / "recipes"))
    try:
        import package as mod
    finally:
        sys.path.remove(str(REPO / "resources" / "recipes"))
    return mod


def test_the_index_has_a_row_for_every_shipped_card_interactive_ones_too(package, tmp_path: Path) -> None:  # noqa: ANN001
    from seg_studio.core import checkpoint

    shipped = {f.name: checkpoint.read_meta(f) for f in sorted(MODELS.glob("*.segmodel"))}
    interactive = [n for n, m in shipped.items() if m.interactive is not None]
    assert interactive, "the interactive models ship"
    text = package.write_index(tmp_path / "zoo.md").read_text()
    for name, meta in shipped.items():
        if meta.card:
            assert f"[`{name}`]" in text, name
    for name in interactive:
        card = shipped[name].card
        row = package.index_row(MODELS / name)
        assert row is not None and "interactive (needs clicks)" in row
        assert (
            f"**{card['validation']['mean_dice']}** after {card['validation']['clicks']} simulated clicks"
            in row
        )
        model, _ = checkpoint.load(MODELS / name)
        assert f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M" in row
