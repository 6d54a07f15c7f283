"""The three named steps of a prediction, each on its own: prepare, the window loop, finish."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from seg_studio.core import checkpoint as ckpt
from seg_studio.core.errors import InferenceError
from seg_studio.core.inference import PredictOptions, blend, finish, predict, prepare, runner
from seg_studio.core.inference import windows as W
from seg_studio.core.models import SegModel, SegOutput, create_model
from seg_studio.core.transforms import resample_to_shape
from seg_studio.core.volume import Volume

INFERENCE = Path(__file__).resolve().parents[2] / "seg_studio" / "core" / "inference"


class Affine(SegModel):
    """Logits [0, a * x + b] through a real 1x1 convolution: commutes with flips, known output."""

    def __init__(self, dims: int, a: float = 4.0, b: float = -2.0) -> None:
        super().__init__(dims, 1, 2, size_multiple=1)
        self.head = (nn.Conv2d if dims == 2 else nn.Conv3d)(1, 2, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[1] = a
            self.head.bias.copy_(torch.tensor([0.0, b]))

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        return SegOutput(self.head(x))


def _meta(model: SegModel, patch, spacing=None, norm=None) -> ckpt.ModelMeta:
    return ckpt.new_meta(
        model, "unet", {}, patch_size=patch, spacing=spacing, normalization=norm or {"mode": "none"}
    )


def _runner(model: SegModel, tta: bool = False, slice_mode: bool = False) -> runner.WindowRunner:
    fwd = runner.TorchForward(model, torch.device("cpu"), "fp32", fuse_bn=True, channels_last=True)
    return runner.WindowRunner(fwd, model.spatial_dims, slice_mode, tta, frozenset())


# --- step 1: prepare ---------------------------------------------------------------------------------


def test_prepare_normalises_resamples_and_places_windows() -> None:
    model = Affine(3)
    img = np.random.default_rng(0).normal(5.0, 3.0, size=(10, 40, 30)).astype(np.float32)
    vol = Volume.from_array(img, spacing=(0.5, 0.5, 2.0))  # x, y, z
    meta = _meta(model, (16, 16, 16), spacing=(1.0, 1.0, 1.0), norm={"mode": "zscore"})
    slice_mode = prepare.check_pairing(vol, model, meta, 0.5)
    prep = prepare.prepare(vol, meta, 0.5, slice_mode)
    assert not slice_mode and prep.src_shape == (10, 40, 30)
    assert prep.work_shape == (20, 20, 15) and prep.image.shape == (1, 20, 20, 15)
    by_hand = resample_to_shape((img[None] - img.mean()) / img.std(), (20, 20, 15), "linear")
    np.testing.assert_allclose(prep.image, by_hand, atol=1e-4)  # z-scored, then to 1 mm
    assert prep.roi == (16, 16, 15)  # the patch, clipped to the scan
    assert prep.starts == W.window_starts((20, 20, 15), (16, 16, 15), 0.5)


def test_prepare_slice_mode_and_bad_pairings_fail_before_any_work() -> None:
    model2d = Affine(2)
    vol = Volume.from_array(np.zeros((4, 30, 20), np.float32))
    meta = _meta(model2d, (16, 16))
    assert prepare.check_pairing(vol, model2d, meta)
    prep = prepare.prepare(vol, meta, 0.0, True)
    assert prep.roi == (1, 16, 16) and len(prep.starts) == 4 * 2 * 2
    with pytest.raises(InferenceError, match="overlap"):
        prepare.check_pairing(vol, model2d, meta, 1.0)
    with pytest.raises(InferenceError, match="3D model"):
        model3d = Affine(3)
        prepare.check_pairing(
            Volume.from_array(np.zeros((8, 8), np.float32)), model3d, _meta(model3d, (8, 8, 8))
        )


# --- step 2: the window loop ---------------------------------------------------------------------------


def test_window_runner_weights_logits_and_averages_flips() -> None:
    model = Affine(2)
    x = np.random.default_rng(1).normal(size=(3, 1, 8, 6)).astype(np.float32)
    w = torch.from_numpy(W.importance_map((8, 6)).copy())
    logits = np.stack([np.zeros_like(x[:, 0]), 4.0 * x[:, 0] - 2.0], axis=1)
    scores, spread, gates = _runner(model)(x, w)
    np.testing.assert_allclose(scores, logits * w.numpy(), atol=1e-5)
    assert spread is None and gates == []
    # a 1x1 conv commutes with flips: the mean softmax over 4 flips is the softmax, with no spread
    scores, _, _ = _runner(model, tta=True)(x, w)
    p = torch.softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_allclose(scores, p * w.numpy(), atol=1e-5)
    assert runner.flip_sets(True, 2, None) == [(), (2,), (3,), (2, 3)]
    assert runner.flip_sets(True, 3, [1]) == [(), (3,)] and runner.flip_sets(False, 3, None) == [()]


def test_run_windows_blends_like_a_plain_loop() -> None:
    torch.manual_seed(0)
    model = create_model("unet", spatial_dims=2, in_channels=1, out_channels=3, features=4, depth=2).eval()
    img = np.random.default_rng(2).normal(size=(1, 37, 29)).astype(np.float32)
    roi = (16, 16)
    starts = W.window_starts((37, 29), roi, 0.5)
    prep = prepare.Prepared(img, (37, 29), (37, 29), roi, starts, False)
    acc = blend.empty_blend(3, (37, 29), spread=False)
    gen = blend.run_windows(prep, _runner(model), acc, batch=4)
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            out = stop.value
            break
    assert len(starts) == 12 and [p.done for p in progress] == [4, 8, 12]  # one per batch
    g = W.importance_map(roi)
    expect = np.zeros((3, 37, 29), np.float32)
    for st in starts:
        sl = tuple(slice(s, s + r) for s, r in zip(st, roi, strict=True))
        with torch.no_grad():
            expect[(slice(None), *sl)] += (
                model(torch.from_numpy(img[(slice(None), *sl)].copy())[None]).logits[0].numpy() * g
            )
    np.testing.assert_allclose(out.scores, expect, atol=1e-4)


def test_recover_halves_on_oom_then_gives_one_line() -> None:
    r = _runner(Affine(2))
    assert blend.recover(torch.OutOfMemoryError("CUDA out of memory"), r, 4)[0] == 2
    with pytest.raises(InferenceError, match="out of memory on the CPU with one window"):
        blend.recover(RuntimeError("out of memory"), r, 1)
    with pytest.raises(ValueError, match="not memory"):
        blend.recover(ValueError("not memory"), r, 4)
    assert blend.batch_size_for(8, torch.device("cpu"), (96, 96, 96)) == 2
    assert blend.batch_size_for(8, torch.device("cuda"), (96, 96, 96)) == 8


# --- step 3: finish ------------------------------------------------------------------------------------


def _weights(shape, roi=None) -> finish.WeightSum:
    roi = roi or shape
    prep = prepare.Prepared(np.empty(0), shape, shape, roi, W.window_starts(shape, roi, 0.5), False)
    return finish.WeightSum(prep, "gaussian")


def test_class_indices_argmax_threshold_and_probabilities_in_place() -> None:
    rng = np.random.default_rng(3)
    ws = _weights((6, 5))
    w = ws()
    logits = rng.normal(size=(3, 6, 5)).astype(np.float32)
    acc = logits * w
    idx = finish.class_indices(acc, tta=False, probabilities=True, threshold=0.5, weights=ws)
    np.testing.assert_array_equal(idx, logits.argmax(0))
    p = np.exp(logits) / np.exp(logits).sum(0)
    np.testing.assert_allclose(acc, p, atol=1e-5)  # acc became the probabilities
    one = rng.normal(size=(1, 6, 5)).astype(np.float32)
    acc1 = one * w
    idx1 = finish.class_indices(acc1, tta=False, probabilities=True, threshold=0.7, weights=ws)
    sig = 1 / (1 + np.exp(-one[0]))
    np.testing.assert_array_equal(idx1, (sig > 0.7).astype(np.uint8))
    np.testing.assert_allclose(acc1[0], sig, atol=1e-5)


def test_labels_map_values_and_go_back_to_the_source_grid() -> None:
    meta = _meta(Affine(2), (8, 8))
    meta.classes = [ckpt.ClassInfo(0, "bg", (0, 0, 0)), ckpt.ClassInfo(7, "organ", (255, 0, 0))]
    idx = np.array([[0, 1], [1, 0]], np.uint8)
    assert finish.indices_to_labels(idx, [0, 7]).tolist() == [[0, 7], [7, 0]]
    assert finish.indices_to_labels(idx, [0, 300]).dtype == np.uint16
    vol = Volume.from_array(np.zeros((4, 4), np.float32), spacing=(0.5, 0.5), origin=(3.0, 4.0))
    lab = finish.labels_volume(idx, vol, meta, None)
    assert lab.same_geometry(vol) and lab.array.shape == (4, 4) and lab.labels[7].name == "organ"
    np.testing.assert_array_equal(lab.array, np.kron(idx * 7, np.ones((2, 2), np.uint8)))
    probs = finish.probabilities_volume(np.full((2, 2, 2), 0.5, np.float32), vol, meta)
    assert probs.channels == 2 and probs.array.shape == (2, 4, 4) and np.allclose(probs.array, 0.5)


def test_finish_returns_the_asked_outputs_only() -> None:
    model = Affine(2)
    meta = _meta(model, (8, 8))
    shape = (12, 10)
    ws = _weights(shape, (8, 8))
    acc = blend.empty_blend(2, shape, spread=True)
    acc.scores[1] = ws() * 3.0
    acc.spread[:] = ws() * 0.25
    vol = Volume.from_array(np.zeros(shape, np.float32))
    opts = PredictOptions(probabilities=False, uncertainty=True)
    labels, probs, unc, att = finish.finish(ws.prep, acc, vol, meta, opts)
    assert labels.array.all() and probs is None and att == []
    np.testing.assert_allclose(unc.array, 0.25, atol=1e-6)  # averaged over the windows


def test_uint8_probabilities_are_the_float_ones_to_within_half_a_step() -> None:
    model = Affine(3)
    img = np.random.default_rng(4).normal(size=(12, 20, 16)).astype(np.float32)
    vol = Volume.from_array(img, spacing=(0.5, 0.5, 2.0))
    meta = _meta(model, (8, 16, 16), spacing=(1.0, 1.0, 1.0))  # resampled there and back
    f32 = predict(vol, model, meta, PredictOptions(probabilities=True, precision="fp32", backend="torch"))
    u8 = predict(
        vol,
        model,
        meta,
        PredictOptions(probabilities=True, precision="fp32", backend="torch", probability_dtype="uint8"),
    )
    p8 = u8.probabilities
    assert p8.array.dtype == np.uint8 and p8.channels == 2 and p8.meta["scale"] == 1 / 255
    assert p8.same_geometry(vol) and p8.array.shape == f32.probabilities.array.shape
    err = np.abs(p8.array * p8.meta["scale"] - f32.probabilities.array).max()
    assert err <= 0.5 / 255 + 1e-6, err
    np.testing.assert_array_equal(u8.labels.array, f32.labels.array)
    with pytest.raises(InferenceError, match="uint8"):
        predict(vol, model, meta, PredictOptions(probabilities=True, probability_dtype="float16"))
    # the domain check reads the uncertainty from them: the same to within one step
    from seg_studio.core.domain import uncertainty_of

    u8, u32 = uncertainty_of(p8), uncertainty_of(f32.probabilities)
    assert u8.min() >= 0 and np.abs(u8 - u32).max() <= 0.5 / 255 + 1e-6
