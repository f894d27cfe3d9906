"""The Grafana dashboard and the alert rules query only metrics that rayml (or Ray itself) exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
