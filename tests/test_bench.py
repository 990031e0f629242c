"""``mtlbench bench`` on the example plugin's task: the trainer's own step, its record, its errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from mtlbench.bench import allocator
from mtlbench.bench.compare import method_configs, parse_methods, run_comparison
from mtlbench.bench.memory import measure_in_subprocess
from mtlbench.cli import app
from mtlbench.config import ConfigError
from mtlbench.trainer import Trainer
from tests.tiny import core_run_overrides

runner = CliRunner()


def configs(tmp_path, methods: str = "vanilla,scaled_sum,rlar:every=2"):  # type: ignore[no-untyped-def]
    return method_configs(parse_methods(methods), core_run_overrides(tmp_path), task="twoshapes")


def test_parse_methods_reads_settings_and_rejects_bad_items() -> None:
    specs = parse_methods("vanilla, rlar:every=4;lambda_adv=0.5 ,pcgrad")
    assert [s.label for s in specs] == ["vanilla", "rlar:every=4;lambda_adv=0.5", "pcgrad"]
    assert specs[1].method == "rlar" and specs[1].args == {"every": 4, "lambda_adv": 0.5}
    with pytest.raises(ConfigError, match="not key=value"):
        parse_methods("rlar:every")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_methods("vanilla,vanilla")
    with pytest.raises(ConfigError, match="no method"):
        parse_methods(" , ")


def test_every_setting_is_checked_before_anything_runs(tmp_path) -> None:
    with pytest.raises(ConfigError, match="every"):
        configs(tmp_path, "vanilla,rlar:every=0")


def test_comparison_times_the_trainers_own_step(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    original = Trainer.train_step

    def counted(self, batch):  # type: ignore[no-untyped-def]
        calls.append(id(self))
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", counted)
    record = run_comparison(configs(tmp_path), warmup=1, rounds=3, breakdown_rounds=2, memory="inline")
    assert len(calls) == 3 * (1 + 3 + 2) + 3 * 3  # 3 methods × (warm-up, rounds, breakdown) + memory probes
    rows = {row["method"]: row for row in record["rows"]}
    assert list(rows) == ["vanilla", "scaled_sum", "rlar:every=2"]
    assert rows["vanilla"]["ratio"] == 1.0 and rows["vanilla"]["ratio_iqr"] == 0.0
    assert rows["vanilla"]["mean_ratio"] == 1.0 and rows["scaled_sum"]["mean_ratio"] > 0
    for row in rows.values():
        assert row["rounds"] == 3 and row["median_s"] > 0 and row["iqr_s"] >= 0
        assert {"forward", "backward", "optimizer"} <= set(row["phases_s"])
        assert row["memory"]["peak_mb"] >= 0
    assert "backward/representation gradients" in rows["rlar:every=2"]["phases_s"]
    assert record["machine"]["type"] == "cpu" and torch.__version__.startswith(record["versions"]["torch"])
    assert record["settings"]["runs"]["rlar:every=2"]["method_args"]["every"] == 2
    assert record["allocator"] is None  # inline memory: the heap must follow the live tensors


def test_an_out_of_memory_is_a_row_not_a_crash(tmp_path, monkeypatch) -> None:
    from mtlbench.bench import harness

    original = harness.StepHarness.step

    def step(self):  # type: ignore[no-untyped-def]
        if self.trainer.method.__class__.__name__ == "ScaledSum":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self)

    monkeypatch.setattr(harness.StepHarness, "step", step)
    record = run_comparison(
        configs(tmp_path, "vanilla,scaled_sum"), warmup=1, rounds=2, breakdown_rounds=1, memory="off"
    )
    rows = {row["method"]: row for row in record["rows"]}
    assert rows["scaled_sum"]["error"].startswith("out of memory: CUDA out of memory")
    assert "median_s" not in rows["scaled_sum"] and rows["vanilla"]["rounds"] == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from Linux's /proc")
def test_memory_of_a_method_in_its_own_process(tmp_path) -> None:
    cfg = configs(tmp_path, "vanilla")["vanilla"]
    small = measure_in_subprocess(cfg, steps=1)
    assert small["source"] == "peak RSS" and small["peak_mb"] > 0 and small["baseline_mb"] > small["peak_mb"]
    big = measure_in_subprocess(
        method_configs(
            parse_methods("vanilla"),
            core_run_overrides(tmp_path, **{"train.batch_size": 64, "data.image_size": 64}),
            task="twoshapes",
        )["vanilla"],
        steps=1,
    )
    assert big["peak_mb"] > 2 * small["peak_mb"]  # the measure follows the step's activations


def test_bench_command_writes_table_json_and_plot(tmp_path) -> None:
    out = tmp_path / "bench.json"
    result = runner.invoke(
        app,
        [
            "bench", "--task", "twoshapes", "--methods", "vanilla,rlar,rlar:subset=2", "--rounds", "2",
            "--warmup", "0", "--breakdown-rounds", "1", "--memory", "off", "--out", str(out),
            *core_run_overrides(tmp_path),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "× vanilla" in result.output and "rlar:subset=2" in result.output
    record = json.loads(out.read_text())
    assert [row["method"] for row in record["rows"]] == ["vanilla", "rlar", "rlar:subset=2"]
    assert out.with_suffix(".png").stat().st_size > 1000
    if allocator._mallopt() is not None:  # glibc: steps timed with freed blocks kept on the heap
        assert record["allocator"] == {"M_MMAP_THRESHOLD": 2**25, "M_TRIM_THRESHOLD": 2**31 - 1}


def test_bench_command_scales_a_setting(tmp_path) -> None:
    out = tmp_path / "scale.json"
    result = runner.invoke(
        app,
        [
            "bench", "--task", "twoshapes", "--methods", "vanilla,rlar", "--rounds", "1", "--warmup", "0",
            "--breakdown-rounds", "0", "--memory", "off", "--scale", "train.batch_size=2;4",
            "--out", str(out),
            *core_run_overrides(tmp_path),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["scale_key"] == "train.batch_size"
    assert [p["settings"]["runs"]["rlar"]["batch_size"] for p in record["points"]] == [2, 4]
    assert out.with_suffix(".png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "pcgrad,rlar"], "must include vanilla"),
        (["--methods", "vanilla,nosuch"], "nosuch"),
        (["--scale", "train.batch_size=4"], "at least two values"),
        (["--memory", "sometimes"], "--memory must be"),
        (["--plot", "/"], "is a folder"),
    ],
)
def test_bad_bench_input_is_one_clear_line_and_writes_nothing(
    tmp_path, args: list[str], message: str
) -> None:
    out = tmp_path / "never.json"
    result = runner.invoke(
        app, ["bench", "--task", "twoshapes", *args, "--out", str(out), *core_run_overrides(tmp_path)]
    )
    assert result.exit_code != 0
    assert message in result.output
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_report_takes_its_cost_columns_from_a_bench_record(tmp_path) -> None:
    """Runs of vanilla and rlar, a bench of both: the leaderboard's cost is the bench's."""
    import pandas as pd

    from mtlbench.runner import run_experiment

    for method in ("vanilla", "rlar"):
        run_experiment(
            method_configs(parse_methods(method), core_run_overrides(tmp_path), task="twoshapes")[method]
        )
    out = tmp_path / "bench.json"
    record = run_comparison(
        configs(tmp_path, "vanilla,rlar"), warmup=0, rounds=2, breakdown_rounds=0, memory="off"
    )
    record["rows"][1]["ratio"] = 1.875  # a value no run folder holds
    out.write_text(json.dumps(record))
    result = runner.invoke(
        app,
        ["report", "--runs", str(tmp_path / "runs"), "--bench", str(out), "--format", "csv", "--no-plots"],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "runs" / "report" / "leaderboard_twoshapes.csv")
    ratio = table.loc[table["method"] == "rlar", "step_ratio"]
    assert list(ratio) == [1.875]
    (tmp_path / "bad.json").write_text('{"kind": "something else"}')
    bad = runner.invoke(
        app, ["report", "--runs", str(tmp_path / "runs"), "--bench", str(tmp_path / "bad.json")]
    )
    assert bad.exit_code != 0 and "not a `mtlbench bench` record" in bad.output


def test_an_output_under_a_file_is_refused_before_measuring(tmp_path) -> None:
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "bench.json"
    result = runner.invoke(
        app, ["bench", "--task", "twoshapes", "--out", str(out), *core_run_overrides(tmp_path)]
    )
    assert result.exit_code != 0 and "cannot write under" in result.output
    assert "timing" not in result.output  # refused before the first step


RSS_AFTER_FREE = """
import ctypes, ctypes.util, sys
from mtlbench.bench.allocator import retain_freed_blocks
if sys.argv[1] == "retain":
    assert retain_freed_blocks() is not None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
size = 16 * 2**20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
before = rss_kb()
libc.free(block)
print(before - rss_kb())
"""


@pytest.mark.skipif(allocator._mallopt() is None, reason="mallopt is glibc's")
@pytest.mark.parametrize(("setting", "returned"), [("default", True), ("retain", False)])
def test_a_freed_block_stays_resident_only_when_retained(setting: str, returned: bool) -> None:
    """16 MiB freed: glibc's default unmaps it (a later step pays page faults to get it back);
    with :func:`retain_freed_blocks` it stays on the heap."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", RSS_AFTER_FREE, setting], capture_output=True, text=True, check=True
    )
    given_back_mb = int(out.stdout.strip()) / 1024
    assert (given_back_mb > 15) is returned, given_back_mb
