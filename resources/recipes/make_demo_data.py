"""Write synthetic training cases for the bundled demo models (``demo2d_unet``, ``demo3d_unet``).

The cases come from ``seg_studio.core.samples`` with seeds 1..N (seed 0 is what ``seg-studio demo``,
the app's first run and the self-test open, so it is never trained on). Run from the repository root:

    .venv/bin/python resources/recipes/make_demo_data.py --out runs/data/demo --n2d 40 --n3d 16

then ``seg-studio train resources/recipes/demo2d_unet.json`` (and ``demo3d_unet.json``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seg_studio.core import io
from seg_studio.core.samples import make_sample_2d, make_sample_3d


def write_cases(out: Path, n2d: int, n3d: int) -> None:
    for dims, make, n in ((2, make_sample_2d, n2d), (3, make_sample_3d, n3d)):
        for seed in range(1, n + 1):
            image, labels = make(seed=seed)
            name = f"sample{dims}d_{seed:03d}.nii.gz"
            io.write(image, out / f"{dims}d" / "images" / name)
            io.write(labels, out / f"{dims}d" / "labels" / name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/data/demo"))
    p.add_argument("--n2d", type=int, default=40)
    p.add_argument("--n3d", type=int, default=16)
    a = p.parse_args()
    write_cases(a.out, a.n2d, a.n3d)


if __name__ == "__main__":
    main()
