"""DistributedDataParallel on CPU: two gloo processes via torchrun train one model, rank 0 writes it.

This is what ``torchrun --nproc_per_node=N -m seg_studio train ...`` does on a GPU node (NCCL there).
Each rank reports the checksum of its own parameters at the end; equal checksums prove the gradients
were averaged every step (different patches per rank would otherwise make the weights diverge).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from seg_studio.core import checkpoint
from seg_studio.core.io import write
from seg_studio.core.samples import make_sample_2d
from seg_studio.core.volume import Volume


def test_torchrun_two_cpu_processes_train_one_model(tmp_path: Path) -> None:
    imgs, labs = tmp_path / "images", tmp_path / "labels"
    imgs.mkdir()
    labs.mkdir()
    for i in range(4):
        img, lab = make_sample_2d(seed=i)
        write(Volume.from_array(img.array[::2, ::2].copy()), imgs / f"c{i}.nii.gz")
        write(Volume.from_array(lab.array[::2, ::2].copy(), meta={"kind": "labels"}), labs / f"c{i}.nii.gz")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "seg_studio", "train", "--images", str(imgs), "--labels", str(labs), "--out", str(out),
        "--arch-args", '{"features": 4, "depth": 2}', "--steps", "3", "--val-every", "0",
        "--batch-size", "2", "--patch", "32,32", "--device", "cpu", "--json",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    assert proc.stdout.count('"last"') == 1  # only rank 0 reports (and writes)
    files = sorted(p.name for p in out.iterdir())
    assert files.count("last.segmodel") == 1 and not [f for f in files if ".tmp" in f]
    model, meta = checkpoint.load(out / "last.segmodel")
    ddp = meta.provenance["ddp"]
    assert ddp["world_size"] == 2 and len(ddp["param_checksums"]) == 2
    assert ddp["param_checksums"][0] == pytest.approx(ddp["param_checksums"][1], rel=1e-12)
    # the saved weights are the ones the ranks agreed on
    from seg_studio.core.training.distributed import parameter_checksum

    assert parameter_checksum(model) == pytest.approx(ddp["param_checksums"][0], rel=1e-9)
    assert meta.provenance["metrics"]["step"] == 3
