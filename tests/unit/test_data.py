"""Synthetic data, loading, schema inference/validation, fingerprints and reference statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from rayml.config import DataConfig, DriftSpec, SyntheticConfig
from rayml.data import (
    fingerprint,
    generate_sales,
    infer_schema,
    load_table,
    parse_drift,
    reference_stats,
    train_validation_split,
    validate,
    write_dataset,
)
from rayml.errors import DataError, DataValidationError


@pytest.fixture(scope="module")
def sales() -> pd.DataFrame:
    return generate_sales(SyntheticConfig(segments=6, rows_per_segment=120, seed=3))


def test_synthetic_is_deterministic_by_seed(sales: pd.DataFrame) -> None:
    again = generate_sales(SyntheticConfig(segments=6, rows_per_segment=120, seed=3))
    other = generate_sales(SyntheticConfig(segments=6, rows_per_segment=120, seed=4))
    pd.testing.assert_frame_equal(sales, again)
    assert fingerprint(sales) == fingerprint(again)
    assert fingerprint(sales) != fingerprint(other)
    assert len(sales) == 6 * 120 and sales["store_id"].nunique() == 6
    assert (sales["sales"] >= 0).all()


def test_relationship_differs_per_store(sales: pd.DataFrame) -> None:
    # per-store least-squares price slopes differ a lot: that is why per-store models beat a global one
    slopes = []
    for _, g in sales.groupby("store_id"):
        slopes.append(np.polyfit(g["price"], g["sales"], 1)[0])
    assert np.ptp(slopes) > 2.0


def test_drift_injection(sales: pd.DataFrame) -> None:
    cfg = SyntheticConfig(
        segments=6,
        rows_per_segment=120,
        seed=3,
        drift=[
            DriftSpec(kind="shift", column="price", value=2.0),
            DriftSpec(kind="new_category", column="category", category="gadgets", fraction=0.3),
            DriftSpec(kind="missing", column="temperature", fraction=0.25),
        ],
    )
    drifted = generate_sales(cfg)
    assert drifted["price"].mean() > sales["price"].mean() + 1.5 * sales["price"].std()
    assert 0.2 < (drifted["category"] == "gadgets").mean() < 0.4
    assert 0.15 < drifted["temperature"].isna().mean() < 0.35
    assert [d.kind for d in parse_drift(["shift:price=2", "new_category:category=x", "missing:price=0.1"])] == [
        "shift",
        "new_category",
        "missing",
    ]
    with pytest.raises(DataError, match="KIND:COLUMN=VALUE"):
        parse_drift(["price=2"])
    with pytest.raises(DataError, match="unknown kind"):
        parse_drift(["explode:price=2"])
    with pytest.raises(DataError, match="not in the data"):
        generate_sales(SyntheticConfig(segments=1, rows_per_segment=5, drift=[DriftSpec(kind="shift", column="nope")]))


def test_load_parquet_dir_glob_and_csv(tmp_path: Path, sales: pd.DataFrame) -> None:
    write_dataset(sales, tmp_path / "pq", files=3)
    from_dir = load_table(DataConfig(source=str(tmp_path / "pq")))
    from_glob = load_table(DataConfig(source=str(tmp_path / "pq" / "part-*.parquet")))
    from_uri = load_table(DataConfig(source=(tmp_path / "pq").as_uri()))
    assert fingerprint(from_dir) == fingerprint(sales) == fingerprint(from_glob) == fingerprint(from_uri)
    sales.to_csv(tmp_path / "s.csv", index=False)
    from_csv = load_table(DataConfig(source=str(tmp_path / "s.csv")))
    assert len(from_csv) == len(sales) and list(from_csv.columns) == list(sales.columns)


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_table(DataConfig(source=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no parquet/CSV files"):
        load_table(DataConfig(source=str(tmp_path / "empty")))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read parquet file .*x.parquet"):
        load_table(DataConfig(source=str(bad)))


def test_schema_inference_excludes_target_segment_and_ignored(sales: pd.DataFrame) -> None:
    schema = infer_schema(sales, DataConfig())
    assert set(schema.numeric) == {"price", "temperature", "competitor_distance", "day_of_week", "month"}
    assert {f.name for f in schema.categorical} == {"region", "category", "promo"}
    assert "store_id" not in schema.feature_names and "sales" not in schema.feature_names
    promo = next(f for f in schema.categorical if f.name == "promo")
    assert promo.categories == ("no", "yes")  # most frequent first
    explicit = infer_schema(sales, DataConfig(numeric_features=["price"], categorical_features=["store_id"], segment=[]))
    assert explicit.feature_names == ["price", "store_id"]


def test_schema_inference_collects_every_problem(sales: pd.DataFrame) -> None:
    df = sales.drop(columns=["price"]).assign(temperature=lambda d: d["temperature"].astype(str))
    cfg = DataConfig(numeric_features=["price", "temperature"], categorical_features=["color"], task="binary")
    with pytest.raises(DataValidationError) as e:
        infer_schema(df, cfg)
    problems = "\n".join(e.value.problems)
    assert "'price' is missing" in problems
    assert "'color' is missing" in problems
    assert "numeric feature 'temperature'" in problems
    assert "binary target 'sales' must hold only 0/1" in problems
    assert len(e.value.problems) == 4


def test_validate_lists_every_problem(sales: pd.DataFrame) -> None:
    schema = infer_schema(sales, DataConfig())
    bad = sales.drop(columns=["month"]).copy()
    bad["price"] = bad["price"].astype(object)
    bad.loc[0, "price"] = "cheap"
    bad.loc[: len(bad) // 2, "temperature"] = np.nan
    bad.loc[0, "category"] = "spaceships"
    bad["surprise"] = 1
    with pytest.raises(DataValidationError) as e:
        validate(bad, schema, max_nan_fraction=0.1, allow_extra=False, allow_unseen_categories=False, source="new.parquet")
    msg = str(e.value)
    assert "in new.parquet" in msg
    assert "missing column(s) ['month']" in msg
    assert "unexpected column(s)" in msg and "'surprise'" in msg
    assert "'price' should be numeric" in msg and "'cheap'" in msg
    assert "'temperature' is 50.0% missing" in msg or "'temperature' is 50.1% missing" in msg
    assert "never seen in training: ['spaceships']" in msg
    assert len(e.value.problems) == 5
    validate(sales, schema)  # clean data passes


def test_split_is_seeded(sales: pd.DataFrame) -> None:
    a, b = train_validation_split(sales, 0.2, 1), train_validation_split(sales, 0.2, 1)
    pd.testing.assert_frame_equal(a.validation, b.validation)
    assert len(a.train) + len(a.validation) == len(sales)
    assert 0.1 < len(a.validation) / len(sales) < 0.3


def test_reference_stats_are_deciles_and_topk(sales: pd.DataFrame) -> None:
    schema = infer_schema(sales, DataConfig())
    stats = reference_stats(sales, schema, predictions=np.arange(10.0))
    price = stats["features"]["price"]
    assert len(price["edges"]) == 9 and len(price["shares"]) == 10
    assert sum(price["shares"]) == pytest.approx(1.0)
    assert all(abs(s - 0.1) < 0.02 for s in price["shares"])
    cat = stats["features"]["category"]
    assert cat["categories"][-1] == "__other__" and sum(cat["shares"]) == pytest.approx(1.0)
    assert "target" in stats and "prediction" in stats


# --- multiclass targets ------------------------------------------------------------------------------------------------
def _multiclass_frame(y: list) -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(len(y), dtype=float), "y": pd.Series(y, dtype=None if y else float)})


MULTICLASS = DataConfig(source="frame", target="y", task="multiclass")


@pytest.mark.parametrize(
    ("values", "classes"),
    [
        (pd.Series([10, 2, 2, 10, 3, 3]), (2, 3, 10)),  # ints sort numerically
        (pd.Series([1.0, 0.0, 1.0, 0.0, 2.0, 2.0]), (0, 1, 2)),  # whole floats (e.g. after a NaN was dropped) are ints
        (pd.Series(["b", "a", "b", "a", "B", "B"]), ("B", "a", "b")),  # strings sort lexically
        (pd.Series(["x", "y", "x", "y"], dtype="category"), ("x", "y")),
        (pd.Series([7, 5, 7, 5], dtype=object), (5, 7)),
    ],
)
def test_multiclass_schema_records_sorted_labels_in_their_type(values: pd.Series, classes: tuple) -> None:
    import json

    from rayml.data import Schema

    df = pd.DataFrame({"x": np.arange(len(values), dtype=float), "y": values})
    schema = infer_schema(df, MULTICLASS)
    assert schema.task == "multiclass" and schema.classes == classes
    assert [type(c) for c in schema.classes] == [type(c) for c in classes]
    again = Schema.from_dict(json.loads(json.dumps(schema.to_dict())))  # JSON safe, types kept
    assert again == schema and [type(c) for c in again.classes] == [type(c) for c in classes]
    old = {k: v for k, v in schema.to_dict().items() if k != "classes"}  # written before multiclass existed
    assert Schema.from_dict(old).classes == ()


_WHOLE = st.integers(-5, 5)
_BAD_TARGETS = st.one_of(
    # numbers that are not whole
    st.lists(_WHOLE, min_size=4, max_size=30).flatmap(
        lambda ints: st.floats(0.01, 0.99).map(lambda f: ("not whole", [float(i) for i in ints] + [ints[0] + f]))
    ),
    st.lists(st.booleans(), min_size=4, max_size=30).map(lambda bs: ("true/false", bs)),
    st.lists(st.sampled_from(["a", "b"]), min_size=2, max_size=30).map(lambda s: ("mixes text and numbers", [*s, 1, 1])),
    st.tuples(st.sampled_from([0, "only"]), st.integers(2, 30)).map(lambda t: ("it needs at least 2", [t[0]] * t[1])),
    # every class but one has rows enough; the rare ones are listed with their counts
    st.lists(st.sampled_from(["a", "b"]), min_size=0, max_size=30).map(
        lambda s: ("fewer than 2 rows", ["a", "a", "b", "b", *s, "rare"])
    ),
)


@settings(max_examples=60, deadline=None)
@given(_BAD_TARGETS)
def test_bad_multiclass_targets_are_clear_errors(case: tuple[str, list]) -> None:
    what, y = case
    with pytest.raises(DataValidationError) as e:
        infer_schema(_multiclass_frame(y), MULTICLASS)
    msg = str(e.value)
    assert what in msg and "multiclass target 'y'" in msg, msg
    if what == "fewer than 2 rows":
        assert "{'rare': 1}" in msg
    if what in ("not whole", "true/false"):
        assert "data.task=" in msg  # says which task fits instead


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(2, 40), min_size=2, max_size=6),
    fraction=st.sampled_from([0.05, 0.2, 0.5, 0.9]),
    seed=st.integers(0, 5),
)
def test_stratified_split_puts_every_class_in_both_parts(counts: list[int], fraction: float, seed: int) -> None:
    y = np.repeat([f"c{i}" for i in range(len(counts))], counts)
    df = pd.DataFrame({"y": np.random.default_rng(seed).permutation(y), "row": np.arange(len(y))})
    split = train_validation_split(df, fraction, seed, stratify="y")
    assert set(split.train["y"]) == set(split.validation["y"]) == set(y)
    assert sorted([*split.train["row"], *split.validation["row"]]) == list(range(len(y)))
    for label, n in zip(sorted(set(y)), np.unique(y, return_counts=True)[1], strict=True):
        n_val = int((split.validation["y"] == label).sum())
        assert n_val == min(max(1, int(np.floor(n * fraction + 0.5))), n - 1)
    again = train_validation_split(df, fraction, seed, stratify="y")
    pd.testing.assert_frame_equal(split.validation, again.validation)


def test_stratified_split_refuses_a_class_it_cannot_put_in_both_parts() -> None:
    df = pd.DataFrame({"y": ["a", "a", "a", "b", "c", "c"]})
    with pytest.raises(DataValidationError, match=r"fewer than 2 rows.*\{'b': 1\}"):
        train_validation_split(df, 0.3, 0, stratify="y")
