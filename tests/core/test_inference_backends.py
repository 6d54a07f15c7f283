"""Compiled CPU backends (OpenVINO, ONNX Runtime): choice, the export cache, fallbacks, agreement with torch.

Real exports and real compiles throughout; the failures are real ones too (a corrupted cache file, an
operator ONNX cannot express, a batch of the wrong shape).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from seg_studio.core import checkpoint as ckpt
from seg_studio.core.errors import InferenceError
from seg_studio.core.inference import PredictOptions, backends, blend, predict, runner
from seg_studio.core.inference import iter_predict as predict_steps
from seg_studio.core.models import SegModel, SegOutput, create_model, list_models
from seg_studio.core.models.ensemble import Ensemble
from seg_studio.core.volume import Volume

COMPILED = [b for b in ("openvino", "onnxruntime") if backends.installed(b)]
needs_compiled = pytest.mark.skipif(not COMPILED, reason="neither openvino nor onnxruntime is installed")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test starts with an empty cache folder and no compiled model in memory."""
    monkeypatch.setenv("SEG_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEG_STUDIO_BACKEND", raising=False)
    backends.clear_memo()
    yield tmp_path / "cache" / "compiled"
    backends.clear_memo()


def _meta(model: SegModel, patch, arch: str = "unet", args=None) -> ckpt.ModelMeta:
    args = {"features": 4, "depth": 2} if args is None else args
    return ckpt.new_meta(model, arch, args, patch_size=patch, normalization={"mode": "zscore"})


def _unet(dims: int = 2, out: int = 3, seed: int = 0, **kw) -> SegModel:
    torch.manual_seed(seed)
    return create_model(
        "unet", spatial_dims=dims, in_channels=1, out_channels=out, features=4, depth=2, **kw
    ).eval()


def _img(shape, seed: int = 0) -> Volume:
    return Volume.from_array(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _run(model, meta, vol, backend: str, **kw):
    return predict(vol, model, meta, PredictOptions(backend=backend, precision="fp32", **kw))


# --- choice ---------------------------------------------------------------------------------------------


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    best = "openvino" if backends.installed("openvino") else None
    if best is None and backends.installed("onnxruntime"):
        best = "onnxruntime"
    assert backends.choose_backend("auto", CPU, None) == (best or "torch")
    # torch bf16 beats ONNX Runtime's float32: ONNX Runtime only where the run is float32 anyway
    bf16 = backends.choose_backend("auto", CPU, torch.bfloat16)
    assert bf16 == ("openvino" if backends.installed("openvino") else "torch")
    assert backends.choose_backend("auto", torch.device("cuda"), torch.bfloat16) == "torch"
    assert backends.choose_backend("openvino", torch.device("cuda"), None) == "torch"
    assert backends.choose_backend("torch", CPU, None) == "torch"
    monkeypatch.setenv("SEG_STUDIO_BACKEND", "torch")
    assert backends.choose_backend("auto", CPU, None) == "torch"
    with pytest.raises(InferenceError, match="unknown backend"):
        backends.choose_backend("tensorrt", CPU, None)
    model = _unet()
    gen = predict_steps(_img((20, 20)), model, _meta(model, (16, 16)), PredictOptions(backend="tensorrt"))
    with pytest.raises(InferenceError, match="unknown backend"):
        next(gen)  # refused before any work
    for name in ("openvino", "onnxruntime"):
        if not backends.installed(name):
            with pytest.raises(InferenceError, match=r"seg-studio\[fast\]"):
                backends.choose_backend(name, CPU, None)


@needs_compiled
def test_the_default_path_runs_compiled_where_installed() -> None:
    model = _unet()
    pred = predict(_img((40, 36)), model, _meta(model, (32, 32)))
    assert pred.backend.split()[0] in COMPILED, pred.backend


# --- the export cache ----------------------------------------------------------------------------------


@needs_compiled
def test_cache_miss_then_hit_then_reexport_when_the_checkpoint_changes(
    tmp_path: Path, _fresh_cache: Path
) -> None:
    backend = COMPILED[0]
    model = _unet()
    path = ckpt.save(tmp_path / "m.segmodel", model, _meta(model, (32, 32)))
    vol = _img((40, 36))

    loaded, meta = ckpt.load(path)
    first = _run(loaded, meta, vol, backend)
    graphs = sorted(_fresh_cache.glob("*.onnx"))
    assert len(graphs) == 1 and first.backend.startswith(backend)  # miss: exported once
    stamp = graphs[0].stat().st_mtime_ns, graphs[0].stat().st_size

    backends.clear_memo()  # as a new process would: read from disk
    loaded, meta = ckpt.load(path)
    again = _run(loaded, meta, vol, backend)
    assert sorted(_fresh_cache.glob("*.onnx")) == graphs  # hit: nothing new
    assert graphs[0].stat().st_size == stamp[1]
    np.testing.assert_array_equal(again.labels.array, first.labels.array)

    with torch.no_grad():  # the checkpoint file changes (as after a fine-tune saved over it)
        next(model.parameters()).add_(0.5)
    ckpt.save(path, model, _meta(model, (32, 32)))
    loaded, meta = ckpt.load(path)
    changed = _run(loaded, meta, vol, backend)
    assert len(list(_fresh_cache.glob("*.onnx"))) == 2  # a new graph for the new weights
    np.testing.assert_array_equal(changed.labels.array, _run(loaded, meta, vol, "torch").labels.array)


@needs_compiled
def test_corrupt_cache_file_is_exported_again(_fresh_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = COMPILED[0]
    model = _unet()
    meta = _meta(model, (32, 32))
    vol = _img((40, 36))
    _run(model, meta, vol, backend)
    (graph,) = _fresh_cache.glob("*.onnx")
    good_size = graph.stat().st_size
    graph.write_bytes(b"\x08\x07not an onnx file" * 10)  # a truncated / overwritten cache entry
    backends.clear_memo()
    with caplog.at_level(logging.WARNING, logger="seg_studio.core.inference"):
        pred = _run(model, meta, vol, backend)
    assert pred.backend.startswith(backend)  # compiled again after a fresh export
    assert graph.stat().st_size == good_size
    assert [r.getMessage() for r in caplog.records if "exporting it again" in r.getMessage()]
    np.testing.assert_array_equal(pred.labels.array, _run(model, meta, vol, "torch").labels.array)


class BesselHead(SegModel):
    """A real model with an operator ONNX opset 17 cannot express (``special_bessel_j0``)."""

    def __init__(self) -> None:
        super().__init__(2, 1, 2, size_multiple=1)
        self.head = nn.Conv2d(1, 2, 1)

    def forward_padded(self, x: torch.Tensor, want: frozenset[str]) -> SegOutput:
        return SegOutput(self.head(torch.special.bessel_j0(x)))


@needs_compiled
def test_failing_export_falls_back_to_torch_with_one_log_line(
    caplog: pytest.LogCaptureFixture, capsys
) -> None:
    model = BesselHead().eval()
    meta = _meta(model, (16, 16))
    vol = _img((20, 24))
    with caplog.at_level(logging.INFO, logger="seg_studio.core.inference"):
        pred = _run(model, meta, vol, COMPILED[0])
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "running with torch" in warnings[0].getMessage(), warnings
    assert "\n" not in warnings[0].getMessage()
    assert "Torch IR graph" not in capsys.readouterr().out  # the exporter's dump stays quiet
    assert pred.backend.startswith("torch")
    np.testing.assert_array_equal(pred.labels.array, _run(model, meta, vol, "torch").labels.array)


@needs_compiled
def test_a_failing_compiled_run_hands_over_to_torch() -> None:
    model = _unet()
    meta = _meta(model, (32, 32))
    fwd = backends.compiled_forward(COMPILED[0], model, meta, (32, 32), frozenset(), None)
    with pytest.raises(backends.BackendError, match="failed"):
        fwd(torch.zeros(1, 1, 16, 16))  # the graph is compiled for 32x32 windows only
    r = runner.WindowRunner(
        fwd,
        2,
        False,
        False,
        frozenset(),
        rebuild=lambda dev: runner.TorchForward(model, dev, "fp32", True, True),
    )
    batch, msg = blend.recover(backends.BackendError("openvino fp32 failed"), r, 4)
    assert batch == 4 and "continuing with torch" in msg and r.forward.label.startswith("torch")


# --- agreement with torch ------------------------------------------------------------------------------

VARIANTS = list_models(trainable_only=True)


@needs_compiled
@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_labels_agree_with_torch(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=2, in_channels=1, out_channels=3, features=4).eval()
    meta = _meta(model, (32, 32), arch=name, args={"features": 4})
    vol = _img((44, 40), seed=1)
    ref = _run(model, meta, vol, "torch", probabilities=True)
    for backend in COMPILED:
        got = _run(model, meta, vol, backend, probabilities=True)
        assert got.backend.startswith(backend), got.backend
        np.testing.assert_allclose(got.probabilities.array, ref.probabilities.array, atol=2e-4)
        assert np.mean(got.labels.array == ref.labels.array) > 0.999


@needs_compiled
def test_3d_attention_tta_and_ensemble_uncertainty_through_the_backend() -> None:
    torch.manual_seed(0)
    att = create_model(
        "attention_unet", spatial_dims=3, in_channels=1, out_channels=2, features=4, depth=2
    ).eval()
    meta = _meta(att, (16, 16, 16), arch="attention_unet")
    vol = _img((20, 24, 18), seed=2)
    kw = {"attention": True, "tta": True, "probabilities": True}
    ref = _run(att, meta, vol, "torch", **kw)
    for backend in COMPILED:
        got = _run(att, meta, vol, backend, **kw)
        assert got.backend.startswith(backend) and len(got.attention) == len(ref.attention) == 2
        for a, b in zip(got.attention, ref.attention, strict=True):
            np.testing.assert_allclose(a.array, b.array, atol=2e-4)
        np.testing.assert_allclose(got.probabilities.array, ref.probabilities.array, atol=2e-4)
    members = [_unet(2, out=2, seed=s) for s in (1, 2)]
    ens = Ensemble(members).eval()
    emeta = _meta(ens, (32, 32), arch="ensemble")
    v2 = _img((40, 36), seed=3)
    ref = _run(ens, emeta, v2, "torch", uncertainty=True)
    for backend in COMPILED:
        got = _run(ens, emeta, v2, backend, uncertainty=True)
        assert got.backend.startswith(backend) and got.uncertainty is not None
        np.testing.assert_allclose(got.uncertainty.array, ref.uncertainty.array, atol=2e-4)
        np.testing.assert_array_equal(got.labels.array, ref.labels.array)


@pytest.mark.skipif(not backends.installed("openvino"), reason="openvino is not installed")
def test_default_precision_labels_agree_with_torch_fp32_on_the_bundled_model() -> None:
    """The default path (OpenVINO, bf16 where the CPU has it) against torch fp32: Dice >= 0.99."""
    from seg_studio.core.metrics import dice
    from seg_studio.core.samples import make_sample_2d

    path = Path(__file__).resolve().parents[2] / "resources" / "models" / "demo2d_unet.segmodel"
    model, meta = ckpt.load(path)
    img = make_sample_2d()[0]
    fast = predict(img, model, meta, PredictOptions(device="cpu"))
    ref = predict(img, model, meta, PredictOptions(device="cpu", precision="fp32", backend="torch"))
    assert fast.backend.startswith("openvino")
    classes = [c.value for c in meta.classes[1:]]
    scores = dice(np.asarray(fast.labels.array), np.asarray(ref.labels.array), classes=classes)
    assert min(scores.values()) >= 0.99, scores


def test_the_cache_is_pruned_to_the_most_recently_used(_fresh_cache: Path) -> None:
    import os
    import time

    folder = backends.cache_dir()
    now = time.time()
    for i in range(4):
        g = folder / f"{i}.onnx"
        g.write_bytes(b"x")
        g.with_suffix(".json").write_text('{"layout": {}}')
        os.utime(g, (now - 100 * (4 - i), now - 100 * (4 - i)))  # 3 is the newest
    stale, fresh = folder / ".k.onnx.tmp-123", folder / ".j.onnx.tmp-456"
    stale.write_bytes(b"half an export")
    fresh.write_bytes(b"an export in progress")
    os.utime(stale, (now - 7200, now - 7200))
    backends.prune_cache(folder, keep=2)
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["2.onnx", "3.onnx"]
    assert not (folder / "0.json").exists() and (folder / "3.json").exists()
    assert not stale.exists() and fresh.exists()
