"""deploy/: the Flagger and Argo Rollouts canary gates parse, are wired together, and read inferwatch's real outputs."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import yaml

from daemon.config import CanaryConfig
from daemon.export.exposition import FAMILIES
from daemon.monitors.canary import METRICS, ArmMoments, Comparison, ModelCanary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

CANARY_KEY = ["model", "variant", "baseline"]
# The canary families inferwatch exports (the contract the gates are written against): name → labels.
CANARY_FAMILIES: dict[str, list[str]] = {
    "inferwatch_canary_verdict": CANARY_KEY,
    "inferwatch_canary_score": CANARY_KEY,
    "inferwatch_canary_metric_verdict": [*CANARY_KEY, "metric"],
    "inferwatch_canary_metric_p_value": [*CANARY_KEY, "metric"],
    "inferwatch_canary_metric_effect": [*CANARY_KEY, "metric"],
    "inferwatch_canary_metric_effect_lower": [*CANARY_KEY, "metric"],
    "inferwatch_canary_metric_effect_upper": [*CANARY_KEY, "metric"],
    "inferwatch_canary_requests": [*CANARY_KEY, "arm"],
    "inferwatch_canary_quantile_effect": [*CANARY_KEY, "metric", "percentile"],
    "inferwatch_canary_quantile_effect_lower": [*CANARY_KEY, "metric", "percentile"],
    "inferwatch_canary_quantile_effect_upper": [*CANARY_KEY, "metric", "percentile"],
}
VERDICT_VALUES = {"pass": 1, "inconclusive": 0, "fail": -1}
# The score is 100 x the mean over metrics of 1 (pass), 0.5 (inconclusive), 0 (fail).
SCORE_UNDECIDED = 50.0
# A fail scores this, whatever its metrics (daemon/monitors/canary.py).
SCORE_FAIL = 0.0
# canary.min_requests: the requests per arm a gate needs before it lets a canary through.
MIN_REQUESTS = 500

# A GET /v1/canary/{model} response, as documented.
CANARY_RESPONSE: dict[str, Any] = {
    "model": "fraud-detector",
    "baseline": "control",
    "variants": {
        "canary": {
            "verdict": "pass",
            "score": 87.5,
            "version": "2",
            "requests": {"baseline": 1200, "candidate": 1180},
            "metrics": {
                "latency": {
                    "verdict": "pass",
                    "effect": 0.01,
                    "lower": -0.02,
                    "upper": 0.04,
                    "p_value": 0.8,
                    "tolerance": 0.0488,
                }
            },
            "reasons": [],
        }
    },
}

FLAGGER_API = "flagger.app/v1beta1"
ARGO_API = "argoproj.io/v1alpha1"
# file (relative to deploy/) → (apiVersion, kind) of every document in it
FILES: dict[str, tuple[str, str]] = {
    "flagger/metric-template.yaml": (FLAGGER_API, "MetricTemplate"),
    "flagger/canary.yaml": (FLAGGER_API, "Canary"),
    "argo/analysis-template-prometheus.yaml": (ARGO_API, "AnalysisTemplate"),
    "argo/analysis-template-web.yaml": (ARGO_API, "AnalysisTemplate"),
}

METRIC_NAME = re.compile(r"inferwatch_[a-z_]+")
TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
SELECTOR = re.compile(r"(inferwatch_[a-z_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
CONDITION = re.compile(r"""^result(\[0\])?\s*(==|!=|>=|<=|>|<)\s*(-?\d+(?:\.\d+)?|"[^"]*"|'[^']*')$""")
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def load(name: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]
    assert docs, f"{name}: no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{name}: a document is not a mapping"
    return docs


def dig(doc: dict[str, Any], path: str) -> Any:
    """doc["a"]["b"]... for path "a.b...", failing with the path when a key is missing."""
    node: Any = doc
    for key in path.split("."):
        assert isinstance(node, dict) and key in node, f"missing {path} (at {key!r})"
        node = node[key]
    return node


def rendered(query: str) -> str:
    """The query with every {{ ... }} template replaced by a plain value, so PromQL braces parse."""
    return TEMPLATE.sub("x", query)


def flagger_templates() -> dict[str, dict[str, Any]]:
    return {dig(d, "metadata.name"): d for d in load("flagger/metric-template.yaml")}


def argo_metrics(name: str) -> list[dict[str, Any]]:
    (doc,) = load(name)
    metrics = dig(doc, "spec.metrics")
    assert isinstance(metrics, list) and metrics, f"{name}: spec.metrics is empty"
    return metrics


def argo_args(name: str) -> dict[str, Any]:
    """spec.args of an AnalysisTemplate: name → default value (None when the Rollout must supply it)."""
    (doc,) = load(name)
    return {a["name"]: a.get("value") for a in dig(doc, "spec.args")}


def promql_queries() -> list[tuple[str, str]]:
    """(where, query) for every PromQL query in deploy/."""
    queries = [(f"MetricTemplate {n}", dig(d, "spec.query")) for n, d in flagger_templates().items()]
    for m in argo_metrics("argo/analysis-template-prometheus.yaml"):
        queries.append((f"AnalysisTemplate metric {m['name']}", dig(m, "provider.prometheus.query")))
    return queries


def condition(expr: str) -> Callable[[Any], bool]:
    """A predicate for an Argo success/failure condition of the simple forms used here."""
    match = CONDITION.match(expr.strip())
    assert match, f"condition {expr!r} is not of the form result[0] OP literal or result OP literal"
    indexed, op, literal = match.groups()
    value: Any = literal[1:-1] if literal[0] in "\"'" else float(literal)
    return lambda result: OPS[op](result[0] if indexed else result, value)


def in_range(threshold: dict[str, Any], value: float) -> bool:
    low, high = threshold.get("min"), threshold.get("max")
    return (low is None or value >= low) and (high is None or value <= high)


# --- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FILES))
def test_file_parses_with_the_right_kind(name: str) -> None:
    api_version, kind = FILES[name]
    for doc in load(name):
        assert doc.get("apiVersion") == api_version, f"{name}: apiVersion {doc.get('apiVersion')!r}"
        assert doc.get("kind") == kind, f"{name}: kind {doc.get('kind')!r}"
        assert isinstance(dig(doc, "metadata.name"), str) and doc["metadata"]["name"]
        assert isinstance(doc.get("spec"), dict), f"{name}: no spec"


def test_every_gate_file_is_checked() -> None:
    found = {str(p.relative_to(DEPLOY)) for d in ("flagger", "argo") for p in (DEPLOY / d).glob("*.y*ml")}
    assert found == set(FILES)


def test_flagger_metric_templates() -> None:
    docs = load("flagger/metric-template.yaml")
    names = [dig(d, "metadata.name") for d in docs]
    assert len(names) == len(set(names)) == 3, names
    queried = set()
    for doc in docs:
        assert dig(doc, "spec.provider.type") == "prometheus"
        assert dig(doc, "spec.provider.address") == "http://prometheus.monitoring:9090"
        query = dig(doc, "spec.query")
        assert isinstance(query, str) and query.strip()
        queried |= set(METRIC_NAME.findall(query))
    assert {"inferwatch_canary_verdict", "inferwatch_canary_score", "inferwatch_canary_requests"} <= queried


def test_flagger_canary_references_the_templates() -> None:
    (canary,) = load("flagger/canary.yaml")
    templates = flagger_templates()
    analysis = dig(canary, "spec.analysis")
    for key in ("interval", "threshold", "maxWeight", "stepWeight"):
        assert key in analysis, f"spec.analysis.{key} missing"
    assert 0 < analysis["stepWeight"] <= analysis["maxWeight"] <= 100
    assert analysis["threshold"] >= 1
    assert dig(canary, "spec.targetRef.name")
    metrics = analysis.get("metrics")
    assert isinstance(metrics, list) and metrics
    referenced = set()
    for metric in metrics:
        ref = dig(metric, "templateRef.name")
        assert ref in templates, f"analysis metric {metric.get('name')!r}: no MetricTemplate named {ref!r}"
        referenced.add(ref)
        threshold = metric.get("thresholdRange")
        assert isinstance(threshold, dict) and {"min", "max"} & set(threshold), f"{ref}: no thresholdRange"
        # Every {{ variables.X }} of the template's query must be given by the Canary.
        used = TEMPLATE.findall(dig(templates[ref], "spec.query"))
        wanted = {t.removeprefix("variables.") for t in used if t.startswith("variables.")}
        given = set(metric.get("templateVariables") or {})
        assert wanted <= given, f"{ref}: templateVariables lack {sorted(wanted - given)}"
    assert referenced == set(templates), f"unreferenced templates: {sorted(set(templates) - referenced)}"


def test_flagger_thresholds_match_the_verdict_values() -> None:
    (canary,) = load("flagger/canary.yaml")
    templates = flagger_templates()
    seen = set()
    for metric in dig(canary, "spec.analysis.metrics"):
        families = set(METRIC_NAME.findall(dig(templates[metric["templateRef"]["name"]], "spec.query")))
        threshold = metric["thresholdRange"]
        if "inferwatch_canary_verdict" in families:
            seen.add("verdict")
            assert not in_range(threshold, VERDICT_VALUES["fail"]), "a fail verdict must fail the check"
            assert in_range(threshold, VERDICT_VALUES["pass"]), "a pass verdict must pass the check"
            assert in_range(threshold, VERDICT_VALUES["inconclusive"]), "inconclusive must not count as failed"
        if "inferwatch_canary_score" in families:
            seen.add("score")
            assert in_range(threshold, 100) and not in_range(threshold, SCORE_FAIL), threshold
            # 50 while every metric is inconclusive: a warm-up must not count as failed checks.
            assert in_range(threshold, SCORE_UNDECIDED), f"score {SCORE_UNDECIDED} (undecided) fails {threshold}"
        if "inferwatch_canary_requests" in families:
            seen.add("requests")
            # Too little traffic to judge: a failed check, never a promotion.
            assert not in_range(threshold, MIN_REQUESTS - 1) and in_range(threshold, MIN_REQUESTS), threshold
    assert seen == {"verdict", "score", "requests"}


def test_a_fail_scores_below_the_pass_line() -> None:
    """Whatever its metrics, a failing comparison scores under the Flagger score threshold."""
    comp = Comparison("canary", "2", "control", ModelCanary("m", CanaryConfig())._tests())
    model = ModelCanary("m", CanaryConfig(min_requests=10))
    # Many metrics pass, one critical one fails: the score is still SCORE_FAIL.
    moments = np.zeros((len(METRICS), 3))
    for name in ("latency", "prediction_shift", "accuracy"):
        i = METRICS.index(name)
        moments[i] = (1000, 1000 * 3.0, 1000 * (9.0 + 1e-4))
    base, cand = moments.copy(), moments.copy()
    e = METRICS.index("error_rate")
    base[e], cand[e] = (1000, 10, 10), (1000, 200, 200)
    model._judge(comp, ArmMoments(1000, base), ArmMoments(1000, cand))
    assert comp.verdict == "fail" and comp.score == SCORE_FAIL
    assert [r.split(" ", 1)[0] for r in comp.reasons] == ["error_rate"]
    assert {m.verdict for n, m in comp.metrics.items() if n != "error_rate"} == {"pass"}


def test_flagger_queries_are_scoped_by_template_variables() -> None:
    for name, doc in flagger_templates().items():
        variables = {t for t in TEMPLATE.findall(dig(doc, "spec.query"))}
        assert {"variables.model", "variables.variant"} <= variables, f"{name}: {sorted(variables)}"


@pytest.mark.parametrize("name", ["argo/analysis-template-prometheus.yaml", "argo/analysis-template-web.yaml"])
def test_argo_metrics_have_conditions_and_declared_args(name: str) -> None:
    args = argo_args(name)
    assert {"model", "variant"} <= set(args), f"{name}: args {sorted(args)}"
    for metric in argo_metrics(name):
        assert metric.get("name")
        for key in ("successCondition", "failureCondition", "interval", "count", "failureLimit"):
            assert key in metric, f"{name}: metric {metric['name']!r} lacks {key}"
        assert metric["failureLimit"] == 0, "an always-valid fail is final: the first one must fail the run"
        used = {t.removeprefix("args.") for t in TEMPLATE.findall(yaml.safe_dump(metric)) if t.startswith("args.")}
        assert used <= set(args), f"{name}: undeclared args {sorted(used - set(args))}"


def test_argo_prometheus_template() -> None:
    metrics = argo_metrics("argo/analysis-template-prometheus.yaml")
    assert [m["name"] for m in metrics] == ["canary-verdict", "canary-requests"]
    verdict, requests = metrics
    _check_requests_gate(requests, verdict, lambda n: [n])
    assert "inferwatch_canary_requests" in METRIC_NAME.findall(dig(requests, "provider.prometheus.query"))
    for metric in metrics:
        assert dig(metric, "provider.prometheus.address") == "http://prometheus.monitoring:9090"
    for metric in [verdict]:
        assert "inferwatch_canary_verdict" in METRIC_NAME.findall(dig(metric, "provider.prometheus.query"))
        success, failure = condition(metric["successCondition"]), condition(metric["failureCondition"])
        # A Prometheus measurement is a vector: result[0] is the verdict.
        assert success([1]) and not failure([1])
        assert success([0]) and not failure([0]), "inconclusive is a successful reading here"
        assert failure([-1]) and not success([-1])


def _check_requests_gate(requests: dict[str, Any], verdict: dict[str, Any], reading: Callable[[int], Any]) -> None:
    """Read once, after the verdict's last reading: fewer than MIN_REQUESTS fails the run."""
    assert requests["count"] == 1 and requests["failureLimit"] == 0
    minutes = {k: int(str(v).removesuffix("m")) for k, v in verdict.items() if k in ("initialDelay", "interval")}
    last_verdict = minutes["initialDelay"] + minutes["interval"] * (verdict["count"] - 1)
    assert int(requests["initialDelay"].removesuffix("m")) >= last_verdict
    success, failure = condition(requests["successCondition"]), condition(requests["failureCondition"])
    assert success(reading(MIN_REQUESTS)) and not failure(reading(MIN_REQUESTS))
    assert failure(reading(MIN_REQUESTS - 1)) and not success(reading(MIN_REQUESTS - 1))


def test_argo_web_template() -> None:
    args = argo_args("argo/analysis-template-web.yaml")
    assert "namespace" in args
    metrics = argo_metrics("argo/analysis-template-web.yaml")
    assert [m["name"] for m in metrics] == ["canary-verdict", "canary-requests"]
    _check_requests_gate(metrics[1], metrics[0], lambda n: n)
    for metric in metrics:
        url = dig(metric, "provider.web.url")
        assert TEMPLATE.findall(url) == ["args.namespace", "args.model"], url
        parts = urlsplit(rendered(url))
        assert parts.scheme == "http" and parts.port == 9108, url
        assert parts.hostname == "inferwatch.x.svc", url
        assert parts.path.startswith("/v1/canary/") and parts.path.count("/") == 3, url
        json_path = dig(metric, "provider.web.jsonPath")
        assert json_path.startswith("{$.variants."), json_path
        if metric["name"] == "canary-requests":
            continue
        success, failure = condition(metric["successCondition"]), condition(metric["failureCondition"])
        assert success("pass") and not failure("pass")
        assert failure("fail") and not success("fail")
        assert not success("inconclusive") and not failure("inconclusive"), "inconclusive must be Inconclusive"
        # Argo's default inconclusiveLimit (0) would pause the rollout at the first inconclusive reading.
        assert 1 <= metric.get("inconclusiveLimit", 0) < metric["count"]


def test_web_json_path_finds_the_verdict() -> None:
    """The jsonPaths, with the variant arg's default, pick the verdict and the candidate's requests out
    of a documented response."""
    args = argo_args("argo/analysis-template-web.yaml")
    found = []
    for metric in argo_metrics("argo/analysis-template-web.yaml"):
        json_path = dig(metric, "provider.web.jsonPath")
        resolved = TEMPLATE.sub(lambda m: str(args[m.group(1).removeprefix("args.")]), json_path)
        assert resolved.startswith("{$.") and resolved.endswith("}"), resolved
        node: Any = CANARY_RESPONSE
        for key in resolved[3:-1].split("."):
            assert isinstance(node, dict) and key in node, f"{resolved}: no {key!r} in the response"
            node = node[key]
        found.append(node)
    assert found == ["pass", CANARY_RESPONSE["variants"]["canary"]["requests"]["candidate"]]


# --- metric names and labels -----------------------------------------------------------------


@pytest.mark.parametrize(("where", "query"), promql_queries())
def test_queries_name_only_canary_families(where: str, query: str) -> None:
    names = METRIC_NAME.findall(query)
    assert names, f"{where}: the query names no inferwatch metric"
    for name in names:
        assert name in CANARY_FAMILIES, f"{where}: {name!r} is not an inferwatch canary family"


@pytest.mark.parametrize(("where", "query"), promql_queries())
def test_query_labels_belong_to_the_family(where: str, query: str) -> None:
    text = rendered(query)
    for match in SELECTOR.finditer(text):
        name, selector = match.group(1), match.group(2) or ""
        assert name in CANARY_FAMILIES, f"{where}: unknown family {name!r}"
        labels = MATCHER.findall(selector)
        for label in labels:
            assert label in CANARY_FAMILIES[name], f"{where}: {name} has no label {label!r}"
        # Unscoped, min() would mix every model's canaries.
        assert {"model", "variant"} <= set(labels), f"{where}: {name} not selected by model and variant"
    for group in GROUPING.findall(text):
        for label in (g.strip() for g in group.split(",") if g.strip()):
            assert any(label in labels for labels in CANARY_FAMILIES.values()), f"{where}: by ({label})"


def test_canary_families_match_the_exposition() -> None:
    exported = {name: spec[2] for name, spec in FAMILIES.items() if name.startswith("inferwatch_canary_")}
    if not exported:
        pytest.skip("daemon.export.exposition.FAMILIES has no inferwatch_canary_* family yet")
    assert set(exported) == set(CANARY_FAMILIES)
    for name, labels in exported.items():
        assert set(labels) == set(CANARY_FAMILIES[name]), f"{name}: labels {labels}"
