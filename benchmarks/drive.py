"""DRIVE retinal vessels: train a 2D model with seg_studio's own loop, score it inside the FOV masks.

    .venv/bin/python benchmarks/drive.py --arch unet --features 16 --budget 1200 --out runs/drive \
        --md docs/drive.md

A run validates (and writes ``last.segmodel`` and ``resume.pt``) every ``--val-every`` steps; the same
command with ``--resume`` continues a stopped run where it stopped (its optimiser, step and clock).

DRIVE may not be redistributed: the model trained here is a benchmark only and is never copied to
resources/. The 15 dev images in ../shared/data/drive_retina_vessels are split by image hash (20 %
held back, ``split.json`` in the run folder); the held-back images are segmented through the app's
inference (``core.inference.predict`` with probabilities) and scored only where the FOV mask is set,
as the papers do: F1 (= Dice) of the thresholded mask, sensitivity, specificity, accuracy, and the
ROC AUC of the vessel probability (rank statistic, ties averaged). The papers' figures were measured
on the 20 official test images after training on the 20 training images, so they are context, not
a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seg_studio.core import checkpoint, io  # noqa: E402
from seg_studio.core.compare import held_out_pairs  # noqa: E402
from seg_studio.core.inference import PredictOptions, predict  # noqa: E402
from seg_studio.core.progress import run_to_end  # noqa: E402
from seg_studio.core.training import FitConfig, iter_fit, pairs_from_folders  # noqa: E402

DATA = Path(os.environ.get("SEG_STUDIO_DATA", REPO.parent / "shared" / "data")) / "drive_retina_vessels"

#: Published DRIVE F1 (test set, FOV only), for context; their other figures are in the papers.
PAPERS = [
    ("R2U-Net (Alom et al. 2018, arXiv:1802.06955)", 0.8171),
    ("BCDU-Net (Azad et al. 2019, arXiv:1909.00166)", 0.8222),
]


def auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank statistic (ties get their average rank)."""
    from scipy.stats import rankdata

    pos = truth.astype(bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def score(prob: np.ndarray, truth: np.ndarray, fov: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    p, t = prob[fov], truth[fov].astype(bool)
    m = p >= threshold
    tp, fp = int((m & t).sum()), int((m & ~t).sum())
    fn, tn = int((~m & t).sum()), int((~m & ~t).sum())
    return {
        "f1": 2 * tp / max(1, 2 * tp + fp + fn),
        "sensitivity": tp / max(1, tp + fn),
        "specificity": tn / max(1, tn + fp),
        "accuracy": (tp + tn) / max(1, tp + tn + fp + fn),
        "auc": auc(p, t),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--budget", type=float, default=1200, help="training time budget in seconds")
    ap.add_argument("--arch-args", type=json.loads, default={}, help="JSON on top of features/depth, e.g. t")
    ap.add_argument(
        "--val-every", type=int, default=100, help="validate (and save, resume.pt too) every N steps"
    )
    ap.add_argument("--resume", action="store_true", help="continue the run in --out (same settings)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "drive")
    ap.add_argument("--md", type=Path, help="write the results table to this Markdown file")
    ap.add_argument("--skip-train", action="store_true", help="score the run folder's best.segmodel again")
    a = ap.parse_args()

    sources = pairs_from_folders(DATA / "images", DATA / "labels")
    cfg = FitConfig(
        images=str(DATA / "images"),
        labels=str(DATA / "labels"),
        label_map="255:1",
        class_names=["background", "vessel"],
        normalization={"mode": "zscore"},
        architecture=a.arch,
        arch_args={"features": a.features, "depth": a.depth, **a.arch_args},
        out=str(a.out),
        patch_size=[a.patch, a.patch],
        batch_size=a.batch,
        lr=a.lr,
        max_steps=a.steps,
        time_budget_s=a.budget,
        val_every=a.val_every,
        val_fraction=0.2,
        early_stop_patience=None,
        fg_prob=0.7,
        flip="all",
        seed=0,
        resume=a.resume,
    )
    t0 = time.perf_counter()
    if not a.skip_train:
        fit = run_to_end(iter_fit(cfg))
        train_s, steps = fit.seconds, fit.steps
        if a.resume:  # the loop's own clock went on from the stop: the whole training, not this call
            train_s = max(train_s, max(h.get("seconds") or 0.0 for h in fit.history) if fit.history else 0.0)
    else:
        hist = json.loads((a.out / "history.json").read_text())
        train_s, steps = hist[-1]["seconds"], hist[-1]["step"]
    best = a.out / "best.segmodel"
    model, meta = checkpoint.load(best)
    val = held_out_pairs(sources, a.out / "split.json")
    rows = []
    probs, truths = [], []
    for src in val:
        image = io.read(src.image)
        truth = np.asarray(io.read(src.labels).array) > 127
        stem = Path(src.image).name.split("_")[0]
        fov = np.asarray(io.read(DATA / "fov_masks" / f"{stem}_training_mask.gif").array) > 127
        t1 = time.perf_counter()
        pred = predict(image, model, meta, PredictOptions(device="cpu", probabilities=True))
        infer_s = time.perf_counter() - t1
        prob = np.asarray(pred.probabilities.array)[1]
        s = score(prob, truth, fov)
        s["case"], s["infer_s"] = src.name, infer_s
        rows.append(s)
        probs.append(prob[fov])
        truths.append(truth[fov])
    pooled = score(np.concatenate(probs), np.concatenate(truths), np.ones(sum(len(p) for p in probs), bool))
    result = {
        "arch": a.arch,
        "features": a.features,
        "depth": a.depth,
        "train_s": round(train_s, 1),
        "steps": steps,
        "val_cases": [r["case"] for r in rows],
        "per_case": rows,
        "pooled": pooled,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    (a.out / "drive_result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "per_case"}, indent=1))
    if a.md:
        write_md(a, result)


def write_md(a: argparse.Namespace, r: dict) -> None:
    p = r["pooled"]
    cmd = " ".join(["python", "benchmarks/drive.py", *sys.argv[1:]])
    lines = [
        "| model | data | F1 (Dice) | sensitivity | specificity | accuracy | AUC |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| seg_studio `{r['arch']}` (features {r['features']}, depth {r['depth']}), {r['steps']} steps,"
        f" {r['train_s']:.0f} s on CPU | {len(r['val_cases'])} held-back DRIVE training images"
        f" ({', '.join(r['val_cases'])}), FOV only, pooled pixels | **{p['f1']:.4f}** | {p['sensitivity']:.4f} |"
        f" {p['specificity']:.4f} | {p['accuracy']:.4f} | {p['auc']:.4f} |",
    ]
    for name, f1 in PAPERS:
        lines.append(
            f"| {name} | DRIVE test set (20 images), FOV | {f1:.4f} | see paper | see paper | see paper | see paper |"
        )
    per = ["| held-back image | F1 | sensitivity | AUC | inference (s) |", "|---|---:|---:|---:|---:|"]
    for c in r["per_case"]:
        per.append(
            f"| {c['case']} | {c['f1']:.4f} | {c['sensitivity']:.4f} | {c['auc']:.4f} | {c['infer_s']:.2f} |"
        )
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = f"""# DRIVE retinal vessels: accuracy against the papers

A benchmark, not a shipped model: DRIVE's terms forbid redistribution, so the weights stay in the
run folder. Measured {when} on {platform.machine()} ({os.cpu_count()} CPU cores, load average {load:.1f})
with:

```
{cmd}
```

{chr(10).join(lines)}

Per image:

{chr(10).join(per)}

**How to read this.** The papers trained on DRIVE's 20 training images and report the 20 test images
(the test labels are not in our dev data). Here {15 - len(r["val_cases"])} of the 15 dev training images
train and {len(r["val_cases"])} are held back (fixed split by image hash); the model is trained by
`seg_studio.core.training.iter_fit` within the time budget above on a CPU, so it sees far less data
and compute than the papers' models. Threshold 0.5 on the vessel probability; all figures inside
the FOV mask; AUC is the ROC area of the vessel probability over the pooled FOV pixels. Cite Staal
et al., IEEE TMI 23(4):501-509 (2004) for DRIVE.
"""
    a.md.parent.mkdir(parents=True, exist_ok=True)
    a.md.write_text(text)


if __name__ == "__main__":
    main()
