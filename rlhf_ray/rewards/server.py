"""`rlhf-ray serve-reward`: the configured reward sources behind one HTTP endpoint, in this
process (no Ray), so one reward service can score for several runs (kind http sources).

POST (any path) {"prompts": [...], "completions": [...], "columns": {name: [...]}} ->
200 {"rewards": [float | null, ...], "per_source": {name: [float | null, ...]}}; null where no
source applied. A malformed request is 400; a failing source is 422 with {"error": one line}
(a retry cannot fix it, so a client does not retry); anything else is 500. GET answers
{"sources": [...]} (a health check). Requests are scored one at a time (models and user
functions need not be thread-safe); the threads only keep slow clients from blocking others."""

from __future__ import annotations

import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rlhf_ray.batch import Scores
from rlhf_ray.errors import UserError, user_message
from rlhf_ray.rewards.base import RewardBatch
from rlhf_ray.rewards.sources import RewardSources

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    pass


def parse_request(body: bytes) -> RewardBatch:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadRequest('send a JSON object {"prompts": [...], "completions": [...], "columns": {...}}')
    prompts, completions, columns = data.get("prompts"), data.get("completions"), data.get("columns") or {}
    if not isinstance(prompts, list) or not isinstance(completions, list):
        raise BadRequest('"prompts" and "completions" must be lists')
    if len(prompts) != len(completions):
        raise BadRequest(f"{len(prompts)} prompts but {len(completions)} completions")
    if not all(isinstance(c, str) for c in completions):
        raise BadRequest('"completions" must be strings')
    if not isinstance(columns, dict) or any(
        not isinstance(v, list) or len(v) != len(prompts) for v in columns.values()
    ):
        raise BadRequest('"columns" must map each name to a list with one value per prompt')
    return RewardBatch(prompts, completions, columns)


def answer(scores: Scores) -> dict[str, Any]:
    def values(t) -> list[float | None]:
        return [None if math.isnan(v) else v for v in t.tolist()]

    rewards = [r if a else None for r, a in zip(scores.rewards.tolist(), scores.applied.tolist())]
    return {"rewards": rewards, "per_source": {name: values(t) for name, t in scores.per_source.items()}}


class RewardServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never keeps the process alive

    def __init__(self, sources: RewardSources, host: str = "127.0.0.1", port: int = 0):
        self.sources, self.lock = sources, threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def score(self, batch: RewardBatch) -> dict[str, Any]:
        with self.lock:
            return answer(self.sources.score(batch))


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._send(200, {"sources": self.server.sources.names})

    def do_POST(self):  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length") or 0)
            batch = parse_request(self.rfile.read(length))
            result = self.server.score(batch)
        except BadRequest as exc:
            self._send(400, {"error": f"bad request: {exc}"})
        except UserError as exc:  # a source failed (RewardSourceError) or returned NaN/inf
            self._send(422, {"error": user_message(exc)})
        except Exception as exc:  # noqa: BLE001 - reported to the client; the service keeps serving
            log.exception("scoring failed")
            self._send(500, {"error": f"{type(exc).__name__}: {exc}"})
        else:
            self._send(200, result)

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.debug("%s %s", self.address_string(), format % args)
