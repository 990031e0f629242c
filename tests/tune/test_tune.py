"""``mtlbench tune`` in one process: single and multi objective, pruning, resuming, index tags,
``tune show``, journal storage, and one clear line for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.tune.helpers import index_entries, invoke, tiny_tune_overrides


def _study(runs: Path, name: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{runs / 'optuna.db'}")


def test_single_objective_study_resumes_tags_runs_and_shows(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["--method", "rlar", "--sampler-seed", "0", *tiny_tune_overrides(tmp_path)]
    first = invoke("--trials", "2", *args, "--param", "method_args.representation=bottleneck,last")
    assert first.exit_code == 0, first.output
    assert (runs / "optuna.db").is_file()  # the default storage: SQLite in the results folder
    space = tmp_path / "space.yaml"  # the same narrowing from a file
    space.write_text("method_args:\n  representation: {choices: [bottleneck, last]}\n")
    again = invoke("--trials", "3", *args, "--space", str(space))
    assert again.exit_code == 0, again.output
    assert "1 trial(s) finished here; the study has 3" in again.output
    study = _study(runs, "twoshapes-rlar-tiny_cnn")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    # the union of the trainer's, the task's and the method's spaces, narrowed by --param
    assert set(complete[0].params) == {
        "train.lr",
        "train.weight_decay",
        "task_args.lambda_level",
        "task_args.lambda_area",
        "method_args.lambda_adv",
        "method_args.representation",
    }
    assert {t.params["method_args.representation"] for t in complete} <= {"bottleneck", "last"}
    index = index_entries(runs)
    for trial in complete:
        entry = index[trial.user_attrs["run_id"]]
        assert {"study": "twoshapes-rlar-tiny_cnn", "trial": trial.number} in entry["tune"]
        result = json.loads((Path(trial.user_attrs["run_folder"]) / "result.json").read_text())
        assert result["metrics"]["val"]["score"] == pytest.approx(trial.value)
        assert result["config"]["method_args"]["lambda_adv"] == pytest.approx(
            trial.params["method_args.lambda_adv"]
        )

    shown = invoke("show", "--study", "twoshapes-rlar-tiny_cnn", "-o", str(runs))
    assert shown.exit_code == 0, shown.output
    best = study.best_trial
    assert "best 3 trials" in shown.output and "parameter importances" in shown.output
    assert "optimisation history" in shown.output
    rerun = next(line for line in shown.output.splitlines() if line.startswith("re-run: "))
    assert "mtlbench run --task twoshapes --method rlar --backbone tiny_cnn" in rerun
    assert f"method_args.representation={best.params['method_args.representation']}" in rerun
    for png in ("history.png", "importances.png"):
        assert (runs / "tune" / "twoshapes-rlar-tiny_cnn" / png).stat().st_size > 0


def test_multi_objective_on_journal_storage_reports_the_pareto_front(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    storage = f"journal:{tmp_path / 'study.log'}"
    args = [*tiny_tune_overrides(tmp_path), "--storage", storage, "--study", "mo", "--sampler-seed", "1"]
    result = invoke("--trials", "2", "--objective", "score", "--objective", "step_time", *args)
    assert result.exit_code == 0, result.output
    assert not (runs / "optuna.db").exists()
    study = optuna.load_study(
        study_name="mo",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log"))
        ),
    )
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert all(not t.intermediate_values for t in study.trials)  # no pruning with several objectives
    shown = invoke("show", "--study", "mo", "--storage", storage, "-o", str(runs))
    assert shown.exit_code == 0, shown.output
    assert "Pareto front" in shown.output
    assert (runs / "tune" / "mo" / "pareto_front.png").is_file()
    front = {t.number for t in study.best_trials}
    assert sum(line.startswith("re-run: ") for line in shown.output.splitlines()) == len(front)


def test_a_trial_is_pruned_from_the_validation_metric_each_epoch(tmp_path: Path, monkeypatch) -> None:
    from mtlbench.tune import study as study_module

    # a pruner that prunes any score below 2 (every score) once an epoch has been reported
    monkeypatch.setattr(study_module, "_pruner", lambda name: optuna.pruners.ThresholdPruner(lower=2.0))
    runs = tmp_path / "runs"
    result = invoke(
        "--trials", "1", "--sampler", "cmaes", *tiny_tune_overrides(tmp_path, **{"train.epochs": 3})
    )
    assert result.exit_code == 0, result.output
    (trial,) = _study(runs, "twoshapes-vanilla-tiny_cnn").trials
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # reported after epoch 1, pruned there
    folder = Path(trial.user_attrs["run_folder"])
    assert (folder / "checkpoints" / "last.pt").is_file() and not (folder / "result.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--storage", "mongodb://localhost/x"], "unsupported scheme 'mongodb'"),
        (["--storage", "postgresql+psycopg://"], "no database name"),
        (["--storage", "sqlite:////no/such/folder/optuna.db"], "does not exist"),
        (["--objective", "dice"], "unknown objective 'dice'"),
        (["--objective", "score:up"], "direction must be max or min"),
        (
            ["train.lr=1e-3", "train.weight_decay=0", "task_args.lambda_level=1", "task_args.lambda_area=1"],
            "search space is empty",
        ),
        (["--param", "train.lr=0.1:0.01"], "is empty (LOW > HIGH)"),
        (["--param", "train.lr=1e-6:1e-3"], "outside its owner's"),
        (["train.lr=1e-3", "--param", "train.lr=1e-4:1e-3"], "both fixed"),
        (["--param", "method_args.nothing=1:2"], "not a searched parameter"),
        (["--sampler", "grid"], "unknown sampler"),
        (["--objective", "score,step_time", "--pruner", "median"], "cannot prune a multi-objective"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, extra: list[str], message: str) -> None:
    result = invoke("--trials", "2", *tiny_tune_overrides(tmp_path), *extra)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_database_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://mtl:secret@127.0.0.1:9/optuna"  # port 9 (discard): nothing listens
    result = invoke("--trials", "1", *tiny_tune_overrides(tmp_path), "--storage", url)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot open storage"), result.output
    assert "secret" not in result.output  # the password is never shown
    assert not (tmp_path / "runs").exists()


def test_show_names_a_missing_study(tmp_path: Path) -> None:
    result = invoke("show", "--study", "nope", "-o", str(tmp_path / "runs"))
    assert result.exit_code == 2 and "no study storage" in result.output


def test_the_rerun_command_carries_overrides_fixed_values_and_the_trials_parameters() -> None:
    from mtlbench.tune.show import rerun_command

    meta = {"task": "thyroid", "method": "rlar", "backbone": "unet_small", "preset": "quick"}
    meta |= {"overrides": ["train.epochs=2"], "fixed": {"train.epochs": 2, "train.lr": 0.001}}
    command = rerun_command(meta, {"method_args.lambda_adv": 0.5})
    assert command == (
        "mtlbench run --task thyroid --method rlar --backbone unet_small --preset quick "
        "train.epochs=2 train.lr=0.001 method_args.lambda_adv=0.5"
    )
