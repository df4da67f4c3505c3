"""Standard Webhooks signatures: HMAC-SHA256 over "{id}.{timestamp}.{body}", keyed by the whsec_ secret;
signed by the sender, verified by the demo's receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value, "v1,<base64 signature>"; `secret` is "whsec_<base64 key>"."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The request headers of one attempt: the three Standard Webhooks headers and the content type."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float, tolerance_s: float = 300.0) -> str | None:
    """Why a received webhook fails verification, or None when it passes: its webhook-id,
    webhook-timestamp (within `tolerance_s` of `now`) and a v1 signature among the space-separated
    ones of webhook-signature, as a Standard Webhooks receiver checks them. Header names in lower case."""
    msg_id, stamp, given = (headers.get(f"webhook-{h}") for h in ("id", "timestamp", "signature"))
    if not msg_id or not stamp or not given:
        return "a webhook-id, webhook-timestamp or webhook-signature header is missing"
    if not stamp.isdigit() or abs(now - int(stamp)) > tolerance_s:
        return f"webhook-timestamp {stamp[:20]!r} is not within {tolerance_s:g} s of now"
    expected = sign(secret, msg_id, int(stamp), body).encode()
    if not any(hmac.compare_digest(s.encode(), expected) for s in given.split()):
        return "no signature matches the secret"
    return None
