"""deploy/grafana/dynams-dashboard.json: importable, one panel per documented query, and
every query over series that tests/service/test_metrics.py reads back from a live selector."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.service.test_metrics import SERIES

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dynams-dashboard.json"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"


def panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def queries() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def documented_queries() -> list[str]:
    """The PromQL column of docs/deploy.md's metrics table (code spans holding `(`)."""
    text = DEPLOY_DOC.read_text()
    table = text[text.index("| what | Prometheus series | PromQL |"):]
    table = table[:table.index("\n\n")]
    rows = table.splitlines()[2:]
    return [q for row in rows for q in re.findall(r"`([^`]*\([^`]*)`", row.split("|")[3])]


def test_dashboard_is_an_importable_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "dynams-selector" and dashboard["title"]
    (source,) = dashboard["templating"]["list"]
    assert (source["type"], source["query"], source["name"]) == \
        ("datasource", "prometheus", "datasource")
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == "${datasource}" and panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        (target,) = panel["targets"]
        assert target["legendFormat"] == "{{job}}" and "by (job" in target["expr"]


def test_every_panel_queries_series_the_metrics_test_reads_back():
    for expr in queries():
        series = set(re.findall(r"\bray_dynams_\w+", expr))
        assert series, f"{expr!r} names no ray_dynams_* series"
        assert series <= SERIES, f"{expr!r}: {sorted(series - SERIES)} never read back"
    covered = {s for expr in queries() for s in re.findall(r"\bray_dynams_\w+", expr)}
    # Each exported metric has a panel (the histogram's _count/_sum are covered by _bucket).
    stems = {re.sub(r"_(total|bucket|count|sum)$", "", s) for s in SERIES}
    assert stems == {re.sub(r"_(total|bucket|count|sum)$", "", s) for s in covered}


def test_one_panel_per_documented_query():
    documented = documented_queries()
    assert len(documented) >= 5
    assert sorted(documented) == sorted(queries())
