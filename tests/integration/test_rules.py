"""deploy/prometheus and deploy/alertmanager: the rules lint clean, their promtool unit tests pass and
cover every alert, they read only metrics inferwatch exports, and the Alertmanager example is valid
and routes as documented. Runs Debian's promtool and amtool (a few seconds in all)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.export.exposition import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"

RUNBOOK = "https://github.com/inferwatch/inferwatch/blob/main/docs/operations.md#"
SEVERITIES = {"page", "ticket"}
# Labels Prometheus adds to every scraped series (the rules may select on them).
TARGET_LABELS = {"job", "instance"}
# Alerts that Alertmanager also hands to the daemon's POST /v1/alertmanager.
TO_DAEMON = {"InferwatchDriftSustained", "InferwatchAccuracyBelowSLO", "InferwatchEstimatedAccuracyDrop"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"(inferwatch_[a-z_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `make test` installs Debian's prometheus and prometheus-alertmanager"
    return path


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> Iterator[dict[str, Any]]:
    for path in RULES:
        for group in load(path)["groups"]:
            yield from group["rules"]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def exposed_labels() -> dict[str, set[str]]:
    """Every series name inferwatch exposes → the labels it may carry."""
    names: dict[str, set[str]] = {}
    for family, (kind, _help, labels) in FAMILIES.items():
        if kind == "counter":
            names[f"{family}_total"] = set(labels)
        elif kind == "histogram":
            names[f"{family}_bucket"] = {*labels, "le"}
            names[f"{family}_sum"] = names[f"{family}_count"] = set(labels)
        elif kind == "summary":
            names[family] = set(labels)
            names[f"{family}_sum"] = names[f"{family}_count"] = set(labels) - {"quantile"}
        else:
            names[family] = set(labels)
    return names


def test_there_are_rules_and_tests() -> None:
    assert RULES, "no deploy/prometheus/rules/*.yml"
    assert RULE_TESTS, "no deploy/prometheus/tests/*.yml"
    assert alerts(), "the rule files define no alert"
    assert any("record" in r for r in rules()), "the rule files define no recording rule"


@pytest.mark.parametrize("path", RULES, ids=lambda p: p.name)
def test_promtool_check_rules_with_lint(path: Path) -> None:
    # --lint-fatal: 2.42 prints lint findings but exits 0 without it.
    result = run([binary("promtool"), "check", "rules", "--lint=all", "--lint-fatal", str(path)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in result.stdout, output
    assert "lint" not in output.lower() and "FAILED" not in output, output


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_test_rules(path: Path) -> None:
    result = run([binary("promtool"), "test", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_the_unit_tests_load_every_rule_file() -> None:
    loaded = {(path.parent / f).resolve() for path in RULE_TESTS for f in load(path).get("rule_files", [])}
    missing = {p.resolve() for p in RULES} - loaded
    assert missing == set(), f"rule files no unit test loads: {sorted(map(str, missing))}"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test") or []:
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alerts())
    assert names - firing == set(), f"alerts without a test case where they fire: {sorted(names - firing)}"
    assert names - quiet == set(), f"alerts without a test case where they stay quiet: {sorted(names - quiet)}"
    assert (firing | quiet) - names == set(), f"tests of alerts no rule defines: {sorted((firing | quiet) - names)}"


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_has_for_severity_and_annotations(name: str) -> None:
    rule = alerts()[name]
    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: needs a for: duration"
    assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity must be one of {SEVERITIES}"
    notes = rule.get("annotations", {})
    assert {"summary", "description", "runbook_url"} <= set(notes), f"{name}: annotations {sorted(notes)}"
    assert notes["runbook_url"].startswith(RUNBOOK), notes["runbook_url"]
    assert "{{" in notes["description"], f"{name}: the description should name what fired ({{{{ $labels... }}}})"


def test_recording_rules_follow_the_naming_convention() -> None:
    records = [r["record"] for r in rules() if "record" in r]
    bad = [r for r in records if not re.fullmatch(r"inferwatch:[a-z0-9_]+:[a-z0-9_]+", r)]
    assert bad == [], f"not inferwatch:<metric>:<operations>: {bad}"


def test_rules_read_only_metrics_inferwatch_exports() -> None:
    exposed = exposed_labels()
    unknown: dict[str, list[str]] = {}
    for rule in rules():
        expr = _STRING.sub('""', rule["expr"])
        names = {n for n in _NAME.findall(expr) if n.startswith("inferwatch_") and ":" not in n}
        missing = sorted(names - set(exposed))
        if missing:
            unknown[rule.get("alert") or rule["record"]] = missing
    assert unknown == {}, f"metric names that daemon.export.exposition.FAMILIES does not expose: {unknown}"


def test_rules_select_only_labels_the_metrics_have() -> None:
    exposed = exposed_labels()
    wrong: list[str] = []
    for rule in rules():
        for name, matchers in _SELECTOR.findall(_STRING.sub('""', rule["expr"])):
            extra = set(_MATCHER.findall(matchers)) - exposed.get(name, set()) - TARGET_LABELS
            if extra:
                wrong.append(f"{rule.get('alert') or rule['record']}: {name} has no label {sorted(extra)}")
    assert wrong == []


def test_amtool_check_config() -> None:
    result = run([binary("amtool"), "check-config", str(ALERTMANAGER)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ({"alertname": "InferwatchDriftSustained", "severity": "ticket", "model": "m"}, "inferwatch,ticket"),
        ({"alertname": "InferwatchAccuracyBelowSLO", "severity": "ticket", "model": "m"}, "inferwatch,ticket"),
        ({"alertname": "InferwatchEstimatedAccuracyDrop", "severity": "ticket", "model": "m"}, "inferwatch,ticket"),
        ({"alertname": "InferwatchGoodputBudgetBurnFast", "severity": "page", "model": "m"}, "pager"),
        ({"alertname": "InferwatchCanaryFail", "severity": "page", "model": "m"}, "pager"),
        ({"alertname": "InferwatchNoEvents", "severity": "ticket", "model": "m"}, "ticket"),
    ],
)
def test_alertmanager_routes(labels: dict[str, str], receivers: str) -> None:
    argv = [binary("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}"]
    result = run([*argv, *(f"{k}={v}" for k, v in labels.items())])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers, result.stdout + result.stderr


def test_alertmanager_example_matches_the_rules() -> None:
    config = load(ALERTMANAGER)
    route = config["route"]
    assert route["group_by"] == ["alertname", "model", "version", "variant"]
    # Every alert's severity has a route, and the daemon's alerts exist in the rules.
    severities = {m for r in route["routes"] for m in r.get("matchers", []) if m.startswith("severity=")}
    assert {f'severity="{s}"' for s in SEVERITIES} <= severities, severities
    assert set(alerts()) >= TO_DAEMON
    (receiver,) = [r for r in config["receivers"] if r["name"] == "inferwatch"]
    (hook,) = receiver["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9108/v1/alertmanager"
    assert hook["http_config"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/etc/inferwatch/receiver-token",
    }
