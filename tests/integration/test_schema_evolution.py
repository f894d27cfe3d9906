"""A new column followed through continuous training (issue 17, item 3): the pipeline's validate_data stage records
the schema change in the run's state, the candidate trained with the new feature passes the gate and is promoted, and
the served production version then answers requests that carry the new column and refuses ones without it.

Training itself is a quick plain-torch fit (tests/quickmodels.py; Ray Train is covered by tests/integration/
test_pipeline.py), and serving is the ingress's own path without Ray Serve: the request is parsed and checked against
the served version's signature as the ingress does (rayml.serve._protocol), then answered by the version loaded from
the registry into an ingress-placed InlineVersion.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayml.config import PipelineJobConfig, SyntheticConfig, load_config
from rayml.data import generate_sales
from rayml.errors import DataValidationError
from rayml.pipeline import _stages as stages
from rayml.pipeline._state import DONE, PipelineState, StateStore, run_stages
from rayml.registry import Registry
from rayml.serve._ingress import _signature
from rayml.serve._inline import InlineVersion
from rayml.serve._protocol import HttpError, parse_v1, validate
from rayml.testing import sales_columns
from rayml.train import prepare_data
from tests.quickmodels import register_quick

MODEL = "evolving-model"
NEW = "footfall"


def _serve(registry: Registry, ref: str) -> InlineVersion:
    """A registered version loaded as the ingress loads a version placed in it (from the registry, no local copy)."""
    info = registry.resolve(f"{MODEL}@{ref}")
    version = InlineVersion(MODEL, info.version, registry.tracking_uri, None, 1, 300.0, 1.0)
    version._count_drift = lambda *a: None  # no stats deployment here: online drift is covered by the serving tests
    return version


def _answer(version: InlineVersion, rows: list[dict], siblings: frozenset[str] = frozenset()) -> np.ndarray:
    """What the ingress answers ``rows`` (a v1 request) with, or the HttpError it refuses them with."""
    sig = _signature(version.metadata())
    feed = validate(parse_v1({"instances": rows}, max_rows=100), sig.inputs, False, siblings)
    result = asyncio.run(version.predict(feed))
    assert result["ok"], result
    return np.asarray(result["outputs"][0])


def test_a_new_column_is_recorded_gated_promoted_and_served(registry: Registry, tmp_path: Path) -> None:
    sales = generate_sales(SyntheticConfig(segments=4, rows_per_segment=150, seed=11))
    old = register_quick(registry, MODEL, sales, epochs=40, alias="production")  # trained without the new column
    rng = np.random.default_rng(0)
    new_data = sales.assign(**{NEW: sales["sales"] * 3.0 + rng.normal(0, 5, len(sales))})  # a new, useful signal
    path = tmp_path / "new.parquet"
    new_data.to_parquet(path)
    sets = [
        f"data.source={path}",
        *sales_columns(),
        f"model.name={MODEL}",
        f"registry.tracking_uri={registry.tracking_uri}",
        "gate.max_regression=10",
        "gate.segment_columns=[]",
        "gate.permutation_repeats=1",
        # the quick fit is not tuned to beat a ridge baseline or to be timed, and a working tree may be uncommitted:
        # this test is about the schema (those checks have their own tests)
        "gate.linear_baseline='off'",
        "gate.perf_regressions='off'",
        "gate.require_reproducible_lineage=false",
        "pipeline.rollout=never",  # no serving Ray here: promote moves the alias (serving is checked below)
        f"pipeline.state_dir={tmp_path / 'pipelines'}",
    ]
    cfg = load_config(PipelineJobConfig, None, sets)
    prepared = prepare_data(cfg.data, cfg.train.seed)
    assert NEW in prepared.schema.feature_names

    def train(ctx: stages.StageContext) -> dict:  # the train stage's outputs, from a quick fit on the new data
        info = register_quick(registry, MODEL, new_data, epochs=60)
        return {"version": info.version, "ref": info.ref}

    run_dir = str(tmp_path / "run")
    store = StateStore(run_dir)
    state = PipelineState.new(MODEL, "r1", stages.STAGE_NAMES)
    ctx = stages.StageContext(cfg, registry, state, run_dir, prepared, stages.ServeRelease(cfg.serve_job(), registry))
    steps = [(name, train if name == stages.TRAIN else fn) for name, fn in stages.STAGES]
    run_stages(state, steps, store, ctx)

    # recorded in the run's state file: the column that appeared, against the production version it was checked with
    saved = store.load()
    assert saved is not None and saved.status == DONE
    checked = saved.stage(stages.VALIDATE).outputs
    assert checked["production"] == old.version
    assert checked["schema_changes"] == {"added": [NEW], "removed": [], "kind_changed": []}
    gate = saved.stage(stages.GATE).outputs
    new_version = saved.stage(stages.TRAIN).outputs["version"]
    assert gate["passed"] is True and gate["candidate"] == new_version and gate["baseline"] == old.version
    assert saved.stage(stages.PROMOTE).outputs["outcome"] == "promoted"
    assert registry.resolve(f"{MODEL}@production").version == new_version
    assert registry.resolve(f"{MODEL}@previous").version == old.version

    # served: production now takes the new column, and a request without it is refused with what is missing
    rows = new_data.drop(columns=["sales", "high_sales", "date", "store_id"]).head(4).to_dict("records")
    production = _serve(registry, "production")
    assert _answer(production, rows).shape == (4,) and np.isfinite(_answer(production, rows)).all()
    with pytest.raises(HttpError) as e:
        _answer(production, [{k: v for k, v in r.items() if k != NEW} for r in rows])
    assert e.value.status == 422 and f"missing column(s) ['{NEW}']" in e.value.message
    # the old version alone refuses the new column; served next to the new one (a canary), it ignores it
    previous = _serve(registry, "previous")
    with pytest.raises(HttpError, match=f"unknown column.*{NEW}"):
        _answer(previous, rows)
    old_rows = [{k: v for k, v in r.items() if k != NEW} for r in rows]
    assert np.allclose(_answer(previous, rows, siblings=frozenset([NEW])), _answer(previous, old_rows))


def test_a_feature_that_changes_kind_is_recorded_and_one_production_cannot_read_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    """validate_data records a category that became a number (production still reads it as a category) and refuses,
    before any training, a number that became text (production cannot read it)."""
    sales = generate_sales(SyntheticConfig(segments=2, rows_per_segment=120, seed=12))
    prod = register_quick(registry, MODEL, sales, epochs=5, alias="production")

    def validate_data(df: pd.DataFrame, name: str) -> dict:
        path = tmp_path / f"{name}.parquet"
        df.to_parquet(path)
        sets = [f"data.source={path}", *sales_columns(), f"model.name={MODEL}", f"registry.tracking_uri={registry.tracking_uri}"]
        cfg = load_config(PipelineJobConfig, None, sets)
        state = PipelineState.new(MODEL, name, stages.STAGE_NAMES)
        release = stages.ServeRelease(cfg.serve_job(), registry)
        ctx = stages.StageContext(cfg, registry, state, str(tmp_path / name), prepare_data(cfg.data, 0), release)
        return stages.validate_data(ctx)

    out = validate_data(sales.assign(promo=(sales["promo"] == "yes").astype("int64")), "promo-as-number")
    assert out["production"] == prod.version
    assert out["schema_changes"] == {
        "added": [],
        "removed": [],
        "kind_changed": [{"column": "promo", "was": "categorical", "now": "numeric"}],
    }
    with pytest.raises(DataValidationError, match="column 'month' should be numeric") as e:
        validate_data(sales.assign(month=sales["month"].map(lambda m: f"m{m}")), "month-as-text")
    assert "checked against" in str(e.value) and e.value.hint
