"""A reward service as a source: POST {"prompts", "completions", "columns"} as JSON, answer
{"rewards": [float | null, ...]} (the protocol `rlhf-ray serve-reward` speaks).

A 5xx answer, a timeout or a refused/dropped connection is retried `retries` times with a
doubling wait (the service may be restarting); a 4xx answer is the request's fault and is not
retried. Standard library only (urllib)."""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from rlhf_ray.rewards.base import RewardBatch, RewardSourceError, to_values

log = logging.getLogger(__name__)

BACKOFF_S = 0.5  # first wait between tries; doubled after each


def request_body(batch: RewardBatch) -> bytes:
    # default=str: a column value JSON cannot hold (a date, a decimal) is sent as its text
    return json.dumps(
        {"prompts": batch.prompts, "completions": batch.completions, "columns": batch.columns}, default=str
    ).encode()


class HttpSource:
    def __init__(self, name: str, url: str, timeout_s: float, retries: int, backoff_s: float = BACKOFF_S):
        self.name, self.url, self.timeout_s, self.retries, self.backoff_s = name, url, timeout_s, retries, backoff_s

    def __call__(self, batch: RewardBatch):
        answer = self.post(request_body(batch))
        if not isinstance(answer, dict) or "rewards" not in answer:
            raise RewardSourceError(
                f"reward source {self.name!r}: {self.url} answered {str(answer)[:80]!r}, "
                'not {"rewards": [...]}: check that the URL is a reward service'
            )
        return to_values(self.name, answer["rewards"], batch)

    def post(self, body: bytes) -> Any:
        last, wait = "", self.backoff_s
        for attempt in range(self.retries + 1):
            if attempt:
                log.warning(
                    "reward source %r: %s; try %d of %d in %.1f s", self.name, last, attempt + 1, self.retries + 1, wait
                )
                time.sleep(wait)
                wait *= 2
            request = urllib.request.Request(
                self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    text = response.read()
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise RewardSourceError(
                        f"reward source {self.name!r}: {self.url} answered HTTP {exc.code} ({_detail(exc)}); "
                        "a client error is not retried: fix the request or the service"
                    ) from None
                last = f"HTTP {exc.code} ({_detail(exc)})"
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                last = _reason(exc)
                continue
            try:
                return json.loads(text)
            except ValueError:
                raise RewardSourceError(
                    f"reward source {self.name!r}: {self.url} answered {text[:80]!r}, not JSON"
                ) from None
        raise RewardSourceError(
            f"reward source {self.name!r}: {self.url} stayed down after {self.retries + 1} tries (last: {last}); "
            "start the service, or raise its retries / timeout_s"
        )


def _detail(exc: urllib.error.HTTPError) -> str:
    """The error the service sent ({"error": ...} from serve-reward), else the status' reason."""
    try:
        body = exc.read().decode(errors="replace")
    except OSError:
        body = ""
    try:
        body = json.loads(body).get("error", body)
    except (ValueError, AttributeError):
        pass
    text = " ".join(str(body).split())[:200]
    return text or str(exc.reason)


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    return f"{type(reason).__name__}: {reason}"
