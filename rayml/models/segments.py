"""Segment keys: the canonical string of a segment's values, and vectorised grouping of rows by segment.

A many-models family (a *model set*, see :mod:`rayml.models.model_set`) holds one model per segment, a segment
being the rows that share the values of the segment column(s) (e.g. ``store_id``). A segment key does not depend on
how the data was stored (a parquet int, a CSV float and a string of the same id are one segment); multi-column keys
are joined with ``|`` (a ``|`` or ``\\`` inside a value is escaped with ``\\``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from rayml.errors import PredictionInputError

KEY_SEPARATOR = "|"
MISSING = "__missing__"  # the key part of a missing (null/NaN) segment value


def _canonical(value: Any) -> str:
    """One segment value as a string that does not depend on how the data was stored (parquet int, CSV float, str)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return MISSING
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, (bool, np.bool_)):
        text = str(bool(value))
    elif isinstance(value, (int, np.integer)):
        text = str(int(value))
    elif isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f):
            return MISSING
        # a CSV reads an integer id column with gaps as floats: 3.0 must be the same segment as 3
        text = str(int(f)) if f.is_integer() else repr(f)
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace(KEY_SEPARATOR, "\\" + KEY_SEPARATOR)


def segment_key(values: Sequence[Any] | Any) -> str:
    """The canonical key of one segment: its values (one per segment column) as one string.

    Args:
        values: the segment's values in segment-column order; a single scalar (e.g. ``"store_001"``) is one value.

    Returns:
        The key, e.g. ``"store_001"`` or ``"north|brand_a"`` for two columns.

    Example:
        >>> segment_key(["north", 3.0])
        'north|3'
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence | np.ndarray | pd.Series):
        values = [values]
    return KEY_SEPARATOR.join(_canonical(v) for v in values)


def split_segment_key(key: str) -> list[str]:
    """The per-column parts of a key (escapes undone): ``"a\\|b|c"`` -> ``["a|b", "c"]``."""
    parts, current, i = [], [], 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key):
            current.append(key[i + 1])
            i += 2
            continue
        if ch == KEY_SEPARATOR:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def segment_groups(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Group the rows of ``frame`` by segment, vectorised (no per-row Python).

    Returns:
        (codes, keys): ``codes[i]`` is the group of row ``i`` and ``keys[g]`` the segment key of group ``g``.

    Raises:
        PredictionInputError: a segment column is missing.
    """
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PredictionInputError(
            f"segment column(s) {missing} are missing; the input has {list(frame.columns)}",
            hint=f"every row needs its segment: add column(s) {list(columns)}",
        )
    if not columns:
        raise PredictionInputError("a model set needs at least one segment column", hint="check the model set's index")
    n = len(frame)
    per_column: list[tuple[np.ndarray, list[str]]] = []
    for name in columns:
        codes, uniques = pd.factorize(frame[name], use_na_sentinel=True)
        canon = [_canonical(u) for u in uniques] + [MISSING]
        # nulls get their own code (the last one) so they form the MISSING segment instead of vanishing
        codes = np.where(codes < 0, len(uniques), codes)
        # two raw values can share a canonical string (3 and 3.0, None and NaN): merge them at the uniques level
        canon_ids, canon_keys = pd.factorize(np.asarray(canon, dtype=object))
        per_column.append((canon_ids[codes].astype(np.int64), [str(k) for k in canon_keys]))
    if len(per_column) == 1:
        codes, canon = per_column[0]
        used, groups = np.unique(codes, return_inverse=True) if n else (np.array([], dtype=np.int64), codes)
        return groups.astype(np.int64).reshape(-1), [canon[int(u)] for u in used]
    if math.prod(len(canon) for _, canon in per_column) >= 2**62:
        raise PredictionInputError(
            f"segment columns {list(columns)} have too many value combinations to index",
            hint="use fewer or coarser segment columns",
        )
    combined = np.zeros(n, dtype=np.int64)
    for codes, canon in per_column:
        combined = combined * len(canon) + codes
    combos, groups = np.unique(combined, return_inverse=True)
    keys = []
    for combo in combos:
        parts = []
        for _, canon in reversed(per_column):
            combo, part = divmod(int(combo), len(canon))
            parts.append(canon[part])
        keys.append(KEY_SEPARATOR.join(reversed(parts)))
    return groups.astype(np.int64).reshape(-1), keys
