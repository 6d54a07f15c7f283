"""Sliding-window inference: seg_studio's engine against MONAI's ``sliding_window_inference``.

The same weights, windows, overlap and Gaussian blending for both. The models are a 3D and a 2D
U-Net from our registry, trained for a few steps on synthetic blobs so that their label maps mean
something (random weights give near-tie logits, where any rounding flips labels). Each timed run is
its own fresh Python process (the parent saves the weights and the image, the child loads them,
warms the kernels on one window, then runs once), so no run inherits another's heap, page cache of
freed buffers or allocator state, and the allocator behaves as it does for a user.

Reported per case: wall time, peak memory above the pre-run baseline (RSS sampled every 5 ms),
agreement of the label maps with MONAI's fp32 result (identical voxels, mean foreground Dice), and
achieved GFLOP/s (model FLOPs per window x windows / time) against this CPU's fp32 and bf16 matmul
peaks measured in the same run. "ours default" is what a user gets: the compiled backend where one is
installed (``seg-studio[fast]``: OpenVINO), else torch; "backend off" is torch with the same
precision. A compiled run's warm-up includes the one-time export (first run of a case) and compile.
Separate subprocesses check peak RSS for a 512x512x300 CT with 2 classes through the library, and of
the whole ``seg-studio predict`` command on a 512x512x400 int16 CT written as NIfTI, with and without
``--save-probabilities`` (the 4 GB target).

    .venv/bin/python benchmarks/inference.py                  # full run (~4 min on an idle 2-core machine)
    .venv/bin/python benchmarks/inference.py --quick          # small sizes, a smoke run
    .venv/bin/python benchmarks/inference.py --memory-only    # just the RSS checks

Needs the ``bench`` extra (MONAI). Writes a Markdown table to stdout and, with ``--json``, the raw
numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seg_studio.core import checkpoint as ckpt  # noqa: E402
from seg_studio.core.inference import PredictOptions, cpu_has_fast_bf16, describe_hardware, predict  # noqa: E402
from seg_studio.core.inference import backends as backends  # noqa: E402
from seg_studio.core.inference import windows as W  # noqa: E402
from seg_studio.core.models import create_model  # noqa: E402
from seg_studio.core.volume import Volume  # noqa: E402

# --- measuring ---------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples RSS in a thread; ``peak`` is the highest value above the value at entry."""

    def __enter__(self) -> PeakRSS:
        self.base = rss_bytes()
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self.base)
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes() - self.base)


def matmul_peak(dtype: torch.dtype, n: int = 2048, budget_s: float = 20.0) -> float:
    """GFLOP/s of an n x n matmul (best of a few; gives up early when a dtype is emulated)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t0 = time.perf_counter()
    a @ b
    if time.perf_counter() - t0 > budget_s / 4:
        return 2 * n**3 / (time.perf_counter() - t0) / 1e9
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def window_flops(model: torch.nn.Module, roi: tuple[int, ...]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, model.in_channels, *roi)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


# --- a model whose labels mean something --------------------------------------------------------------


def blobs(shape: tuple[int, ...], seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy image with bright balls/discs (label 1) and darker ones (label 0: must not be picked)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    img = rng.normal(0, 0.35, shape).astype(np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    for i in range(n):
        c = [rng.uniform(0, s) for s in shape]
        r = rng.uniform(0.04, 0.1) * min(shape)
        d2 = sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True))
        inside = d2 <= r * r
        bright = i % 3 != 2
        img[inside] += 1.2 if bright else 0.5
        if bright:
            lab[inside] = 1
    return img, lab


def quick_train(model: torch.nn.Module, dims: int, steps: int, crop: int, seed: int = 1) -> float:
    """A few Adam steps on random crops of a blob image; returns the last loss."""
    shape = (crop * 3,) * dims
    img, lab = blobs(shape, seed, n=40 if dims == 3 else 30)
    x_all, y_all = torch.from_numpy(img), torch.from_numpy(lab.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(2):
            o = [int(rng.integers(0, s - crop + 1)) for s in shape]
            sl = tuple(slice(a, a + crop) for a in o)
            xs.append(x_all[sl][None])
            ys.append(y_all[sl])
        x, y = torch.stack(xs), torch.stack(ys)
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


# --- comparing ----------------------------------------------------------------------------------------


def dice_fg(a: np.ndarray, b: np.ndarray) -> float:
    vals = [v for v in np.union1d(np.unique(a), np.unique(b)) if v != 0]
    if not vals:
        return 1.0
    ds = []
    for v in vals:
        pa, pb = a == v, b == v
        ds.append(2 * np.logical_and(pa, pb).sum() / max(1, pa.sum() + pb.sum()))
    return float(np.mean(ds))


def run_monai(model, img: np.ndarray, roi, overlap: float, batch: int, bf16: bool = False) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(img)[None, None]
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), ctx:
        out = sliding_window_inference(
            x,
            roi_size=roi,
            sw_batch_size=batch,
            predictor=lambda t: model(t).logits,
            overlap=overlap,
            mode="gaussian",
            sigma_scale=0.125,
        )
    return out[0].float().argmax(0).numpy().astype(np.uint8)


def run_ours(model, meta, img: np.ndarray, opts: PredictOptions) -> np.ndarray:
    return predict(Volume.from_array(img), model, meta, opts).labels.array


def run_spec(spec: dict[str, Any], model, meta, img: np.ndarray, batch: int) -> np.ndarray:  # noqa: ANN001
    """One measured run as described by ``spec`` (an engine and its options)."""
    if spec["engine"] == "monai":
        return run_monai(model, img, tuple(meta.patch_size), spec["overlap"], batch, spec.get("bf16", False))
    return run_ours(
        model, meta, img, PredictOptions(overlap=spec["overlap"], batch_size=batch, **spec["opts"])
    )


def child(workdir: Path, index: int) -> None:
    """``--child``: load what the parent saved, warm up on one window, time one run, save its labels."""
    job = json.loads((workdir / "job.json").read_text())
    spec = job["runs"][index]
    model = create_model("unet", spatial_dims=job["dims"], in_channels=1, out_channels=2, **job["arch_args"])
    model.load_state_dict(torch.load(workdir / "model.pt", weights_only=True))
    model.eval()
    meta = ckpt.new_meta(model, "unet", job["arch_args"], patch_size=tuple(job["roi"]),
                         normalization={"mode": "none"})  # fmt: skip
    img = np.load(workdir / "image.npy")
    # warm-up: the same engine on one window's worth of the image (imports, kernels, first allocations;
    # for a compiled backend also the export, on the first run of a case, and the compile)
    t_warm = time.perf_counter()
    run_spec(
        spec, model, meta, np.ascontiguousarray(img[tuple(slice(0, r) for r in job["roi"])]), job["batch"]
    )
    warm = time.perf_counter() - t_warm
    with PeakRSS() as mem:
        t, c = time.perf_counter(), time.process_time()
        labels = run_spec(spec, model, meta, img, job["batch"])
        secs, cpu = time.perf_counter() - t, time.process_time() - c
    np.save(workdir / f"labels_{index}.npy", np.asarray(labels, dtype=np.uint8))
    print(json.dumps({"seconds": secs, "cpu_seconds": cpu, "peak": mem.peak, "warmup_seconds": warm}))


def case(
    name: str, dims: int, size: int, roi: int, features: int, depth: int, steps: int, crop: int, batch: int
) -> list[dict[str, Any]]:
    import tempfile

    torch.manual_seed(0)
    arch_args = {"features": features, "depth": depth}
    model = create_model("unet", spatial_dims=dims, in_channels=1, out_channels=2, **arch_args)
    t = time.perf_counter()
    loss = quick_train(model, dims, steps, crop)
    print(
        f"[{name}] trained {steps} steps in {time.perf_counter() - t:.0f} s, loss {loss:.3f}", file=sys.stderr
    )
    rois = (roi,) * dims
    img, truth = blobs((size,) * dims, seed=7, n=60 if dims == 3 else 40)
    flops = window_flops(model, rois)
    n_win = {o: len(W.window_starts((size,) * dims, rois, o)) for o in (0.5, 0.25)}

    monai = {"engine": "monai", "overlap": 0.5}
    auto = backends.choose_backend(
        "auto", torch.device("cpu"), torch.bfloat16 if cpu_has_fast_bf16() else None
    )
    runs: list[tuple[str, dict[str, Any]]] = [
        ("MONAI fp32, overlap 0.5", monai),
        (f"ours default ({auto}), overlap 0.5", {"engine": "ours", "overlap": 0.5, "opts": {}}),
        (f"ours default ({auto}), overlap 0.25", {"engine": "ours", "overlap": 0.25, "opts": {}}),
        (
            "ours, backend off (torch" + (" bf16" if cpu_has_fast_bf16() else " fp32") + "), overlap 0.5",
            {"engine": "ours", "overlap": 0.5, "opts": {"backend": "torch"}},
        ),
        (
            "ours torch fp32, overlap 0.5",
            {"engine": "ours", "overlap": 0.5, "opts": {"precision": "fp32", "backend": "torch"}},
        ),
    ]
    if backends.installed("onnxruntime"):
        runs.append(
            (
                "ours onnxruntime fp32, overlap 0.5",
                {"engine": "ours", "overlap": 0.5, "opts": {"precision": "fp32", "backend": "onnxruntime"}},
            )
        )
    if cpu_has_fast_bf16():
        runs.insert(1, ("MONAI bf16 autocast, overlap 0.5", {**monai, "bf16": True}))
    # MONAI once more at the end: the spread between its two times shows how much the load on the
    # machine drifted during the case (ratios use the first).
    runs.append(("MONAI fp32, overlap 0.5 (again, drift check)", monai))
    rows = []
    ref = None
    ref_t = ref_c = ref_m = 0.0
    with tempfile.TemporaryDirectory(prefix="seg-bench-") as tmp:
        work = Path(tmp)
        torch.save(model.state_dict(), work / "model.pt")
        np.save(work / "image.npy", img)
        job = {"dims": dims, "arch_args": arch_args, "roi": list(rois), "batch": batch,
               "runs": [spec for _, spec in runs]}  # fmt: skip
        (work / "job.json").write_text(json.dumps(job))
        # exported graphs go to this case's own folder: the first compiled run pays the export in its
        # warm-up (reported), as a user's first prediction with a new checkpoint does
        env = {**os.environ, "SEG_STUDIO_CACHE": str(work / "cache")}
        for i, (label, spec) in enumerate(runs):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(work), str(i)],
                capture_output=True,
                text=True,
                check=False,
                env=env,
            )
            if out.returncode != 0:
                raise RuntimeError(f"{name} / {label} failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            labels = np.load(work / f"labels_{i}.npy")
            secs, cpu, peak = res["seconds"], res["cpu_seconds"], res["peak"]
            if ref is None:
                ref, ref_t, ref_c, ref_m = labels, secs, cpu, peak
            row = {
                "case": name,
                "run": label,
                "seconds": round(secs, 2),
                "time_ratio": round(secs / ref_t, 3),
                "cpu_seconds": round(cpu, 1),
                "cpu_ratio": round(cpu / ref_c, 3),
                "peak_mb": round(peak / 2**20),
                "mem_ratio": round(peak / max(1, ref_m), 3),
                "identical_voxels": float(np.mean(labels == ref)),
                "dice_vs_monai": round(dice_fg(labels, ref), 5),
                "dice_vs_truth": round(dice_fg(labels, truth), 4),
                "windows": n_win[spec["overlap"]],
                "gflops": round(flops * n_win[spec["overlap"]] / secs / 1e9, 1),
                "warmup_seconds": round(res.get("warmup_seconds", 0.0), 1),
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


# --- the 4 GB check ---------------------------------------------------------------------------------------

_MEM_CHILD = r"""
import resource, sys, time, numpy as np, torch
sys.path.insert(0, {repo!r})
from seg_studio.core import checkpoint as ckpt
from seg_studio.core.inference import PredictOptions, predict
from seg_studio.core.models import create_model
from seg_studio.core.volume import Volume
torch.manual_seed(0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rng = np.random.default_rng(0)
ct = rng.integers(-1000, 1500, size=(300, 512, 512), dtype=np.int16)   # z, y, x
vol = Volume.from_array(ct, spacing=(0.7, 0.7, 2.5))
model = create_model("unet", spatial_dims=3, in_channels=1, out_channels=2, features={features}, depth=3)
meta = ckpt.new_meta(model, "unet", {{"features": {features}, "depth": 3}}, patch_size={patch},
                     normalization={{"mode": "ct_window", "low": -160, "high": 240}})
t = time.perf_counter()
pred = predict(vol, model, meta, PredictOptions(overlap={overlap}, probabilities={probs}))
secs = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print({{"peak_rss_mb": round(peak / 1024), "before_mb": round(base / 1024), "seconds": round(secs, 1),
       "labels_dtype": str(pred.labels.array.dtype), "shape": list(pred.labels.array.shape)}})
"""


def memory_check(
    features: int, patch: tuple[int, ...], overlap: float, probabilities: bool
) -> dict[str, Any]:
    code = _MEM_CHILD.format(
        repo=str(REPO), features=features, patch=patch, overlap=overlap, probs=probabilities
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {
            "error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"
        }
    res = eval(out.stdout.strip().splitlines()[-1])  # our own child's dict literal  # noqa: S307
    res.update(
        {"features": features, "patch": list(patch), "overlap": overlap, "probabilities": probabilities}
    )
    return res


_CLI_WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
secs = time.perf_counter() - t
print(json.dumps({"rc": proc.returncode, "seconds": round(secs, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
                  "tail": (proc.stdout + proc.stderr).strip().splitlines()[-1:]}))
"""


def cli_memory_check(slices: int = 400, features: int = 4) -> list[dict[str, Any]]:
    """Peak RSS of the real ``seg-studio predict`` on a 512x512xN int16 CT (written as NIfTI), with and
    without ``--save-probabilities``: the whole command (read, predict, write, verify), each in a fresh
    process measured by a wrapper of its own (``ru_maxrss`` of its only child)."""
    import tempfile

    from seg_studio.core import io as sio

    out = []
    with tempfile.TemporaryDirectory(prefix="seg-mem-") as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        ct = rng.integers(-1000, 1500, size=(slices, 512, 512), dtype=np.int16)
        scan = sio.write(Volume.from_array(ct, spacing=(0.7, 0.7, 2.5)), work / "ct.nii.gz")
        del ct
        torch.manual_seed(0)
        model = create_model(
            "unet", spatial_dims=3, in_channels=1, out_channels=2, features=features, depth=3
        )
        meta = ckpt.new_meta(model, "unet", {"features": features, "depth": 3}, patch_size=(64, 128, 128),
                             normalization={"mode": "ct_window", "low": -160, "high": 240})  # fmt: skip
        model_path = ckpt.save(work / "m.segmodel", model, meta)
        for probs in (False, True):
            cmd = [sys.executable, "-m", "seg_studio", "predict", str(scan), "--model", str(model_path),
                   "--out", str(work / "mask.nii.gz"), "--overlap", "0.25"]  # fmt: skip
            if probs:
                cmd += ["--save-probabilities", str(work / "probs.nii.gz")]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            res = subprocess.run([sys.executable, "-c", _CLI_WRAPPER, *cmd], capture_output=True, text=True,
                                 env=env, check=False)  # fmt: skip
            row = (
                json.loads(res.stdout.strip().splitlines()[-1])
                if res.returncode == 0
                else {"error": res.stderr}
            )
            row.update(
                {"slices": slices, "probabilities": probs, "scan_mb": round(scan.stat().st_size / 2**20)}
            )
            print(json.dumps(row), file=sys.stderr)
            out.append(row)
    return out


# --- main ---------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not for the docs)")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--size3d", type=int, default=160)
    ap.add_argument("--roi3d", type=int, default=96)
    ap.add_argument("--features3d", type=int, default=8)
    ap.add_argument("--size2d", type=int, default=1024)
    ap.add_argument("--roi2d", type=int, default=256)
    ap.add_argument("--features2d", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25, help="quick-training steps per model")
    ap.add_argument("--cli-slices", type=int, default=400, help="slices of the CT for the CLI memory check")
    ap.add_argument("--json", type=Path, help="write the raw numbers here")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]))
        return 0
    if args.quick:
        args.size3d, args.roi3d, args.features3d = 64, 32, 4
        args.size2d, args.roi2d, args.features2d, args.steps = 256, 64, 4, 10

    info = {
        "cpu": describe_hardware(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "native_bf16": cpu_has_fast_bf16(),
        "load_avg_start": os.getloadavg(),
    }
    rows: list[dict[str, Any]] = []
    if not args.memory_only:
        info["matmul_fp32_gflops"] = round(matmul_peak(torch.float32), 1)
        info["matmul_bf16_gflops"] = round(matmul_peak(torch.bfloat16, n=1024), 1)
        rows += case(
            "2D", 2, args.size2d, args.roi2d, args.features2d, 4, args.steps, 64 if not args.quick else 32, 4
        )
        rows += case("3D", 3, args.size3d, args.roi3d, args.features3d, 4, args.steps, 32, 2)
    mem = []
    cli_mem: list[dict[str, Any]] = []
    if not args.skip_memory:
        mem.append(memory_check(4, (64, 128, 128), 0.25, False))
        mem.append(memory_check(4, (64, 128, 128), 0.25, True))
        cli_mem = cli_memory_check(args.cli_slices)
    info["load_avg_end"] = os.getloadavg()
    info["peak_rss_this_process_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    print(
        f"CPU: {info['cpu']}, {info['threads']} threads, torch {info['torch']}, native bf16: {info['native_bf16']}"
    )
    if "matmul_fp32_gflops" in info:
        print(
            f"matmul peak: fp32 {info['matmul_fp32_gflops']} GFLOP/s, bf16 {info['matmul_bf16_gflops']} GFLOP/s"
        )
    print(f"load average at start {info['load_avg_start']}, at end {info['load_avg_end']}\n")
    if rows:
        print("| case | run | windows | wall s | wall vs MONAI | CPU s | CPU vs MONAI | peak MB | memory vs MONAI | "
              "identical voxels | Dice vs MONAI | Dice vs truth | GFLOP/s (wall) | of fp32 / bf16 matmul peak | "
              "warm-up s (export+compile) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        peak = info.get("matmul_fp32_gflops") or float("nan")
        peak16 = info.get("matmul_bf16_gflops") or float("nan")
        for r in rows:
            print(
                f"| {r['case']} | {r['run']} | {r['windows']} | {r['seconds']} | {r['time_ratio']:.2f}x | "
                f"{r['cpu_seconds']} | {r['cpu_ratio']:.2f}x | "
                f"{r['peak_mb']} | {r['mem_ratio']:.2f}x | {100 * r['identical_voxels']:.4f}% | "
                f"{r['dice_vs_monai']:.4f} | {r['dice_vs_truth']:.3f} | {r['gflops']} | "
                f"{100 * r['gflops'] / peak:.0f}% / {100 * r['gflops'] / peak16:.0f}% | {r['warmup_seconds']} |"
            )
    for m in mem:
        print(f"\n512x512x300 int16 CT, 2 classes: {m}")
    for m in cli_mem:
        print(f"\nseg-studio predict, 512x512x{m.get('slices')} int16 CT, 2 classes: {m}")
    if args.json:
        args.json.write_text(
            json.dumps({"info": info, "rows": rows, "memory": mem, "cli_memory": cli_mem}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
