"""Devices, precision and DistributedDataParallel for ``torchrun --nproc_per_node=N -m seg_studio train``.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; we then join a process group (NCCL on GPUs, gloo on CPUs),
wrap the model in DDP (gradients averaged every step, buffers broadcast from rank 0), give every rank
its own patch stream, and let rank 0 alone validate and write files. Decisions that must agree (stop
now: time budget, early stopping, cancel) are taken on rank 0 and broadcast.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# the same device choice and native-bf16 rule as inference (AVX512-BF16, AMX or Apple silicon)
from ..inference.devices import pick_device, resolve_precision

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


#: The spellings a recipe may use for the precisions ``resolve_precision`` knows.
_PRECISION_ALIASES = {
    "float32": "fp32",
    "32": "fp32",
    "off": "fp32",
    "none": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "16": "fp16",
}


def pick_precision(device: torch.device, requested: str = "auto") -> torch.dtype | None:
    """Training's autocast dtype (None = fp32): inference's rule (``resolve_precision``), so a model
    trains in what it will run in, except "auto" on MPS, which trains in fp32 (fp16 there has no
    gradient scaler). An unknown name is an error, not a silent fp32."""
    req = str(requested or "auto").lower()
    req = _PRECISION_ALIASES.get(req, req)
    if req == "auto" and device.type == "mps":
        return None
    return resolve_precision(req, device)


def setup(device_name: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun; a plain run is world size 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=pick_device(device_name, local_rank=0))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank=local)
    here = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        here = True
        if device.type == "cpu":
            # N processes on one machine share its cores; oversubscription costs far more than it gives.
            per = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
            torch.set_num_threads(per)
    log.info("distributed: rank %d of %d on %s", rank, world, device)
    return DistInfo(rank, world, local, device, here)


def teardown(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flag(info: DistInfo, flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (one tiny collective)."""
    if not info.enabled:
        return flag
    t = torch.tensor(
        [1 if flag else 0], dtype=torch.int32, device=info.device if info.device.type == "cuda" else "cpu"
    )
    dist.broadcast(t, src=0)
    return bool(t.item())


def all_gather_floats(info: DistInfo, values: list[float]) -> list[list[float]]:
    """Every rank's ``values`` (same length everywhere), on every rank."""
    if not info.enabled:
        return [values]
    dev = info.device if info.device.type == "cuda" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    out = [torch.zeros_like(t) for _ in range(info.world_size)]
    dist.all_gather(out, t)
    return [o.tolist() for o in out]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def parameter_checksum(model: torch.nn.Module) -> float:
    """Sum of |w| over all parameters in float64: equal on every rank iff DDP kept them in step."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in model.parameters()))
