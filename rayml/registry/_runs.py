"""What the registry facade returns about MLflow *runs* (as opposed to model versions): plain values, no MLflow types.

The methods that read and write runs are on :class:`rayml.registry.Registry` (its "runs" block); these are their
return types, and the conversions from MLflow's entities.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rayml.errors import RegistryError

# MLflow's limits for one value and one log_batch call (params and tags; metrics are 1000 a batch)
MAX_PARAM_CHARS = 6000
MAX_PARAMS_PER_BATCH = 100


class MetricPoint(NamedTuple):
    """One logged value of a metric."""

    step: int
    value: float
    timestamp_ms: int


@dataclass
class RunRecord:
    """A run as MLflow holds it: identity, lifecycle status and its latest metrics, params and tags."""

    run_id: str
    name: str
    experiment_id: str
    status: str  # RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    start_ms: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_mlflow(cls, run: Any) -> RunRecord:
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            experiment_id=run.info.experiment_id,
            status=run.info.status,
            start_ms=int(run.info.start_time or 0),
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
            tags=dict(run.data.tags),
        )


def metric_entities(values: Mapping[str, Any], step: int, timestamp_ms: int) -> list[Any]:
    """MLflow ``Metric`` entities for the finite numbers of ``values`` (None, NaN and inf are left out: every caller
    logs only what a chart can show, and MLflow would store NaN as a value)."""
    from mlflow.entities import Metric

    out = []
    for k, v in values.items():
        if v is None or isinstance(v, (str, bytes)):
            continue
        try:
            x = float(v)  # numpy scalars too (a float32 is no Python float)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out.append(Metric(k, x, timestamp_ms, step))
    return out


def param_batches(params: Mapping[str, str]) -> Iterable[list[Any]]:
    """``params`` as MLflow ``Param`` batches, each value cut to MLflow's limit."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        yield items[i : i + MAX_PARAMS_PER_BATCH]


def tag_filter(
    tags: Mapping[str, str], tag_prefixes: Mapping[str, str] | None = None, status: str | None = None
) -> str:
    """An MLflow search filter matching runs that carry every tag of ``tags`` with that exact value, every tag of
    ``tag_prefixes`` with a value starting with that prefix (``""``: the tag is set), and ``status`` if given."""
    clauses = [f"attributes.status = '{status}'"] if status else []
    for op, items, suffix in (("=", tags, ""), ("LIKE", tag_prefixes or {}, "%")):
        for key, value in items.items():
            if "`" in key or "'" in value:
                raise RegistryError(
                    f"cannot search runs by tag {key!r}={value!r}: backquotes in keys and quotes in values are not "
                    "supported",
                    hint="search by tags whose keys and values are plain names or run ids",
                )
            clauses.append(f"tags.`{key}` {op} '{value}{suffix}'")
    return " and ".join(clauses)
