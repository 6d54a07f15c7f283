"""Turn a clinical data set in ../shared/data into image/label folders and a fixed split for training.

Run from the repository root, before ``seg-studio train`` of the recipe that names the output:

    .venv/bin/python resources/recipes/prepare_data.py hc18 [--out runs/data/hc18]
    .venv/bin/python resources/recipes/prepare_data.py sunnybrook [--out runs/data/sunnybrook]
    .venv/bin/python resources/recipes/prepare_data.py hippocampus [--out runs/data/hippocampus]

hc18: fills the sonographer's ellipse outlines, gives each image the CSV's pixel size and resamples
it to 0.5 mm (``seg_studio.core.datasets.hc18``); 10 % of the fetuses are held back. sunnybrook: one
NIfTI pair per contoured DICOM image, the LV blood pool (``--myocardium``: blood pool and myocardium,
on the images with both contours; ``seg_studio.core.datasets.sunnybrook``); one patient is held back.
hippocampus: the 45 + 200 MSD Task04 pairs in one folder, 20 % of each held back by image hash (the
45's held-back 9 are those of the shipped hippocampus models; ``seg_studio.core.datasets.hippocampus``).
Nothing is written outside ``--out`` (the data's terms: do not commit what this writes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=["hc18", "sunnybrook", "hippocampus"])
    p.add_argument("--source", type=Path, help="the data set's folder (default: ../shared/data/<its folder>)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/data/<dataset>)")
    p.add_argument(
        "--myocardium",
        action="store_true",
        help="sunnybrook: blood pool + myocardium, images with both contours",
    )
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = a.out or ROOT / "runs" / "data" / a.dataset
    if a.dataset == "hc18":
        from seg_studio.core.datasets import hc18

        summary = hc18.prepare(a.source or DATA / "hc18_fetal_head_ultrasound", out)
    elif a.dataset == "hippocampus":
        from seg_studio.core.datasets import hippocampus

        dev = DATA / "msd_task04_hippocampus"
        summary = hippocampus.prepare([dev, dev.with_name(dev.name + "_extra")], out)
    else:
        from seg_studio.core.datasets import sunnybrook

        summary = sunnybrook.prepare(a.source or DATA / "sunnybrook_cardiac_mri", out, a.myocardium)
    sys.stdout.write(", ".join(f"{k} {v}" for k, v in summary.items()) + "\n")


if __name__ == "__main__":
    main()
