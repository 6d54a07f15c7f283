"""Click to correct, measured: a simulated user clicks on held-back cases until the mask is right.

For each held-back case of a task (the interactive checkpoint's own validation split, by image hash) and
each structure in its truth, a simulated user clicks at the centre of the largest error region
(``core.interactive.next_click``: DeepGrow's and DeepEdit's user), 20 times, each click re-predicted by
``core.interactive.refine_step`` on its crop, twice: from an empty mask, and from the automatic model's
prediction (the shipped automatic model of the same data). Reported: NoC@85 / NoC@90 (clicks until Dice
>= 0.85 / 0.90, 20 when never), Dice after 1, 3, 5 and 10 clicks, seconds per click (the core call, from
the click to the new label array: crop, guidance, prediction, merge), the automatic model alone, and the
voxels a user would have to paint for the Dice that 5 clicks give (a lower bound: every painted voxel
fixes one wrong voxel, the best mix of missed and wrong ones).

    nice .venv/bin/python benchmarks/clicks.py                       # both tasks -> docs/clicks.md + PNG
    nice .venv/bin/python benchmarks/clicks.py --task hippocampus --package   # ship the run's best first

``--package`` stores the run's ``best.segmodel`` as ``resources/models/<name>.segmodel`` (float16), then
benchmarks the STORED file and writes its model card (metadata and Markdown) from the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "resources" / "recipes"))

import package  # noqa: E402  (the data sets' terms and citations, as on the other cards)

from seg_studio.core import checkpoint, io  # noqa: E402
from seg_studio.core.inference import PredictOptions, describe_hardware, predict  # noqa: E402
from seg_studio.core.interactive import Click, next_click, refine_step, start_session  # noqa: E402
from seg_studio.core.training import pairs_from_folders  # noqa: E402
from seg_studio.core.training.data import apply_label_map, image_hash, parse_label_map  # noqa: E402

DATA = REPO.parent / "shared" / "data"
TASKS: dict[str, dict[str, Any]] = {
    "hippocampus": {
        "name": "hippocampus_clicks",
        "title": "Interactive 3D U-Net, click to correct the hippocampus (MSD Task04)",
        "auto": "resources/models/hippocampus_unet.segmodel",
        "images": DATA / "msd_task04_hippocampus" / "images",
        "labels": DATA / "msd_task04_hippocampus" / "labels",
        "label_map": None,
        "names": {1: "anterior", 2: "posterior"},
        "info": package._MSD,
        "spacing": "1.0 x 1.0 x 1.0 mm (the data's own); clicks are Gaussians of sigma 2 mm",
    },
    "isbi2012": {
        "name": "isbi2012_clicks",
        "title": "Interactive 2D U-Net, click to correct EM neuronal membranes (ISBI 2012)",
        "auto": "resources/models/isbi2012_unet.segmodel",
        "images": DATA / "isbi2012_em_membrane" / "images",
        "labels": DATA / "isbi2012_em_membrane" / "labels",
        "label_map": "0:1,255:0",
        "names": {1: "membrane"},
        "info": package._ISBI,
        "spacing": "none stored (pixels); clicks are Gaussians of sigma 3 px",
    },
}
CHECKPOINTS = (1, 3, 5, 10)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def paint_voxels(pred: np.ndarray, truth: np.ndarray, target: float) -> int:
    """The fewest voxels to repaint so Dice reaches ``target``: f missed ones added, p wrong ones removed."""
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    if dice(pred, truth) >= target:
        return 0
    f = np.arange(fn + 1)
    # 2(tp+f) / (2(tp+f) + fp - p + fn - f) >= target  <=>  p >= fp + fn - f + 2(tp+f)(1 - 1/target)
    p = np.ceil(fp + fn - f + 2 * (tp + f) * (1 - 1 / target) - 1e-9).clip(0, None)
    ok = p <= fp
    return int((f + p)[ok].min()) if ok.any() else fn + fp


def held_back(meta: Any, task: dict[str, Any]) -> list[tuple[str, Any, np.ndarray]]:
    """The checkpoint's validation cases (its provenance names them by image hash): name, scan, truth."""
    val = set(meta.provenance["split"]["val"])
    lmap = parse_label_map(task["label_map"])
    out = []
    for src in pairs_from_folders(task["images"], task["labels"]):
        scan = io.read(src.image)
        if image_hash(scan.array) in val:
            out.append((src.name, scan, apply_label_map(io.read(src.labels).array, lmap).astype(np.int64)))
    return out


def click_run(session: Any, truth: np.ndarray, start: np.ndarray, value: int, n: int) -> dict[str, Any]:
    """``n`` simulated clicks on one structure from ``start``: Dice and seconds after each."""
    spacing = session.scan.spacing_zyx
    current, clicks, dices, secs, crops = start.astype(np.uint16), [], [], [], []
    want = truth == value
    for _ in range(n):
        nxt = next_click(current == value, want, spacing)
        if nxt is None:
            dices.append(1.0)
            continue
        clicks.append(Click(value, nxt[0], nxt[1]))
        step = refine_step(session, clicks, current)
        current = step.labels
        dices.append(dice(current == value, want))
        secs.append(step.seconds)
        crops.append([s.stop - s.start for s in step.region])
    return {
        "dice": dices,
        "seconds": secs,
        "crop": crops[0] if crops else None,
        "start_dice": dice(start == value, want),
        "paint5": paint_voxels(start == value, want, dices[4] if n >= 5 else dices[-1]),
    }


def noc(run: dict[str, Any], level: float, cap: int = 20) -> int:
    """Clicks until Dice >= ``level`` (0 when the start is already there; ``cap`` when never)."""
    if run["start_dice"] >= level:
        return 0
    return next((i + 1 for i, d in enumerate(run["dice"]) if d >= level), cap)


def run_task(key: str, model_path: Path, n_clicks: int, max_cases: int | None) -> dict[str, Any]:
    task = TASKS[key]
    model, meta = checkpoint.load(model_path)
    auto, auto_meta = checkpoint.load(REPO / task["auto"])
    model.eval()
    auto.eval()
    cases = held_back(meta, task)[:max_cases]
    runs: list[dict[str, Any]] = []
    for name, scan, truth in cases:
        auto_labels = np.asarray(predict(scan, auto, auto_meta, PredictOptions(device="cpu")).labels.array)
        session = start_session(scan, model, meta)
        for value in sorted(int(v) for v in np.unique(truth) if v > 0):
            for start_kind, start in (("empty", np.zeros_like(auto_labels)), ("automatic", auto_labels)):
                r = click_run(session, truth, start, value, n_clicks)
                r.update(case=name, value=value, start=start_kind)
                runs.append(r)
                print(
                    f"{key} {name} class {value} from {start_kind}: start {r['start_dice']:.3f} ->"
                    f" {' '.join(f'{d:.3f}' for d in r['dice'][:10])}  {np.median(r['seconds']):.2f} s/click",
                    flush=True,
                )
    return {
        "task": key,
        "model": str(model_path.relative_to(REPO)) if model_path.is_relative_to(REPO) else str(model_path),
        "cases": [c[0] for c in cases],
        "runs": runs,
        "shape": list(cases[0][1].spatial_shape),
    }


def summarise(res: dict[str, Any], start: str) -> dict[str, Any]:
    runs = [r for r in res["runs"] if r["start"] == start]
    d = np.array([r["dice"] for r in runs])
    secs = np.concatenate([r["seconds"] for r in runs]) if runs else np.zeros(1)
    return {
        "n": len(runs),
        "start_dice": float(np.mean([r["start_dice"] for r in runs])),
        "noc85": float(np.mean([noc(r, 0.85, d.shape[1]) for r in runs])),
        "noc90": float(np.mean([noc(r, 0.90, d.shape[1]) for r in runs])),
        "dice_at": {k: float(d[:, k - 1].mean()) for k in CHECKPOINTS if k <= d.shape[1]},
        "curve": d.mean(0).tolist(),
        "s_median": float(np.median(secs)),
        "s_p90": float(np.percentile(secs, 90)),
        "paint5": float(np.median([r["paint5"] for r in runs])),
        "crop": runs[0]["crop"] if runs else None,
    }


def write_curve(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for res in results:
        for start, style in (("empty", "-"), ("automatic", "--")):
            s = summarise(res, start)
            xs = np.arange(1, len(s["curve"]) + 1)
            ax.plot(xs, s["curve"], style, marker="o", ms=3, label=f"{res['task']}, from {start}")
    ax.axhline(0.9, color="grey", lw=0.6)
    ax.axhline(0.85, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("clicks")
    ax.set_ylabel("mean Dice (held-back cases)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Click to correct: Dice after each simulated click")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| task | start | structures | start Dice | NoC@85 | NoC@90 | Dice@1 | Dice@3 | Dice@5 | Dice@10 |"
        " s/click (median, p90) | crop (voxels) | voxels to paint for Dice@5 |\n|" + " --- |" * 13
    )
    rows = [head]
    for res in results:
        for start in ("empty", "automatic"):
            s = summarise(res, start)
            da = s["dice_at"]
            label = "empty mask" if start == "empty" else "automatic model's mask"
            rows.append(
                f"| {res['task']} | {label} | {s['n']} | {s['start_dice']:.3f} | {s['noc85']:.1f} | {s['noc90']:.1f} |"
                + "".join(f" {da.get(k, math.nan):.3f} |" for k in CHECKPOINTS)
                + f" {s['s_median']:.2f}, {s['s_p90']:.2f} | {' x '.join(map(str, s['crop'] or []))} | {s['paint5']:.0f} |"
            )
    return "\n".join(rows)


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{describe_hardware(torch.device('cpu'))}; {os.cpu_count()} cores; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; Python {platform.python_version()}; load average {load[0]:.1f}"
    )


def package_model(key: str) -> Path:
    """The run's best checkpoint as ``resources/models/<name>.segmodel`` in float16 (card added later)."""
    task = TASKS[key]
    model, meta = checkpoint.load(REPO / "runs" / "clicks" / task["name"] / "best.segmodel")
    dest = REPO / "resources" / "models" / f"{task['name']}.segmodel"
    checkpoint.save(dest, model, meta, dtype=torch.float16)
    return dest


def per_case_after(res: dict[str, Any], k: int) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for r in res["runs"]:
        if r["start"] == "empty":
            out.setdefault(r["case"], []).append(r["dice"][k - 1])
    return {c: round(float(np.mean(v)), 4) for c, v in out.items()}


def write_card(key: str, res: dict[str, Any], bench_line: str) -> None:
    task = TASKS[key]
    path = REPO / "resources" / "models" / f"{task['name']}.segmodel"
    meta = checkpoint.read_meta(path)
    s, sa = summarise(res, "empty"), summarise(res, "automatic")
    per_class = {}
    for v, cname in task["names"].items():
        vals = [r["dice"][2] for r in res["runs"] if r["start"] == "empty" and r["value"] == v]
        per_class[cname] = round(float(np.mean(vals)), 4)
    prov = meta.provenance
    recipe = f"resources/recipes/{task['name']}.toml"
    mean3 = round(s["dice_at"].get(3, math.nan), 4)
    card = {
        "name": task["name"],
        "title": task["title"],
        **{k: task["info"][k] for k in ("data", "terms", "citation", "intended_use")},
        "classes": [{"value": c.value, "name": c.name} for c in meta.classes],
        "spacing": task["spacing"],
        "interactive": True,
        "validation": {
            "mean_dice": mean3,
            "clicks": 3,
            "cases": res["cases"],
            "dice": {meta.classes[1].name: mean3},
            "dice_per_structure": per_class,
            "per_case_mean_dice": per_case_after(res, 3),
            "how": "Dice after 3 simulated clicks from an empty mask (benchmarks/clicks.py), the stored float16 file",
        },
        "training": {
            "command": f"seg-studio train {recipe}",
            "recipe": recipe,
            "steps": prov["metrics"]["step"],
            "seconds": prov.get("settings", {}).get("time_budget_s"),
            "init": "resources/models/" + Path(TASKS[key]["auto"]).name,
        },
        "eval_data": {
            "kind": "folder",
            "images": str(task["images"].relative_to(DATA)),
            "labels": str(task["labels"].relative_to(DATA)),
        },
        "label_map": task["label_map"],
    }
    meta.card = card
    checkpoint.replace_meta(path, meta)
    md = card_markdown(card, meta, s, sa, res, bench_line, path)
    path.with_suffix(".md").write_text(md)


def domain_lines(meta: Any) -> str:
    from seg_studio.core.domain import describe

    return "\n".join(f"- {line}" for line in describe(meta.domain))


def card_markdown(card: dict, meta: Any, s: dict, sa: dict, res: dict, bench_line: str, path: Path) -> str:
    v, t = card["validation"], card["training"]
    per = ", ".join(f"{k} {x}" for k, x in v["dice_per_structure"].items())
    return f"""# {card["title"]}

`resources/models/{card["name"]}.segmodel` ({path.stat().st_size / 1e6:.2f} MB, float16 weights (safetensors)) —
`{meta.architecture}` {meta.spatial_dims}D, arguments `{json.dumps(meta.arch_args)}`, **interactive**: inputs are the
scan, the positive clicks, the negative clicks and the structure's current mask (`{json.dumps(meta.interactive)}`);
output background / {meta.classes[1].name}. It segments what you click (`seg-studio refine`, the panel's clicks), never
a whole scan on its own; the app never picks it for an automatic prediction.

| | |
|---|---|
| Structures | {"/".join(TASKS[res["task"]]["names"].values())}: one at a time, the one clicked (class value from the click) |
| Spacing | {card["spacing"]} |
| Patch | {" x ".join(str(p) for p in meta.patch_size)} (a click predicts a crop of one to two patches) |
| **Dice after 3 clicks** | **{v["mean_dice"]}** (from an empty mask, {len(v["cases"])} held-back cases; per structure: {per}) |
| NoC@85 / NoC@90 | {s["noc85"]:.1f} / {s["noc90"]:.1f} clicks from an empty mask; {sa["noc85"]:.1f} / {sa["noc90"]:.1f} from the automatic model's mask (cap 20) |
| Dice after 1 / 5 / 10 clicks | {s["dice_at"].get(1, math.nan):.3f} / {s["dice_at"].get(5, math.nan):.3f} / {s["dice_at"].get(10, math.nan):.3f} (empty start); automatic model alone {sa["start_dice"]:.3f} |
| Seconds per click | {s["s_median"]:.2f} median, {s["s_p90"]:.2f} p90 ({bench_line}) |
| Training | best checkpoint at step {t["steps"]} (scored by Dice after 3 simulated clicks) of a {t["seconds"]} s budget with simulated clicks, starting from `{t["init"]}`; 2-core CPU shared with other jobs |

**Domain** (what it was trained on; `seg-studio refine` warns about scans outside it):

{domain_lines(meta)}

**Data.** {card["data"]}.

**Terms.** {card["terms"]}.

**Cite.** {card["citation"]}.

**Intended use.** {card["intended_use"].rstrip(".")}. Interactive: a person checks every result.

**How it was measured.** {v["how"]}; the held-back cases are the split that training kept apart by image hash:
{", ".join(v["cases"])}. Full table and curve: [docs/clicks.md](../../docs/clicks.md).

**Reproduce.**

```
{t["command"]}
python benchmarks/clicks.py --task {res["task"]} --package
```
"""


def write_doc(
    results: list[dict[str, Any]], out: Path, bench_line: str, command: str, seconds: float
) -> None:
    png = out.parent / "images" / "clicks_curve.png"
    write_curve(results, png)
    text = f"""# Click to correct: measured

Interactive U-Nets (`core.interactive`; the checkpoints `resources/models/*_clicks.segmodel`) on the held-back
cases of their training split. A simulated user clicks at the centre of the largest error region (missed:
positive, wrong: negative), 20 clicks per structure, once from an empty mask and once from the automatic model's
mask (`hippocampus_unet` / `isbi2012_unet`). Seconds per click are the core call `refine_step` (crop, guidance
maps, prediction through `core.inference`, merge), from the click to the new label array; drawing in napari
adds to it. "Voxels to paint" is a lower bound for painting the Dice that 5 clicks reach, from the same start:
every painted voxel fixes one wrong voxel (the best mix of missed and wrong ones), which no brush achieves.

{table(results)}

![Dice after each click](images/clicks_curve.png)

Measured with `{command}` in {seconds:.0f} s on {bench_line}. The machine is shared: the load average
counts other engineers' jobs, so seconds per click are what a busy 2-core CPU gives.

Raw per-case numbers: `docs/clicks.json`.
"""
    out.write_text(text)
    (out.parent / "clicks.json").write_text(json.dumps(results, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=[*TASKS, "all"], default="all")
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--max-cases", type=int, default=None)
    ap.add_argument(
        "--package", action="store_true", help="ship the run's best checkpoint first, then write its card"
    )
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "clicks.md")
    args = ap.parse_args()
    keys = list(TASKS) if args.task == "all" else [args.task]
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    results = []
    for key in keys:
        path = (
            package_model(key)
            if args.package
            else REPO / "resources" / "models" / f"{TASKS[key]['name']}.segmodel"
        )
        results.append(run_task(key, path, args.clicks, args.max_cases))
    bench = machine() + f" (at the start {load0:.1f})"
    command = "nice .venv/bin/python benchmarks/clicks.py " + " ".join(sys.argv[1:])
    if args.package:
        for key, res in zip(keys, results, strict=True):
            write_card(key, res, bench)
    if args.out:
        old = (
            json.loads((args.out.parent / "clicks.json").read_text())
            if (args.out.parent / "clicks.json").exists()
            else []
        )
        merged = {r["task"]: r for r in old} | {r["task"]: r for r in results}
        write_doc(list(merged.values()), args.out, bench, command, time.perf_counter() - t0)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
