"""POST /v1/alertmanager: parse Alertmanager's webhook payload (version 4) and check its bearer token.

Unknown fields are ignored. An alert without a fingerprint gets one derived from its labels
(sha256 of the sorted labels, 16 hex digits): stable across re-sends, as Alertmanager's own is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import datetime
from typing import Any, cast

import structlog
from pydantic import SecretStr

from daemon.retraining.triggers import Alert

log = structlog.get_logger(__name__)

VERSION = "4"
_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?(?P<tz>[Zz]|[+-]\d{2}:\d{2})"
)


class PayloadError(ValueError):
    """The body is not an Alertmanager version 4 webhook payload; the message names the problem."""


def parse_rfc3339(value: str) -> float:
    """Unix seconds of an RFC 3339 date-time (any number of fractional digits; Z or an offset)."""
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise ValueError(f"not an RFC 3339 date-time: {value[:40]!r}")
    tz = "+00:00" if m["tz"] in ("Z", "z") else m["tz"]
    frac = (m["frac"] or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{m['date']}T{m['time']}.{frac}{tz}").timestamp()


def _strings(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise PayloadError(f"{where} must be an object of strings")
    return cast(dict[str, str], value)


def _alert(raw: Any, where: str) -> Alert:
    if not isinstance(raw, dict):
        raise PayloadError(f"{where} must be an object")
    labels = _strings(raw.get("labels"), f"{where}.labels")
    alertname = labels.get("alertname")
    if not alertname:
        raise PayloadError(f"{where}.labels.alertname is missing")
    status = raw.get("status")
    if status not in ("firing", "resolved"):
        raise PayloadError(f"{where}.status must be firing or resolved")
    starts_at = raw.get("startsAt")
    if not isinstance(starts_at, str):
        raise PayloadError(f"{where}.startsAt is missing")
    try:
        starts = parse_rfc3339(starts_at)
    except ValueError as exc:
        raise PayloadError(f"{where}.startsAt: {exc}") from None
    fingerprint = raw.get("fingerprint")
    if fingerprint is None:
        canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
        fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    elif not isinstance(fingerprint, str) or not fingerprint:
        raise PayloadError(f"{where}.fingerprint must be a non-empty string")
    generator_url = raw.get("generatorURL") or ""
    if not isinstance(generator_url, str):
        raise PayloadError(f"{where}.generatorURL must be a string")
    return Alert(
        alertname=alertname,
        status=status,
        labels=labels,
        annotations=_strings(raw.get("annotations"), f"{where}.annotations"),
        starts_at=starts,
        fingerprint=fingerprint,
        generator_url=generator_url,
    )


def parse_alertmanager(body: bytes) -> list[Alert]:
    """The alerts of an Alertmanager webhook notification; PayloadError if it is not a valid version 4 one."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PayloadError("body must be a JSON object")
    if payload.get("version") != VERSION:
        raise PayloadError(
            f"version must be {VERSION!r} (Alertmanager webhook payload), got {repr(payload.get('version'))[:40]}"
        )
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError("alerts must be a list")
    truncated = payload.get("truncatedAlerts")
    if isinstance(truncated, int) and truncated > 0:
        log.warning("alertmanager_alerts_truncated", truncated=truncated, group_key=payload.get("groupKey"))
    return [_alert(a, f"alerts[{i}]") for i, a in enumerate(alerts)]


def authorized(header: str | None, token: SecretStr) -> bool:
    """Whether an Authorization header carries the bearer token (constant-time compare)."""
    if header is None:
        return False
    expected = f"Bearer {token.get_secret_value()}".encode()
    return hmac.compare_digest(header.encode(), expected)
