"""The daemon's one outgoing HTTP call: a POST that returns the status instead of raising on it.

Used for retraining webhooks and for pushes to Alertmanager. Redirects are not followed (a
webhook's signature covers one URL). A timeout raises TimeoutError; any other failure to get a
response raises an OSError (a malformed response becomes ConnectionError).
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from typing import IO

# (url, body, headers, timeout seconds) -> (status, response headers with lower-case names)
Post = Callable[[str, bytes, dict[str, str], float], tuple[int, dict[str, str]]]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> urllib.request.Request | None:
        return None


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, dict[str, str]]:
    """POST with urllib; an HTTP error status is returned, not raised; response header names lowercased."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}
        finally:
            exc.close()
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise TimeoutError("timed out") from exc
        raise
    except http.client.HTTPException as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
