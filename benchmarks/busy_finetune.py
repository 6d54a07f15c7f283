"""The one-click fine-tune on a quiet machine and on a busy one: training steps per second of each.

    .venv/bin/python benchmarks/busy_finetune.py [--budget 20] [--repeats 2] [--baseline DIR]

Each run is a fresh process that fine-tunes, as the panel's *Fine-tune* button does
(``iter_finetune`` with the default options), an untrained Attention U-Net on the 2D sample with its
labels as the corrections. "busy" runs the same with competing CPU-bound processes that this script
starts itself (one per CPU this process may run on, at the same priority, each spinning in Python)
and stops afterwards. Steps/s counts training steps only (from the first step's progress report to
the last's), not loading, scoring or saving. ``--baseline DIR`` (an older checkout,
``git archive REV | tar -x -C DIR``) runs the same cases with that code, alternating with this
tree's, so before and after see the same load. The load average is printed with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPIN = "while True: pass"


def child(budget_s: float, out_dir: Path, worker_nice: bool = True) -> dict[str, object]:
    """One fine-tune in this process; returns steps/s of its training phase and what it chose."""
    import torch

    from seg_studio.core import checkpoint
    from seg_studio.core.models import create_model
    from seg_studio.core.samples import make_sample_2d
    from seg_studio.core.training import iter_finetune

    # what the app's start-up warm-up does before the user can click: the first optimiser of a
    # process imports torch._dynamo (seconds), which would otherwise eat the budget
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    image, labels = make_sample_2d()
    classes = [labels.labels[v] for v in sorted(labels.labels)]
    model = create_model("attention_unet", spatial_dims=2, in_channels=1, out_channels=len(classes))
    meta = checkpoint.new_meta(
        model,
        "attention_unet",
        {},
        classes=[checkpoint.ClassInfo(c.value, c.name, tuple(c.color)) for c in classes],
        normalization={"mode": "zscore"},
        card={"title": "untrained attention_unet", "untrained": True},
    )
    parent = checkpoint.save(out_dir / "parent.segmodel", model, meta)
    steps: list[tuple[float, int]] = []
    done: dict[str, object] = {}

    def work() -> None:
        # in a worker thread at the priority the app's workers take (``ui.workers``: below the UI thread)
        from seg_studio.ui import workers

        # the fine-tune's own step where the tree has one, else every worker's
        step = getattr(workers, "FINETUNE_NICE", workers.WORKER_NICE)
        done["nice"] = workers.lower_thread_priority(step) if worker_nice else None
        gen = iter_finetune(parent, [(image, labels)], out_dir / "child.segmodel", budget_s=budget_s)
        try:
            while True:
                p = next(gen)
                step = (p.metrics or {}).get("step") if p.stage == "fine-tune" else None
                if step is not None and "loss" in (p.metrics or {}):
                    steps.append((time.perf_counter(), int(step)))
        except StopIteration as stop:
            done["result"] = stop.value

    worker = threading.Thread(target=work, name="fine-tune")
    worker.start()
    worker.join()
    result = done["result"]
    (t0, s0), (t1, s1) = steps[0], steps[-1]
    return {
        "steps": result.steps,
        "train_steps_per_s": round((s1 - s0) / (t1 - t0), 3) if t1 > t0 else None,
        "threads": {k: v for k, v in result.threads.items() if k != "measured"},
        "seconds": round(result.seconds, 1),
        "worker_nice": done["nice"],
    }


def spinners(n: int) -> list[subprocess.Popen]:
    """``n`` CPU-bound processes at this process's priority (the competing load)."""
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def run_once(tree: Path, budget_s: float, busy: bool) -> dict[str, object]:
    """One fine-tune with ``tree``'s code in a fresh process (with the competing load when ``busy``)."""
    n_cpus = len(os.sched_getaffinity(0))
    load = spinners(n_cpus) if busy else []
    try:
        if busy:
            time.sleep(1.0)  # the spinners are running before the fine-tune starts
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "PYTHONPATH": str(tree), "SEG_STUDIO_HOME": str(Path(tmp) / "home")}
            load_before = os.getloadavg()[0]
            proc = subprocess.run(
                # this script's child, importing ``tree``'s seg_studio (its public API is the same)
                [sys.executable, str(Path(__file__).resolve()), "--child", tmp,
                 "--budget", str(budget_s)],
                capture_output=True, text=True, env=env, timeout=budget_s * 4 + 120,
            )  # fmt: skip
    finally:
        stop(load)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"fine-tune run of {tree} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1]), "load_before": round(load_before, 2), "competing_processes": len(load)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=30.0, help="fine-tune budget in seconds")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--baseline", type=Path, default=None, help="an older checkout to compare with")
    ap.add_argument(
        "--same-priority",
        dest="worker_nice",
        action="store_false",
        help="run the fine-tune at the process's priority, not the app's worker priority",
    )
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.budget, args.child, args.worker_nice)))
        return
    trees = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    runs: dict[str, list[dict[str, object]]] = {f"{t}_{m}": [] for t in trees for m in ("quiet", "busy")}
    load_start = os.getloadavg()
    for _ in range(args.repeats):
        for mode in ("quiet", "busy"):
            for name, tree in trees.items():
                r = run_once(tree, args.budget, mode == "busy")
                runs[f"{name}_{mode}"].append(r)
                print(f"{name} {mode}: {r}", file=sys.stderr, flush=True)
    medians = {
        k: statistics.median(float(r["train_steps_per_s"] or 0) for r in v) for k, v in runs.items() if v
    }
    print(
        json.dumps(
            {
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "cpus_in_affinity": len(os.sched_getaffinity(0)),
                "loadavg_start": [round(x, 2) for x in load_start],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "median_train_steps_per_s": medians,
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
