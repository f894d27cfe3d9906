"""The tune section: search-space parsing, every validation error (all reported at once), and what trials receive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayml.config import TuneJobConfig, load_config
from rayml.errors import ConfigError
from rayml.tune import TrialSummary, param_space, search_name_for, trial_config
from rayml.tune._report import classify, learning_curves_png, rank, results_csv, table_rows
from rayml.tune._space import decode, identity_changes, search_identity

ROOT = Path(__file__).resolve().parents[2]


def _cfg(space: dict, **tune: object) -> TuneJobConfig:
    return TuneJobConfig.model_validate({"tune": {"space": space, **tune}})


def _problems(space: dict, data: dict | None = None, train: dict | None = None, **tune: object) -> str:
    with pytest.raises(ConfigError) as e:
        TuneJobConfig.model_validate({"data": data or {}, "train": train or {}, "tune": {"space": space, **tune}})
    return str(e.value)


# --- parsing ---------------------------------------------------------------------------------------------------------
def test_canonical_and_shorthand_forms_parse_to_the_same_dimensions() -> None:
    canonical = _cfg(
        {
            "train.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 0.1},
            "model.hidden_sizes": {"type": "choice", "values": [[32], [64, 32]]},
        }
    )
    shorthand = _cfg({"train.learning_rate": {"loguniform": [1e-4, 0.1]}, "model.hidden_sizes": {"choice": [[32], [64, 32]]}})
    assert canonical.tune.space == shorthand.tune.space
    assert canonical.tune.space["train.learning_rate"].type == "loguniform"
    assert canonical.tune.space["model.hidden_sizes"].values == [[32], [64, 32]]


def test_nested_sections_and_set_overrides_merge_into_dotted_paths(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "tune:\n  space:\n    train.learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
        "    model:\n      dropout: {uniform: [0.0, 0.3]}\n"
    )
    cfg = load_config(TuneJobConfig, path, ["tune.space.train.learning_rate.high=0.05", "tune.num_samples=3"])
    assert set(cfg.tune.space) == {"train.learning_rate", "model.dropout"}
    lr = cfg.tune.space["train.learning_rate"]
    assert (lr.low, lr.high) == (1e-4, 0.05)  # the --set part wins, the YAML part stays
    assert cfg.resolved_num_samples == 3


def test_yaml_exponent_strings_are_normalised_to_the_fields_type(tmp_path: Path) -> None:
    # PyYAML reads `1e-3` (no dot) as a string; a choice must still hand trials floats
    path = tmp_path / "t.yaml"
    path.write_text(
        "tune:\n  space:\n    train.learning_rate: {choice: [1e-3, 1e-2]}\n    train.batch_size: {grid: ['32', 64]}\n"
    )
    cfg = load_config(TuneJobConfig, path)
    assert cfg.tune.space["train.learning_rate"].values == [0.001, 0.01]
    assert cfg.tune.space["train.batch_size"].values == [32, 64]


def test_derived_settings() -> None:
    cfg = _cfg({"train.learning_rate": {"uniform": [0.001, 0.01]}}, metric="val_rmse")
    assert (cfg.resolved_mode, cfg.resolved_num_samples, cfg.max_epochs) == ("min", 8, cfg.train.epochs)
    grid = _cfg({"train.batch_size": {"grid": [32, 64]}, "train.epochs": {"grid": [3, 9]}})
    assert grid.resolved_num_samples == 1 and grid.max_epochs == 9
    ranged = _cfg({"train.epochs": {"randint": [2, 7]}})
    assert ranged.max_epochs == 7
    binary = TuneJobConfig.model_validate(
        {
            "data": {"task": "binary", "target": "high_sales", "ignore_columns": ["date", "sales"]},
            "tune": {"metric": "val_auc", "space": {"model.dropout": {"uniform": [0.0, 0.5]}}},
        }
    )
    assert binary.resolved_mode == "max"


def test_every_shipped_tune_config_loads() -> None:
    cfg = load_config(TuneJobConfig, ROOT / "jobs" / "configs" / "tune.yaml")
    assert cfg.tune.space and cfg.data.source == "synthetic"
    assert (ROOT / "jobs" / "configs" / "tune.yaml").read_text().startswith("# rayml tune --config jobs/configs/tune.yaml")


# --- errors ----------------------------------------------------------------------------------------------------------
def test_unknown_field_names_the_tunable_ones() -> None:
    msg = _problems({"train.lr": {"uniform": [0.001, 0.01]}})
    assert "'train.lr' is not a config field" in msg
    assert "tunable fields: model.dropout" in msg and "train.learning_rate" in msg


def test_a_real_but_untunable_field_says_why() -> None:
    msg = _problems({"train.num_workers": {"choice": [1, 2]}})
    assert "'train.num_workers' is not tunable" in msg


@pytest.mark.parametrize(
    ("dim", "expected"),
    [
        ({"uniform": [0.5, 0.1]}, "low (0.5) must be less than high (0.1)"),
        ({"uniform": [0.1, 0.1]}, "low (0.1) must be less than high (0.1)"),
        ({"type": "loguniform", "low": 0.0, "high": 0.1}, "loguniform needs low > 0 (got low=0)"),
        ({"type": "loguniform", "low": -1.0, "high": 0.1}, "loguniform needs low > 0 (got low=-1)"),
        ({"choice": []}, "choice needs a non-empty list of values"),
        ({"type": "grid"}, "grid needs a non-empty list of values"),
        ({"type": "uniform", "low": 0.1}, "uniform needs high"),
        ({"type": "uniform", "low": 0.1, "high": 0.2, "values": [0.1]}, "takes low and high, not values"),
        ({"type": "choice", "low": 0.1, "values": [0.1]}, "choice takes values, not low/high"),
    ],
)
def test_bad_dimensions(dim: dict, expected: str) -> None:
    assert expected in _problems({"model.dropout": dim})


def test_values_the_field_rejects_are_reported_with_the_fields_reason() -> None:
    msg = _problems({"model.dropout": {"choice": [0.1, 1.5]}, "train.learning_rate": {"uniform": [-0.1, 0.1]}})
    assert "value 1.5 is not a valid model.dropout: Input should be less than 1" in msg
    assert "low=-0.1 is not a valid train.learning_rate" in msg


def test_type_mismatches() -> None:
    msg = _problems(
        {
            "train.batch_size": {"uniform": [16, 64]},
            "model.hidden_sizes": {"randint": [8, 64]},
            "train.epochs": {"randint": [1.5, 4]},
        }
    )
    assert "train.batch_size is an integer; use randint, choice or grid, not uniform" in msg
    assert "model.hidden_sizes is a list; search it with `choice` or `grid` values" in msg
    assert "randint bounds must be whole numbers (got low=1.5, high=4)" in msg


def test_grid_mixed_with_optuna_and_grid_search_with_sampled_dimensions() -> None:
    msg = _problems({"train.batch_size": {"grid": [32, 64]}}, search="optuna")
    assert "tune.search is optuna but train.batch_size use grid" in msg
    msg = _problems({"train.batch_size": {"grid": [32, 64]}, "model.dropout": {"uniform": [0, 0.2]}}, search="grid")
    assert "tune.search is grid but model.dropout (uniform) are not grid" in msg


def test_metric_must_exist_for_the_task_and_agree_with_mode() -> None:
    msg = _problems({"model.dropout": {"uniform": [0, 0.2]}}, metric="val_auc")
    assert "tune.metric 'val_auc' is not reported for data.task='regression'" in msg
    msg = _problems({"model.dropout": {"uniform": [0, 0.2]}}, metric="val_rmse", mode="max")
    assert "tune.mode 'max' contradicts tune.metric 'val_rmse'" in msg


def test_asha_grace_period_beyond_the_most_epochs() -> None:
    msg = _problems({"model.dropout": {"uniform": [0, 0.2]}}, train={"epochs": 3}, asha={"grace_period": 5})
    assert "tune.asha.grace_period (5) is more than the most epochs a trial runs (3)" in msg
    # a searched train.epochs raises the ceiling
    _cfg({"train.epochs": {"choice": [3, 6]}}, asha={"grace_period": 5})


def test_empty_space() -> None:
    assert "tune.space is empty" in _problems({})


def test_every_problem_is_reported_in_one_error() -> None:
    msg = _problems(
        {
            "train.lr": {"uniform": [0.1, 0.2]},
            "model.dropout": {"uniform": [0.5, 0.1]},
            "train.learning_rate": {"loguniform": [0, 0.1]},
            "model.hidden_sizes": {"grid": []},
            "train.batch_size": {"grid": [32, 64]},
        },
        search="optuna",
        metric="val_auc",
    )
    assert "6 problem(s)" in msg
    assert msg.count("\n  - ") == 6
    assert "Hint:" in msg


def test_a_missing_or_unknown_type_is_reported_with_the_other_problems() -> None:
    # `--set tune.space.train.lr.low=3` creates an entry with no type: the unknown path is what the user needs to hear
    msg = _problems(
        {
            "train.lr": {"low": 3},
            "model.dropout": {"type": "normal", "low": 0, "high": 1},
            "train.learning_rate": {"high": 0.1},
        },
        search="optuna",
        metric="val_auc",
    )
    assert "4 problem(s)" in msg
    assert "'train.lr' is not a config field" in msg
    assert "tune.space.model.dropout: type 'normal' is not one of uniform, loguniform, randint, choice, grid" in msg
    assert "tune.space.train.learning_rate: needs a type, one of uniform" in msg


def test_structural_mistakes_fail_with_allowed_names(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("tune:\n  serach: optuna\n  space:\n    train.learning_rate: {uniform: [0.1]}\n")
    with pytest.raises(ConfigError) as e:
        load_config(TuneJobConfig, path)
    msg = str(e.value)
    assert "tune.serach: unknown field; allowed here:" in msg and "search" in msg
    assert "needs a [low, high] pair, got [0.1]" in msg


# --- what trials receive -----------------------------------------------------------------------------------------------
def test_param_space_maps_each_type_to_ray_tune() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    cfg = _cfg(
        {
            "train.learning_rate": {"loguniform": [1e-4, 1e-1]},
            "model.dropout": {"uniform": [0.0, 0.3]},
            "train.epochs": {"randint": [2, 4]},
            "model.hidden_sizes": {"choice": [[32], [64, 32]]},
            "train.batch_size": {"grid": [32, 64]},
        }
    )
    space = param_space(cfg)
    assert isinstance(space["train.learning_rate"], Float) and isinstance(space["model.dropout"], Float)
    epochs = space["train.epochs"]
    assert isinstance(epochs, Integer) and (epochs.lower, epochs.upper) == (2, 5)  # rayml's high is inclusive
    assert isinstance(space["model.hidden_sizes"], Categorical)
    assert space["model.hidden_sizes"].categories == ["[32]", "[64, 32]"]  # lists travel as JSON (Optuna-safe)
    assert space["train.batch_size"] == {"grid_search": [32, 64]}


def test_a_trials_values_become_its_training_config() -> None:
    cfg = _cfg({"model.hidden_sizes": {"choice": [[32], [64, 32]]}, "train.learning_rate": {"uniform": [1e-3, 1e-2]}})
    values = decode(cfg, {"model.hidden_sizes": "[64, 32]", "train.learning_rate": 0.004, "unrelated": 1})
    assert values == {"model.hidden_sizes": [64, 32], "train.learning_rate": 0.004}
    trial = trial_config(cfg, values)
    assert trial.model.hidden_sizes == [64, 32] and trial.train.learning_rate == 0.004
    assert not hasattr(trial, "tune") and trial.train.epochs == cfg.train.epochs


def test_search_name_follows_the_config_and_resume_check_names_changes() -> None:
    a = _cfg({"model.dropout": {"uniform": [0.0, 0.3]}})
    b = _cfg({"model.dropout": {"uniform": [0.0, 0.4]}})
    assert search_name_for(a, "fp") == search_name_for(a, "fp") != search_name_for(b, "fp")
    assert search_name_for(a, "fp") != search_name_for(a, "other-data")
    assert search_name_for(_cfg({"model.dropout": {"uniform": [0, 0.3]}}, name="mine"), "fp") == "mine"
    # concurrency is not part of a search's identity: a resumed search may change it
    c = _cfg({"model.dropout": {"uniform": [0.0, 0.3]}}, max_concurrent_trials=3)
    assert identity_changes(search_identity(a, "fp"), search_identity(c, "fp")) == []
    assert identity_changes(search_identity(a, "fp"), search_identity(b, "fp")) == ["tune.space.model.dropout.high"]


# --- reporting -------------------------------------------------------------------------------------------------------
def test_status_of_a_trial() -> None:
    assert classify(2, 8, early_stopped=False, errored=False) == ("KILLED", "asha")
    assert classify(3, 8, early_stopped=True, errored=False) == ("FINISHED", "patience")
    assert classify(8, 8, early_stopped=False, errored=False) == ("FINISHED", None)
    assert classify(1, 8, early_stopped=False, errored=True) == ("FAILED", None)


def _summary(trial_id: str, best: float | None, status: str = "FINISHED", epochs: int = 4) -> TrialSummary:
    curve = [(e, (best or 0) + 4 - e) for e in range(1, epochs + 1)] if best is not None else []
    return TrialSummary(
        trial_id=trial_id,
        params={"model.dropout": 0.1, "model.hidden_sizes": [64, 32]},
        status=status,
        stopped_by="asha" if status == "KILLED" else None,
        epochs_run=epochs,
        max_epochs=4,
        best_metric=best,
        best_epoch=epochs if best is not None else None,
        curve=curve,
    )


def test_results_are_ranked_best_first_with_failures_last_and_written_out() -> None:
    cfg = _cfg({"model.dropout": {"uniform": [0, 0.3]}, "model.hidden_sizes": {"choice": [[32], [64, 32]]}}, metric="val_rmse")
    trials = rank([_summary("a", 3.0), _summary("b", None, "FAILED", 0), _summary("c", 1.0, "KILLED", 2)], "min")
    assert [t.trial_id for t in trials] == ["c", "a", "b"]
    assert [t.trial_id for t in rank(trials, "max")] == ["a", "c", "b"]
    columns, rows = table_rows(trials, cfg)
    assert columns == ["trial", "model.dropout", "model.hidden_sizes", "best val_rmse", "best epoch", "epochs", "status"]
    assert rows[0] == ["c", "0.1", "[64, 32]", "1", "2", "2/4", "KILLED (asha)"]
    lines = results_csv(trials, cfg).decode().splitlines()
    assert lines[0].startswith("rank,trial_id,model.dropout,model.hidden_sizes,best_val_rmse")
    assert lines[1].startswith("1,c,0.1,") and len(lines) == 4
    png = learning_curves_png(trials, cfg, "test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert TrialSummary.from_dict(json.loads(json.dumps(trials[0].to_dict()))) == trials[0]
