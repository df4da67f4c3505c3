"""deploy/grafana: the committed dashboards are generated, well formed, and query only metrics inferwatch exports."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from daemon.export.exposition import FAMILIES
from daemon.monitors.canary import METRICS as CANARY_METRICS

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("inferwatch_grafana_dashboards", GRAFANA / "dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dashboards = _load()
BUILT: dict[str, dict[str, Any]] = dashboards.build()
UIDS = {"inferwatch-overview", "inferwatch-model", "inferwatch-canary", "inferwatch-shadow"}
# Labels Prometheus adds to every scraped series, and the histogram bucket bound.
TARGET_LABELS = {"job", "instance"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
SERIES: dict[str, str] = {
    family + suffix: family for family, (kind, _, _) in FAMILIES.items() for suffix in SUFFIXES.get(kind, ("",))
}
METRIC_NAME = re.compile(r"\binferwatch_\w+")
SELECTOR = re.compile(r"\b(inferwatch_\w+)\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
VARIABLE = re.compile(r"\$\{(\w+)[^}]*\}|\$(\w+)|\[\[(\w+)[^\]]*\]\]")
BY_DASHBOARD = pytest.mark.parametrize("name", sorted(BUILT))


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _all_values(dashboard: dict[str, Any]) -> dict[str, str]:
    return {name: ".*" for name in _variables(dashboard)}


def test_committed_json_is_what_the_generator_writes() -> None:
    assert {p.name for p in (GRAFANA / "dashboards").glob("*.json")} == set(BUILT)
    assert dashboards.main(["--check"]) == 0, "run: python deploy/grafana/dashboards.py"


def test_check_reports_edited_and_stale_files(tmp_path: Path) -> None:
    assert dashboards.main(["--dir", str(tmp_path)]) == 0
    assert dashboards.main(["--check", "--dir", str(tmp_path)]) == 0
    edited = tmp_path / "inferwatch-model.json"
    edited.write_text(edited.read_text().replace("inferwatch_events_total", "inferwatch_event_total"))
    assert dashboards.main(["--check", "--dir", str(tmp_path)]) == 1
    assert dashboards.main(["--dir", str(tmp_path)]) == 0
    (tmp_path / "old.json").write_text("{}")
    assert dashboards.main(["--check", "--dir", str(tmp_path)]) == 1


def test_four_dashboards_share_the_conventions() -> None:
    assert {d["uid"] for d in BUILT.values()} == UIDS
    for file_name, d in BUILT.items():
        assert file_name == f"{d['uid']}.json"
        assert (d["schemaVersion"], d["tags"], d["refresh"]) == (39, ["inferwatch"], "30s")
        assert d["time"] == {"from": "now-6h", "to": "now"}
        source = _variables(d)["datasource"]
        assert (source["type"], source["query"]) == ("datasource", "prometheus")
        for p in dashboards.panels(d):
            if p["type"] != "row":
                assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for v in d["templating"]["list"][1:]:
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, v["name"]


@BY_DASHBOARD
def test_panel_ids_are_unique_and_the_grid_does_not_overlap(name: str) -> None:
    panels = dashboards.panels(BUILT[name])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    boxes = []
    for p in panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh"), p["title"]
        assert g["x"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        boxes.append((p["title"], g))
    for i, (title, a) in enumerate(boxes):
        for other, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"{title!r} overlaps {other!r}"


@BY_DASHBOARD
def test_every_panel_has_a_title_and_queries(name: str) -> None:
    panels = [p for p in dashboards.panels(BUILT[name]) if p["type"] != "row"]
    assert len(panels) >= 8
    for p in panels:
        assert p["title"], p
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["legendFormat"], p["title"]
            if p["type"] in ("timeseries", "table"):
                assert "{{" in t["legendFormat"], f"{p['title']}: a legend with labels"
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), titles
    assert len(dashboards.queries(BUILT[name])) == sum(len(p["targets"]) for p in panels)


@BY_DASHBOARD
def test_queries_use_only_exported_series_and_their_labels(name: str) -> None:
    for title, expr in dashboards.queries(BUILT[name]):
        names = METRIC_NAME.findall(expr)
        assert names or "up{" in expr, f"{title}: reads no inferwatch metric"
        unknown = [n for n in names if n not in SERIES]
        assert not unknown, f"{title}: {unknown} not in daemon.export.exposition.FAMILIES (or a wrong suffix)"
        labels = set(TARGET_LABELS)
        for n in names:
            labels |= set(FAMILIES[SERIES[n]][2]) | ({"le"} if n.endswith("_bucket") else set())
        for series, matchers in SELECTOR.findall(expr):
            allowed = set(FAMILIES[SERIES[series]][2]) | TARGET_LABELS
            assert set(MATCHER.findall(matchers)) <= allowed, f"{title}: {series}{{{matchers}}}"
        for grouping in GROUPING.findall(expr):
            grouped = {label.strip() for label in grouping.split(",")}
            assert grouped <= labels, f"{title}: by ({grouping}) uses labels {names} lack"


def test_every_family_is_on_a_dashboard() -> None:
    used = {SERIES[n] for d in BUILT.values() for _, expr in dashboards.queries(d) for n in METRIC_NAME.findall(expr)}
    assert set(FAMILIES) - used == set()


@BY_DASHBOARD
def test_variables_in_queries_are_defined(name: str) -> None:
    d = BUILT[name]
    defined = set(_variables(d))
    expressions = [expr for _, expr in dashboards.queries(d)]
    expressions += [v["definition"] for v in d["templating"]["list"] if v["type"] == "query"]
    for expr in expressions:
        for groups in VARIABLE.findall(expr):
            var = next(g for g in groups if g)
            assert var in defined or var.startswith("__"), f"{expr}: ${var} is not defined"


@BY_DASHBOARD
def test_substitute_with_defaults_leaves_no_variable(name: str) -> None:
    d = BUILT[name]
    for title, expr in dashboards.queries(d):
        substituted = dashboards.substitute(expr, _all_values(d))
        assert "$" not in substituted and "[[" not in substituted, f"{title}: {substituted}"


def test_substitute_replaces_every_form() -> None:
    expr = 'rate(x{a=~"$model", b=~"${version}", c=~"${variant:regex}", d="[[job]]"}[$__rate_interval])'
    values = {"model": "m", "version": "v", "variant": "w", "job": "j"}
    assert dashboards.substitute(expr, values) == 'rate(x{a=~"m", b=~"v", c=~"w", d="j"}[1m])'
    assert dashboards.substitute("increase(x[$__interval]) + increase(y[$__range])", {}) == (
        "increase(x[15s]) + increase(y[1h])"
    )
    assert dashboards.substitute("x[$__rate_interval]", {"__rate_interval": "5m"}) == "x[5m]"
    assert dashboards.substitute('x{a="$unknown"}', {}) == 'x{a="$unknown"}'
    assert dashboards.substitute('x{a=~"a$"}', {}) == 'x{a=~"a$"}'


def test_model_variables_are_chained() -> None:
    variables = _variables(BUILT["inferwatch-model.json"])
    assert [n for n in variables if n != "datasource"] == ["model", "version", "variant"]
    assert variables["model"]["definition"] == "label_values(inferwatch_events_total, model)"
    assert "$model" in variables["version"]["definition"]
    assert "$model" in variables["variant"]["definition"] and "$version" in variables["variant"]["definition"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["multi"] and v["includeAll"] and v["allValue"] == ".*", v["name"]
            assert v["refresh"] == 2, f"{v['name']}: refresh on time range change"
    for title, expr in dashboards.queries(BUILT["inferwatch-model.json"]):
        for var in ("model", "version", "variant"):
            assert f'{var}=~"${var}"' in expr, f"{title}: not filtered by ${var}"


def test_canary_dashboard_knows_every_canary_metric() -> None:
    assert tuple(dashboards.CANARY_METRICS) == CANARY_METRICS
    canary = BUILT["inferwatch-canary.json"]
    verdict = next(p for p in dashboards.panels(canary) if p["title"] == "Verdict" and p["type"] == "stat")
    mapping = verdict["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {k: v["text"] for k, v in mapping.items()} == {"1": "pass", "0": "inconclusive", "-1": "fail"}


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not on PATH (`make tools` installs Debian's prometheus)")
    rules = [
        {"record": f"test:panel:{i}", "expr": dashboards.substitute(expr, _all_values(d))}
        for i, (d, (_, expr)) in enumerate((d, q) for d in BUILT.values() for q in dashboards.queries(d))
    ]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rules)} rules found" in checked.stdout
