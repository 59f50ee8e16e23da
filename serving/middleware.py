"""The service's request metrics and model-version header, as one plain ASGI middleware.

BentoML answers GET /metrics itself, before our app, from prometheus_client's multiprocess
files; metrics made with prometheus_client in a worker process are written there and show up
as the `emoflow_*` series. They are made on first use (`request_metrics`), not at import.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

from prometheus_client import Counter, Histogram
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

VERSION_HEADER = "X-Model-Version"


class RequestMetrics(NamedTuple):
    requests: Counter
    latency: Histogram


@functools.cache
def request_metrics() -> RequestMetrics:
    """The request counter and latency histogram of this process, made on the first call."""
    return RequestMetrics(
        Counter(
            "emoflow_requests", "Requests answered, by route and status.",
            ["method", "route", "status"],
        ),
        Histogram(
            "emoflow_request_duration_seconds",
            "Seconds from request to the end of the answer, by route.",
            ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ),
    )  # fmt: skip


class Observe:
    """ASGI middleware: count and time every request by its route template, and stamp the
    served version (`version()`) on every response. (Plain ASGI: Starlette's
    `BaseHTTPMiddleware` would run each request through an extra task and memory stream.)"""

    def __init__(self, app: ASGIApp, version: Callable[[], int | None]) -> None:
        self.app, self.version = app, version
        self.metrics = request_metrics()  # Starlette builds its middleware on the first request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def stamped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).setdefault(VERSION_HEADER, str(self.version()))
            await send(message)

        try:
            await self.app(scope, receive, stamped)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
