"""A probe for ISBI: would clicks beat the automatic model if each click changed only its neighbourhood?

    nice .venv/bin/python benchmarks/clicks_local_merge.py

On the 4 held-back ISBI slices, from ``isbi2012_unet``'s mask, 10 simulated clicks (``next_click``) with
``isbi2012_clicks``; each click's new labels are kept only within R px of the click (None: the whole crop,
what ``refine_step`` does). Prints the mean Dice after 0..10 clicks per R. Not a test; not used by the app.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "resources" / "recipes")]

import clicks as bench  # noqa: E402

from seg_studio.core import checkpoint  # noqa: E402
from seg_studio.core.inference import PredictOptions, predict  # noqa: E402
from seg_studio.core.interactive import Click, next_click, refine_step, start_session  # noqa: E402


def main() -> None:
    task = bench.TASKS["isbi2012"]
    model, meta = checkpoint.load(REPO / "resources" / "models" / "isbi2012_clicks.segmodel")
    auto, auto_meta = checkpoint.load(REPO / task["auto"])
    cases = bench.held_back(meta, task)
    starts = [
        np.asarray(predict(s, auto, auto_meta, PredictOptions(device="cpu")).labels.array).astype(np.uint16)
        for _, s, _ in cases
    ]
    for radius in (None, 48, 24, 12):
        curves = []
        for (_, scan, truth), start in zip(cases, starts, strict=True):
            session = start_session(scan, model, meta)
            cur, clicks, want = start.copy(), [], truth == 1
            dices = [bench.dice(cur == 1, want)]
            for _ in range(10):
                nxt = next_click(cur == 1, want)
                if nxt is None:
                    dices.append(dices[-1])
                    continue
                clicks.append(Click(1, nxt[0], nxt[1]))
                new = refine_step(session, clicks, cur).labels
                if radius is not None:
                    yy, xx = np.ogrid[: cur.shape[0], : cur.shape[1]]
                    near = (yy - nxt[1][0]) ** 2 + (xx - nxt[1][1]) ** 2 <= radius * radius
                    new = np.where(near, new, cur)
                cur = new
                dices.append(bench.dice(cur == 1, want))
            curves.append(dices)
        sys.stdout.write(f"R {radius}: " + " ".join(f"{v:.4f}" for v in np.mean(curves, 0)) + "\n")


if __name__ == "__main__":
    main()
