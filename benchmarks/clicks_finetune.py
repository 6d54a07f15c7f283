"""Do the clicks of one corrected scan make the next scans need fewer clicks? Not a test: it prints figures.

    nice .venv/bin/python benchmarks/clicks_finetune.py [--task hippocampus] [--budget 100] [--clicks 5]

On the interactive model's held-back cases (``benchmarks/clicks.py``'s): a simulated user corrects the
first case with ``--clicks`` clicks per structure from the automatic model's mask (as in the app: each
click through ``refine_step``), then finishes it with the brush (the labels become the truth). The model is
fine-tuned on that scan twice with the same budget and seed: with the recorded clicks (``iter_finetune(...,
clicks=...)``) and without them (simulated clicks only). Parent and both children are then scored on the
OTHER held-back cases as in ``benchmarks/clicks.py`` (from an empty mask, 10 clicks per structure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "resources" / "recipes"))

import clicks as bench  # noqa: E402

from seg_studio.core import checkpoint, io  # noqa: E402
from seg_studio.core.inference import PredictOptions, predict  # noqa: E402
from seg_studio.core.interactive import Click, next_click, refine_step, start_session  # noqa: E402
from seg_studio.core.training import iter_finetune  # noqa: E402


def user_clicks(model_path: Path, auto_path: Path, scan: Any, truth: np.ndarray, n: int) -> list[Click]:
    """What the simulated user clicks on the first case, from the automatic model's mask."""
    auto, auto_meta = checkpoint.load(auto_path)
    start = predict(scan, auto, auto_meta, PredictOptions(device="cpu")).labels.array.astype(np.uint16)
    model, meta = checkpoint.load(model_path)
    session = start_session(scan, model, meta)
    current, clicks = start, []
    for value in (int(v) for v in np.unique(truth) if v > 0):
        mine: list[Click] = []
        for _ in range(n):
            nxt = next_click(current == value, truth == value, scan.spacing_zyx)
            if nxt is None:
                break
            mine.append(Click(value, nxt[0], nxt[1]))
            current = refine_step(session, [*clicks, *mine], current).labels
        clicks += mine
    return clicks


def finetune(
    parent: Path, image: Path, labels: Path, out: Path, budget: float, clicks: Any, lr: float | None
) -> Any:
    gen = iter_finetune(parent, [(image, labels)], out, budget, clicks=clicks, lr=lr, device="cpu", seed=0)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def score(model_path: Path, cases: list[Any], n: int) -> dict[str, Any]:
    model, meta = checkpoint.load(model_path)
    runs = []
    for _, scan, truth in cases:
        session = start_session(scan, model, meta)
        for value in (int(v) for v in np.unique(truth) if v > 0):
            runs.append(bench.click_run(session, truth, np.zeros(truth.shape, np.uint16), value, n))
    return {
        "structures": len(runs),
        "noc85": round(statistics.mean(bench.noc(r, 0.85, n) for r in runs), 2),
        "noc90": round(statistics.mean(bench.noc(r, 0.90, n) for r in runs), 2),
        **{
            f"dice@{k}": round(statistics.mean(r["dice"][k - 1] for r in runs), 4)
            for k in (1, 3, 5, 10)
            if k <= n
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="hippocampus", choices=sorted(bench.TASKS))
    ap.add_argument("--budget", type=float, default=100.0)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--eval-clicks", type=int, default=10)
    ap.add_argument("--lr", type=float, default=None, help="the fine-tune's learning rate (default: its own)")
    args = ap.parse_args()
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    task = bench.TASKS[args.task]
    model_path = REPO / "resources" / "models" / f"{task['name']}.segmodel"
    cases = bench.held_back(checkpoint.read_meta(model_path), task)
    srcs = {s.name: s for s in bench.pairs_from_folders(task["images"], task["labels"])}
    name, scan, truth = cases[0]
    clicks = user_clicks(model_path, REPO / task["auto"], scan, truth, args.clicks)
    tmp = Path(tempfile.mkdtemp(prefix="clicks-ft-"))
    labels = tmp / f"{name}.nii.gz"
    io.write(io.read(srcs[name].labels).with_array(truth.astype(np.uint16)), labels)
    with_c = finetune(
        model_path, Path(srcs[name].image), labels, tmp / "with.segmodel", args.budget, [clicks], args.lr
    )
    without = finetune(
        model_path, Path(srcs[name].image), labels, tmp / "without.segmodel", args.budget, None, args.lr
    )
    rest = cases[1:]
    out = {
        "task": args.task,
        "corrected_case": name,
        "recorded_clicks": len(clicks),
        "finetune_with_clicks": {"steps": with_c.steps, "better": with_c.better, "clicks": with_c.clicks,
                                 "dice_before": with_c.dice_before, "dice_after": with_c.dice_after},
        "finetune_without_clicks": {"steps": without.steps, "better": without.better,
                                    "dice_before": without.dice_before, "dice_after": without.dice_after},
        "scored_on": [n for n, _, _ in rest],
        "parent": score(model_path, rest, args.eval_clicks),
        "child_with_clicks": score(with_c.path, rest, args.eval_clicks),
        "child_without_clicks": score(without.path, rest, args.eval_clicks),
        "seconds": round(time.perf_counter() - t0, 1),
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "command": "benchmarks/clicks_finetune.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip
    sys.stdout.write(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
