"""Corrections are never overwritten: what the user changed is found from the data, and kept."""

from __future__ import annotations

import numpy as np
import pytest

from seg_studio.core.corrections import ModelBaseline, merge_prediction, user_voxels


def _pred(seed: int, shape=(6, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, size=shape).astype(np.uint8)


def test_painted_and_erased_voxels_are_kept_and_the_rest_is_predicted() -> None:
    p1, p2 = _pred(1), _pred(2)
    base = ModelBaseline.of_prediction(p1)
    mask = p1.copy()
    mask[2, 1:4, 1:4] = 2  # brush
    mask[3, 5, 5] = 0 if p1[3, 5, 5] else 1  # eraser (or a paint where the model said background)
    owned = mask != p1
    assert owned.sum() > 0
    np.testing.assert_array_equal(user_voxels(mask, base), owned)
    merged, base2, kept = merge_prediction(mask, p2, base)
    assert kept == owned.sum()
    np.testing.assert_array_equal(merged[owned], mask[owned])
    np.testing.assert_array_equal(merged[~owned], p2[~owned])
    assert (p2[owned] != mask[owned]).any()  # the new model would have overwritten a correction


def test_an_undone_edit_gives_the_voxel_back_to_the_model() -> None:
    p1, p2 = _pred(1), _pred(2)
    base = ModelBaseline.of_prediction(p1)
    mask = p1.copy()
    mask[0, 0, 0] = (p1[0, 0, 0] + 1) % 3
    mask[0, 0, 0] = p1[0, 0, 0]  # Ctrl+Z
    assert not user_voxels(mask, base).any()
    merged, _, kept = merge_prediction(mask, p2, base)
    assert kept == 0
    np.testing.assert_array_equal(merged, p2)


def test_a_correction_stays_locked_when_a_later_model_agrees_with_it() -> None:
    p1 = _pred(1)
    mask = p1.copy()
    mask[1, 2, 3] = (p1[1, 2, 3] + 1) % 3
    agreeing = p1.copy()
    agreeing[1, 2, 3] = mask[1, 2, 3]  # model 2 predicts what the user painted
    merged, base2, _ = merge_prediction(mask, agreeing, ModelBaseline.of_prediction(p1))
    assert user_voxels(merged, base2)[1, 2, 3]
    third = p1.copy()
    third[1, 2, 3] = (mask[1, 2, 3] + 1) % 3
    merged3, _, kept = merge_prediction(merged, third, base2)
    assert merged3[1, 2, 3] == mask[1, 2, 3] and kept == 1


def test_undoing_a_rerun_restores_which_voxels_are_the_users() -> None:
    p1, p2, p3 = _pred(1), _pred(2), _pred(3)
    base = ModelBaseline.of_prediction(p1)
    painted = p1.copy()
    painted[2, 2, 2] = (p1[2, 2, 2] + 1) % 3
    merged, base2, _ = merge_prediction(painted, p2, base)
    # Ctrl+Z of the re-run: the mask is as before it; the model's voxels hold model 1's values again
    owned = user_voxels(painted, base2)
    np.testing.assert_array_equal(owned, painted != p1)
    # ...then the user erases a voxel where model 1 and model 2 differ: that is a correction too
    v = tuple(np.argwhere((p1 != p2) & (painted == p1))[0])
    after = painted.copy()
    after[v] = (p1[v] + 1) % 3
    owned = user_voxels(after, base2)
    assert owned[v] and owned[2, 2, 2] and owned.sum() == 2
    merged3, _, kept = merge_prediction(after, p3, base2)
    assert kept == 2 and merged3[v] == after[v]


def test_without_keep_the_prediction_replaces_everything_and_clears_the_lock() -> None:
    p1, p2 = _pred(1), _pred(2)
    mask = p1.copy()
    mask[0] = 2
    merged, base2, kept = merge_prediction(mask, p2, ModelBaseline.of_prediction(p1), keep=False)
    assert kept == 0
    np.testing.assert_array_equal(merged, p2)
    assert not user_voxels(merged, base2).any()


def test_a_mask_with_no_prediction_behind_it_is_all_the_users() -> None:
    mask = _pred(4)
    merged, base, kept = merge_prediction(mask, _pred(5), None)
    np.testing.assert_array_equal(merged, mask)
    assert kept == mask.size and user_voxels(merged, base).all()


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="shape"):
        merge_prediction(_pred(1), _pred(2, shape=(2, 2, 2)), None)
