"""Every shipped model against one scan of every data set in ../shared/data: which it is meant for,
the warnings ``seg-studio predict`` prints, and which checkpoint the app picks by default.

Run from the repository root (writes docs/model_domains.md and prints the same table):

    nice .venv/bin/python benchmarks/domain_table.py [--out docs/model_domains.md]

Each scan is checked before predicting (``domain.check_scan``); unless a check refuses it, the model
then really segments it (CPU, overlap 0.5, probabilities on) and the result is checked
(``domain.check_result``). The "default" column is ``domain.rank_checkpoints`` over the shipped files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MODELS = ROOT / "resources" / "models"

#: (data set, scan relative to ../shared/data or "sample:2d"/"sample:3d", what it is)
SCANS: list[tuple[str, str, str]] = [
    (
        "MSD Task04 hippocampus",
        "msd_task04_hippocampus/images/hippocampus_014.nii.gz",
        "held-back validation crop",
    ),
    (
        "MSD Task04 hippocampus, extra",
        "msd_task04_hippocampus_extra/images/hippocampus_355.nii.gz",
        "crop no shipped model trained on",
    ),
    (
        "TCIA brain tumour T1post",
        "tcia_brain_tumor_progression_dicom/images/PGBM-003_19950329",
        "whole-head DICOM series",
    ),
    ("ISBI 2012 EM", "isbi2012_em_membrane/images/18.png", "held-back validation slice"),
    ("JSRT chest X-ray", "jsrt_chest_xray_heart_lungs/images/JPCLN002.png", "224 x 224 PNG"),
    ("HC18 fetal head US", "hc18_fetal_head_ultrasound/images/000_HC.png", "PNG, no stored pixel size"),
    (
        "HC18 fetal head US, pixel size given",
        "hc18px:063_2HC",
        "held-back PNG + its CSV pixel size (--pixel-size)",
    ),
    (
        "Sunnybrook cardiac MRI",
        "sunnybrook_cardiac_mri/dicom/SCD0000101/108.dcm",
        "one short-axis DICOM slice",
    ),
    ("DRIVE fundus", "drive_retina_vessels/images/22_training.tif", "RGB photo"),
    ("TotalSegmentator CT", "totalsegmentator_ct_examples/images/example_ct_sm.nii.gz", "3 mm abdominal CT"),
    ("TotalSegmentator MR", "totalsegmentator_ct_examples/images/example_mr_sm.nii.gz", "3 mm MR"),
    ("seg_studio sample 2D", "sample:2d", "synthetic, seed 0"),
    ("seg_studio sample 3D", "sample:3d", "synthetic, seed 0"),
]


def read_scan(spec: str) -> Any:
    from seg_studio.core import io
    from seg_studio.core.samples import make_sample_2d, make_sample_3d

    if spec.startswith("sample:"):
        return (make_sample_2d if spec.endswith("2d") else make_sample_3d)(seed=0)[0]
    if spec.startswith("hc18px:"):  # an HC18 frame with the pixel size its CSV gives (the PNG stores none)
        from seg_studio.core.datasets import hc18

        folder, name = DATA / "hc18_fetal_head_ultrasound", spec.split(":", 1)[1]
        ref = hc18.read_reference(folder)[name]
        return io.set_pixel_size(io.read(folder / "images" / f"{name}.png"), (ref.pixel_mm,))
    return io.read(DATA / spec)


def run_one(model: Any, meta: Any, scan: Any) -> dict[str, Any]:
    """Check, predict (unless refused), check the result."""
    from seg_studio.core import domain
    from seg_studio.core.inference import PredictOptions, predict

    interactive = meta.interactive is not None  # it segments what is clicked: its scan check only
    before = domain.check_scan(meta.domain, scan) if interactive else domain.scan_warnings(meta, scan)
    row: dict[str, Any] = {
        "scan": [w.code for w in before],
        "scan_text": [w.message for w in before],
        "interactive": interactive,
    }
    if interactive or any(w.severity == "refuse" for w in before):
        row.update(result=[], result_text=[], seconds=None, foreground=None)
        return row
    t = time.perf_counter()
    pred = predict(scan, model, meta, PredictOptions(device="cpu", overlap=0.5, probabilities=True))
    after = domain.check_result(meta.domain, pred)
    labels = pred.labels.array
    row.update(
        result=[w.code for w in after],
        result_text=[w.message for w in after],
        seconds=round(time.perf_counter() - t, 1),
        foreground=round(float((labels != 0).mean()) * 100, 1),
    )
    return row


def _cell(codes: list[str]) -> str:
    return ", ".join(codes) if codes else "-"


def render(results: dict[str, dict[str, dict[str, Any]]], defaults: dict[str, str], header: str) -> str:
    names = list(results)
    lines = [
        "| data set (scan) | " + " | ".join(f"`{n}`" for n in names) + " | default pick |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    for ds, _spec, what in SCANS:
        cells = []
        for n in names:
            r = results[n][ds]
            fits = all(
                c == "dims" and "slice by slice" in t for c, t in zip(r["scan"], r["scan_text"], strict=True)
            )
            verdict = "**meant for**" if fits and not r["result"] else "not meant for"
            if r.get("interactive"):
                detail = f"clicks only; {_cell(r['scan'])}"
            elif r["seconds"] is None:
                detail = "refused: " + _cell(r["scan"])
            else:
                detail = f"{_cell(r['scan'])} / {_cell(r['result'])}"
            fg = "" if r["foreground"] is None else f"; {r['foreground']} % fg"
            cells.append(f"{verdict} ({detail}{fg})")
        lines.append(f"| {ds} ({what}) | " + " | ".join(cells) + f" | {defaults[ds]} |")
    return header + "\n".join(lines) + "\n"


def messages(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    out = ["", "## The warnings, word for word", ""]
    for n, per in results.items():
        out.append(f"### `{n}`")
        out.append("")
        for ds, _, _ in SCANS:
            r = per[ds]
            texts = r["scan_text"] + r["result_text"]
            if not texts:
                out.append(f"- **{ds}**: no warning")
                continue
            out.append(f"- **{ds}**:")
            out += [f"  - `warning: {t}`" for t in texts]
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "model_domains.md")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    a = p.parse_args()
    import torch

    from seg_studio.core import checkpoint, domain

    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    shipped = sorted(MODELS.glob("*.segmodel"))
    loaded = {f.stem: checkpoint.load(f) for f in shipped}
    scans = {ds: read_scan(spec) for ds, spec, _ in SCANS}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, (model, meta) in loaded.items():
        results[name] = {}
        for ds, scan in scans.items():
            results[name][ds] = run_one(model, meta, scan)
            sys.stderr.write(f"{name} on {ds}: {results[name][ds]}\n")
    defaults = {}
    for ds, scan in scans.items():
        ranked = domain.rank_checkpoints([(n, m) for n, (_, m) in loaded.items()], scan)
        defaults[ds] = f"`{ranked[0].key}`" if ranked and ranked[0].fits else "*no model fits this scan*"
    minutes = (time.perf_counter() - t0) / 60
    header = f"""# Which shipped model is meant for which scan

Every checkpoint records its **domain** (`seg_studio/core/domain.py`): modality, dims, channels, voxel
spacing and field-of-view ranges of its training scans, the quantiles of their intensities after the
model's normalisation, a sentence on the expected input, and per class the fraction of voxels and the
uncertainty the model produced on its held-back validation scans. Before predicting, the scan is
compared with it; after, the result is. `seg-studio predict` prints one `warning: ...` line per problem
on stderr (and `"warnings": [...]` with `--json`; the exit code stays 0); the app shows a banner over
the panel, and with no model chosen it picks the checkpoint whose domain fits best, or says
*no model fits this scan* and offers the untrained variants instead.

Below, each shipped model on one scan of every data set in `../shared/data`: **meant for** when no check
fires (a 2D model on a 3D scan, slice by slice, is only a note), else the warning codes before / after
predicting and the percentage of voxels the model marked as foreground; "refused" means the model
cannot run on it at all (channels or dims), and nothing was predicted. Codes: `dims` 2D model on a 3D
scan (slice by slice; for a model made for single 2D images, such as the ultrasound one, a mismatch) or
3D on 2D (refused), `channels`, `modality`, `spacing`, `no_spacing` (the scan
stores no pixel size), `fov` (field of view), `intensity`, `dark` (the share of the scan at its darkest
level, the black outside an ultrasound sector, unlike the training scans'), `fraction` (a class covers far more of the
scan than on validation), `uncertainty`. The interactive models (`*_clicks`) segment what the user
clicks, never a whole scan on their own: their column is the check `seg-studio refine` and the panel's
Clicks tab make before the first click (no prediction), and they are never a default. The last column
is the app's default for that scan.

Made by `nice .venv/bin/python benchmarks/domain_table.py` on {dt.date.today().isoformat()}: CPU
({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__},
load {load:.1f} at the start), {minutes:.1f} min in all.

"""
    text = render(results, defaults, header) + messages(results)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    if a.json:
        a.json.write_text(json.dumps({"results": results, "defaults": defaults}, indent=1))
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
