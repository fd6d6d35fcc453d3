"""units/grafana-dashboard.json: every query names metrics (and labels) the supervisor exports."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relayq_supervisor.audit.log import make_event
from relayq_supervisor.core.program import ExitInfo
from relayq_supervisor.core.states import State
from relayq_supervisor.metrics import SupervisorMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "units" / "grafana-dashboard.json"
TARGET_LABELS = {"node", "job"}        # added by the scrape config (README), not by the supervisor
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


def exported() -> dict[str, set[str]]:
    """Every sample name the supervisor's registry renders, with its label names: one
    program with every field set, one event of each counted kind."""
    loop = asyncio.new_event_loop()
    try:
        program = SimpleNamespace(name="worker:0", base="worker", state=State.BACKOFF, restarts=1,
                                  started_wall=1.0, last_exit=ExitInfo(1, None, 2.0, 1.0), next_start_at=5.0,
                                  clock=lambda: 4.0)
        m = SupervisorMetrics(lambda: [program], loop)
        m.count_event(make_event("signal", signal="SIGTERM", action="blocked", via="ptrace"))
        m.count_event(make_event("redis_denied", command="shutdown", count=1))
        m.count_event(make_event("watchdog", program="worker:0", cause="no WATCHDOG=1"))
        m.loop_lag.observe(0.001)
        text = m.render().decode()
    finally:
        loop.close()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            names.setdefault(s.name, set()).update(s.labels)
    return names


def queries(dashboard: dict) -> list[str]:
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append(var["definition"])
    return out


def metrics_in(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metric names in a PromQL expression with the label names their selectors use,
    and the label names of its by/without/on clauses."""
    # Grafana's label_values(metric, label): the metric must carry that label
    expr = re.sub(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*(\w+)\s*\)", r'\1{\2=""}', expr)
    selectors: dict[str, set[str]] = {}
    for name, body in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        selectors.setdefault(name, set()).update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    grouping = set()
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        grouping.update(x.strip() for x in body.split(",") if x.strip())
    bare = re.sub(r'"[^"]*"', "", expr)                 # label values
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)    # matchers, ranges
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    for name in re.findall(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare):
        if name not in KEYWORDS:
            selectors.setdefault(name, set())
    return selectors, grouping


def test_the_parser_of_this_test_finds_metrics_and_labels():
    found, grouping = metrics_in('histogram_quantile(0.99, sum by (node, le) (rate(a_bucket{node=~"$x"}[5m]))) '
                                 '/ on(node) b_total + 2 * c')
    assert found == {"a_bucket": {"node"}, "b_total": set(), "c": set()}
    assert grouping == {"node", "le"}
    assert metrics_in("label_values(d_info, node)") == ({"d_info": {"node"}}, set())


def test_dashboard_is_valid_json_with_panels_and_a_node_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"] and all(p.get("targets") for p in dashboard["panels"])
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "node"}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.parametrize("expr", queries(json.loads(DASHBOARD.read_text())))
def test_every_query_names_exported_metrics_and_labels(expr):
    names = exported()
    used, grouping = metrics_in(expr)
    assert used, f"no metric in {expr}"
    for metric, labels in used.items():
        assert metric in names, f"{metric} is not exported (exported: {sorted(names)})"
        assert labels <= names[metric] | TARGET_LABELS, f"{metric} has no label {labels - names[metric]}"
    known = set().union(*(names[m] for m in used)) | TARGET_LABELS
    assert grouping <= known, f"grouping by {grouping - known}, which none of {sorted(used)} has"


def test_the_dashboard_covers_what_the_issue_asks_for():
    exprs = " ".join(queries(json.loads(DASHBOARD.read_text())))
    for metric in ("relayq_program_state", "relayq_program_restarts_total", "relayq_signals_total",
                   "relayq_redis_denied_total", "relayq_supervisor_loop_lag_seconds_bucket"):
        assert metric in exprs
