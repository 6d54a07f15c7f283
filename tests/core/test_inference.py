"""Sliding-window inference: blending against a plain reference, geometry, TTA, cancel, OOM, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seg_studio.core import checkpoint as ckpt
from seg_studio.core.errors import Cancelled, InferenceError
from seg_studio.core.inference import PredictOptions, iter_predict, pick_device, predict
from seg_studio.core.inference import windows as W
from seg_studio.core.models import SegModel, SegOutput, create_model
from seg_studio.core.progress import CancelToken, Progress
from seg_studio.core.volume import Volume


class Threshold(SegModel):
    """A real two-class model with known output: logits [0, scale * (x - level)] via a 1x1 conv.

    Its labels mean something (x > level), so geometry and resampling can be checked exactly.
    """

    def __init__(self, dims: int, level: float = 0.5, scale: float = 10.0) -> None:
        super().__init__(dims, 1, 2, size_multiple=1)
        self.head = (nn.Conv2d if dims == 2 else nn.Conv3d)(1, 2, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[1] = scale
            self.head.bias.copy_(torch.tensor([0.0, -scale * level]))

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        return SegOutput(self.head(x))


def _meta(model: SegModel, patch, spacing=None, norm=None, classes=None) -> ckpt.ModelMeta:
    return ckpt.new_meta(
        model,
        "unet",
        {},
        patch_size=patch,
        spacing=spacing,
        normalization=norm or {"mode": "none"},
        classes=classes,
    )


def _tiny_unet(dims: int, out: int = 3) -> SegModel:
    torch.manual_seed(0)
    return create_model(
        "unet", spatial_dims=dims, in_channels=1, out_channels=out, features=4, depth=2
    ).eval()


def _reference_blend(model: SegModel, img: np.ndarray, roi, overlap: float) -> np.ndarray:
    """Plain sliding window written independently: full weight buffer, one window at a time."""
    sigma = [r * 0.125 for r in roi]
    g = np.ones(roi, dtype=np.float64)
    for ax, r in enumerate(roi):
        x = np.arange(r) - (r - 1) / 2.0
        prof = np.exp(-(x**2) / (2 * sigma[ax] ** 2))
        g = g * prof.reshape([-1 if i == ax else 1 for i in range(len(roi))])
    g = np.maximum(g, max(g.min(), 1e-3))
    out = np.zeros((model.out_channels, *img.shape))
    wsum = np.zeros(img.shape)
    starts = []
    for size, r in zip(img.shape, roi, strict=True):
        step = max(1, int(r * (1 - overlap)))
        s = list(range(0, max(1, size - r + 1), step))
        if s[-1] + r < size:
            s.append(size - r)
        starts.append(s)
    import itertools

    for st in itertools.product(*starts):
        sl = tuple(slice(a, a + r) for a, r in zip(st, roi, strict=True))
        with torch.no_grad():
            logits = model(torch.from_numpy(img[sl].copy())[None, None]).logits[0].double().numpy()
        out[(slice(None), *sl)] += logits * g
        wsum[sl] += g
    return out / wsum


@pytest.mark.parametrize("dims", [2, 3])
def test_blending_matches_plain_reference(dims: int) -> None:
    model = _tiny_unet(dims)
    shape = (10, 24, 21) if dims == 3 else (40, 27)
    roi = (8, 16, 16) if dims == 3 else (24, 16)
    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    ref = _reference_blend(model, img, roi, 0.5)
    refp = np.exp(ref - ref.max(0)) / np.exp(ref - ref.max(0)).sum(0)
    # fp32: the blending is checked to 2e-5; "auto" would run bf16 on a CPU with native bf16
    opts = PredictOptions(probabilities=True, batch_size=3, precision="fp32")
    pred = predict(Volume.from_array(img), model, _meta(model, roi), opts)
    assert pred.probabilities is not None
    np.testing.assert_allclose(pred.probabilities.array, refp, atol=2e-5)
    agree = np.mean(pred.labels.array == refp.argmax(0))
    assert agree > 0.999, agree


def test_window_placement() -> None:
    assert W.axis_starts(10, 10, 0.5) == [0]
    assert W.axis_starts(160, 96, 0.5) == [0, 48, 64]
    assert W.axis_starts(100, 40, 0.25) == [0, 30, 60]
    starts = W.window_starts((20, 30), (10, 10), 0.0)
    assert len(starts) == 6 and starts[-1] == (10, 20)
    g = W.importance_map((16, 9))
    assert g.shape == (16, 9) and g.min() >= 1e-3 and np.isclose(g.max(), g[7:9, 4].max())


def test_labels_volume_geometry_names_and_dtype() -> None:
    model = Threshold(3)
    img = np.zeros((12, 20, 24), np.float32)
    img[3:9, 5:15, 6:18] = 1.0
    vol = Volume.from_array(img, spacing=(0.8, 0.7, 2.0), origin=(5.0, -3.0, 10.0))
    meta = _meta(model, (8, 8, 8), classes=["background", "organ"])
    pred = predict(vol, model, meta)
    lab = pred.labels
    assert lab.same_geometry(vol) and lab.meta["kind"] == "labels" and lab.array.dtype == np.uint8
    assert lab.labels[1].name == "organ" and lab.labels[0].name == "background"
    np.testing.assert_array_equal(lab.array, (img > 0.5).astype(np.uint8))


def test_resampling_to_model_spacing_and_exactly_back() -> None:
    model = Threshold(3)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in (20, 64, 60)), indexing="ij")
    spacing = (0.5, 0.5, 2.0)  # x, y, z
    ball = ((zz - 10) * 2.0) ** 2 + ((yy - 30) * 0.5) ** 2 + ((xx - 28) * 0.5) ** 2 <= 9.0**2
    vol = Volume.from_array(ball.astype(np.float32), spacing=spacing, origin=(1.0, 2.0, 3.0))
    meta = _meta(model, (16, 16, 16), spacing=(1.0, 1.0, 1.0))
    pred = predict(vol, model, meta, PredictOptions(probabilities=True))
    assert pred.labels.same_geometry(vol) and pred.labels.array.shape == vol.array.shape
    assert pred.probabilities is not None and pred.probabilities.same_geometry(vol)
    inter = np.logical_and(pred.labels.array == 1, ball).sum()
    dice = 2 * inter / (ball.sum() + (pred.labels.array == 1).sum())
    assert dice > 0.9, dice  # the ball stays where it is after the round trip through 1 mm


def test_2d_model_on_3d_scan_runs_slice_by_slice() -> None:
    model = _tiny_unet(2)
    img = np.random.default_rng(1).normal(size=(5, 24, 40)).astype(np.float32)
    meta = _meta(model, (24, 40))  # one window per slice: must equal the model on each slice
    pred = predict(Volume.from_array(img), model, meta, PredictOptions(batch_size=2))
    with torch.no_grad():
        expect = model(torch.from_numpy(img)[:, None]).logits.argmax(1).numpy()
    np.testing.assert_array_equal(pred.labels.array, expect)


def test_normalisation_from_metadata_is_applied() -> None:
    model = Threshold(2, level=0.5)
    img = np.full((32, 32), -160.0, np.float32)
    img[8:24, 8:24] = 120.0  # inside the window, above its middle (40 HU)
    meta = _meta(model, (32, 32), norm={"mode": "ct_window", "low": -160, "high": 240})
    pred = predict(Volume.from_array(img), model, meta)
    assert pred.labels.array.sum() == 16 * 16


def test_tta_probabilities_and_uncertainty() -> None:
    img = np.random.default_rng(2).normal(size=(24, 20)).astype(np.float32)
    sym = Threshold(2)  # a 1x1 conv commutes with flips: no spread at all
    pred = predict(Volume.from_array(img), sym, _meta(sym, (16, 16)), PredictOptions(uncertainty=True))
    assert pred.uncertainty is not None and float(pred.uncertainty.array.max()) < 1e-5
    model = _tiny_unet(2)
    pred = predict(
        Volume.from_array(img),
        model,
        _meta(model, (16, 16)),
        PredictOptions(tta=True, uncertainty=True, probabilities=True),
    )
    p = pred.probabilities.array
    assert p.shape == (3, 24, 20) and np.allclose(p.sum(0), 1, atol=1e-5)
    u = pred.uncertainty.array
    assert u.shape == (24, 20) and u.min() >= 0 and u.max() > 1e-4
    np.testing.assert_array_equal(pred.labels.array, p.argmax(0))


def _probs(model, meta, img, **kw) -> tuple[np.ndarray, list[str]]:
    pred = predict(Volume.from_array(img), model, meta, PredictOptions(probabilities=True, **kw))
    return pred.probabilities.array, pred.notes


def test_tta_flips_only_along_the_axes_the_model_was_trained_to_mirror() -> None:
    """A model trained with flip="auto" on lateralised classes (hippocampus head/tail, left/right
    lung) records no flip axis; flip TTA over every axis swapped its classes (Dice 0.876 -> 0.09)."""
    img = np.random.default_rng(3).normal(size=(24, 20)).astype(np.float32)
    model = _tiny_unet(2)
    meta = _meta(model, (16, 16))
    plain, _ = _probs(model, meta, img)
    all_axes, _ = _probs(model, meta, img, tta=True)  # nothing recorded: every axis
    assert not np.allclose(all_axes, plain, atol=1e-4)

    meta.provenance = {"settings": {"flip_axes": []}}
    none, notes = _probs(model, meta, img, tta=True)
    np.testing.assert_allclose(none, plain, atol=1e-5)  # TTA averages softmaxes, not logits
    assert any("no test-time flips" in n for n in notes)

    meta.provenance = {"settings": {"flip_axes": [1]}}
    one, notes = _probs(model, meta, img, tta=True)
    # the mean of the plain and the x-mirrored passes, by hand
    mirrored = predict(Volume.from_array(np.ascontiguousarray(img[:, ::-1])), model, meta,
                       PredictOptions(probabilities=True)).probabilities.array[:, :, ::-1]  # fmt: skip
    np.testing.assert_allclose(one, (plain + mirrored) / 2, atol=1e-5)
    assert any("only along array axes [1]" in n for n in notes)


def test_single_logit_model_thresholds() -> None:
    torch.manual_seed(0)
    model = create_model("unet", spatial_dims=2, in_channels=1, out_channels=1, features=4, depth=2).eval()
    img = np.random.default_rng(3).normal(size=(32, 32)).astype(np.float32)
    meta = _meta(model, (32, 32))
    with torch.no_grad():
        logit = model(torch.from_numpy(img)[None, None]).logits[0, 0].numpy()
    for t in (0.3, 0.5, 0.7):  # fp32: compared to the plain forward at 1e-5 (auto is bf16 on some CPUs)
        opts = PredictOptions(threshold=t, probabilities=True, precision="fp32")
        pred = predict(Volume.from_array(img), model, meta, opts)
        np.testing.assert_array_equal(pred.labels.array, (1 / (1 + np.exp(-logit)) > t).astype(np.uint8))
        np.testing.assert_allclose(pred.probabilities.array, 1 / (1 + np.exp(-logit)), atol=1e-5)


def test_attention_maps_are_stitched_in_image_space() -> None:
    torch.manual_seed(0)
    model = create_model(
        "attention_unet", spatial_dims=3, in_channels=1, out_channels=2, features=4, depth=2
    ).eval()
    img = np.random.default_rng(4).normal(size=(8, 24, 20)).astype(np.float32)
    vol = Volume.from_array(img, spacing=(1.0, 1.0, 3.0))
    pred = predict(vol, model, _meta(model, (8, 16, 16)), PredictOptions(attention=True))
    assert len(pred.attention) == 2  # one per gate (depth 2)
    for a in pred.attention:
        assert a.same_geometry(vol) and a.meta["kind"] == "attention"
        assert 0.0 <= a.array.min() and a.array.max() <= 1.0 and a.array.std() > 0
    plain = predict(vol, _tiny_unet(3), _meta(_tiny_unet(3), (8, 16, 16)), PredictOptions(attention=True))
    assert plain.attention == [] and "no attention gates" in plain.notes[0]


def test_progress_and_cancel_between_batches() -> None:
    model = _tiny_unet(2)
    vol = Volume.from_array(np.zeros((32, 64), np.float32))
    meta = _meta(model, (16, 16))
    gen = iter_predict(vol, model, meta, PredictOptions(batch_size=2, overlap=0.0))
    seen = [p for p in gen if isinstance(p, Progress) and p.stage == "predict"]
    assert [p.done for p in seen] == list(range(2, 9, 2)) and seen[-1].total == 8
    token = CancelToken()
    gen = iter_predict(vol, model, meta, PredictOptions(batch_size=2, overlap=0.0), cancel=token)
    done = []
    with pytest.raises(Cancelled):
        for p in gen:
            if p.stage == "predict":
                done.append(p.done)
                if p.done >= 4:
                    token.cancel()
    assert done == [2, 4]


class OutOfMemoryAboveOne(SegModel):
    """A real model that runs out of memory (like a small GPU) whenever more than one window comes in."""

    def __init__(self, inner: SegModel) -> None:
        super().__init__(inner.spatial_dims, inner.in_channels, inner.out_channels, inner.size_multiple)
        self.inner = inner
        self.calls: list[int] = []

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        self.calls.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.forward_padded(x, want)


def test_out_of_memory_halves_the_batch() -> None:
    inner = _tiny_unet(2)
    vol = Volume.from_array(np.random.default_rng(5).normal(size=(32, 24)).astype(np.float32))
    meta = _meta(inner, (16, 16))
    # torch: the out-of-memory path is the GPU's (a compiled CPU graph would not run this forward)
    expect = predict(vol, inner, meta, PredictOptions(fuse_bn=False, backend="torch")).labels.array
    flaky = OutOfMemoryAboveOne(inner)
    pred = predict(vol, flaky, meta, PredictOptions(batch_size=4, fuse_bn=False, backend="torch"))
    np.testing.assert_array_equal(pred.labels.array, expect)
    assert any("halved to 1" in n for n in pred.notes)


def test_input_checks_and_devices() -> None:
    model = _tiny_unet(3)
    with pytest.raises(InferenceError, match="3D model"):
        predict(Volume.from_array(np.zeros((16, 16), np.float32)), model, _meta(model, (8, 8, 8)))
    rgb = Volume.from_array(np.zeros((3, 16, 16), np.float32), channels=3)
    with pytest.raises(InferenceError, match="channel"):
        predict(rgb, _tiny_unet(2), _meta(_tiny_unet(2), (8, 8)))
    assert pick_device("cpu").type == "cpu"
    auto = pick_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        assert auto.type in ("mps", "cpu")
        with pytest.raises(InferenceError, match="no CUDA"):
            pick_device("cuda")


def test_callers_model_is_left_alone() -> None:
    model = _tiny_unet(2)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predict(Volume.from_array(np.ones((20, 20), np.float32)), model, _meta(model, (16, 16)))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bf16_labels_agree_with_fp32_on_the_bundled_model() -> None:
    """``precision="auto"`` runs bf16 on CPUs with native bf16 (and on GPUs): its labels must agree
    with fp32's (Dice >= 0.99 per class, the speed issue's bar). Forced here, so the check runs on any
    CPU (emulated bf16 is slow, hence the small bundled 2D model and its 128^2 sample)."""
    from pathlib import Path

    from seg_studio.core.metrics import dice
    from seg_studio.core.samples import make_sample_2d

    path = Path(__file__).resolve().parents[2] / "resources" / "models" / "demo2d_unet.segmodel"
    model, meta = ckpt.load(path)
    img = make_sample_2d()[0]
    runs = {
        prec: predict(img, model, meta, PredictOptions(device="cpu", precision=prec, probabilities=True))
        for prec in ("fp32", "bf16")
    }
    fp32, bf16 = (np.asarray(runs[p].labels.array) for p in ("fp32", "bf16"))
    # bf16 really ran: its probabilities carry bf16's rounding
    assert not np.allclose(runs["bf16"].probabilities.array, runs["fp32"].probabilities.array, atol=1e-4)
    classes = [c.value for c in meta.classes[1:]]
    assert set(np.unique(fp32)) == {0, *classes}  # every class present, so the Dice means something
    scores = dice(bf16, fp32, classes=classes)
    assert min(scores.values()) >= 0.99, scores
