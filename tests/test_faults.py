"""Fault injection: every fault a user can hit ends in one clear line, the right exit status, nothing
half-written, and no other run's result or index entry lost.

Generic faults run on the example plugin's ``twoshapes`` task; faults of thyroid data sets on tiny folder
data sets of the exact layout. Each test that injects a fault next to a finished run checks that the
finished run's ``result.json`` and index entry are byte-for-byte what they were.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtlbench import atomic
from mtlbench.config import resolve_config
from mtlbench.resolve import resolve_run
from mtlbench.results import RunFolder, read_index
from mtlbench.runner import run_experiment
from mtlbench.trainer import StopAfterEpochs, StopTraining
from tests.tiny import core_run_overrides, tiny_run_overrides

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 3, 130


# --------------------------------------------------------------------------------- helpers
def cli(*args: object, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The CLI in this process (monkeypatches apply): (exit code, stdout, stderr)."""
    from mtlbench.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_one_line(stderr: str, *fragments: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def core_args(tmp_path: Path, *, widths: bool = True, **extra: object) -> list[str]:
    """``mtlbench run`` of the core's small twoshapes run (``widths=False``: for another backbone)."""
    args = core_run_overrides(tmp_path, **extra)
    return ["run", *(a for a in args if widths or not a.startswith("backbone_args.widths="))]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (locks left out)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Path, RunFolder, bytes, dict]:
    """A finished twoshapes run under ``tmp_path/runs``: (runs dir, its folder, result bytes, index entry)."""
    outcome = run_experiment(
        resolve_config(core_run_overrides(tmp_path, **{"train.epochs": 1}), method="vanilla")
    )
    runs = tmp_path / "runs"
    entry = next(r for r in read_index(runs) if r["run_id"] == outcome.folder.run_id)
    return runs, outcome.folder, outcome.folder.result_path.read_bytes(), entry


def assert_intact(finished: tuple[Path, RunFolder, bytes, dict]) -> None:
    runs, folder, result, entry = finished
    assert folder.result_path.read_bytes() == result
    assert entry in read_index(runs)


def interrupted_run(tmp_path: Path, epochs_done: int, **extra: object) -> RunFolder:
    """A twoshapes run (3 epochs configured) stopped after ``epochs_done`` epochs."""
    cfg = resolve_config(core_run_overrides(tmp_path, **extra), method="vanilla")
    with pytest.raises(StopTraining):
        run_experiment(cfg, callbacks=(StopAfterEpochs(epochs_done),))
    return RunFolder.for_config(resolve_run(cfg).config)


def logged_epochs(folder: RunFolder) -> list[int]:
    return [json.loads(line)["epoch"] for line in folder.metrics_path.read_text().splitlines()]


# --------------------------------------------------------------------------------- settings
BAD_SETTINGS = [
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=-2", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.eval_batch_size=0", "train.eval_batch_size"),
    ("train.lr=-0.1", "train.lr"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.betas=[0.9,1.0]", "train.betas[1]"),
    ("train.betas=[-0.1,0.9]", "train.betas[0]"),
    ("train.steps_per_epoch=0", "train.steps_per_epoch"),
    ("train.val_steps=0", "train.val_steps"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.grad_clip=0", "train.grad_clip"),
    ("train.monitor=dice", "train.monitor 'dice'"),
    ("data.folds=3", "data.folds"),  # twoshapes has fixed splits
]


@pytest.mark.parametrize(("setting", "named"), BAD_SETTINGS)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, finished, setting, named) -> None:
    runs = finished[0]
    before = snapshot(runs)
    code, _, err = cli(*core_args(tmp_path), setting)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, named)
    assert snapshot(runs) == before  # no run folder, no index change
    assert_intact(finished)


def test_a_backbone_that_cannot_run_on_the_input_is_one_line_before_anything_is_written(
    tmp_path, finished
) -> None:
    """nnU-Net's default 6 stages halve twoshapes' 32 px image to 1 × 1 at the bottleneck, where an
    instance norm has a single value per channel: one line naming the backbone, its settings and the
    input, not a traceback from inside the norm."""
    runs = finished[0]
    before = snapshot(runs)
    code, _, err = cli(
        *core_args(tmp_path, widths=False), "--backbone", "nnunet_plain", "backbone_args.n_stages=6"
    )
    assert code == EXIT_BAD_INPUT
    assert_one_line(
        err, "backbone 'nnunet_plain' (", "n_stages=6", "input of shape (8, 1, 32, 32)", "1 spatial element"
    )
    assert snapshot(runs) == before
    assert_intact(finished)
    # the same backbone with stages the image can hold trains
    code, _, err = cli(
        *core_args(tmp_path, widths=False, **{"train.epochs": 1}),
        "--backbone",
        "nnunet_plain",
        "backbone_args.n_stages=4",
    )
    assert code == 0, err


def test_the_monitor_is_checked_on_one_batch_without_changing_the_run(tmp_path) -> None:
    # the check evaluates one validation batch; the random generators are restored, so the run is
    # bit-identical to one without the check
    from mtlbench.trainer import Trainer

    calls = []
    original = Trainer.check_monitor

    def spy(self: Trainer) -> None:
        calls.append(torch.get_rng_state().clone())
        original(self)
        assert torch.equal(torch.get_rng_state(), calls[-1])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "check_monitor", spy)
        run_experiment(resolve_config(core_run_overrides(tmp_path, **{"train.epochs": 1}), method="vanilla"))
    assert len(calls) == 1


# --------------------------------------------------------------------------------- run folder
def test_a_truncated_last_checkpoint_is_one_line(tmp_path, finished) -> None:
    folder = interrupted_run(tmp_path, 1)
    path = folder.checkpoint_path("last")
    path.write_bytes(path.read_bytes()[:1000])
    code, _, err = cli(*core_args(tmp_path))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, str(path), "damaged", "--restart")
    assert_intact(finished)
    code, _, err = cli(*core_args(tmp_path), "--restart")  # the remedy the line names works
    assert code == 0, err
    assert folder.is_finished()


def test_a_truncated_result_is_recreated_by_running_again(tmp_path, finished) -> None:
    cfg = resolve_config(core_run_overrides(tmp_path), method="vanilla")
    first = run_experiment(cfg)
    first.folder.result_path.write_text(first.folder.result_path.read_text()[:50])
    assert not first.folder.is_finished()
    again = run_experiment(cfg)
    assert not again.already_finished and again.resumed
    assert again.result["metrics"] == first.result["metrics"]  # re-evaluated from the best checkpoint
    assert json.loads(first.folder.result_path.read_text())["metrics"] == first.result["metrics"]
    assert logged_epochs(again.folder) == [1, 2, 3]
    assert_intact(finished)


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path) -> None:
    folder = interrupted_run(tmp_path, 2)
    with open(folder.metrics_path, "a") as handle:
        handle.write('{"epoch": 3, "global_step": 6, "tra')  # killed in the middle of a line
    outcome = run_experiment(resolve_config(core_run_overrides(tmp_path), method="vanilla"))
    assert outcome.resumed
    assert logged_epochs(outcome.folder) == [1, 2, 3]


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_epoch(tmp_path) -> None:
    folder = interrupted_run(tmp_path, 1)
    shutil.rmtree(folder.root / "checkpoints")  # the epoch's line was written, its checkpoint was not
    outcome = run_experiment(resolve_config(core_run_overrides(tmp_path), method="vanilla"))
    assert not outcome.resumed
    assert logged_epochs(outcome.folder) == [1, 2, 3]


def test_a_run_folder_in_use_is_refused(tmp_path, finished) -> None:
    cfg = resolve_config(core_run_overrides(tmp_path), method="vanilla")
    folder = RunFolder.for_config(resolve_run(cfg).config)
    folder.root.mkdir(parents=True)
    with atomic.locked(folder.root / ".lock"):  # another process training this configuration
        code, _, err = cli(*core_args(tmp_path))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, str(folder.root), "in use by another mtlbench process")
    assert not folder.metrics_path.exists() and not folder.has_checkpoint()
    assert_intact(finished)


def test_two_processes_with_one_configuration_train_it_once(tmp_path) -> None:
    args = [sys.executable, "-m", "mtlbench.cli", *core_args(tmp_path, **{"train.steps_per_epoch": 10})]
    env = {**os.environ, "MTLBENCH_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    folder = RunFolder(next((tmp_path / "runs" / "twoshapes").iterdir()), "")
    assert logged_epochs(folder) == [1, 2, 3]
    # the second either found the folder in use (one line) or, having started after, the finished result
    refused = [err for (_, err), p in zip(outs, procs) if p.returncode != 0]
    assert codes in ([0, 0], [0, EXIT_BAD_INPUT]), outs
    for err in refused:
        assert_one_line(err, "in use by another mtlbench process")


# --------------------------------------------------------------------------------- index
def test_a_corrupt_index_is_rebuilt_and_loses_no_run(tmp_path, finished) -> None:
    runs, folder, _, _ = finished
    (runs / "index.json").write_text('[{"run_id": "x", "ta')
    other = run_experiment(resolve_config(core_run_overrides(tmp_path, seed=1, **{"train.epochs": 1})))
    ids = {r["run_id"] for r in read_index(runs)}
    assert ids == {folder.run_id, other.folder.run_id}
    assert list(runs.glob("index.json.corrupt-*"))  # the broken file is kept, not overwritten


def test_a_finished_run_missing_from_the_index_is_indexed_again(tmp_path, finished) -> None:
    runs, folder, _, _ = finished
    (runs / "index.json").write_text("{not json")
    code, out, err = cli(*core_args(tmp_path, **{"train.epochs": 1}))
    assert code == 0, err
    assert "already finished" in out
    assert folder.run_id in {r["run_id"] for r in read_index(runs)}


def test_index_rebuild_command(tmp_path, finished) -> None:
    runs, folder, _, entry = finished
    (runs / "index.json").write_text("garbage")
    code, _, err = cli("index", "--output-dir", runs)
    assert code == EXIT_FAILED
    assert_one_line(err, "index --rebuild")
    code, out, err = cli("index", "--rebuild", "--output-dir", runs)
    assert code == 0, err
    assert "1 runs indexed" in out
    rebuilt = read_index(runs)
    assert [r["run_id"] for r in rebuilt] == [folder.run_id]
    assert {k: v for k, v in rebuilt[0].items() if k != "indexed_at"} == {
        k: v for k, v in entry.items() if k != "indexed_at"
    }


# --------------------------------------------------------------------------------- pickles
class _Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def write_malicious(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    return path


def test_a_malicious_last_checkpoint_is_refused_on_resume(tmp_path, finished) -> None:
    folder = interrupted_run(tmp_path, 1)
    marker = tmp_path / "pwned"
    write_malicious(folder.checkpoint_path("last"), marker)
    code, _, err = cli(*core_args(tmp_path))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "last.pt", "refused")
    assert not marker.exists()
    assert_intact(finished)


def test_a_malicious_pretrained_file_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = write_malicious(tmp_path / "weights.pt", marker)
    code, _, err = cli(*core_args(tmp_path), f"backbone_args.pretrained={path}")
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "weights_only=True")
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_a_malicious_nnunet_checkpoint_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = write_malicious(tmp_path / "checkpoint_final.pth", marker)
    code, _, err = cli(
        *core_args(tmp_path, widths=False),
        "--backbone",
        "nnunet_plain",
        "backbone_args.n_stages=3",
        "backbone_args.features_per_stage=[8,16,32]",
        f"nnunet_checkpoint={path}",
    )
    assert code == EXIT_BAD_INPUT, err
    assert_one_line(err)
    assert not marker.exists() and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------- full / read-only disk
@contextlib.contextmanager
def _failing_writes(target: str, error: int) -> Iterator[list[str]]:
    """``os.fdopen`` handles of files whose temporary name contains ``target`` fail to write with
    ``error`` (a patched writer: the disk fills up or turns read-only at that file)."""
    real = os.fdopen
    hits: list[str] = []

    class Failing:
        def __init__(self, handle) -> None:  # type: ignore[no-untyped-def]
            self.handle = handle

        def write(self, data) -> int:  # type: ignore[no-untyped-def]
            raise OSError(error, os.strerror(error))

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self.handle, name)

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
            self.handle.close()

    def fdopen(fd, *args, **kwargs):  # type: ignore[no-untyped-def]
        handle = real(fd, *args, **kwargs)
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if target in name:
            hits.append(name)
            return Failing(handle)
        return handle

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(atomic.os, "fdopen", fdopen)
        yield hits


@pytest.mark.parametrize(
    ("error", "reason"), [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only")]
)
def test_a_full_or_read_only_disk_keeps_the_last_good_checkpoint(tmp_path, finished, error, reason) -> None:
    folder = interrupted_run(tmp_path, 1)
    good = folder.checkpoint_path("last").read_bytes()
    with _failing_writes(".last.pt.", error) as hits:
        code, _, err = cli(*core_args(tmp_path))
    assert hits
    assert code == EXIT_FAILED
    assert_one_line(err, f"cannot write {folder.checkpoint_path('last')}: {reason}")
    assert folder.checkpoint_path("last").read_bytes() == good  # the last good checkpoint is kept
    assert not list(folder.root.rglob("*.tmp"))
    assert_intact(finished)
    code, _, err = cli(*core_args(tmp_path))  # space again: the run resumes and finishes
    assert code == 0, err


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        )
    except OSError:
        return False
    return done.returncode == 0


def test_a_really_full_tmpfs(tmp_path) -> None:
    """On a real 2 MiB tmpfs (needs mount rights; skipped otherwise): the disk fills after epoch 1."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        overrides = core_run_overrides(tmp_path, output_dir=disk / "runs")
        interrupted = resolve_config(overrides, method="vanilla")
        with pytest.raises(StopTraining):
            run_experiment(interrupted, callbacks=(StopAfterEpochs(1),))
        folder = RunFolder.for_config(resolve_run(interrupted).config)
        good = folder.checkpoint_path("last").read_bytes()
        with open(disk / "filler", "wb") as handle:  # fill what is left
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
        code, _, err = cli("run", *overrides)
        assert code == EXIT_FAILED
        assert_one_line(err, "cannot write", "No space left on device")
        assert folder.checkpoint_path("last").read_bytes() == good
        (disk / "filler").unlink()
        code, _, err = cli("run", *overrides)
        assert code == 0, err
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_read_only_output_directory_before_the_run(tmp_path, finished) -> None:
    with _failing_writes("config.yaml", errno.EROFS):
        code, _, err = cli(*core_args(tmp_path, seed=5))
    assert code == EXIT_FAILED
    assert_one_line(err, "cannot write", "config.yaml", "Read-only file system")
    assert_intact(finished)


# --------------------------------------------------------------------------------- interrupts
def _start(args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "MTLBENCH_CACHE": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("COLUMNS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "mtlbench.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        # a test suite started as a background job (`cmd &`) has SIGINT ignored, and the child would
        # inherit that: it gets Ctrl-C's default disposition, as in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(condition, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigint_before_the_first_epoch_says_nothing_is_saved(tmp_path) -> None:
    args = core_args(tmp_path, **{"train.steps_per_epoch": 2000})
    proc = _start(args, tmp_path)
    runs = tmp_path / "runs" / "twoshapes"
    _wait_for(lambda: runs.exists() and any(runs.iterdir()))  # training has started
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED
    assert "nothing to resume" in err and "Traceback" not in err


def test_sigint_after_an_epoch_says_it_is_saved_and_the_run_resumes(tmp_path) -> None:
    args = core_args(tmp_path, **{"train.epochs": 12, "train.steps_per_epoch": 20})
    proc = _start(args, tmp_path)
    runs = tmp_path / "runs" / "twoshapes"
    _wait_for(lambda: any(runs.glob("*/checkpoints/last.pt")) if runs.exists() else False)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED
    assert "the last finished epoch is saved" in err and "Traceback" not in err
    code, out, err = cli(*args, "train.progress=false")
    assert code == 0, err
    resumed_at = out.index("resuming from the last checkpoint")
    assert resumed_at < out.index("run folder:")  # said before training, not after


def test_sigint_during_cv_is_one_line(tmp_path) -> None:
    args = ["cv", "--folds", "2", *tiny_run_overrides(tmp_path, **{"train.steps_per_epoch": 400})]
    proc = _start(args, tmp_path)
    runs = tmp_path / "runs" / "thyroid"
    _wait_for(lambda: runs.exists() and any(runs.iterdir()), timeout=240)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED
    assert "interrupted" in err and "Traceback" not in err


def test_sigkill_then_rerun_gives_the_uninterrupted_weights(tmp_path) -> None:
    # every run in a subprocess of the same thread count, as a user runs them
    def run_to_end(where: Path) -> RunFolder:
        proc = _start(core_args(where, **{"train.steps_per_epoch": 20}), where)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        return RunFolder(next((where / "runs" / "twoshapes").iterdir()), "")

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = run_to_end(tmp_path / "a")
    proc = _start(core_args(tmp_path / "b", **{"train.steps_per_epoch": 20}), tmp_path / "b")
    runs = tmp_path / "b" / "runs" / "twoshapes"
    _wait_for(lambda: any(runs.glob("*/checkpoints/last.pt")) if runs.exists() else False)
    proc.kill()
    proc.communicate(timeout=60)
    killed = run_to_end(tmp_path / "b")
    a = torch.load(straight.checkpoint_path("last"), weights_only=True)
    b = torch.load(killed.checkpoint_path("last"), weights_only=True)
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert logged_epochs(killed) == [1, 2, 3]


# --------------------------------------------------------------------------------- output
def test_the_table_does_not_wrap_when_stdout_is_not_a_terminal(tmp_path) -> None:
    proc = _start(["run", *tiny_run_overrides(tmp_path, **{"train.epochs": 1})], tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    header = [line for line in out.splitlines() if "Dice" in line]
    assert header and all(k in header[0] for k in ("IoU", "HD95", "Precision", "Recall", "F1")), out


# --------------------------------------------------------------------------------- thyroid data sets
FOLDER_SAMPLES = 12  # six patients, two images each


def make_folder_set(root: Path, *, splits: dict[str, str] | None = None, size: int = 40) -> Path:
    """A folder data set (images/, masks/, labels.csv) of 12 samples, every TI-RADS level present."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(FOLDER_SAMPLES):
        sample = f"s{i:02d}"
        image = rng.integers(0, 256, (size, size + 8), dtype=np.uint8)
        mask = np.zeros_like(image)
        mask[10:25, 12:30] = 255
        Image.fromarray(image).save(root / "images" / f"{sample}.png")
        Image.fromarray(mask).save(root / "masks" / f"{sample}.png")
        rows.append([sample, f"p{i // 2}", str(1 + i % 5), (splits or {}).get(sample, "")])
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "patient", "tirads", "split"])
        writer.writerows(rows)
    return root


def thyroid_args(tmp_path: Path, root: Path, *extra: str, fmt: str = "folder") -> list[str]:
    return [
        "run",
        *tiny_run_overrides(tmp_path, **{"train.epochs": 1}),
        f"data.root={root}",
        f"data.format={fmt}",
        *extra,
    ]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["data.reader_options.skip_invalidd=true"], "skip_invalidd"),
        (["data.reader_options.skip_invalid=maybe"], "data.reader_options.skip_invalid"),
        (["data.fold=3"], "data.fold"),
        (["data.folds=3", "data.fold=3"], "data.fold"),
    ],
)
def test_bad_reader_settings_are_one_line_before_anything_is_written(tmp_path, extra, named) -> None:
    root = make_folder_set(tmp_path / "set")
    code, _, err = cli(*thyroid_args(tmp_path, root, *extra))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, named)
    assert not (tmp_path / "runs").exists()


def test_a_data_set_in_another_format_is_one_line(tmp_path) -> None:
    root = make_folder_set(tmp_path / "set")
    code, _, err = cli(*thyroid_args(tmp_path, root, fmt="thyroidxl"))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, str(root))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("setting", ["data.num_test=-1", "data.num_external=-3"])
def test_negative_phantom_sizes_are_refused(tmp_path, setting) -> None:
    code, _, err = cli("run", *tiny_run_overrides(tmp_path), setting)
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, setting.split("=")[0])


def test_unknown_timm_model_and_missing_pretrained_file(tmp_path) -> None:
    code, _, err = cli(
        *core_args(tmp_path, widths=False), "--backbone", "timm", "backbone_args.model_name=resnet_nope"
    )
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "'resnet_nope' is not a timm model")
    code, _, err = cli(*core_args(tmp_path), f"backbone_args.pretrained={tmp_path / 'missing.pt'}")
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "missing.pt")
    assert not (tmp_path / "runs").exists()


def test_a_sample_without_a_mask_is_one_line_and_skip_invalid_false_means_false(tmp_path) -> None:
    root = make_folder_set(tmp_path / "set")
    (root / "masks" / "s03.png").unlink()
    for extra in ([], ["data.reader_options.skip_invalid=false"]):
        code, _, err = cli(*thyroid_args(tmp_path, root, *extra))
        assert code == EXIT_BAD_INPUT
        assert_one_line(err, "s03", "no mask")
        assert not (tmp_path / "runs").exists()


def test_skip_invalid_skips_undecodable_images_in_a_worker_pool(tmp_path) -> None:
    root = make_folder_set(tmp_path / "set")
    (root / "images" / "s04.png").write_bytes(b"not a png")
    args = thyroid_args(tmp_path, root, "data.reader_options.skip_invalid=true", "data.radiomics_workers=2")
    code, _, err = cli(*args)
    assert code == 0, err
    result = json.loads(next((tmp_path / "runs").rglob("result.json")).read_text())
    report = result["data"]["read_report"]
    assert report["skipped"] == {"corrupt_image": 1}
    assert result["data"]["samples"] == FOLDER_SAMPLES - 1
    # without skip_invalid the same data set is refused, also from the cache built above
    code, _, err = cli(*thyroid_args(tmp_path, root, "data.radiomics_workers=2"))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "s04.png")


@pytest.mark.parametrize(
    ("fault", "said"), [("corrupt_images", "could be decoded"), ("no_masks", "no usable sample")]
)
def test_a_data_set_with_no_valid_sample_is_one_line(tmp_path, fault, said) -> None:
    root = make_folder_set(tmp_path / "set")
    if fault == "corrupt_images":  # found when decoding
        for image in (root / "images").iterdir():
            image.write_bytes(b"garbage")
    else:  # found when listing
        shutil.rmtree(root / "masks")
        (root / "masks").mkdir()
    code, _, err = cli(*thyroid_args(tmp_path, root, "data.reader_options.skip_invalid=true"))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, said)
    assert not (tmp_path / "runs").exists()


def test_a_val_split_column_is_the_validation_split(tmp_path) -> None:
    splits = {"s00": "val", "s01": "val", "s02": "test", "s03": "test"}
    splits.update({f"s{i:02d}": "train" for i in range(4, FOLDER_SAMPLES)})
    root = make_folder_set(tmp_path / "set", splits=splits)
    code, _, err = cli(*thyroid_args(tmp_path, root))
    assert code == 0, err
    data = json.loads(next((tmp_path / "runs").rglob("result.json")).read_text())["data"]
    assert data["val_samples"] == 2
    assert sum(data["train_class_counts"].values()) == FOLDER_SAMPLES - 4  # every row used somewhere
    # with data.folds (cross-validation) the val rows join the pool
    code, _, err = cli(*thyroid_args(tmp_path, root, "data.folds=2"))
    assert code == 0, err


def test_an_unknown_split_value_is_a_problem(tmp_path) -> None:
    root = make_folder_set(tmp_path / "set", splits={"s00": "holdout"})
    code, _, err = cli(*thyroid_args(tmp_path, root))
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "holdout")


def test_a_mask_edited_in_place_is_not_served_stale(tmp_path) -> None:
    from PIL import Image

    from tasks.thyroid.preprocess import build_cache
    from tasks.thyroid.readers import open_reader

    root = make_folder_set(tmp_path / "set")
    reader = open_reader(root, "folder")
    first = build_cache(reader, list(reader.records()), 32, tmp_path / "cache", workers=1, progress=False)
    row = first.sample_ids.index("s05")
    edited = np.zeros((40, 48), dtype=np.uint8)
    edited[0:20, 0:40] = 255
    Image.fromarray(edited).save(root / "masks" / "s05.png")
    os.utime(root / "masks" / "s05.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    second = build_cache(reader, list(reader.records()), 32, tmp_path / "cache", workers=1, progress=False)
    assert second.key != first.key
    assert second.masks[row].sum() > first.masks[row].sum()


def test_ablate_features_refuses_a_run_without_the_clinical_slice(tmp_path) -> None:
    overrides = tiny_run_overrides(tmp_path, **{"train.epochs": 1, "task_args.clinical_guidance": "false"})
    outcome = run_experiment(resolve_config(overrides, method="vanilla"))
    code, _, err = cli(
        "ablate-features", outcome.folder.root, env={"MTLBENCH_CACHE": str(tmp_path / "cache")}
    )
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "without the clinically guided slice")
    assert not list(outcome.folder.root.glob("feature_ablation_*"))


def test_ablate_features_never_executes_a_crafted_checkpoint(tmp_path) -> None:
    outcome = run_experiment(
        resolve_config(tiny_run_overrides(tmp_path, **{"train.epochs": 1}), method="vanilla")
    )
    marker = tmp_path / "pwned"
    write_malicious(outcome.folder.checkpoint_path("best"), marker)
    code, _, err = cli(
        "ablate-features", outcome.folder.root, env={"MTLBENCH_CACHE": str(tmp_path / "cache")}
    )
    assert code == EXIT_BAD_INPUT
    assert_one_line(err, "best.pt", "refused")
    assert not marker.exists()
