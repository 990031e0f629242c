"""The NYUv2 and Cityscapes tasks on tiny fixtures of the exact layout: splits, augmentation,
data check, the CLI run, and Δm% written into a multitask run's result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtlbench.config import resolve_config
from mtlbench.errors import DataError
from mtlbench.runner import prepare_run, run_experiment
from mtlbench.tasks.nyuv2.cli import check_data_set
from mtlbench.tasks.nyuv2.dataset import SCALES, scale_crop_flip
from mtlbench.tasks.nyuv2.layout import write_fixture
from mtlbench.tasks.nyuv2.metrics import delta_m

SMALL = ["backbone_args.widths=[8, 16, 32, 64]", "train.progress=false", "task_args.head_width=16"]


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("nyuv2"), "nyuv2", {"train": 8, "val": 3})


def _config(task: str, root: Path, tmp_path: Path, *extra: str, method: str = "vanilla"):  # type: ignore[no-untyped-def]
    overrides = [f"data.root={root}", f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'c'}"]
    return resolve_config([*overrides, *SMALL, *extra], task=task, method=method, preset="smoke")


def test_fixture_has_the_published_layout(tmp_path: Path) -> None:
    root = write_fixture(tmp_path, "nyuv2", {"train": 2, "val": 1})
    image, label = np.load(root / "train/image/1.npy"), np.load(root / "train/label/1.npy")
    depth, normal = np.load(root / "train/depth/1.npy"), np.load(root / "val/normal/0.npy")
    assert image.shape == (32, 64, 3) and label.shape == (32, 64)
    assert depth.shape == (32, 64, 1) and normal.shape == (32, 64, 3)
    assert {image.dtype, label.dtype, depth.dtype, normal.dtype} == {np.dtype(np.float32)}
    assert set(np.unique(label)) <= {-1.0, *map(float, range(13))}
    stamp = (root / "val/normal/0.npy").stat().st_mtime_ns
    write_fixture(tmp_path, "nyuv2", {"train": 2, "val": 1})  # idempotent
    assert (root / "val/normal/0.npy").stat().st_mtime_ns == stamp
    city = write_fixture(tmp_path / "city", "cityscapes", {"train": 2, "val": 1})
    assert not (city / "train/normal").exists() and np.load(city / "val/label/0.npy").max() <= 6


def test_model_selection_is_on_held_out_training_samples(nyu_root: Path, tmp_path: Path) -> None:
    task = prepare_run(_config("nyuv2", nyu_root, tmp_path)).task
    splits = task.prepare(progress=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 3)
    assert splits.val.split == "train" and splits.test.split == "val"
    assert not set(splits.val.indices) & set(splits.train.indices)
    sample = splits.train[0]
    assert sample["image"].shape == (3, 32, 64) and sample["seg"].dtype == torch.int64
    assert sample["depth"].shape == (1, 32, 64) and sample["normal"].shape == (3, 32, 64)
    again = prepare_run(_config("nyuv2", nyu_root, tmp_path)).task.prepare(progress=False)
    assert np.array_equal(again.val.indices, splits.val.indices)  # seeded
    papers = prepare_run(_config("nyuv2", nyu_root, tmp_path, "data.val_from_train=0")).task.prepare(False)
    assert (len(papers.train), len(papers.val), papers.test) == (8, 3, None)
    assert papers.val.split == "val" and "papers' protocol" in papers.info["protocol"]


def test_single_task_runs_build_one_head(nyu_root: Path, tmp_path: Path) -> None:
    prepared = prepare_run(_config("nyuv2", nyu_root, tmp_path, "task_args.tasks=[depth]"))
    assert prepared.task.task_names == ("depth",) and set(prepared.model.heads) == {"depth"}
    assert "seg" not in prepared.task.prepare(False).train[0]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("data.val_from_train=1.0", "data.val_from_train must be in [0, 1)"),
        ("data.format=cityscapes", "data.format for task nyuv2"),
        ("task_args.baselines=[/no/such/run]", "neither a result.json"),
    ],
)
def test_bad_settings_are_named(nyu_root: Path, tmp_path: Path, override: str, fragment: str) -> None:
    with pytest.raises(DataError, match=re.escape(fragment)):
        prepare_run(_config("nyuv2", nyu_root, tmp_path, override))


def test_missing_root_says_where_to_look(tmp_path: Path) -> None:
    cfg = resolve_config([f"output_dir={tmp_path}"], task="cityscapes", preset="smoke")
    with pytest.raises(DataError, match="needs data.root"):
        prepare_run(cfg)


def test_augmentation_moves_image_and_targets_together() -> None:
    rows, cols = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
    normal = torch.nn.functional.normalize(
        torch.stack([torch.ones_like(rows), cols / 32, torch.ones_like(rows)]), dim=0
    )
    sample = {
        "image": torch.stack([cols, rows, cols]),
        "seg": (cols // 4).long(),
        "depth": torch.full((1, 24, 32), 3.0),
        "normal": normal,
        "split_id": torch.tensor(0),
    }
    seen_flips = set()
    for seed in range(12):
        out = scale_crop_flip(sample, torch.Generator().manual_seed(seed))
        assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in sample.items()}
        scale = 3.0 / float(out["depth"][0, 0, 0])
        assert min(abs(scale - s) for s in SCALES) < 1e-5 and torch.all(out["depth"] == out["depth"][0, 0, 0])
        assert out["seg"].dtype == torch.int64 and set(out["seg"].unique().tolist()) <= set(range(8))
        flipped = bool(out["image"][0, 0, 0] > out["image"][0, 0, -1])
        seen_flips.add(flipped)
        assert bool(out["normal"][0, 0, 0] < 0) == flipped  # the x component changes sign with the flip
        # the label follows the image's column coordinate (nearest vs bilinear: within one label step)
        col = out["image"][0]
        assert torch.all((out["seg"] - torch.div(col, 4, rounding_mode="floor")).abs() <= 1)
        assert int(out["split_id"]) == 0
    assert seen_flips == {True, False}
    a = scale_crop_flip(sample, torch.Generator().manual_seed(5))
    b = scale_crop_flip(sample, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_data_check_names_every_bad_file(tmp_path: Path) -> None:
    root = write_fixture(tmp_path / "d", "nyuv2", {"train": 3, "val": 2})
    text, report, n = check_data_set(root, "nyuv2", {"skip_invalid": True})
    assert n == 0 and report["counts"] == {"train": 3, "val": 2} and report["classes"] == list(range(13))
    assert "train: 3 samples, the published set has 795" in text
    (root / "train/normal/2.npy").unlink()
    np.save(root / "train/depth/1.npy", np.ones((32, 64), np.float32))
    np.save(root / "val/label/0.npy", np.full((32, 64), 13.0, np.float32))
    np.save(root / "val/image/1.npy", np.ones((16, 64, 3), np.float32))
    (root / "val/label/1.npy").write_bytes(b"not an array")
    np.save(root / "val/depth/7.npy", np.ones((32, 64, 1), np.float32))
    text, report, n = check_data_set(root, "nyuv2", {"skip_invalid": True})
    problems = report["problems"]
    expected = [
        ("train/normal/2.npy", "missing"),
        ("train/depth/1.npy", "shape [32, 64], expected (H, W, 1)"),
        ("val/label/0.npy", "labels [13] outside -1 (ignore) and 0..12"),
        ("val/image/1.npy", "16×64 pixels, the first image has 32×64"),
        ("val/label/1.npy", "unreadable"),
        ("val/depth/7.npy", "unexpected file"),
    ]
    for name, fragment in expected:
        assert sum(name in p and fragment in p for p in problems) == 1, (name, problems)
    assert n == len(problems) == len(expected), problems
    _, report, n = check_data_set(root, "nyuv2", {"skip_invalid": False})
    assert n == 1


def test_cli_data_check_and_run_with_nash_mtl(nyu_root: Path, tmp_path: Path) -> None:
    from mtlbench.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(nyu_root), "--format", "nyuv2"])
    assert result.exit_code == 0, result.output
    assert "problems: 0" in result.output
    overrides = [
        f"data.root={nyu_root}",
        f"output_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'c'}",
    ]
    args = ["run", "--task", "nyuv2", "--method", "nash_mtl", "--preset", "smoke", *overrides, *SMALL]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    folder = next((tmp_path / "runs" / "nyuv2").glob("nash_mtl-*"))
    metrics = json.loads((folder / "result.json").read_text())["metrics"]
    assert set(metrics) == {"val", "test"}
    assert all(np.isfinite(metrics["test"][k]) for k in ("miou", "abs_err", "angle_mean", "within_30"))


def test_delta_m_against_single_task_runs_is_written_into_the_result(tmp_path: Path) -> None:
    root = write_fixture(tmp_path / "city", "cityscapes", {"train": 4, "val": 2})
    folders = []
    for task in ("seg", "depth"):
        outcome = run_experiment(_config("cityscapes", root, tmp_path, f"task_args.tasks=[{task}]"))
        folders.append(outcome.folder.root)
    baselines = f"task_args.baselines=[{folders[0]}, {folders[1] / 'result.json'}]"
    monitor = ["train.monitor=delta_m", "train.monitor_mode=min"]
    result = run_experiment(
        _config("cityscapes", root, tmp_path, baselines, *monitor, method="pcgrad")
    ).result
    assert result["monitor"]["metric"] == "delta_m"
    seg = json.loads((folders[0] / "result.json").read_text())["metrics"]
    depth = json.loads((folders[1] / "result.json").read_text())["metrics"]
    for split in ("val", "test"):
        m = result["metrics"][split]
        by_hand = (
            (
                -(m["miou"] - seg[split]["miou"]) / seg[split]["miou"]
                - (m["pixel_acc"] - seg[split]["pixel_acc"]) / seg[split]["pixel_acc"]
                + (m["abs_err"] - depth[split]["abs_err"]) / depth[split]["abs_err"]
                + (m["rel_err"] - depth[split]["rel_err"]) / depth[split]["rel_err"]
            )
            * 100
            / 4
        )
        assert m["delta_m"] == pytest.approx(by_hand, rel=1e-9)
        assert m["delta_m"] == pytest.approx(delta_m(m, {**seg[split], **depth[split]}, ("seg", "depth")))
    with pytest.raises(DataError, match="cover no single-task run"):
        prepare_run(_config("cityscapes", root, tmp_path, f"task_args.baselines=[{folders[0]}]"))
