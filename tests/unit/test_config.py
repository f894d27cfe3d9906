"""Config loading: defaults, YAML, --set overrides and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rayml.config import DataConfig, TrainJobConfig, apply_overrides, load_config
from rayml.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _job_class(raw: dict):
    """The job model of the command that uses a config: the smallest *JobConfig whose sections cover the file's."""
    import inspect

    import rayml.config as config

    jobs = [c for n, c in inspect.getmembers(config, inspect.isclass) if n.endswith("JobConfig") and n in config.__all__]
    fitting = [c for c in jobs if set(raw) <= set(c.model_fields)]
    assert fitting, f"no job config has all of the sections {sorted(raw)}; job configs: {[c.__name__ for c in jobs]}"
    return min(fitting, key=lambda c: len(c.model_fields))


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_names_its_command(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# rayml ") or text.startswith("# ray job submit"), "first line must give the exact command"
    raw = yaml.safe_load(text)
    cfg = load_config(_job_class(raw), path)
    assert cfg.model_dump()  # validated, defaults filled


def test_defaults_yaml_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n  learning_rate: 0.1\n")
    cfg = load_config(TrainJobConfig, f, ["train.epochs=3", "model.hidden_sizes=[8, 4]", "data.segment=region"])
    assert cfg.train.epochs == 3  # --set wins over YAML
    assert cfg.train.learning_rate == 0.1  # YAML wins over default
    assert cfg.train.batch_size == TrainJobConfig().train.batch_size  # default
    assert cfg.model.hidden_sizes == [8, 4]
    assert cfg.data.segment == ["region"]


def test_unknown_field_names_the_allowed_ones(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainJobConfig, f)
    msg = str(e.value)
    assert "train.epocs: unknown field" in msg
    assert "epochs" in msg and "learning_rate" in msg  # allowed names listed
    assert "Hint:" in msg


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(TrainJobConfig, None, ["train.epochs=0", "train.learning_rate=-1", "model.name=bad name!"])
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "train.epochs" in msg and "train.learning_rate" in msg and "model.name" in msg
    assert "'bad name!'" in msg  # the offending value is quoted


@pytest.mark.parametrize(
    "override, fragment",
    [("train.epochs", "has no '='"), ("train..epochs=3", "empty key part"), ("train.epochs.x=1", "is a value, not a section")],
)
def test_bad_set_syntax(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(TrainJobConfig, None, ["train.epochs=3", override] if "x=1" in override else [override])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainJobConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainJobConfig, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(TrainJobConfig, lst)


def test_cross_field_validation_quotes_both_values() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(TrainJobConfig, None, ["data.numeric_features=[price]", "data.categorical_features=[price]"])
    assert "['price']" in str(e.value) and "both" in str(e.value)
    with pytest.raises(ConfigError, match="target 'sales' is also listed as a feature"):
        load_config(TrainJobConfig, None, ["data.numeric_features=[sales, price]"])


def test_apply_overrides_parses_yaml_scalars() -> None:
    raw = apply_overrides({}, ["a.b=1", "a.c=true", "a.d=null", "a.e=[1, 2]", "a.f=text"])
    assert raw == {"a": {"b": 1, "c": True, "d": None, "e": [1, 2], "f": "text"}}


def test_data_segment_accepts_string_or_list() -> None:
    assert DataConfig(segment="store_id").segment == ["store_id"]
    assert DataConfig(segment=None).segment == []


def test_a_config_naming_only_source_and_target_fits_any_table(tmp_path: Path) -> None:
    """Defaults carry no trace of the synthetic sales data: the user's own table needs only its source and target."""
    from sklearn.datasets import load_diabetes

    from rayml.data import infer_schema, load_table

    frame = load_diabetes(as_frame=True).frame
    frame.to_parquet(tmp_path / "diabetes.parquet")
    cfg = load_config_text(tmp_path, f"data:\n  source: {tmp_path / 'diabetes.parquet'}\n  target: target\n")
    assert cfg.data.segment == [] and cfg.data.ignore_columns == []
    assert cfg.model.name == "target-model"  # named after what it predicts, not "sales-model"
    schema = infer_schema(load_table(cfg.data), cfg.data)
    assert schema.feature_names == [c for c in frame.columns if c != "target"]
    # the synthetic dataset keeps its own roles, filled in only for what a synthetic config leaves out
    synthetic = TrainJobConfig()
    assert (synthetic.data.target, synthetic.data.segment, synthetic.model.name) == ("sales", ["store_id"], "sales-model")
    assert TrainJobConfig.model_validate({"data": {"target": "high_sales"}}).data.ignore_columns == ["date", "sales"]


def test_own_data_without_a_target_says_to_name_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.target is not set; name the column to predict"):
        load_config_text(tmp_path, "data:\n  source: /data/houses.parquet\n")


def load_config_text(tmp_path: Path, text: str) -> TrainJobConfig:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return load_config(TrainJobConfig, path)


def test_many_models_refuses_a_model_factory_instead_of_ignoring_it() -> None:
    from rayml.config import ManyModelsJobConfig, resolve_config

    with pytest.raises(ConfigError, match=r"model.factory \('nets:resnet'\) is for `rayml train`"):
        resolve_config(ManyModelsJobConfig, {"model": {"factory": "nets:resnet"}})
