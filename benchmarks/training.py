"""Training benchmarks, each against a plain baseline measured in the same run.

1. ``throughput``: training steps per second of our loop (patch sampler + torch augmentation +
   DiceCE + AdamW, as ``iter_fit`` runs it) against a plain PyTorch loop with MONAI's ``DiceCELoss``
   on the same model, batch and patch size (MONAI from the ``bench`` extra). Also fp32 against
   bf16 + channels_last on this CPU.
2. ``jsrt``: the one-click fine-tune on two JSRT chest X-rays (heart, left lung, right lung), started
   from an untrained model, with the default budget, evaluated on ten other X-rays through
   ``inference.predict`` (the product's path); against a plain ~60-line PyTorch loop (affine,
   intensity augmentation, AdamW) trained from scratch for 50 s on the same two images.
3. ``transfer``: a model trained on one data set (ISBI EM membranes) fine-tuned on two JSRT images
   (a task it never saw: the head grows to 4 classes) vs the same budget from scratch.

    .venv/bin/python benchmarks/training.py [--only throughput jsrt transfer] [--json out.json]

The CPU is shared: the load average is printed with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from seg_studio.core.inference import describe_hardware  # noqa: E402

DATA = Path(os.environ.get("SEG_STUDIO_DATA", REPO.parent / "shared" / "data"))
JSRT = DATA / "jsrt_chest_xray_heart_lungs"
JSRT_MAP = {250: 1, 200: 2, 150: 3}
JSRT_TRAIN = ["JPCLN002", "JPCNN001"]
JSRT_TEST = ["JPCLN008", "JPCLN009", "JPCLN023", "JPCLN040", "JPCLN041", "JPCNN010", "JPCNN013", "JPCNN020",
             "JPCNN025", "JPCNN026"]  # fmt: skip


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load average {a:.1f} {b:.1f} {c:.1f}"


# --- 1. throughput ----------------------------------------------------------------------------------


def throughput(steps: int = 12, features: int = 16, batch: int = 4, patch: int = 224) -> dict:
    from seg_studio.core.models import create_model
    from seg_studio.core.training.augment import AugmentConfig, augment_batch
    from seg_studio.core.training.data import Case, PatchSampler, index_voxels
    from seg_studio.core.training.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    cases = []
    for i in range(4):
        t = torch.zeros(256, 256, dtype=torch.int16)
        t[40 + i : 200, 30:120] = 1
        t[60:180, 140 + i : 230] = 2
        cv, _ = index_voxels(t)
        cases.append(Case(f"c{i}", str(i), torch.randn(1, 256, 256), t, (1.0, 1.0), cv))
    out: dict = {"features": features, "batch": batch, "patch": patch}

    def ours(dtype: torch.dtype | None, channels_last: bool) -> float:
        torch.manual_seed(0)
        model = create_model("unet", 2, 1, 3, features=features)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        sampler = PatchSampler(cases, (patch, patch), 0.5)
        loss_fn = DiceCELoss()
        aug = AugmentConfig()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            x, y = sampler.sample(batch)
            x, y = augment_batch(x, y, aug, g)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(x).logits
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        return 1.0 / float(np.median(times[2:]))

    def plain_monai() -> float:
        from monai.losses import DiceCELoss as MonaiDiceCE

        torch.manual_seed(0)
        model = create_model("unet", 2, 1, 3, features=features)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        loss_fn = MonaiDiceCE(to_onehot_y=True, softmax=True)
        imgs = torch.stack([c.image for c in cases])
        tgts = torch.stack([c.target.long() for c in cases])
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            idx = torch.randint(0, len(cases), (batch,))
            y0, x0 = (int(v) for v in torch.randint(0, 256 - patch + 1, (2,)))
            x = imgs[idx, :, y0 : y0 + patch, x0 : x0 + patch]
            y = tgts[idx, None, y0 : y0 + patch, x0 : x0 + patch]
            loss = loss_fn(model(x).logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        return 1.0 / float(np.median(times[2:]))

    out["plain_monai_fp32_steps_s"] = plain_monai()
    out["ours_fp32_steps_s"] = ours(None, False)
    out["ours_fp32_channels_last_steps_s"] = ours(None, True)
    out["ours_bf16_channels_last_steps_s"] = ours(torch.bfloat16, True)
    from seg_studio.core.inference.devices import cpu_has_fast_bf16
    from seg_studio.core.training.distributed import pick_precision

    auto = pick_precision(torch.device("cpu"), "auto")
    out["auto_precision"] = str(auto or "fp32")
    out["cpu_native_bf16"] = cpu_has_fast_bf16()
    best_auto = out["ours_bf16_channels_last_steps_s"] if auto else out["ours_fp32_channels_last_steps_s"]
    out["ours_auto_steps_s"] = best_auto
    out["ratio_ours_auto_vs_plain_monai"] = best_auto / out["plain_monai_fp32_steps_s"]
    out["load"] = load()
    return out


# --- 2. JSRT: one-click fine-tune vs a plain loop ---------------------------------------------------------


def _jsrt_pair(name: str):  # noqa: ANN202
    from seg_studio.core.io import read

    img = read(JSRT / "images" / f"{name}.png")
    lab = read(JSRT / "labels" / f"{name}.png")
    arr = np.zeros(lab.array.shape, np.int32)
    for v, c in JSRT_MAP.items():
        arr[lab.array == v] = c
    return img, lab.with_array(arr, meta={"kind": "labels"})


def _dice_report(preds: list[np.ndarray], truths: list[np.ndarray]) -> dict:
    from seg_studio.core.metrics import dice

    per = [dice(p, t, classes=[1, 2, 3]) for p, t in zip(preds, truths, strict=True)]
    heart = float(np.mean([d[1] for d in per]))
    left = float(np.mean([d[2] for d in per]))
    right = float(np.mean([d[3] for d in per]))
    return {"heart": round(heart, 4), "left_lung": round(left, 4), "right_lung": round(right, 4),
            "lungs_mean": round((left + right) / 2, 4)}  # fmt: skip


def plain_loop(
    train: list, seconds: float = 50.0, features: int = 16, steps_cap: int | None = None
) -> tuple[torch.nn.Module, int]:
    """The baseline: a plain PyTorch loop (z-score, random affine + intensity, CE + Dice, AdamW)."""
    from seg_studio.core.models import create_model
    from seg_studio.core.training.distributed import pick_precision

    torch.manual_seed(0)
    model = create_model("unet", 2, 1, 4, features=features).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    dtype = pick_precision(torch.device("cpu"), "auto")  # bf16 where the CPU does it natively
    xs = torch.stack([torch.from_numpy(((i.array - i.array.mean()) / i.array.std()).astype(np.float32))[None]
                      for i, _ in train])  # fmt: skip
    ys = torch.stack([torch.from_numpy(lab.array.astype(np.int64)) for _, lab in train])
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds and (steps_cap is None or steps < steps_cap):
        idx = torch.randint(0, len(train), (4,))
        x, y = xs[idx], ys[idx]
        ang = (torch.rand(4) - 0.5) * math.radians(20)
        sc = 0.9 + 0.2 * torch.rand(4)
        tr = (torch.rand(4, 2) - 0.5) * 0.1
        theta = torch.zeros(4, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(ang) * sc, -torch.sin(ang) * sc
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(ang) * sc, torch.cos(ang) * sc
        theta[:, :, 2] = tr
        flip = torch.rand(4) < 0.5  # vertical flips only: a left/right flip would swap the lungs
        theta[flip, 1, :] *= -1
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
        y = F.grid_sample(
            y[:, None].float(), grid, mode="nearest", padding_mode="border", align_corners=False
        )
        y = y[:, 0].long()
        x = (
            x * (0.8 + 0.4 * torch.rand(4, 1, 1, 1))
            + 0.1 * torch.randn(4, 1, 1, 1)
            + 0.05 * torch.randn_like(x)
        )
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x).logits
        logits = logits.float()
        probs = logits.softmax(1)
        onehot = F.one_hot(y, 4).movedim(-1, 1).float()
        inter = (probs * onehot).sum((0, 2, 3))
        dsc = (2 * inter + 1e-5) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1e-5)
        loss = F.cross_entropy(logits, y) + 1 - dsc[1:].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return model.eval(), steps


def _predict_all(model: torch.nn.Module, meta, tests: list, post: dict | None = None) -> list[np.ndarray]:  # noqa: ANN001
    """Labels of every test image; ``post``: post-processing as the panel's Correct buttons do it."""
    from seg_studio.core.inference import PredictOptions, predict

    opts = PredictOptions(device="cpu", postprocess=post)
    return [np.asarray(predict(img, model, meta, opts).labels.array) for img, _ in tests]


def jsrt(
    budget: float | None = None,
    features: int = 16,
    parent: Path | None = None,
    tag: str = "jsrt",
    steps: int | None = None,
    ft_options: dict | None = None,
    baseline: bool = True,
) -> dict:
    from seg_studio.core import checkpoint
    from seg_studio.core.models import create_model
    from seg_studio.core.progress import run_to_end
    from seg_studio.core.training import iter_finetune

    train = [_jsrt_pair(n) for n in JSRT_TRAIN]
    tests = [_jsrt_pair(n) for n in JSRT_TEST]
    truths = [lab.array for _, lab in tests]
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "seg_studio_bench_training"
    work.mkdir(exist_ok=True)
    out: dict = {"train": JSRT_TRAIN, "test": JSRT_TEST, "features": features}
    if parent is None:
        torch.manual_seed(0)
        model = create_model("unet", 2, 1, 4, features=features)
        meta = checkpoint.new_meta(model, "unet", {"features": features},
                                   classes=["background", "heart", "left lung", "right lung"],
                                   patch_size=(224, 224))  # fmt: skip
        parent = checkpoint.save(work / "untrained.segmodel", model, meta)
        out["parent"] = "untrained unet (what the GUI saves for a variant without a checkpoint)"
    else:
        out["parent"] = str(parent)
    child = work / f"{tag}-ft.segmodel"
    t0, c0 = time.perf_counter(), time.process_time()
    if steps is not None:
        budget = 1e6  # step-matched mode: the same number of steps for both, whatever the CPU load
    res = run_to_end(iter_finetune(parent, train, child, budget_s=budget, steps=steps,
                                   class_names={1: "heart", 2: "left lung", 3: "right lung"},
                                   **(ft_options or {})))  # fmt: skip
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model, meta = checkpoint.load(child)
    # CPU seconds (all threads) stand in for the idle-machine cost when the wall clock is shared.
    out["ours"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "steps": res.steps,
                   "lr": res.lr, "train_dice": res.per_class_after, "budget_s": budget or "default",
                   "better": res.better, "start": res.start.get("start"), "threads": res.threads.get("kept"),
                   "dice": _dice_report(_predict_all(model, meta, tests), truths),
                   "dice_keep_largest": _dice_report(_predict_all(model, meta, tests, {"largest_component": True}),
                                                     truths),
                   "load": load()}  # fmt: skip
    if parent is not None and tag == "jsrt" and baseline:
        t1, c1 = time.perf_counter(), time.process_time()
        base_model, base_steps = plain_loop(train, 1e6 if steps else 50.0, features, steps)
        base_wall, base_cpu = time.perf_counter() - t1, time.process_time() - c1
        meta_b = checkpoint.new_meta(base_model, "unet", {"features": features},
                                     classes=["background", "heart", "left lung", "right lung"],
                                     patch_size=(224, 224))  # fmt: skip
        key = f"plain_loop_{steps}_steps" if steps else "plain_loop_50s"
        dice_b = _dice_report(_predict_all(base_model, meta_b, tests), truths)
        out[key] = {"steps": base_steps, "wall_s": round(base_wall, 1), "cpu_s": round(base_cpu, 1),
                    "dice": dice_b, "load": load()}  # fmt: skip
    return out


# --- 3. transfer: a model from another data set --------------------------------------------------------


def transfer(pretrain_s: float = 120.0, features: int = 16) -> dict:
    from seg_studio.core.progress import run_to_end
    from seg_studio.core.training import FitConfig, iter_fit

    em = DATA / "isbi2012_em_membrane"
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "seg_studio_bench_training" / "em"
    cfg = FitConfig(images=str(em / "images"), labels=str(em / "labels"), label_map="255:0,0:1",
                    class_names=["background", "membrane"], arch_args={"features": features}, out=str(work),
                    max_steps=None, time_budget_s=pretrain_s, val_every=100, patch_size=[224, 224])  # fmt: skip
    fit = run_to_end(iter_fit(cfg))
    out = {"pretrain": {"data": "isbi2012_em_membrane", "seconds": round(fit.seconds, 1), "steps": fit.steps,
                        "val_dice": round(fit.best_dice, 4)}}  # fmt: skip
    out["finetune_from_em"] = jsrt(None, features, parent=fit.best_path, tag="transfer")["ours"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=["throughput", "jsrt", "transfer"])
    ap.add_argument(
        "--budget", type=float, default=None, help="fine-tune budget (default: the product default)"
    )
    ap.add_argument(
        "--features",
        type=int,
        help="base width (default: 16 for throughput; 8 for jsrt and transfer, the width the app builds an "
        "untrained variant with, seg_studio.ui.model_section.UNTRAINED_CONFIG)",
    )
    ap.add_argument(
        "--steps", type=int, help="jsrt: the same number of steps for both instead of a time budget"
    )
    ap.add_argument("--lr", type=float, help="jsrt: fine-tune learning rate (default: the product default)")
    ap.add_argument("--augment", type=json.loads, help='jsrt: fine-tune augmentation, e.g. {"elastic_p": 0}')
    ap.add_argument(
        "--batch-size", type=int, help="jsrt: fine-tune batch size (default: the product default)"
    )
    ap.add_argument("--seed", type=int, help="jsrt: fine-tune seed (patch sampling, augmentation; default 0)")
    ap.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], help="jsrt: fine-tune precision (default auto)"
    )
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="jsrt: skip the plain loop")
    ap.add_argument(
        "--parent",
        type=Path,
        help="jsrt: fine-tune this checkpoint instead of an untrained U-Net (e.g. the shipped "
        "seg_studio/resources/models/isbi2012_unet.segmodel: a parent from another domain)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    # OMP_NUM_THREADS=1 on a crowded CPU: OpenMP barriers crawl when other jobs hold the cores.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    results: dict = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": describe_hardware(),
    }
    print(f"{load()}; {results['cpu']}; torch {torch.__version__}; {results['threads']} threads", flush=True)
    if "throughput" in args.only:
        results["throughput"] = throughput(features=args.features or 16)
        print(json.dumps(results["throughput"], indent=1), flush=True)
    if "jsrt" in args.only:
        given = (
            ("lr", args.lr),
            ("augment", args.augment),
            ("batch_size", args.batch_size),
            ("seed", args.seed),
            ("precision", args.precision),
        )
        opts = {k: v for k, v in given if v is not None}
        results["jsrt"] = jsrt(args.budget, args.features or 8, parent=args.parent, steps=args.steps,
                               ft_options=opts, baseline=args.baseline)  # fmt: skip
        print(json.dumps(results["jsrt"], indent=1), flush=True)
    if "transfer" in args.only:
        results["transfer"] = transfer(features=args.features or 8)
        print(json.dumps(results["transfer"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
