from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from daemon.retraining.signing import headers, sign, verify

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
BODY = b'{"type":"inferwatch.retraining.triggered","data":{"model":"fraud","note":"caf\xc3\xa9"}}'


def test_sign_matches_hmac_computed_directly() -> None:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = hmac.new(key, b"msg_abc.1700000000." + BODY, hashlib.sha256).digest()
    assert sign(SECRET, "msg_abc", 1_700_000_000, BODY) == "v1," + base64.b64encode(expected).decode()


def test_sign_matches_the_standard_webhooks_published_vector() -> None:
    sig = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_verify_with_standardwebhooks() -> None:
    h = headers(SECRET, "msg_abc", int(time.time()), BODY)
    assert set(h) == {"content-type", "webhook-id", "webhook-timestamp", "webhook-signature"}
    assert h["content-type"] == "application/json"
    assert h["webhook-id"] == "msg_abc"
    assert Webhook(SECRET).verify(BODY, h)["data"]["model"] == "fraud"


@pytest.mark.parametrize(
    "change",
    [
        lambda h: {**h, "webhook-id": "msg_other"},
        lambda h: {**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)},
    ],
)
def test_signature_covers_id_and_timestamp(change: Callable[[dict[str, str]], dict[str, str]]) -> None:
    h = headers(SECRET, "msg_abc", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, change(h))


def test_signature_covers_body_and_key() -> None:
    h = headers(SECRET, "msg_abc", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY.replace(b"fraud", b"fraue"), h)
    other = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, h)


OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()


@pytest.mark.parametrize(
    ("secret", "body", "change"),
    [
        (SECRET, BODY, lambda h: h),
        (SECRET, BODY, lambda h: {**h, "webhook-signature": "v1,bm90IGl0 " + h["webhook-signature"]}),
        (OTHER_SECRET, BODY, lambda h: h),
        (SECRET, BODY.replace(b"fraud", b"fraue"), lambda h: h),
        (SECRET, BODY, lambda h: {**h, "webhook-id": "msg_other"}),
        (SECRET, BODY, lambda h: {**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) - 600)}),
        (SECRET, BODY, lambda h: {k: v for k, v in h.items() if k != "webhook-signature"}),
    ],
)
def test_verify_agrees_with_standardwebhooks(
    secret: str, body: bytes, change: Callable[[dict[str, str]], dict[str, str]]
) -> None:
    """The demo's receiver verifies with `verify`: it accepts what the reference verifier accepts
    (one good signature among several) and nothing else (another key, body, id, an old timestamp)."""
    h = change(headers(SECRET, "msg_abc", int(time.time()), BODY))
    try:
        Webhook(secret).verify(body, h)
        reference = True
    except WebhookVerificationError:
        reference = False
    why = verify(secret, h, body, time.time())
    assert (why is None) == reference, why
