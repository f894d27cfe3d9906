"""Load tabular data from parquet/CSV (local path, directory, glob or URI) and fingerprint it.

Any pyarrow filesystem works (local, ``s3://``, ``gs://``, ``file://``), so the same config runs on a laptop and on a
cluster with shared storage. ``source: synthetic`` generates the data deterministically instead.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from rayml.config import DataConfig
from rayml.data.schema import rare_classes_problem
from rayml.data.synthetic import generate_sales
from rayml.errors import DataError, DataValidationError

logger = logging.getLogger("rayml.data")

_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def _has_scheme(path: str) -> bool:
    return "://" in path


def resolve_files(source: str, fmt: str = "auto") -> tuple[pafs.FileSystem, list[str], str]:
    """Expand ``source`` (file, directory, glob or URI) to data files.

    Returns:
        (filesystem, file paths on it, format "parquet" | "csv")

    Raises:
        DataError: nothing matches, or the files are of mixed or unknown formats.
    """
    if _has_scheme(source):
        fs, root = pafs.FileSystem.from_uri(source)
    else:
        fs, root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(source))
    if any(ch in root for ch in "*?["):
        if not isinstance(fs, pafs.LocalFileSystem):
            raise DataError(f"globs are only supported on local paths: {source!r}", hint="point at a directory URI instead")
        files = sorted(_glob.glob(root))
    else:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"data source {source!r} does not exist", hint="check the path, or use `source: synthetic`")
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(root, recursive=True)
            files = sorted(
                i.path
                for i in fs.get_file_info(selector)
                if i.type == pafs.FileType.File and not os.path.basename(i.path).startswith((".", "_"))
            )
        else:
            files = [root]
    if fmt == "auto":
        kinds = {kind for f in files if (kind := _EXTENSIONS.get(os.path.splitext(f)[1].lower())) is not None}
        files = [f for f in files if os.path.splitext(f)[1].lower() in _EXTENSIONS]
        if len(kinds) > 1:
            raise DataError(f"data source {source!r} mixes parquet and CSV files", hint="set data.format or separate the files")
        fmt = kinds.pop() if kinds else "parquet"
    if not files:
        raise DataError(
            f"no parquet/CSV files found at {source!r}",
            hint="files must end in .parquet, .pq or .csv (or set data.format)",
        )
    return fs, files, fmt


def read_file(fs: pafs.FileSystem, path: str, fmt: str) -> pd.DataFrame:
    """Read one file; a corrupt or unreadable file is a :class:`DataError` that names it."""
    try:
        if fmt == "csv":
            with fs.open_input_stream(path) as f:
                table = pacsv.read_csv(f)
        else:
            table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise DataError(f"cannot read {fmt} file {path!r}: {e}", hint="the file is corrupt or not in that format") from e
    df: pd.DataFrame = table.to_pandas()
    return df


def load_table(cfg: DataConfig) -> pd.DataFrame:
    """The full table named by ``cfg.source`` as a pandas frame."""
    if cfg.source == "synthetic":
        return generate_sales(cfg.synthetic)
    fs, files, fmt = resolve_files(cfg.source, cfg.format)
    frames = [read_file(fs, f, fmt) for f in files]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    logger.info("loaded %d rows x %d columns from %d %s file(s) at %s", len(df), df.shape[1], len(files), fmt, cfg.source)
    return df


def fingerprint(df: pd.DataFrame) -> str:
    """A content hash of a frame: its data version.

    It depends on column names, dtypes and every value in row order; it does not depend on how the rows were split
    into files (a CSV copy may differ: CSV parsing can change dtypes).
    """
    h = hashlib.sha256()
    for name in df.columns:
        col = df[name]
        # text columns hash the same whatever their pandas dtype (object, str, category after a parquet round trip)
        if pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col) or isinstance(col.dtype, pd.CategoricalDtype):
            kind, col = "text", col.astype(object).where(col.notna(), None)
        else:
            kind = str(col.dtype)
        h.update(f"{name}\x00{kind}\x00".encode())
        h.update(pd.util.hash_pandas_object(col, index=False).to_numpy().tobytes())
    h.update(str(len(df)).encode())
    return h.hexdigest()[:16]


@dataclass
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame


def train_validation_split(df: pd.DataFrame, fraction: float, seed: int, stratify: str | None = None) -> Split:
    """A seeded random row split (the same seed and data give the same split).

    Args:
        df: the rows.
        fraction: the share of rows that goes to validation.
        seed: the split's seed.
        stratify: a class column (a multiclass target): each class is split on its own, ``fraction`` of its rows
            (at least one, and never all) to validation, so every class is in both parts.

    Raises:
        DataValidationError: ``stratify`` has missing values, or a class with fewer than 2 rows (it cannot be in both).
    """
    draw = np.random.default_rng(seed).random(len(df))
    if stratify is None:
        is_val = draw < fraction
        if is_val.all() or not is_val.any():
            is_val = np.zeros(len(df), dtype=bool)
            is_val[: max(1, int(len(df) * fraction))] = True
    else:
        is_val = _stratified_validation_rows(df[stratify], fraction, draw)
    return Split(train=df[~is_val].reset_index(drop=True), validation=df[is_val].reset_index(drop=True))


def _stratified_validation_rows(classes: pd.Series, fraction: float, draw: np.ndarray) -> np.ndarray:
    """Which rows validate: per class, the rows with the smallest ``draw``, ``fraction`` of them (rounded), clipped to
    [1, rows - 1]."""
    problems = []
    if classes.isna().any():
        problems.append(f"column {classes.name!r} has {int(classes.isna().sum())} missing value(s); drop those rows first")
    rare = rare_classes_problem(classes.dropna(), str(classes.name))
    if rare:
        problems.append(rare)
    if problems:
        raise DataValidationError(problems, hint="every class needs rows in both the training and the validation split")
    codes, uniques = pd.factorize(classes)
    counts = np.bincount(codes, minlength=len(uniques))
    n_val = np.clip(np.floor(counts * fraction + 0.5), 1, counts - 1).astype(np.int64)
    order = np.lexsort((draw, codes))  # by class, then by the seeded draw
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(order)) - starts[codes[order]]  # rank of each row within its class
    is_val = np.zeros(len(codes), dtype=bool)
    is_val[order] = position < n_val[codes[order]]
    return is_val
