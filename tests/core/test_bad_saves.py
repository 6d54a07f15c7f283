"""Saves leave nothing behind: outputs are checked before the work, written as one transaction, and
a run killed (SIGKILL, SIGTERM) mid-save leaves no temp file that outlives the next save; a full disk
and a read-only folder say so; a second fine-tune to the same file is told it changed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from badinput import REPO, Bad, no_temp_files, record, run_case, scan, tiny_model

from seg_studio.core import atomic
from seg_studio.core.errors import ImageWriteError

# --- in-process cases ------------------------------------------------------------------------------------


def _predict(tmp: Path, **outputs: str) -> list[str]:
    s = tmp / "scan.nii.gz"
    if not s.exists():
        scan(s)
    m = tiny_model(tmp / "m.segmodel")
    args = ["predict", str(s), "--model", str(m)]
    for flag, value in outputs.items():
        args += [f"--{flag.replace('_', '-')}", value.format(tmp=tmp)]
    return args


def _nothing_written(*names: str) -> Callable[[Path, str, str], None]:
    def after(tmp: Path, out: str, err: str) -> None:
        for n in names:
            assert not (tmp / n).exists(), f"{n} was written"
        no_temp_files(tmp)

    return after


def _scan_unchanged(tmp: Path, out: str, err: str) -> None:
    from seg_studio.core import io

    assert io.read(tmp / "scan.nii.gz").array.dtype == np.float32  # still the scan, not a mask
    _nothing_written("mask.nii.gz")(tmp, out, err)


def _second_output_is_another_scan(tmp: Path) -> list[str]:
    """The probabilities target is a scan this process read (so only the writer refuses it, after
    the mask was written): the mask must go too (it stayed before)."""
    from seg_studio.core import io

    other = scan(tmp / "other.nii.gz")
    io.read(other)
    return _predict(tmp, out="{tmp}/mask.nii.gz", save_probabilities=str(other))


def _finetune(tmp: Path, out: str, parent: Path | None = None) -> list[str]:
    (tmp / "images").mkdir(exist_ok=True)
    (tmp / "labels").mkdir(exist_ok=True)
    from badinput import labels_like

    img = scan(tmp / "images" / "c.nii.gz")
    labels_like(tmp / "labels" / "c.nii.gz", img)
    parent = parent or tiny_model(tmp / "parent.segmodel")
    return ["finetune", "--model", str(parent), "--images", str(tmp / "images"), "--labels", str(tmp / "labels"),
            "--out", out.format(tmp=tmp), "--steps", "1", "-q", "--device", "cpu"]  # fmt: skip


def _file_in_the_way(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return _predict(tmp, out="{tmp}/afile/mask.nii.gz")


def _train_out_is_file(tmp: Path) -> list[str]:
    (tmp / "run").write_text("x")
    args = _finetune(tmp, "{tmp}/unused.segmodel")
    return [
        "train",
        "--images",
        args[4],
        "--labels",
        args[6],
        "--out",
        str(tmp / "run"),
        "--steps",
        "1",
        "-q",
    ]


# fmt: off
CASES: list[Bad] = [
    Bad("sv-out-is-input", "saves", "predict --out equal to the input scan", lambda t: _predict(t, out="{tmp}/scan.nii.gz"), r"refusing to overwrite .*scan.nii.gz", after=_scan_unchanged, max_s=10),
    Bad("sv-probabilities-is-input", "saves", "--save-probabilities equal to the input scan (the mask stayed, no 'wrote' line before)", lambda t: _predict(t, out="{tmp}/mask.nii.gz", save_probabilities="{tmp}/scan.nii.gz"), r"refusing to overwrite .*--save-probabilities", after=_scan_unchanged, max_s=10),
    Bad("sv-out-twice", "saves", "--out and --save-probabilities naming the same file", lambda t: _predict(t, out="{tmp}/x.nii.gz", save_probabilities="{tmp}/x.nii.gz"), r"both name", after=_nothing_written("x.nii.gz")),
    Bad("sv-second-output-fails", "saves", "the second output refused by the writer after the mask was written", _second_output_is_another_scan, r"refusing to overwrite the input scan", after=_nothing_written("mask.nii.gz")),
    Bad("sv-out-jpeg", "saves", "predict --out mask.jpg (lossy)", lambda t: _predict(t, out="{tmp}/mask.jpg"), r"cannot save a mask as .jpg", after=_nothing_written("mask.jpg"), max_s=10),
    Bad("sv-out-no-suffix", "saves", "predict --out without a suffix", lambda t: _predict(t, out="{tmp}/mask"), r"no extension"),
    Bad("sv-probabilities-png", "saves", "--save-probabilities p.png (cannot hold floats)", lambda t: _predict(t, out="{tmp}/mask.nii.gz", save_probabilities="{tmp}/p.png"), r"float maps need", after=_nothing_written("mask.nii.gz")),
    Bad("sv-out-folder", "saves", "predict --out naming an existing folder", lambda t: (t / "dir.nii.gz").mkdir() or _predict(t, out="{tmp}/dir.nii.gz"), r"is a folder"),
    Bad("sv-out-under-a-file", "saves", "predict --out inside a path that is a file", _file_in_the_way, r"is a file, not a folder"),
    Bad("sv-out-is-model", "saves", "predict --out naming the model file", lambda t: _predict(t, out="{tmp}/m.segmodel"), r"cannot save a mask as .segmodel"),
    Bad("sv-finetune-over-parent", "saves", "finetune --out equal to its parent", lambda t: _finetune(t, "{tmp}/parent.segmodel"), r"never overwritten"),
    Bad("sv-finetune-suffix", "saves", "finetune --out child.nii.gz", lambda t: _finetune(t, "{tmp}/child.nii.gz"), r"\.segmodel file"),
    Bad("sv-finetune-over-image", "saves", "finetune --out naming its image folder", lambda t: _finetune(t, "{tmp}/images"), r"\.segmodel file"),
    Bad("sv-train-out-file", "saves", "train --out naming a file", _train_out_is_file, r"is a file"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_output(case: Bad, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_case(case, tmp_path, capsys)


# --- the transaction, the unchanged-file guard, the stale-temp cleaner -----------------------------------


def test_transaction_keeps_nothing_when_one_save_fails(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(ImageWriteError, match="boom"), atomic.transaction():
        atomic.atomic_write(tmp_path / "a.txt", lambda t: t.write_text("new a"))
        atomic.atomic_write(tmp_path / "b.txt", lambda t: t.write_text("new b"))
        assert (tmp_path / "a.txt").read_text() == "old a"  # staged, not yet replaced
        atomic.atomic_write(tmp_path / "c.txt", lambda t: (_ for _ in ()).throw(ValueError("boom")))
    assert (tmp_path / "a.txt").read_text() == "old a" and not (tmp_path / "b.txt").exists()
    no_temp_files(tmp_path)
    with atomic.transaction():
        atomic.atomic_write(tmp_path / "a.txt", lambda t: t.write_text("new a"))
        atomic.atomic_write(tmp_path / "b.txt", lambda t: t.write_text("new b"))
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"


def test_a_file_changed_under_a_run_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "child.segmodel"
    with atomic.expect_unchanged(target):
        atomic.atomic_write(target, lambda t: t.write_text("mine"))  # our own save is expected
        atomic.atomic_write(target, lambda t: t.write_text("mine again"))
        target.write_text("another run's")
        with pytest.raises(ImageWriteError, match="changed while this run was working"):
            atomic.atomic_write(target, lambda t: t.write_text("mine, third"))
    assert target.read_text() == "another run's"
    no_temp_files(tmp_path)


def test_stale_temps_are_cleaned_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = atomic.writer_tag().rsplit("-", 1)[0]
    names = {
        f".mask.tmp-{tag}-{dead.pid}-ab12cd34.nii.gz": False,  # its writer is gone
        f".mask.tmp-{tag}-{os.getpid()}-ab12cd35.nii.gz": True,  # ours, alive
        f".mask.tmp-otherhost-{dead.pid}-ab12cd36.nii.gz": True,  # another machine's: not ours to judge
        ".old.tmp-ab12cd37.segmodel": False,  # an older seg_studio's, two hours old
        ".young.tmp-ab12cd38.segmodel": True,  # an older seg_studio's, just written
        ".notes.tmp-ab12cd39.docx": True,  # not a suffix of ours
        "mask.nii.gz": True,
    }
    for n in names:
        (tmp_path / n).write_text("x")
    two_hours_ago = time.time() - 7200
    os.utime(tmp_path / ".old.tmp-ab12cd37.segmodel", (two_hours_ago, two_hours_ago))
    os.utime(tmp_path / ".notes.tmp-ab12cd39.docx", (two_hours_ago, two_hours_ago))
    staged = tmp_path / f".scan.tmp-{tag}-{dead.pid}-abcdefgh"  # a killed .mhd staging folder
    staged.mkdir()
    (staged / "scan.raw").write_text("x")
    removed = {p.name for p in atomic.clean_stale_temps(tmp_path, force=True)}
    assert removed == {n for n, keep in names.items() if not keep} | {staged.name}
    assert all((tmp_path / n).exists() == keep for n, keep in names.items())
    assert atomic.is_temp_name(f".mask.tmp-{tag}-1-ab12cd34.nii.gz") and not atomic.is_temp_name(
        "mask.nii.gz"
    )


# --- real processes: killed mid-save, full disk, read-only folder, two fine-tunes ---------------------------


def _env(home: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if home:
        env.update(SEG_STUDIO_HOME=home, HOME=home)
    return env


def _temps(folder: Path, suffix: str) -> list[Path]:
    try:
        return [folder / n for n in os.listdir(folder) if atomic.is_temp_name(n) and n.endswith(suffix)]
    except FileNotFoundError:
        return []


def _kill_during_save(
    args: list[str], folder: Path, suffix: str, sig: int, env: dict[str, str]
) -> tuple[int, str]:
    """Start the CLI, wait for its temp file to appear, send ``sig``; returns (exit code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "seg_studio", *args], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not _temps(folder, suffix):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the save never started: {proc.communicate()[1][-2000:]}")
        time.sleep(0.001)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _big_predict(tmp: Path) -> list[str]:
    from seg_studio.core import io
    from seg_studio.core.volume import Volume

    rng = np.random.default_rng(0)
    io.write(Volume.from_array(rng.normal(size=(1200, 1200)).astype(np.float32)), tmp / "big.nii.gz")
    model = tiny_model(tmp / "m.segmodel", patch_size=(600, 600))
    (tmp / "out").mkdir()
    return ["predict", str(tmp / "big.nii.gz"), "--model", str(model), "--out", str(tmp / "out" / "mask.nii.gz"),
            "--save-probabilities", str(tmp / "out" / "p.nii.gz"), "--device", "cpu"]  # fmt: skip


@pytest.mark.slow
def test_sigkill_during_predict_save_leaves_nothing_after_the_next_save(tmp_path: Path) -> None:
    args = _big_predict(tmp_path)
    rc, _ = _kill_during_save(args, tmp_path / "out", ".nii.gz", signal.SIGKILL, _env())
    assert rc == -signal.SIGKILL
    left = _temps(tmp_path / "out", ".nii.gz")
    assert left, "SIGKILL came after the save; nothing to clean"
    assert not (tmp_path / "out" / "mask.nii.gz").exists() or not (tmp_path / "out" / "p.nii.gz").exists()
    res = subprocess.run(
        [sys.executable, "-m", "seg_studio", *args], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr
    no_temp_files(tmp_path / "out")
    record("sv-sigkill-predict", "saves", "SIGKILL during the save of predict (a hidden .NAME.tmp-*.nii.gz stayed before)",
           rc, f"killed; {len(left)} temp file(s) left, removed by the next save into the folder")  # fmt: skip


@pytest.mark.slow
def test_sigterm_during_predict_save_leaves_nothing(tmp_path: Path) -> None:
    args = _big_predict(tmp_path)
    rc, err = _kill_during_save(args, tmp_path / "out", ".nii.gz", signal.SIGTERM, _env())
    assert rc == 143, err
    assert "terminated; nothing was written" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "mask.nii.gz").exists() and not (tmp_path / "out" / "p.nii.gz").exists()
    no_temp_files(tmp_path / "out")
    record(
        "sv-sigterm-predict",
        "saves",
        "SIGTERM during the save of predict",
        rc,
        err.strip().splitlines()[-1],
        tmp_path,
    )


def _big_parent(tmp: Path) -> Path:
    """A 2D U-Net of 7.8 M parameters (31 MB): its save takes long enough to be caught."""
    from seg_studio.core import checkpoint as ckpt
    from seg_studio.core.models import create_model

    model = create_model("unet", spatial_dims=2, in_channels=1, out_channels=2, features=32, depth=4)
    meta = ckpt.new_meta(model, "unet", {"features": 32, "depth": 4}, patch_size=(32, 32))
    return ckpt.save(tmp / "parent.segmodel", model, meta)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_killed_finetune_leaves_the_parent_and_no_model_behind(tmp_path: Path, sig: int) -> None:
    parent = _big_parent(tmp_path)
    before = parent.read_bytes()
    home = tmp_path / "home"
    models = home / "models"
    models.mkdir(parents=True)
    args = _finetune(tmp_path, str(models / "ft.segmodel"), parent)
    rc, err = _kill_during_save(args, models, ".segmodel", sig, _env(home=str(home)))
    assert parent.read_bytes() == before
    if sig == signal.SIGTERM:
        assert rc == 143 and "terminated; nothing was written" in err, err
        assert not _temps(models, ".segmodel") and not (models / "ft.segmodel").exists()
        record(
            "sv-sigterm-finetune",
            "saves",
            "SIGTERM during the save of finetune",
            rc,
            err.strip().splitlines()[-1],
            tmp_path,
        )
        return
    left = _temps(models, ".segmodel")
    assert rc == -signal.SIGKILL and left, "SIGKILL came after the save"
    # the temp file is never offered as a model, and the next save into the folder removes it
    assert all(atomic.is_temp_name(p.name) for p in left)
    atomic.atomic_write(models / "other.json", lambda t: t.write_text("{}"))
    assert not _temps(models, ".segmodel")
    record("sv-sigkill-finetune", "saves", "SIGKILL during the save of finetune (a 50 MB .ft.tmp-*.segmodel listed as a model before)",
           rc, "killed; parent byte-identical; the temp file is not listed and is removed by the next save")  # fmt: skip


@pytest.mark.slow
def test_second_finetune_to_the_same_out_is_told_it_changed(tmp_path: Path) -> None:
    """Two fine-tunes to the same --out run at once (one of 1 step, one of a 40 s budget): the one
    that finishes first writes its model, the other is told the file changed and replaces nothing."""
    from seg_studio.core import checkpoint as ckpt

    args = _finetune(tmp_path, "{tmp}/child.segmodel")
    long_args = list(args)
    long_args[long_args.index("--steps") + 1] = "100000"
    runs = {}
    for name, a in (("long", [*long_args, "--budget", "40"]), ("short", args)):
        runs[name] = subprocess.Popen([sys.executable, "-m", "seg_studio", *a], env=_env(), text=True,
                                      stderr=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        time.sleep(8)  # the long one has read its data and is training
    done = {name: (p.wait(timeout=400), p.communicate()[1]) for name, p in runs.items()}
    winners = [n for n, (rc, _) in done.items() if rc == 0]
    assert len(winners) == 1, done
    loser = next(n for n in done if n not in winners)
    rc, err = done[loser]
    line = err.strip().splitlines()[-1]
    assert rc == 2 and "while this run was working" in line and "Traceback" not in err, err
    steps = ckpt.read_meta(tmp_path / "child.segmodel").provenance["settings"]["steps"]
    assert (steps == 1) == (winners[0] == "short"), (winners, steps)
    no_temp_files(tmp_path)
    record("sv-two-finetunes", "saves", "two fine-tunes to the same --out (the second silently replaced the first before)",
           rc, line, tmp_path)  # fmt: skip


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return (
            subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True, timeout=20).returncode == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


def _in_small_disk(tmp: Path, size: str, fill_kb: int, args: list[str]) -> tuple[int, str, list[str]]:
    """Run the CLI with its output folder on a tmpfs of ``size`` (a private mount namespace)."""
    disk = tmp / "disk"
    disk.mkdir()
    py = " ".join(f"'{a}'" for a in [sys.executable, "-m", "seg_studio", *args])
    script = (
        f"mount -t tmpfs -o size={size} tmpfs '{disk}' && "
        f"{'head -c ' + str(fill_kb) + 'K /dev/zero > ' + repr(str(disk / 'fill')) + ' && ' if fill_kb else ''}"
        f"{py}; echo \"rc=$?\"; ls -A '{disk}'"
    )
    res = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", script], env=_env(), capture_output=True, text=True, timeout=300
    )
    out = res.stdout.splitlines()
    i = next(k for k, ln in enumerate(out) if ln.startswith("rc="))
    return int(out[i][3:]), res.stderr, [n for n in out[i + 1 :] if n != "fill"]


@pytest.mark.skipif(not _can_unshare(), reason="needs 'unshare -r -m' to mount a small tmpfs")
def test_full_disk_during_the_save_says_so_and_keeps_nothing(tmp_path: Path) -> None:
    from seg_studio.core import io
    from seg_studio.core.volume import Volume

    rng = np.random.default_rng(0)
    io.write(Volume.from_array(rng.normal(size=(1100, 1100)).astype(np.float32)), tmp_path / "s.nii.gz")
    m = tiny_model(tmp_path / "m.segmodel", patch_size=(550, 550))
    disk = tmp_path / "disk"
    rc, err, left = _in_small_disk(
        tmp_path,
        "6m",
        0,
        [
            "predict",
            str(tmp_path / "s.nii.gz"),
            "--model",
            str(m),
            "--out",
            str(disk / "mask.nii.gz"),
            "--save-probabilities",
            str(disk / "p.nii.gz"),
            "--probabilities-dtype",
            "float32",
        ],
    )  # fmt: skip  (float32: 9.7 MB, more than the disk)
    lines = [ln for ln in err.splitlines() if ln.startswith("seg-studio")]
    record("sv-disk-full", "saves", "a full disk during the save of several outputs (blamed a truncated source, kept the mask before)",
           rc, lines[-1] if lines else err[-300:], tmp_path)  # fmt: skip
    assert rc == 2 and "Traceback" not in err, err
    assert "the disk is full" in lines[-1], err
    assert left == [], f"left on the full disk: {left}"


@pytest.mark.skipif(not _can_unshare(), reason="needs 'unshare -r -m' to mount a small tmpfs")
def test_full_disk_is_refused_before_the_work(tmp_path: Path) -> None:
    m = tiny_model(tmp_path / "m.segmodel")
    s = scan(tmp_path / "s.nii.gz")
    disk = tmp_path / "disk"
    rc, err, left = _in_small_disk(
        tmp_path, "2m", 2000, ["predict", str(s), "--model", str(m), "--out", str(disk / "mask.nii.gz")]
    )
    line = err.strip().splitlines()[-1]
    record("sv-disk-full-before", "saves", "predict into a folder on a full disk", rc, line, tmp_path)
    assert rc == 2 and "is full" in line and "free some space" in line, err
    assert left == []


def test_read_only_folder_says_permission_denied_before_the_work(tmp_path: Path) -> None:
    """Refused before inference or a training budget, naming the real folder (not a temp name)."""
    base = Path(tempfile.mkdtemp(prefix="seg-ro-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        ro = base / "readonly"
        ro.mkdir()
        s = scan(base / "s.nii.gz")
        m = tiny_model(base / "m.segmodel")
        ft = _finetune(base, str(ro / "child.segmodel"), m)
        for p in base.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(ro, 0o555)
        runs = {
            "sv-readonly-predict": ["predict", str(s), "--model", str(m), "--out", str(ro / "mask.nii.gz")],
            "sv-readonly-finetune": ft,
        }
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        for case_id, args in runs.items():
            t0 = time.perf_counter()
            res = subprocess.run([*prefix, sys.executable, "-m", "seg_studio", *args], env=_env(home=str(base)),
                                 capture_output=True, text=True, timeout=300, cwd=base)  # fmt: skip
            elapsed = time.perf_counter() - t0
            line = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
            record(case_id, "saves", f"{args[0]} into a read-only folder ('nifti library failed to write' with a temp name before)",
                   res.returncode, line.replace(str(base), "<tmp>"))  # fmt: skip
            assert res.returncode == 2, res.stderr
            assert f"permission denied in {ro}" in line and ".tmp-" not in line, line
            assert elapsed < 60, f"refused only after {elapsed:.0f} s"
            assert os.listdir(ro) == []
    finally:
        os.chmod(base / "readonly", 0o755)
        shutil.rmtree(base, ignore_errors=True)
