"""``seg-studio compare`` on tiny synthetic data and a few steps: real training, real files."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg_studio import cli
from seg_studio.core import io as sio
from seg_studio.core.compare import (
    CompareConfig,
    CompareResult,
    EvalResult,
    ResultsFile,
    RunResult,
    evaluate_checkpoint,
    iter_compare,
    markdown_table,
    write_reports,
)
from seg_studio.core.errors import Cancelled, TrainingError
from seg_studio.core.progress import CancelToken, run_to_end
from seg_studio.core.samples import make_sample_2d
from seg_studio.core.training import pairs_from_folders


@pytest.fixture(scope="module")
def sample_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cmp")
    for seed in range(5):
        img, lab = make_sample_2d(seed)
        sio.write(img, root / "images" / f"c{seed}.nii.gz")
        sio.write(lab, root / "labels" / f"c{seed}.nii.gz")
    return root / "images", root / "labels"


def _config(folders: tuple[Path, Path], out: Path, variants: list[str]) -> CompareConfig:
    base = {
        "images": str(folders[0]),
        "labels": str(folders[1]),
        "arch_args": {"features": 4, "depth": 2},
        "patch_size": [64, 64],
        "batch_size": 2,
        "val_every": 0,
        "val_fraction": 0.4,
    }
    return CompareConfig(base=base, variants=variants, max_steps=2, out=str(out), device="cpu")


def test_compare_trains_each_variant_on_one_split_and_writes_reports(
    sample_folders: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = _config(sample_folders, tmp_path / "cmp", ["unet", "attention_unet"])
    result = run_to_end(iter_compare(cfg))
    assert [r.variant for r in result.runs] == ["unet", "attention_unet"]
    assert len(result.val_cases) == 2  # 40 % of 5 cases, the same for both variants
    for r in result.runs:
        assert r.steps == 2 and r.parameters > 0 and r.train_s > 0
        assert len(r.eval.dice) == 3  # one Dice per foreground class
        assert all(0.0 <= d <= 1.0 for d in r.eval.dice.values())
        assert r.eval.infer_s_per_case > 0
        prov = json.loads((Path(r.checkpoint).parent / "history.json").read_text())
        assert prov, "each run keeps its own history"
    # one split file for the whole comparison
    assert (tmp_path / "cmp" / "split.json").exists()
    assert not list((tmp_path / "cmp").glob("*/seed0/split.json"))

    # the stored figures are what scoring the checkpoint again gives
    pairs = [p for p in pairs_from_folders(*sample_folders) if p.name in result.val_cases]
    assert len(pairs) == 2
    again = evaluate_checkpoint(result.runs[0].checkpoint, pairs, device="cpu")
    assert again.dice == pytest.approx(result.runs[0].eval.dice)
    # several paths are one ensemble: a checkpoint averaged with itself scores as it does alone
    ckpt = result.runs[0].checkpoint
    assert evaluate_checkpoint([ckpt, ckpt], pairs, device="cpu").dice == pytest.approx(again.dice, abs=1e-3)
    both = evaluate_checkpoint([ckpt, result.runs[1].checkpoint], pairs, device="cpu")
    assert set(both.dice) == set(again.dice) and 0.0 <= both.mean_dice <= 1.0

    paths = write_reports(result, title="tiny")
    md = paths["md"].read_text()
    first_class = next(iter(result.runs[0].eval.dice))
    assert "`unet`" in md and "`attention_unet`" in md and f"Dice {first_class}" in md
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [r["variant"] for r in rows] == ["unet", "attention_unet"]
    assert float(rows[0]["mean_dice"]) == pytest.approx(result.runs[0].eval.mean_dice, abs=1e-4)
    with Image.open(paths["png"]) as im:
        assert im.format == "PNG" and im.width >= 480 and im.height > 300
        # the chart is not blank: coloured bars were drawn
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 4

    # a second call reuses the finished runs instead of training again
    msgs = []
    gen = iter_compare(cfg)
    while True:
        try:
            msgs.append(next(gen).message)
        except StopIteration as stop:
            again = stop.value
            break
    assert sum("reused" in m for m in msgs) == 2
    assert [r.eval.mean_dice for r in again.runs] == pytest.approx([r.eval.mean_dice for r in result.runs])

    # report-only: finished runs are collected, a variant never trained is listed as not run
    cfg.variants = ["unet", "res_unet"]
    partial = run_to_end(iter_compare(cfg, train=False))
    assert [r.variant for r in partial.runs] == ["unet"]
    assert "not run" in partial.failed["res_unet/seed0"]
    assert not (tmp_path / "cmp" / "res_unet").exists()


def _messages(cfg: CompareConfig, cancel: CancelToken | None = None) -> tuple[list[str], CompareResult]:
    msgs: list[str] = []
    gen = iter_compare(cfg, cancel)
    while True:
        try:
            msgs.append(next(gen).message)
        except StopIteration as stop:
            return msgs, stop.value


def test_a_results_file_carries_a_comparison_across_sessions(
    sample_folders: tuple[Path, Path], tmp_path: Path
) -> None:
    """Finished (dataset, variant, seed) runs go into one JSON; a later session with an empty run folder
    trains nothing it holds, validates on the same cases, and adds only the runs still missing."""
    results = tmp_path / "results.json"
    first = _config(sample_folders, tmp_path / "day1", ["unet"])
    first.results, first.dataset, first.seeds = str(results), "tiny", [0]
    done = run_to_end(iter_compare(first))
    data = json.loads(results.read_text())
    assert list(data["datasets"]["tiny"]["runs"]) == ["unet/seed0"]
    split = json.loads((tmp_path / "day1" / "split.json").read_text())
    assert sorted(data["datasets"]["tiny"]["split"]["val"]) == sorted(split["val"])

    # day 2: another folder (a fresh clone has no runs/), one more seed
    second = _config(sample_folders, tmp_path / "day2", ["unet"])
    second.results, second.dataset, second.seeds = str(results), "tiny", [0, 1]
    msgs, res = _messages(second)
    assert sum("reused" in m and "results.json" in m for m in msgs) == 1
    assert not (tmp_path / "day2" / "unet" / "seed0").exists()  # not trained again
    assert (tmp_path / "day2" / "unet" / "seed1" / "result.json").exists()
    assert res.runs[0].eval.mean_dice == pytest.approx(done.runs[0].eval.mean_dice)
    assert sorted(json.loads((tmp_path / "day2" / "split.json").read_text())["val"]) == sorted(split["val"])
    assert sorted(ResultsFile(results).read()["datasets"]["tiny"]["runs"]) == ["unet/seed0", "unet/seed1"]

    # other settings are another run, not a reuse
    third = _config(sample_folders, tmp_path / "day3", ["unet"])
    third.results, third.dataset, third.max_steps = str(results), "tiny", 3
    msgs, _ = _messages(third)
    assert not any("reused" in m for m in msgs)
    kept = ResultsFile(results).read()["datasets"]["tiny"]["runs"]
    assert len(kept) == 3 and kept["unet/seed0"]["result"]["steps"] == 2  # the 2-step run is not lost
    assert ResultsFile(results).run("tiny", "unet", 0, third.fit_config("unet", 0)).steps == 3

    # a run folder split on other cases than the results file records: one clear error, nothing trained
    other = tmp_path / "other"
    other.mkdir()
    (other / "split.json").write_text(json.dumps({**split, "val": split["train"][:1]}))
    clash = _config(sample_folders, other, ["unet"])
    clash.results, clash.dataset = str(results), "tiny"
    with pytest.raises(TrainingError, match="other cases"):
        run_to_end(iter_compare(clash))
    assert not (other / "unet").exists()


def test_a_run_stopped_part_way_resumes_where_it_stopped(
    sample_folders: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _config(sample_folders, tmp_path / "cmp", ["unet"])
    cfg.max_steps, cfg.base = 4, {**cfg.base, "val_every": 2}
    cancel = CancelToken()
    gen = iter_compare(cfg, cancel)
    with pytest.raises(Cancelled):
        for p in gen:  # stop it after the checkpoint at step 2 (a kill, a session's end)
            if p.stage == "train" and p.done >= 3:
                cancel.cancel()
    run = tmp_path / "cmp" / "unet" / "seed0"
    assert (run / "resume.pt").exists() and not (run / "result.json").exists()
    caplog.set_level("INFO", logger="seg_studio.core.training.fit")
    msgs, res = _messages(cfg)
    assert any(m.startswith("resuming unet") for m in msgs)
    assert "resuming at step 2" in caplog.text
    assert res.runs[0].steps == 4 and (run / "result.json").exists()
    # a changed budget is another run: it starts afresh
    cfg.max_steps = 5
    caplog.clear()
    msgs, res = _messages(cfg)
    assert any(m.startswith("training unet") for m in msgs) and "resuming" not in caplog.text
    assert res.runs[0].steps == 5


def _run(variant: str, seed: int, dice: float) -> RunResult:
    ev = EvalResult({"a": dice, "b": dice / 2}, {"a": 2.0, "b": math.inf}, dice * 0.75, 0.1)
    return RunResult(variant, seed, 1000, 10, 5.0, ev, "x.segmodel")


def test_summary_gives_mean_and_spread_over_seeds() -> None:
    cfg = CompareConfig(base={}, variants=["unet", "res_unet"], seeds=[0, 1], max_steps=1)
    res = CompareResult(
        cfg,
        [_run("unet", 0, 0.8), _run("unet", 1, 0.9), _run("res_unet", 0, 0.95), _run("res_unet", 1, 0.95)],
        [],
    )
    rows = {r["variant"]: r for r in res.summary()}
    m, s = rows["unet"]["dice_a"]
    assert m == pytest.approx(0.85) and s == pytest.approx(math.sqrt(0.005))
    assert rows["res_unet"]["dice_a"][1] == pytest.approx(0.0)
    assert math.isinf(rows["unet"]["hd95_b"][0])  # a missed class stays infinite, never averaged away
    assert res.summary()[0]["variant"] == "res_unet"  # best first
    md = markdown_table(res)
    assert "0.8500 ± 0.0707" in md and "inf" in md


def test_unknown_variant_and_missing_budget_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="did you mean 'unet'"):
        run_to_end(iter_compare(CompareConfig(base={}, variants=["unte"], max_steps=1, out=str(tmp_path))))
    with pytest.raises(TrainingError, match="budget"):
        CompareConfig(base={}, variants=["unet"]).fit_config("unet", 0)


def test_cli_compare(
    sample_folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'images = "{sample_folders[0]}"\nlabels = "{sample_folders[1]}"\n'
        "arch_args = { features = 4, depth = 2 }\npatch_size = [64, 64]\nbatch_size = 2\n"
        "val_every = 0\nval_fraction = 0.4\n"
    )
    out = tmp_path / "c"
    code = cli.main(
        [
            "compare",
            str(recipe),
            "--variants",
            "unet",
            "--steps",
            "1",
            "--out",
            str(out),
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "`unet`" in text
    assert (out / "compare.png").exists() and (out / "compare.csv").exists()
    assert (
        cli.main(["compare", str(recipe), "--variants", "nope", "--steps", "1", "--out", str(out), "-q"]) == 2
    )
