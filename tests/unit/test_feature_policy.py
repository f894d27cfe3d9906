"""The feature policy (issue 17, item 1): ``data.forbidden_features`` are refused as features however features are
chosen (inferred, listed, many models, an imported model), and ``data.sensitive_columns`` are recorded with the model
and their raw values kept out of the reference statistics, the input example, batch outputs, payload captures and
error messages unless ``data.allow_sensitive_in`` allows them. Plus how a model's features changed between two
schemas (issue 17, item 3: what the pipeline's validate_data stage records)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest
from hypothesis import given, settings, strategies as st

from rayml.batch import list_inputs
from rayml.batch._score import FileScorer, ScoreSpec, key_columns, sensitive_id_problems
from rayml.config import BatchConfig, DataConfig, ManyModelsJobConfig, TrainJobConfig, load_config
from rayml.config.data import matching_pattern
from rayml.data import infer_schema, reference_stats, validate
from rayml.data.schema import Schema, schema_changes
from rayml.errors import ConfigError, DataValidationError
from rayml.feedback import inputs_for_capture
from rayml.models import ModelDir, build_model, build_spec, export_onnx
from rayml.testing import sales_columns, sample_frame

EMAILS = [f"person{i}@example.com" for i in range(10)]
ZIPS = ["10115", "20095", "80331"]


@pytest.fixture(scope="module")
def people() -> pd.DataFrame:
    """Sales rows plus personal data: an e-mail address (never a feature), a postcode and an income (sensitive)."""
    df = sample_frame(rows_per_segment=30)
    n = len(df)
    return df.assign(
        customer_email=[EMAILS[i % len(EMAILS)] for i in range(n)],
        zip_code=[ZIPS[i % len(ZIPS)] for i in range(n)],
        income=np.linspace(20_000.5, 90_000.5, n),
    )


def _cfg(**fields) -> DataConfig:
    roles = {"target": "sales", "segment": ["store_id"], "ignore_columns": ["date", "high_sales"]}
    return DataConfig(source="people.parquet", **{**roles, **fields})


# --- matching ----------------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(name=st.text(st.characters(codec="ascii", exclude_characters="*?[]!"), min_size=1, max_size=20), cut=st.integers(0, 20))
def test_a_pattern_matches_names_case_insensitively_as_fnmatch_globs(name: str, cut: int) -> None:
    assert matching_pattern(name, [name.upper()]) == name.upper()
    assert matching_pattern(name.swapcase(), ["nothing-like-it", name]) == name
    part = name[cut % len(name) :]
    assert matching_pattern(name, [f"*{part}*"]) == f"*{part}*"
    assert matching_pattern(name + "x", [name]) is None  # a name is the whole name, not a prefix
    assert matching_pattern(name, []) is None


# --- forbidden features --------------------------------------------------------------------------------------------
def test_a_listed_forbidden_feature_and_a_blank_pattern_fail_when_the_config_loads() -> None:
    base = ["data.source=people.parquet", "data.target=sales", "data.forbidden_features=[ssn,'*email*']"]
    with pytest.raises(ConfigError) as e:
        load_config(TrainJobConfig, None, [*base, "data.numeric_features=[price,SSN]", "data.categorical_features=[E_Mail]"])
    assert "feature 'SSN' matches forbidden_features pattern 'ssn'" in e.value.message
    assert "'E_Mail'" not in e.value.message  # '*email*' is no part of it
    # a name is the whole name: "ssn" does not forbid "ssn_bucket"
    ok = load_config(TrainJobConfig, None, [*base, "data.numeric_features=[price,ssn_bucket]"])
    assert ok.data.numeric_features == ["price", "ssn_bucket"]
    with pytest.raises(ConfigError) as e:
        load_config(TrainJobConfig, None, ["data.forbidden_features=['  ']"])
    assert "blank pattern" in e.value.message
    with pytest.raises(ConfigError) as e:
        load_config(TrainJobConfig, None, ["data.allow_sensitive_in=[logs]"])
    assert "allow_sensitive_in" in e.value.message and "capture" in e.value.message


def test_an_inferred_forbidden_feature_names_the_column_and_the_pattern_and_ignore_columns_fixes_it(
    people: pd.DataFrame,
) -> None:
    with pytest.raises(DataValidationError) as e:
        infer_schema(people, _cfg(forbidden_features=["ssn", "*EMAIL*"]))
    assert e.value.problems == [
        "column 'customer_email' is a feature (inferred from the data: every column not in target, segment or "
        "ignore_columns is a feature) but matches data.forbidden_features pattern '*EMAIL*'"
    ]
    assert "data.ignore_columns" in (e.value.hint or "")
    ok = infer_schema(people, _cfg(forbidden_features=["*email*"], ignore_columns=["date", "high_sales", "customer_email"]))
    assert "customer_email" not in ok.feature_names and "zip_code" in ok.feature_names
    # a listed feature that slipped past the config (built without validation) is refused the same way
    listed = _cfg(forbidden_features=["zip*"]).model_copy(update={"categorical_features": ["zip_code"], "numeric_features": []})
    with pytest.raises(DataValidationError, match="column 'zip_code' is a feature but matches"):
        infer_schema(people, listed)


def test_train_tune_and_many_models_refuse_a_forbidden_feature_before_training(people: pd.DataFrame, tmp_path: Path) -> None:
    from rayml.manymodels._run import _prepare
    from rayml.train import prepare_data  # what `rayml train`, `rayml tune` and the pipeline prepare data with

    path = tmp_path / "people.parquet"
    people.to_parquet(path)
    sets = [f"data.source={path}", *sales_columns(), "data.forbidden_features=['*mail*']"]
    with pytest.raises(DataValidationError, match="'customer_email' is a feature .* pattern '\\*mail\\*'"):
        prepare_data(load_config(TrainJobConfig, None, sets).data, seed=0)
    with pytest.raises(DataValidationError, match="'customer_email' is a feature .* pattern '\\*mail\\*'"):
        _prepare(load_config(ManyModelsJobConfig, None, sets))


# --- sensitive columns ------------------------------------------------------------------------------------------
def _model_dir(df: pd.DataFrame, out: Path, **policy) -> ModelDir:
    schema = infer_schema(df, _cfg(ignore_columns=["date", "high_sales", "customer_email"], **policy))
    onnx_bytes = export_onnx(build_model(build_spec(df, schema, [8], 0.0, 2), seed=0))
    meta = {"task": "regression", "target": "sales", "schema": schema.to_dict()}
    return ModelDir.write_model(
        out, onnx_bytes=onnx_bytes, meta=meta, reference_stats=reference_stats(df, schema), input_example=df.head(5)
    )


def test_the_model_records_its_sensitive_columns_and_no_file_holds_their_training_values(
    people: pd.DataFrame, tmp_path: Path
) -> None:
    policy = {"sensitive_columns": ["ZIP_*", "income", "*email*"], "allow_sensitive_in": ["batch_output"]}
    md = ModelDir.read(_model_dir(people, tmp_path / "m", **policy).path)
    assert md.sensitive_columns == ["ZIP_*", "income", "*email*"] and md.sensitive_allowed_in == ["batch_output"]
    assert md.withheld_from("capture") == md.sensitive_columns and md.withheld_from("batch_output") == []
    assert md.schema is not None and md.schema.is_sensitive("zip_code") and not md.schema.is_sensitive("price")

    stats = md.reference_stats()
    assert "zip_code" not in stats["features"] and stats["withheld"] == ["zip_code"]  # categories are raw values
    assert {"edges", "shares", "mean", "std"} <= set(stats["features"]["income"])
    assert not {"min", "max"} & set(stats["features"]["income"])  # one row's value each
    assert {"min", "max"} <= set(stats["features"]["price"])  # other features keep everything
    example = (md.path / "input_example.json").read_text()
    ref_file = (md.path / "reference_stats.json").read_text()
    for raw in [*ZIPS, f"{people['income'].iloc[0]}"]:
        assert raw not in example and raw not in ref_file, raw
    assert json.loads(example)["columns"]  # still an example of every input: the MLflow signature needs its types
    assert abs(float(md.predict_frame(people.head(3))[0])) < 1e6  # and the model still answers

    # allowed in the reference statistics: full bins, so the drift of those columns is monitored
    full = _model_dir(people, tmp_path / "full", sensitive_columns=["zip_code"], allow_sensitive_in=["reference_stats"])
    assert set(full.reference_stats()["features"]["zip_code"]["categories"]) >= set(ZIPS)
    # without a policy, nothing changes
    plain = _model_dir(people, tmp_path / "plain")
    assert plain.sensitive_columns == [] and "withheld" not in plain.reference_stats()


def test_validation_errors_never_quote_a_sensitive_columns_values(people: pd.DataFrame) -> None:
    schema = infer_schema(
        people, _cfg(ignore_columns=["date", "high_sales", "customer_email"], sensitive_columns=["zip*", "inc*"])
    )
    bad = people.head(20).assign(income="NaN-ish secret 123", zip_code="99999", price="not a price")
    with pytest.raises(DataValidationError) as e:
        validate(bad, schema, allow_unseen_categories=False)
    text = str(e.value)
    assert "secret" not in text and "99999" not in text
    assert "column 'income' should be numeric" in text and "column 'zip_code' has 1 categories never seen" in text
    assert "e.g. 'not a price'" in text  # other columns still say what was wrong


@settings(max_examples=40, deadline=None)
@given(
    columns=st.lists(st.sampled_from(["price", "Zip_Code", "customer_email", "ssn", "region", "income"]), unique=True),
    exclude=st.lists(st.sampled_from(["price", "REGION", "*mail*"]), unique=True),
)
def test_capture_leaves_out_excluded_and_sensitive_columns(columns: list[str], exclude: list[str]) -> None:
    feed = {c: np.arange(3) for c in columns}
    got = inputs_for_capture(feed, frozenset(exclude), frozenset(["zip*", "ssn"]))
    for c in columns:
        gone = matching_pattern(c, [*exclude, "zip*", "ssn"]) is not None
        assert (c not in got) == gone, (c, exclude)
    assert all(got[c] is feed[c] for c in got)


def test_a_served_version_tells_the_ingress_which_columns_it_never_captures(people: pd.DataFrame, tmp_path: Path) -> None:
    from rayml.serve._ingress import _signature
    from rayml.serve._inline import InlineVersion

    path = _model_dir(people, tmp_path / "m", sensitive_columns=["zip_code", "inc*"]).path
    version = InlineVersion("people", 1, "sqlite:///unused.db", str(path), 1, 300.0, 1.0)
    sig = _signature(version.metadata())
    assert sig.capture_withheld == {"zip_code", "inc*"}
    feed = {"price": np.ones(2), "zip_code": np.array(["10115", "80331"]), "income": np.ones(2)}
    assert set(inputs_for_capture(feed, frozenset(), sig.capture_withheld)) == {"price"}
    allowed = _model_dir(people, tmp_path / "a", sensitive_columns=["zip_code"], allow_sensitive_in=["capture"]).path
    assert (
        _signature(InlineVersion("people", 2, "sqlite:///unused.db", str(allowed), 1, 300.0, 1.0).metadata()).capture_withheld
        == set()
    )


def _scorer(tmp: Path, model: ModelDir, id_columns: tuple[str, ...] | None = None) -> FileScorer:
    return FileScorer(
        ScoreSpec(
            model_name="people",
            model_version=1,
            model_path=str(model.path),
            tracking_uri="sqlite:///unused",
            kind="model",
            output_uri=str(tmp / "out"),
            input_fs=pafs.LocalFileSystem(),
            fmt="parquet",
            attempt="att",
            batch_run_id="run1",
            batch_size=50,
            id_columns=id_columns,
            prediction_column="prediction",
            max_cached_models=2,
            drift=False,
        )
    )


def test_batch_output_never_copies_a_sensitive_column_unless_its_model_allows_it(people: pd.DataFrame, tmp_path: Path) -> None:
    f = tmp_path / "in.parquet"
    people.to_parquet(f)
    inp = list_inputs(pafs.LocalFileSystem(), [str(f)])[0]
    withheld = _model_dir(people, tmp_path / "w", sensitive_columns=["*EMAIL*", "zip_code"])
    r = _scorer(tmp_path / "1", withheld).score_file(inp)
    got = pd.read_parquet(tmp_path / "1" / "out" / inp.output_name)
    assert r["status"] == "committed" and "date" in got.columns and "customer_email" not in got.columns, r

    allowed = _model_dir(people, tmp_path / "a", sensitive_columns=["*email*"], allow_sensitive_in=["batch_output"])
    _scorer(tmp_path / "2", allowed).score_file(inp)
    assert list(pd.read_parquet(tmp_path / "2" / "out" / inp.output_name)["customer_email"]) == list(people["customer_email"])

    # listed as an id column: refused, naming the column and the pattern (the driver checks this before scoring)
    assert sensitive_id_problems(["date", "Customer_Email"], ["*email*"]) == [
        "id column 'Customer_Email' is sensitive (matches the model's sensitive column pattern '*email*')"
    ]
    with pytest.raises(DataValidationError, match="id column 'customer_email' is sensitive"):
        key_columns(list(people.columns), ["price"], [], ("customer_email",), "prediction", withheld=["*email*"])
    # an input the model cannot read is reported without quoting a sensitive column's values
    bad = tmp_path / "bad.parquet"
    people.assign(income="secret-income-value").to_parquet(bad)
    r = _scorer(tmp_path / "3", _model_dir(people, tmp_path / "s", sensitive_columns=["income"])).score_file(
        list_inputs(pafs.LocalFileSystem(), [str(bad)])[0]
    )
    assert r["status"] == "failed" and "'income'" in r["error"] and "secret" not in r["error"], r


def test_the_batch_driver_refuses_a_sensitive_id_column_before_anything_is_scored(
    registry, people: pd.DataFrame, tmp_path: Path
) -> None:
    from rayml.batch import OutputDir
    from rayml.batch._run import _pin_model

    md = _model_dir(people, tmp_path / "m", sensitive_columns=["*email*"])
    info = registry.register("people", md.path, registry.create_run("tests", "people"), {})
    out = OutputDir(str(tmp_path / "out"))
    b = BatchConfig(model="people:1", input=str(tmp_path / "in"), output=out.uri, id_columns=["date", "customer_email"])
    with pytest.raises(ConfigError) as e:
        _pin_model(registry, info, out, b)
    assert "id column 'customer_email' is sensitive" in e.value.message and "batch.id_columns" in (e.value.hint or "")
    assert out.read_manifest() is None  # refused before the run was started
    assert _pin_model(registry, info, out, b.model_copy(update={"id_columns": ["date"]}))[0].info.version == 1


def test_an_imported_model_gets_the_feature_policy_before_anything_is_registered(registry) -> None:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    import rayml

    x, y = load_diabetes(return_X_y=True, as_frame=True)
    df = x.head(120).assign(y=y.head(120))
    model = Ridge().fit(x.head(120), y.head(120))
    with pytest.raises(DataValidationError) as e:
        rayml.register_model(model, name="diab", sample=df, target="y", registry=registry, forbidden_features=["S[1-2]"])
    assert [p.split(" but")[0] for p in e.value.problems] == ["column 's1' is a feature", "column 's2' is a feature"]
    assert "pattern 'S[1-2]'" in e.value.problems[0]
    assert registry.client.search_registered_models() == [] and registry.client.get_experiment_by_name("rayml-imports") is None

    info = rayml.register_model(model, name="diab", sample=df, target="y", registry=registry, sensitive_columns=["BMI"])
    md = registry.load(info.ref).model_dir
    assert md.sensitive_columns == ["BMI"] and md.withheld_from("capture") == ["BMI"]
    assert not {"min", "max"} & set(md.reference_stats()["features"]["bmi"])
    assert f"{df['bmi'].iloc[0]}" not in (md.path / "input_example.json").read_text()


# --- schema evolution ------------------------------------------------------------------------------------------------
def test_schema_changes_lists_added_removed_and_kind_changed_features(people: pd.DataFrame) -> None:
    old = infer_schema(people, _cfg(ignore_columns=["date", "high_sales", "customer_email", "income"]))
    new_df = people.drop(columns=["temperature"]).assign(month=people["month"].astype(str))
    new = infer_schema(new_df, _cfg(ignore_columns=["date", "high_sales", "customer_email"]))
    assert schema_changes(old.kinds, new.kinds) == {
        "added": ["income"],
        "removed": ["temperature"],
        "kind_changed": [{"column": "month", "was": "numeric", "now": "categorical"}],
    }
    assert schema_changes(new.kinds, new.kinds) == {"added": [], "removed": [], "kind_changed": []}
    assert Schema.from_dict(new.to_dict()) == new  # and a schema written before the policy existed still reads
    legacy = {k: v for k, v in new.to_dict().items() if not k.startswith("sensitive")}
    assert Schema.from_dict(legacy).sensitive == ()


def test_a_served_model_set_withholds_its_sensitive_columns_from_capture(tmp_path: Path) -> None:
    """A model set records the policy in its schema only: serving still never captures those columns."""
    from rayml.serve._ingress import _signature
    from rayml.testing import write_tiny_model_set

    path = write_tiny_model_set(tmp_path / "set")
    index = path / "rayml_model.json"
    meta = json.loads(index.read_text())
    meta["schema"]["sensitive"] = ["price"]
    index.write_text(json.dumps(meta))
    md = ModelDir.read(path)
    assert md.is_model_set and md.sensitive_columns == ["price"] and md.withheld_from("capture") == ["price"]
    from rayml.serve._model_set import ModelSetServer

    server = object.__new__(ModelSetServer.func_or_class)  # its metadata only: no replica, no Serve
    server.model, server.version, server.model_dir, server.load_time_s, server.dependencies = "store-models", 1, md, 0.0, []
    server.model_set = md.model_set()
    assert _signature(server.metadata()).capture_withheld == {"price"}
