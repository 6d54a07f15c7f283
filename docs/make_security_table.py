"""Regenerate the table of bad inputs in ``docs/security.md`` from what the tests really printed.

    python docs/make_security_table.py            # runs the battery (about 10 minutes on 2 cores)
    python docs/make_security_table.py --log F    # renders a log written by an earlier run

Each case of ``tests/core/test_bad_*.py`` appends the line the user got to the file named by
``SEG_STUDIO_BAD_INPUT_LOG``; this script runs them with it set and writes the table between the
``bad-inputs`` markers. Temporary paths are shown as ``<tmp>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "security.md"
START, END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"
TESTS = [
    "tests/core/test_bad_checkpoints.py",
    "tests/core/test_bad_labels.py",
    "tests/core/test_bad_scans.py",
    "tests/core/test_bad_saves.py",
]
_ORDER = [
    "checkpoint metadata",
    "checkpoint weights",
    "checkpoint file",
    "resume state",
    "labels (finetune)",
    "labels (train)",
    "labels (evaluate)",
    "DICOM series",
    "memory",
    "header points elsewhere",
    "scan file",
    "saves",
]


def run_battery(log: Path) -> None:
    env = {**os.environ, "SEG_STUDIO_BAD_INPUT_LOG": str(log), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
    subprocess.run(cmd, cwd=REPO, env=env, check=False)


def _cell(text: str, limit: int = 260) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def render(log: Path) -> str:
    rows: dict[str, dict] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            rows[rec["id"]] = rec
    order = {a: i for i, a in enumerate(_ORDER)}
    ranked = sorted(rows.values(), key=lambda r: (order.get(r["area"], 99), r["id"]))
    out = [
        f"{len(ranked)} bad inputs, each run by the tests through the real command line; *what the user gets* is "
        "the line it printed (exit 2: refused with that one line; exit 0: handled; 143: terminated).",
        "",
        "| # | case | area | bad input | exit | what the user gets |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(ranked, 1):
        line = r["line"].removeprefix("seg-studio ")
        out.append(
            f"| {i} | `{r['id']}` | {r['area']} | {_cell(r['given'], 140)} | {r['rc']} | {_cell(line)} |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", type=Path, help="a log from an earlier run (default: run the battery now)")
    args = ap.parse_args()
    log = args.log
    if log is None:
        log = Path(tempfile.mkdtemp()) / "bad_inputs.jsonl"
        run_battery(log)
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{render(log)}\n{END}{tail}", encoding="utf-8")
    sys.stdout.write(f"wrote {DOC}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
