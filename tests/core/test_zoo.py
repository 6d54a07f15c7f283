"""The shipped model zoo: every ``resources/models/*.segmodel`` loads, carries a complete model card
(also as Markdown beside it), and still segments one of its own held-back validation cases about as
well as its card says. A checkpoint broken by a change to a model, the loader or the inference
engine fails here. Also: float16 storage (``checkpoint.save(..., dtype=torch.float16)``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from seg_studio.core import checkpoint, io, metrics
from seg_studio.core.biometry import measure_head
from seg_studio.core.datasets import hc18, sunnybrook
from seg_studio.core.inference import PredictOptions, predict
from seg_studio.core.models import create_model
from seg_studio.core.samples import make_sample_2d, make_sample_3d
from seg_studio.core.training import parse_label_map
from seg_studio.core.training.data import apply_label_map

REPO = Path(__file__).resolve().parents[2]
MODELS = sorted((REPO / "resources" / "models").glob("*.segmodel"))
REQUIRED = ("name", "title", "data", "terms", "citation", "classes", "spacing", "validation", "training")
#: How far below its card's per-case Dice a shipped model may score here (bf16 vs fp32 on other CPUs).
TOLERANCE = 0.03
#: ... and how many mm further from the sonographer's head circumference than its card says.
HC_TOLERANCE_MM = 1.0


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path: Path) -> None:
    model = create_model("unet", 2, 1, 3, features=8, depth=2).eval()
    meta = checkpoint.new_meta(model, "unet", {"features": 8, "depth": 2}, patch_size=(64, 64))
    full = checkpoint.save(tmp_path / "full.segmodel", model, meta)
    half = checkpoint.save(tmp_path / "half.segmodel", model, meta, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = checkpoint.load(half)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert b.dtype == a.dtype, k  # cast back (num_batches_tracked stays an integer)
        if a.is_floating_point():
            assert torch.equal(b, a.half().float()), k
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, loaded(x).logits, atol=2e-2)


def test_the_zoo_ships_the_promised_models() -> None:
    names = {p.stem for p in MODELS}
    # the app's first-run models: the panel's default for the 2D and the 3D sample
    assert {"demo2d_unet", "demo3d_unet"} <= names, (
        f"a first-run model is missing from resources/models: {names}"
    )
    for p in MODELS:
        assert p.stat().st_size < 6e6, (
            f"{p.name} is {p.stat().st_size / 1e6:.1f} MB; keep bundled models small"
        )


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_card_is_complete_and_matches_the_checkpoint(path: Path) -> None:
    meta = checkpoint.read_meta(path)
    card = meta.card
    missing = [k for k in REQUIRED if not card.get(k)]
    assert not missing, f"{path.name}: card lacks {missing}"
    assert card["name"] == path.stem
    assert [(c["value"], c["name"]) for c in card["classes"]] == [(c.value, c.name) for c in meta.classes]
    v = card["validation"]
    assert 0.0 < v["mean_dice"] <= 1.0 and v["cases"] and set(v["dice"]) == {c.name for c in meta.classes[1:]}
    assert card["training"]["command"].startswith("seg-studio train resources/recipes/")
    recipe = REPO / card["training"]["recipe"]
    assert recipe.exists(), f"{path.name}: its recipe {recipe} is not in the repository"
    md = path.with_suffix(".md")
    assert md.exists(), f"{path.name}: no Markdown model card beside it"
    text = md.read_text()
    assert str(v["mean_dice"]) in text and card["training"]["command"] in text and card["terms"] in text


def _validation_case(card: dict, data_dir: Path) -> tuple[str, object, np.ndarray]:
    """The first held-back case named in the card: regenerated (samples) or read from ../shared/data."""
    name = card["validation"]["cases"][0]
    ev = card["eval_data"]
    if ev["kind"] == "sample":
        m = re.fullmatch(r"sample([23])d_(\d+)", name)
        assert m, name
        make = make_sample_2d if m.group(1) == "2" else make_sample_3d
        image, labels = make(int(m.group(2)))
        return name, image, np.asarray(labels.array)
    if ev["kind"] == "hc18":  # the PNG with the CSV's pixel size, the head mask from the outline
        image, labels = hc18.read_case(data_dir / ev["folder"], name)
        return name, image, np.asarray(labels.array).astype(np.int64)
    if ev["kind"] == "sunnybrook":  # the DICOM image its contour file names, the contour filled
        items = {i.name: i for i in sunnybrook.contoured_images(data_dir / ev["folder"])}
        image, labels = sunnybrook.read_item(items[name])
        return name, image, np.asarray(labels.array).astype(np.int64)
    folders = {
        k: [ev[k]] if isinstance(ev[k], str) else ev[k] for k in ("images", "labels")
    }  # one or several
    images = [p for f in folders["images"] for p in (data_dir / f).iterdir() if p.name.split(".")[0] == name]
    labels = [p for f in folders["labels"] for p in (data_dir / f).iterdir() if p.name.split(".")[0] == name]
    assert len(images) == 1 and len(labels) == 1, name
    truth = apply_label_map(io.read(labels[0]).array, parse_label_map(card.get("label_map")))
    return name, io.read(images[0]), truth


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_shipped_model_still_segments_a_validation_case(path: Path, data_dir: Path) -> None:
    model, meta = checkpoint.load(path)
    card = meta.card
    name, image, truth = _validation_case(card, data_dir)
    if meta.interactive is not None:  # a click model: its card's Dice is after N simulated clicks
        mean = _clicked_dice(model, meta, image, truth, card["validation"]["clicks"])
        expected = card["validation"]["per_case_mean_dice"][name]
        assert mean >= expected - TOLERANCE, (
            f"{path.name} on {name}: Dice {mean:.4f} after clicks, card {expected}"
        )
        return
    pred = predict(image, model, meta, PredictOptions(device="cpu"))
    assert pred.labels.spatial_shape == image.spatial_shape
    classes = [c.value for c in meta.classes if c.value != 0]
    d = metrics.dice(np.asarray(pred.labels.array).astype(np.int64), truth, classes)
    mean = metrics.mean_ignoring_nan(d.values())
    expected = card["validation"]["per_case_mean_dice"][name]
    assert not math.isnan(mean)
    assert mean >= expected - TOLERANCE, f"{path.name} on {name}: Dice {mean:.4f}, its card says {expected}"
    if "per_case_hc_abs_error_mm" in card["validation"]:  # the clinical figure: head circumference in mm
        reference = hc18.read_reference(data_dir / card["eval_data"]["folder"])[name].hc_mm
        error = abs(measure_head(pred.labels).hc_mm - reference)
        card_error = card["validation"]["per_case_hc_abs_error_mm"][name]
        assert error <= card_error + HC_TOLERANCE_MM, (
            f"{path.name} on {name}: HC off by {error:.2f} mm, card {card_error}"
        )


def _clicked_dice(model, meta, image, truth: np.ndarray, n: int) -> float:  # noqa: ANN001
    """Mean Dice over the structures of ``truth`` after ``n`` clicks of the simulated user, from nothing
    (``core.interactive.next_click``, as benchmarks/clicks.py clicks)."""
    from seg_studio.core.interactive import Click, next_click, refine_step, start_session

    session = start_session(image, model, meta)
    scores = []
    for value in (int(v) for v in np.unique(truth) if v > 0):
        labels, clicks = np.zeros(truth.shape, np.uint16), []
        for _ in range(n):
            nxt = next_click(labels == value, truth == value, image.spacing_zyx)
            if nxt is None:
                break
            clicks.append(Click(value, *nxt))
            labels = refine_step(session, clicks, labels).labels
        scores.append(metrics.dice(labels.astype(np.int64), truth, [value])[value])
    return float(np.mean(scores))


@pytest.mark.parametrize(
    "path",
    [p for p in MODELS if checkpoint.read_meta(p).card.get("eval_data", {}).get("kind") == "sunnybrook"],
    ids=lambda p: p.stem,
)
def test_cardiac_model_measures_the_held_back_patient_as_its_card_says(path: Path, data_dir: Path) -> None:
    """All of the held-back patient's images (18 small 2D slices): pooled Dice and volume per phase."""
    card = checkpoint.read_meta(path).card
    v = card["validation"]
    r = sunnybrook.evaluate_blood_pool(path, data_dir / card["eval_data"]["folder"], v["patient"])
    assert r["pooled_dice"] >= v["blood_pool_pooled_dice"] - TOLERANCE
    for phase, vol in v["blood_pool_volume_ml"].items():
        got = r["phases"][int(phase.split()[1])]
        assert got["volume_ml"] == pytest.approx(vol["contours"], abs=0.1)  # the truth is read the same way
        assert got["pred_volume_ml"] == pytest.approx(vol["model"], rel=0.05)
