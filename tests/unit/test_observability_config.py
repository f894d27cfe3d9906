"""The Grafana dashboard and the alert rules query only metrics that rayml (or Ray itself) exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RAY_BUILTIN = {"ray_node_mem_used", "ray_node_mem_total", "ray_node_cpu_utilization"}
RECORDED = {"rayml:request_error_ratio:rate5m"}


def _exported_names() -> set[str]:
    """Every metric name rayml declares (Ray exports them with a `ray_` prefix; histograms add suffixes)."""
    names = set()
    for path in (ROOT / "rayml").rglob("*.py"):
        names.update(re.findall(r'"(rayml_[a-z_]+)"', path.read_text()))
    out = set()
    for n in names:
        out |= {f"ray_{n}", f"ray_{n}_bucket", f"ray_{n}_sum", f"ray_{n}_count"}
    return out


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:ray_)[a-z_]+|rayml:[a-z_:0-9]+)\s*[{\[)]", expr + " "))


# metrics that the next piece of monitoring work exports (online drift, training health); listed so that a typo
# elsewhere still fails this test
PLANNED: set[str] = set()


def test_dashboard_queries_known_metrics() -> None:
    dash = json.loads((ROOT / "clusters" / "grafana" / "rayml-serving.json").read_text())
    known = _exported_names() | RAY_BUILTIN | RECORDED | PLANNED
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    unknown = {n for e in exprs for n in _metric_names(e)} - known
    assert unknown == set()
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("traffic split", "latency", "error", "drift"):
        assert topic in titles


def test_alert_rules_query_known_metrics() -> None:
    rules = yaml.safe_load((ROOT / "clusters" / "prometheus" / "rules" / "rayml.rules.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    known = _exported_names() | RAY_BUILTIN | RECORDED | PLANNED
    unknown = {n for e in exprs for n in _metric_names(e)} - known
    assert unknown == set()


def test_every_alert_has_a_summary_and_a_promtool_test_that_fires_it() -> None:
    # `make alerts` (part of `make test`) runs these promtool tests: an alert without one would go untested
    rules = yaml.safe_load((ROOT / "clusters" / "prometheus" / "rules" / "rayml.rules.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {"RaymlDependencyMismatch", "RaymlDataQualityErrors", "RaymlPredictionDrift"} <= set(alerts)
    assert [a for a, r in alerts.items() if not r.get("annotations", {}).get("summary")] == []
    tests = yaml.safe_load((ROOT / "clusters" / "prometheus" / "tests" / "rayml.rules.test.yml").read_text())
    fired = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
    assert set(alerts) - fired == set()


def test_replicas_count_the_rows_data_quality_is_a_share_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rayml_data_quality_rows_total (the denominator of RaymlDataQualityErrors) grows by the rows counted for drift."""
    from rayml.serve._drift import GLOBAL
    from rayml.serve._inline import InlineVersion
    from rayml.testing import instances, write_tiny_model

    path = write_tiny_model(str(tmp_path / "m"), seed=0, name="q").path
    v = InlineVersion("q", 2, "sqlite:///unused.db", str(path), 1, 300.0, 1.0)
    added: list[tuple[float, dict[str, str]]] = []
    monkeypatch.setattr(v._metrics.quality_rows, "inc", lambda n=1.0, tags=None: added.append((n, dict(tags or {}))))
    rows = instances(7)
    columns = {
        t.name: np.asarray([r[t.name] for r in rows], dtype=object if t.datatype == "BYTES" else np.float32)
        for t in v.predictor.inputs
    }
    reference = v._reference_for("")
    assert reference is not None and reference[0] == GLOBAL
    v._observe_buffer({(v._drift.current_window(), GLOBAL): [(columns, np.zeros(7))]}, {GLOBAL: reference[1]})
    assert added == [(7, {"model": "q", "version": "2"})]
    assert v._drift.drain()[0][2]["rows"] == 7  # the same rows the stats deployment counts problems in
