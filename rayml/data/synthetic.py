"""A synthetic retail-sales dataset whose target depends on features differently in every store.

Per store (the segment ``store_id``) the generator draws its own base level, price elasticity, promo lift,
temperature response and weekly pattern, so one model per store beats one global model. Everything is a pure
function of the seed: the same seed gives identical rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from rayml.config import DriftSpec, SyntheticConfig
from rayml.errors import DataError

logger = logging.getLogger("rayml.data")

CATEGORIES = ["grocery", "household", "electronics", "clothing", "toys"]
REGIONS = ["north", "south", "east", "west"]
NUMERIC_COLUMNS = ["price", "temperature", "competitor_distance", "day_of_week", "month"]
CATEGORICAL_COLUMNS = ["category", "region", "promo"]


def generate_sales(cfg: SyntheticConfig) -> pd.DataFrame:
    """Generate the dataset described by ``cfg`` (drift included).

    Columns: ``store_id`` (segment), ``date``, ``region``, ``category``, ``promo`` ("yes"/"no"), ``price``,
    ``temperature``, ``competitor_distance``, ``day_of_week``, ``month``, ``sales`` (regression target) and
    ``high_sales`` (binary target: sales above the store's median).
    """
    rng = np.random.default_rng(cfg.seed)
    n_stores, n_days = cfg.segments, cfg.rows_per_segment
    try:
        start = pd.Timestamp(cfg.start_date)
    except ValueError as e:
        raise DataError(f"synthetic.start_date {cfg.start_date!r} is not a date", hint="use YYYY-MM-DD") from e

    # Per-store parameters: these differ enough that a per-store model pays off.
    base = rng.uniform(150, 260, n_stores)
    elasticity = rng.uniform(-3.0, -0.2, n_stores)
    promo_lift = rng.uniform(0.0, 40.0, n_stores)
    temp_coef = rng.normal(0.0, 1.5, n_stores)
    weekly = rng.normal(0.0, 10.0, (n_stores, 7))
    store_region = rng.integers(0, len(REGIONS), n_stores)
    store_category = rng.integers(0, len(CATEGORIES), n_stores)
    competitor = rng.uniform(0.2, 20.0, n_stores)

    n = n_stores * n_days
    store_idx = np.repeat(np.arange(n_stores), n_days)
    day_idx = np.tile(np.arange(n_days), n_stores)
    dates = start + pd.to_timedelta(day_idx, unit="D")
    dow = dates.dayofweek.to_numpy()
    month = dates.month.to_numpy()

    price = rng.uniform(5.0, 25.0, n)
    promo = rng.random(n) < 0.2
    season = 10.0 * np.sin(2 * np.pi * (month - 1) / 12.0)
    temperature = season + 12.0 + rng.normal(0.0, 4.0, n)
    # A store's main category dominates but other categories appear.
    category = np.where(rng.random(n) < 0.8, store_category[store_idx], rng.integers(0, len(CATEGORIES), n))
    competitor_distance = competitor[store_idx] * rng.uniform(0.9, 1.1, n)

    sales = (
        base[store_idx]
        + elasticity[store_idx] * price * 3.0
        + promo_lift[store_idx] * promo
        + temp_coef[store_idx] * (temperature - 12.0)
        + weekly[store_idx, dow]
        + 2.0 * np.log1p(competitor_distance)
        + 5.0 * (category == 2)
        + rng.normal(0.0, 3.0, n)
    )
    sales = np.maximum(sales, 0.0)  # a store cannot sell less than nothing

    width = max(3, len(str(n_stores - 1)))
    df: pd.DataFrame = pd.DataFrame(
        {
            "store_id": np.char.add("store_", np.char.zfill(store_idx.astype(str), width)),
            "date": dates.strftime("%Y-%m-%d"),
            "region": np.asarray(REGIONS, dtype=object)[store_region[store_idx]],
            "category": np.asarray(CATEGORIES, dtype=object)[category],
            "promo": np.where(promo, "yes", "no").astype(object),
            "price": price.round(2),
            "temperature": temperature.round(2),
            "competitor_distance": competitor_distance.round(3),
            "day_of_week": dow.astype("int64"),
            "month": month.astype("int64"),
            "sales": sales.round(3),
        }
    )
    df["store_id"] = df["store_id"].astype(object)
    median = df.groupby("store_id")["sales"].transform("median")
    df["high_sales"] = (df["sales"] > median).astype("int64")
    for spec in cfg.drift:
        df = apply_drift(df, spec, rng)
    return df


def apply_drift(df: pd.DataFrame, spec: DriftSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Return a copy of ``df`` with one drift applied."""
    if spec.column not in df.columns:
        raise DataError(
            f"drift column {spec.column!r} is not in the data",
            hint=f"choose one of: {', '.join(df.columns)}",
        )
    out: pd.DataFrame = df.copy()
    col = out[spec.column]
    if spec.kind == "shift":
        if not pd.api.types.is_numeric_dtype(col):
            raise DataError(
                f"drift 'shift' needs a numeric column; {spec.column!r} is {col.dtype}",
                hint="use new_category for categorical columns",
            )
        std = float(col.std()) or 1.0
        out[spec.column] = col + spec.value * std
    elif spec.kind == "new_category":
        mask = rng.random(len(out)) < spec.fraction
        out[spec.column] = col.astype(object)
        out.loc[mask, spec.column] = spec.category
    elif spec.kind == "missing":
        mask = rng.random(len(out)) < spec.fraction
        if pd.api.types.is_integer_dtype(col):
            out[spec.column] = col.astype("float64")
        out.loc[mask, spec.column] = np.nan if pd.api.types.is_numeric_dtype(out[spec.column]) else None
    return out


def parse_drift(items: list[str]) -> list[DriftSpec]:
    """Parse CLI drift strings: ``shift:price=2``, ``new_category:category=toys2``, ``missing:temperature=0.3``."""
    specs = []
    for item in items:
        try:
            kind, rest = item.split(":", 1)
            column, value = rest.split("=", 1)
        except ValueError as e:
            raise DataError(
                f"--drift {item!r} is not KIND:COLUMN=VALUE",
                hint="e.g. --drift shift:price=2 (std devs), --drift new_category:category=gadgets, "
                "--drift missing:temperature=0.3",
            ) from e
        kind = kind.strip()
        if kind == "shift":
            specs.append(DriftSpec(kind="shift", column=column, value=_float(item, value)))
        elif kind == "missing":
            specs.append(DriftSpec(kind="missing", column=column, fraction=_float(item, value)))
        elif kind == "new_category":
            specs.append(DriftSpec(kind="new_category", column=column, category=value))
        else:
            raise DataError(f"--drift {item!r}: unknown kind {kind!r}", hint="kinds: shift, new_category, missing")
    return specs


def _float(item: str, value: str) -> float:
    try:
        return float(value)
    except ValueError as e:
        raise DataError(f"--drift {item!r}: {value!r} is not a number", hint="e.g. shift:price=2 or missing:price=0.3") from e


def write_dataset(df: pd.DataFrame, out_dir: str | Path, files: int = 1) -> list[Path]:
    """Write ``df`` as ``files`` parquet files under ``out_dir`` (split by whole segments when possible)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    if files <= 1:
        parts = [df]
    else:
        stores = df["store_id"].unique() if "store_id" in df.columns else None
        if stores is not None and len(stores) >= files:
            groups = np.array_split(stores, files)
            parts = [df[df["store_id"].isin(g)] for g in groups]
        else:
            bounds = np.linspace(0, len(df), files + 1).astype(int)
            parts = [df.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for i, part in enumerate(parts):
        path = out / f"part-{i:05d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        part.reset_index(drop=True).to_parquet(tmp, index=False)
        tmp.replace(path)  # never leave a half-written file under the final name
        paths.append(path)
    logger.info("wrote %d rows to %d file(s) under %s", len(df), len(paths), out)
    return paths
