from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from daemon.retraining.receiver import PayloadError, authorized, parse_alertmanager, parse_rfc3339

# What Alertmanager 0.27 posts to a webhook receiver (send_resolved: true), one firing and one resolved alert.
EXAMPLE: dict[str, Any] = {
    "receiver": "inferwatch-retraining",
    "status": "firing",
    "alerts": [
        {
            "status": "firing",
            "labels": {
                "alertname": "InferwatchFeatureDrift",
                "model": "fraud",
                "version": "v7",
                "variant": "canary",
                "feature": "amount",
                "severity": "warning",
                "instance": "inferwatch-0:9108",
                "job": "inferwatch",
            },
            "annotations": {
                "summary": "Feature amount of fraud v7 (canary) drifted",
                "runbook_url": "https://runbooks.example.com/inferwatch/drift",
            },
            "startsAt": "2024-05-01T12:00:00.123456789Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus-0:9090/graph?g0.expr=inferwatch_drift_detected+%3D%3D+1&g0.tab=1",
            "fingerprint": "a1b2c3d4e5f60718",
        },
        {
            "status": "resolved",
            "labels": {"alertname": "InferwatchScoreDrift", "model": "churn", "severity": "warning"},
            "annotations": {"summary": "Score of churn drifted"},
            "startsAt": "2024-05-01T13:30:00+02:00",
            "endsAt": "2024-05-01T11:45:12.5Z",
            "generatorURL": "http://prometheus-0:9090/graph?g0.expr=inferwatch_drift_detected",
            "fingerprint": "0f1e2d3c4b5a6978",
        },
    ],
    "groupLabels": {"alertname": "InferwatchFeatureDrift"},
    "commonLabels": {"job": "inferwatch", "severity": "warning"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager-0:9093",
    "version": "4",
    "groupKey": '{}/{severity="warning"}:{alertname="InferwatchFeatureDrift"}',
    "truncatedAlerts": 0,
}


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def test_alertmanager_example_parses() -> None:
    firing, resolved = parse_alertmanager(encode(EXAMPLE))
    assert firing.alertname == "InferwatchFeatureDrift"
    assert firing.status == "firing"
    assert firing.labels["model"] == "fraud"
    assert firing.annotations["summary"].startswith("Feature amount")
    assert firing.starts_at == pytest.approx(datetime(2024, 5, 1, 12, 0, 0, 123457, tzinfo=UTC).timestamp(), abs=1e-5)
    assert firing.fingerprint == "a1b2c3d4e5f60718"
    assert firing.generator_url.startswith("http://prometheus-0:9090/graph")
    assert resolved.status == "resolved"
    assert resolved.starts_at == datetime(2024, 5, 1, 11, 30, tzinfo=UTC).timestamp()


def test_unknown_fields_are_ignored() -> None:
    payload = copy.deepcopy(EXAMPLE)
    payload["somethingNew"] = {"x": 1}
    payload["alerts"][0]["somethingElse"] = [1, 2]
    assert len(parse_alertmanager(encode(payload))) == 2


def test_missing_fingerprint_is_derived_from_labels() -> None:
    payload = copy.deepcopy(EXAMPLE)
    del payload["alerts"][0]["fingerprint"]
    first = parse_alertmanager(encode(payload))[0].fingerprint
    payload["alerts"][0]["labels"] = dict(reversed(list(payload["alerts"][0]["labels"].items())))
    assert parse_alertmanager(encode(payload))[0].fingerprint == first
    payload["alerts"][0]["labels"]["feature"] = "age"
    assert parse_alertmanager(encode(payload))[0].fingerprint != first


def test_empty_alerts_is_valid() -> None:
    assert parse_alertmanager(encode({**EXAMPLE, "alerts": []})) == []


def broken(path: tuple[Any, ...], value: Any = None, delete: bool = False) -> bytes:
    payload = copy.deepcopy(EXAMPLE)
    node = payload
    for part in path[:-1]:
        node = node[part]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return encode(payload)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (broken(("version",), "3"), "version"),
        (broken(("version",), 4), "version"),
        (broken(("alerts",), delete=True), "alerts must be a list"),
        (broken(("alerts",), {"a": 1}), "alerts must be a list"),
        (broken(("alerts", 1), "firing"), "alerts[1] must be an object"),
        (broken(("alerts", 0, "labels", "alertname"), delete=True), "alerts[0].labels.alertname"),
        (broken(("alerts", 0, "labels"), delete=True), "alerts[0].labels.alertname"),
        (broken(("alerts", 0, "labels", "model"), 7), "alerts[0].labels must be an object of strings"),
        (broken(("alerts", 0, "status"), "pending"), "alerts[0].status"),
        (broken(("alerts", 1, "startsAt"), delete=True), "alerts[1].startsAt"),
        (broken(("alerts", 1, "startsAt"), "yesterday"), "alerts[1].startsAt"),
        (broken(("alerts", 1, "startsAt"), "2024-05-01"), "alerts[1].startsAt"),
        (broken(("alerts", 1, "startsAt"), "2024-05-01T12:00:00"), "alerts[1].startsAt"),
        (broken(("alerts", 1, "startsAt"), "2024-13-01T12:00:00Z"), "alerts[1].startsAt"),
        (broken(("alerts", 0, "fingerprint"), ""), "alerts[0].fingerprint"),
    ],
)
def test_malformed_payloads_raise(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(message)):
        parse_alertmanager(body)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0.0),
        ("1970-01-01T00:00:01.5Z", 1.5),
        ("1970-01-01T01:00:00+01:00", 0.0),
        ("1970-01-01t00:00:00.000000001z", 0.0),
        ("2024-05-01T12:00:00-05:30", datetime(2024, 5, 1, 17, 30, tzinfo=UTC).timestamp()),
    ],
)
def test_rfc3339(text: str, expected: float) -> None:
    assert parse_rfc3339(text) == pytest.approx(expected)


TOKEN = SecretStr("s3cret-token-0123456789")


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret-token-0123456789", True),
        (None, False),
        ("", False),
        ("s3cret-token-0123456789", False),
        ("Bearer s3cret-token-012345678", False),
        ("Bearer s3cret-token-01234567890", False),
        ("Basic s3cret-token-0123456789", False),
        ("Bearer s3cret-tökén", False),
    ],
)
def test_authorized(header: str | None, ok: bool) -> None:
    assert authorized(header, TOKEN) is ok
