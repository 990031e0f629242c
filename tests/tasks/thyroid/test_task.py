"""The thyroid task: data preparation on the phantom, heads, losses, task-level settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlbench.backbones.contract import FeatureContract, FeatureLevel
from mtlbench.errors import DataError
from mtlbench.model import ModelOutput
from mtlbench.tasks.thyroid.radiomics import FEATURE_NAMES
from mtlbench.tasks.thyroid.settings import ThyroidData
from mtlbench.tasks.thyroid.task import ThyroidParams, ThyroidTask


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    data = ThyroidData(image_size=32, num_train=20, num_val=6, num_test=4, radiomics_workers=1)
    task = ThyroidTask(ThyroidParams(), data, seed=0, cache_dir=tmp_path_factory.mktemp("cache"))
    return task, task.prepare(progress=False)


def test_splits_and_sample_format(prepared) -> None:  # type: ignore[no-untyped-def]
    _, splits = prepared
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 6, 4)
    sample = splits.train[0]
    assert sample["image"].shape == (1, 32, 32) and sample["image"].dtype == torch.float32
    assert set(torch.unique(sample["mask"]).tolist()) <= {0.0, 1.0}
    assert 0 <= int(sample["label"]) < 5
    assert sample["clinical"].shape == (len(FEATURE_NAMES),)
    assert sum(splits.info["train_class_counts"].values()) == 20


def test_radiomics_targets_are_standardised_with_training_statistics(prepared) -> None:  # type: ignore[no-untyped-def]
    _, splits = prepared
    train = np.stack([splits.train[i]["clinical"].numpy() for i in range(len(splits.train))])
    assert np.nanmean(train, axis=0) == pytest.approx(np.zeros(len(FEATURE_NAMES)), abs=1e-5)
    std = np.nanstd(train, axis=0)
    assert np.all((np.abs(std - 1) < 1e-4) | (std < 1e-6))
    val = np.stack([splits.val[i]["clinical"].numpy() for i in range(len(splits.val))])
    assert not np.allclose(np.nanmean(val, axis=0), 0, atol=1e-3)  # not re-standardised on val


def test_class_weights_come_from_the_training_split(prepared) -> None:  # type: ignore[no-untyped-def]
    task, splits = prepared
    counts = np.array(list(splits.info["train_class_counts"].values()), dtype=float)
    expected = np.where(counts > 0, counts.sum() / ((counts > 0).sum() * np.maximum(counts, 1)), 0)
    assert task.class_weights.numpy() == pytest.approx(expected)


def test_heads_and_losses_from_a_contract() -> None:
    contract = FeatureContract((FeatureLevel(4, 1), FeatureLevel(8, 2), FeatureLevel(16, 4)))
    task = ThyroidTask(ThyroidParams(embedding_dim=20, classifier_hidden=8), ThyroidData(), 0, cache_dir=".")
    heads = task.build_heads(contract)
    feats = [torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    outputs = {name: head(feats) for name, head in heads.items()}
    assert outputs["seg"].shape == (2, 1, 16, 16)
    assert outputs["cls"]["h"].shape == (2, 20)
    assert torch.equal(outputs["cls"]["h_tirads"], outputs["cls"]["h"][:, :13])
    # logits are W h + b (paper Eq. 1)
    lin = heads["cls"].classifier
    assert torch.allclose(outputs["cls"]["logits"], outputs["cls"]["h"] @ lin.weight.T + lin.bias)
    batch = {
        "mask": torch.zeros(2, 1, 16, 16),
        "label": torch.tensor([1, 4]),
        "clinical": torch.randn(2, 13),
    }
    losses = task.compute_losses(ModelOutput(feats, outputs), batch)
    assert set(losses) == {"seg", "cls", "clin"}
    off = ThyroidTask(ThyroidParams(clinical_guidance=False), ThyroidData(), 0, cache_dir=".")
    assert off.task_names == ("seg", "cls") and set(off.loss_weights()) == {"seg", "cls"}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (
            ThyroidData(root="/definitely/not/here", format="phantom"),
            "data.root '/definitely/not/here' does not exist",
        ),
        (ThyroidData(format="dicom"), "unknown data.format 'dicom'"),
        (ThyroidData(num_train=0), "data.num_train must be at least 1"),
    ],
)
def test_bad_data_settings_are_named(data: ThyroidData, fragment: str) -> None:
    with pytest.raises(DataError, match=None) as info:
        ThyroidTask(ThyroidParams(), data, 0, cache_dir=".").check_data()
    assert fragment in str(info.value)


def test_existing_root_with_phantom_format_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match="data.format is 'phantom'"):
        ThyroidTask(ThyroidParams(), ThyroidData(root=str(tmp_path)), 0, cache_dir=".").check_data()


def test_bad_task_settings() -> None:
    with pytest.raises(ValueError, match="task_args.lambda_cls must be >= 0"):
        ThyroidParams(lambda_cls=-1)
    with pytest.raises(ValueError, match="embedding_dim must exceed"):
        ThyroidParams(embedding_dim=13)


def test_annotator_noise_changes_training_labels_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mtlbench.config import resolve_config
    from mtlbench.resolve import resolve_run
    from mtlbench.tasks.thyroid.annotators import AnnotatorConfig

    data = ThyroidData(image_size=32, num_train=30, num_val=10, num_test=10, radiomics_workers=1)
    clean = ThyroidTask(ThyroidParams(), data, 0, tmp_path).prepare(progress=False)
    noisy_task = ThyroidTask(
        ThyroidParams(annotators=AnnotatorConfig(n_readers=2, grade_flip_prob=0.5, contour_strength=2.0)),
        data,
        0,
        tmp_path,
    )
    noisy = noisy_task.prepare(progress=False)
    assert len(noisy.info["annotators"]["reader_per_sample"]) == 40
    changed_masks = sum(not torch.equal(clean.train[i]["mask"], noisy.train[i]["mask"]) for i in range(30))
    changed_labels = sum(int(clean.train[i]["label"]) != int(noisy.train[i]["label"]) for i in range(30))
    assert changed_masks > 10 and changed_labels > 5
    for i in range(10):  # the test split keeps the truth
        assert torch.equal(clean.test[i]["mask"], noisy.test[i]["mask"])
        assert int(clean.test[i]["label"]) == int(noisy.test[i]["label"])
    # reachable from the command line as nested task_args, and part of the run id
    cfg = resolve_run(
        resolve_config(
            ["task_args.annotators.n_readers=3", "task_args.annotators.grade_flip_prob=0.1"], task="thyroid"
        )
    )
    assert cfg.task_params.annotators == AnnotatorConfig(n_readers=3, grade_flip_prob=0.1)
    assert cfg.run_id != resolve_run(resolve_config(task="thyroid")).run_id


def test_paper_baselines_on_the_noisy_phantom_report_test_and_external(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mtlbench.config import resolve_config
    from mtlbench.results import read_index
    from mtlbench.runner import run_experiment
    from tests.tiny import tiny_run_overrides

    noisy = ["task_args.annotators.n_readers=3", "task_args.annotators.grade_flip_prob=0.2"]
    settings = {
        "single-task cls": ("vanilla", ["task_args.tasks=[cls]", "task_args.clinical_guidance=false"]),
        "single-task seg": ("vanilla", ["task_args.tasks=[seg]"]),
        "vanilla multitask": ("vanilla", ["task_args.clinical_guidance=false"]),
        "clinically guided": ("vanilla", []),
        "+RLAR": ("rlar", []),
    }
    base = tiny_run_overrides(tmp_path, **{"train.epochs": 1, "data.num_external": 8})
    for method, extra in settings.values():
        run_experiment(resolve_config([*base, *noisy, *extra], method=method))
    index = read_index(tmp_path / "runs")
    assert len(index) == len(settings)
    for entry in index:
        assert {"val", "test", "external"} <= set(entry["metrics"]), entry
    by_tasks = {tuple(sorted(k for k in ("dice", "f1") if k in e["metrics"]["test"])) for e in index}
    assert by_tasks == {("f1",), ("dice",), ("dice", "f1")}
