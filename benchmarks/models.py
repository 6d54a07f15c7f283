"""Parameters, FLOPs and CPU forward latency of every registered U-Net variant, as a Markdown table.

    .venv/bin/python benchmarks/models.py --out docs/models.md

Per variant (default config, 1 input channel, 2 classes): parameters in 2D and 3D; forward FLOPs
(``torch.utils.flop_counter``, counted on the meta device, so no compute) at 2D 512x512 and 3D 96^3;
forward latency (eval, ``torch.inference_mode``, batch 1, median of ``--repeats`` after one warm-up)
in 2D as fp32, fp32 + channels_last and bf16 autocast + channels_last, in 3D as fp32 and bf16
autocast. A second table shows what pruning UNet++ saves. The tables replace the block between the
``benchmark`` markers of ``--out`` (the prose around them is kept), with the machine, the command and
the load average seen during the run, because other jobs on a shared machine slow it down.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seg_studio.core.inference import cpu_has_fast_bf16, describe_hardware  # noqa: E402
from seg_studio.core.models import count_parameters, create_model, get_spec, list_models  # noqa: E402

START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


def flops(name: str, dims: int, size: int, **config: object) -> int:
    """Forward FLOPs from the shapes alone (meta tensors: nothing is allocated or computed)."""
    with torch.device("meta"):
        model = create_model(name, dims, 1, 2, **config).eval()
        x = torch.empty(1, 1, *([size] * dims))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def latency(model: torch.nn.Module, x: torch.Tensor, mode: str, repeats: int, slow_s: float = 10.0) -> float:
    """Median seconds of one forward in ``mode`` (fp32 | fp32_cl | bf16_cl | bf16) after a warm-up.

    A forward slower than ``slow_s`` is timed once (the warm-up matters little at that length).
    """
    if mode.endswith("_cl"):
        fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
        model, x = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    else:
        model = model.to(memory_format=torch.contiguous_format)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if mode.startswith("bf16") else nullcontext()
    with torch.inference_mode(), amp:
        t0 = time.perf_counter()
        model(x)  # warm-up: oneDNN builds its kernels on the first call
        warm = time.perf_counter() - t0
        times = []
        for _ in range(repeats if warm < slow_s else 1):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cold_forward(model: torch.nn.Module, x: torch.Tensor, mode: str) -> float:
    """One forward, no warm-up: only to decide whether a bigger input is affordable."""
    if mode.endswith("_cl"):
        fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
        model, x = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    else:
        model = model.to(memory_format=torch.contiguous_format)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if mode.startswith("bf16") else nullcontext()
    with torch.inference_mode(), amp:
        t0 = time.perf_counter()
        model(x)
        return time.perf_counter() - t0


def affordable_latency(
    model: torch.nn.Module, dims: int, sizes: list[int], mode: str, repeats: int, cap_s: float
) -> tuple[float, int]:
    """Latency at the largest of ``sizes`` (ascending) whose forward should take at most ``cap_s``.

    Climbs the ladder with single cold runs, extrapolating by voxel count; returns the time and the
    size it was measured at (smaller than the asked size when the full one would take too long).
    """
    chosen = sizes[0]
    for small, big in zip(sizes, sizes[1:], strict=False):
        t = cold_forward(model, torch.randn(1, 1, *([small] * dims)), mode)
        if t * (big / small) ** dims > cap_s:
            break
        chosen = big
    x = torch.randn(1, 1, *([chosen] * dims))
    return latency(model, x, mode, repeats), chosen


def _fmt_s(s: float | None) -> str:
    return "–" if s is None else (f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s" if s < 10 else f"{s:.0f} s")


def run(args: argparse.Namespace, log: Callable[[str], None]) -> str:
    torch.set_num_threads(args.threads)
    names = args.models or list_models(trainable_only=True)
    s2, s3 = args.size2d, args.size3d
    ladders = {2: sorted({s2 // 4, s2 // 2, s2}), 3: sorted({s3 // 3, (2 * s3) // 3, s3})}
    bf16_models = (
        set(names)
        if (args.bf16 == "all" or (args.bf16 == "auto" and cpu_has_fast_bf16()))
        else set(args.bf16_models)
    )
    loads = [os.getloadavg()[0]]
    rows = []
    for name in names:
        spec = get_spec(name)
        row: dict[str, object] = {"name": name}
        for dims, size, modes in ((2, s2, ("fp32", "fp32_cl", "bf16_cl")), (3, s3, ("fp32", "bf16"))):
            if dims not in spec.dims:
                continue
            torch.manual_seed(0)
            model = create_model(name, dims, 1, 2).eval()
            row[f"p{dims}"] = count_parameters(model)
            row[f"f{dims}"] = flops(name, dims, size)
            for mode in modes:
                if mode.startswith("bf16") and name not in bf16_models:
                    continue
                t, at = affordable_latency(model, dims, ladders[dims], mode, args.repeats, args.cap)
                row[f"t{dims}_{mode}"] = (t, at)
                log(f"{name:<18} {dims}D {mode:<8} {t:8.3f} s at {at}^{dims}  load {os.getloadavg()[0]:.1f}")
            del model
        loads.append(os.getloadavg()[0])
        rows.append(row)

    prune_rows = []
    if "unet_plus_plus" in names:
        torch.manual_seed(0)
        model = create_model("unet_plus_plus", 2, 1, 2).eval()
        x = torch.randn(1, 1, s2, s2)
        mode = "bf16_cl" if "unet_plus_plus" in bf16_models else "fp32_cl"
        for level in range(model.depth, 0, -1):
            model.prune(level)
            f = flops("unet_plus_plus", 2, s2, prune_level=level)
            t = latency(model, x, mode, args.repeats)
            prune_rows.append((level, f, t))
            log(f"unet_plus_plus pruned to L{level}: {f / 1e9:.1f} GFLOP {t:.3f} s ({mode})")
        loads.append(os.getloadavg()[0])
    return _markdown(args, rows, prune_rows, loads, bf16_models, mode_label=_MODE_LABEL)


_MODE_LABEL = {"fp32_cl": "fp32 + channels_last", "bf16_cl": "bf16 autocast + channels_last"}


def _cell(row: dict[str, object], key: str, size: int, dims: int) -> str:
    v = row.get(key)
    if v is None:
        return "–"
    t, at = v  # type: ignore[misc]
    return _fmt_s(t) if at == size else f"{_fmt_s(t)} @{at}{'²' if dims == 2 else '³'}"


def _ratio(row: dict[str, object], slow: str, fast: str, dims: int) -> str:
    """Throughput ratio fast/slow per voxel (sizes may differ); > 1 means ``fast`` is faster."""
    a, b = row.get(slow), row.get(fast)
    if a is None or b is None:
        return "–"
    (ta, sa), (tb, sb) = a, b  # type: ignore[misc]
    return f"{(ta / sa**dims) / (tb / sb**dims):.2f}x"


def _markdown(
    args: argparse.Namespace,
    rows: list[dict[str, object]],
    prune_rows: list[tuple[int, int, float]],
    loads: list[float],
    bf16_models: set[str],
    mode_label: dict[str, str],
) -> str:
    s2, s3 = args.size2d, args.size3d
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    native = cpu_has_fast_bf16()
    lines = [
        START,
        "",
        f"Measured {when} on {describe_hardware()} (torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}), torch "
        f"{torch.__version__}, `torch.set_num_threads({args.threads})`, Python {platform.python_version()}:",
        "",
        "```bash",
        args.command,
        "```",
        "",
        "Default config of each variant (`create_model(name, dims, in_channels=1, out_channels=2)`), batch 1, "
        "forward only, eval mode, `torch.inference_mode()`; latency = median of "
        f"{args.repeats} runs after one warm-up (one run when a forward takes over 10 s). GFLOP = "
        "`torch.utils.flop_counter` total (2 per multiply-add; convolutions and matrix products, not "
        "norms, activations or pooling). `cl` = channels_last; `bf16` = "
        "`torch.autocast('cpu', dtype=torch.bfloat16)`. A time marked `@64³` was measured on a smaller "
        f"input because the full size would have taken more than {args.cap:.0f} s a forward; speed-up "
        "columns compare throughput per voxel, so they stay valid across sizes (below 1x = slower).",
        "",
        f"| variant | params 2D | params 3D | GFLOP 2D {s2}² | 2D fp32 | 2D fp32 cl | 2D bf16 cl | "
        f"cl vs fp32 | bf16 cl vs fp32 | GFLOP 3D {s3}³ | 3D fp32 | 3D bf16 | bf16 vs fp32 3D |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r.get('p2', 0):,} | {r.get('p3', 0):,} | {r.get('f2', 0) / 1e9:.1f} | "  # type: ignore[operator]
            f"{_cell(r, 't2_fp32', s2, 2)} | {_cell(r, 't2_fp32_cl', s2, 2)} | {_cell(r, 't2_bf16_cl', s2, 2)} | "
            f"{_ratio(r, 't2_fp32', 't2_fp32_cl', 2)} | {_ratio(r, 't2_fp32', 't2_bf16_cl', 2)} | "
            f"{r.get('f3', 0) / 1e9:.1f} | {_cell(r, 't3_fp32', s3, 3)} | {_cell(r, 't3_bf16', s3, 3)} | "  # type: ignore[operator]
            f"{_ratio(r, 't3_fp32', 't3_bf16', 3)} |"
        )
    if not native and bf16_models != {r["name"] for r in rows}:
        lines += [
            "",
            "This CPU has no native bf16 (no AVX512-BF16 or AMX), so oneDNN emulates it and bf16 runs far "
            f"slower than fp32; bf16 was measured only for {', '.join(sorted(bf16_models)) or 'none'} "
            "(`--bf16-models`) to show by how much. On a CPU with native bf16, `--bf16 auto` measures "
            "every variant.",
        ]
    if prune_rows:
        full = prune_rows[0][1]
        mode = "bf16_cl" if "unet_plus_plus" in bf16_models else "fp32_cl"
        lines += [
            "",
            f"UNet++ pruned at inference (`model.prune(L)`), 2D {s2}², {mode_label[mode]}:",
            "",
            "| level L | nodes | GFLOP | share of full | latency |",
            "|--:|--:|--:|--:|--:|",
        ]
        for level, f, t in prune_rows:
            nodes = (level + 1) * (level + 2) // 2
            lines.append(f"| {level} | {nodes} | {f / 1e9:.1f} | {f / full:.0%} | {_fmt_s(t)} |")
    lo, hi = min(loads), max(loads)
    lines += [
        "",
        f"1-minute load average during the run: {lo:.1f} to {hi:.1f} on {os.cpu_count()} cores"
        + (
            " — other jobs were running at the same time, so the latencies are slower than on an idle "
            "machine; the ratios within a row are the more reliable figures."
            if hi > args.threads + 0.5
            else " (a quiet machine)."
        ),
        "",
        END,
    ]
    return "\n".join(lines)


def write_block(path: Path, block: str) -> None:
    """Replace the benchmark block of ``path`` (or append one), keeping the rest of the file."""
    text = path.read_text() if path.exists() else "# U-Net variants\n\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", help="variants to measure (default: every trainable one)")
    p.add_argument("--size2d", type=int, default=512)
    p.add_argument("--size3d", type=int, default=96)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cap", type=float, default=60.0, help="longest affordable forward, seconds")
    p.add_argument(
        "--bf16",
        choices=["auto", "all", "none"],
        default="auto",
        help="auto: every variant on CPUs with native bf16, else only --bf16-models",
    )
    p.add_argument("--bf16-models", nargs="*", default=["unet"], help="bf16 on CPUs without native bf16")
    p.add_argument("--out", type=Path, help="Markdown file whose benchmark block is replaced")
    args = p.parse_args(argv)
    args.command = ".venv/bin/python benchmarks/models.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    block = run(args, lambda s: print(s, flush=True))
    if args.out:
        write_block(args.out, block)
        print(f"wrote {args.out}")
    else:
        print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
