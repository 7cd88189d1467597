"""The service's Prometheus metrics, in a registry of its own (so that several apps in one process, as in
tests, do not collide), and the ASGI middleware that counts requests.

Besides requests, errors and latency per endpoint: requests in flight per endpoint (what a graceful
shutdown waits for), the work admitted (``queue_size``'s count), items waiting per model, and the size of
every forward pass per model (a histogram, and the largest pass so far).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ENDPOINTS = ("/health", "/info", "/query", "/predict", "/interrogate", "/indices-list", "/knn-service", "/metadata",
             "/metrics", "/admin/reload", "/")
PASS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("nearest_prompt_requests", "requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.errors = Counter("nearest_prompt_errors", "4xx and 5xx answers by endpoint", ["endpoint"], registry=r)
        self.latency = Histogram("nearest_prompt_request_seconds", "request latency by endpoint", ["endpoint"],
                                 registry=r, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.in_flight = Gauge("nearest_prompt_requests_in_flight", "requests being answered, by endpoint",
                               ["endpoint"], registry=r)
        self.admitted = Gauge("nearest_prompt_admitted_items", "images and texts being worked on (queue_size's count)",
                              registry=r)
        self.queue = Gauge("nearest_prompt_queue_depth", "items waiting for a model's next forward pass", ["model"],
                           registry=r)
        self.passes = Histogram("nearest_prompt_forward_pass_size", "items per forward pass, by model", ["model"],
                                registry=r, buckets=PASS_BUCKETS)
        self.largest = Gauge("nearest_prompt_forward_pass_max", "the largest forward pass so far, by model", ["model"],
                             registry=r)
        self._largest: dict[str, int] = {}

    def watch(self, admission: Any, workers: dict[str, Any]) -> None:
        self.admitted.set_function(lambda: admission.used)
        for name, worker in workers.items():
            self.queue.labels(name).set_function(lambda w=worker: w.waiting)
            self.largest.labels(name).set(0)

    def forward_pass(self, model: str, size: int) -> None:
        """Called by a model worker after each pass (on its own thread)."""
        self.passes.labels(model).observe(size)
        if size > self._largest.get(model, 0):
            self._largest[model] = size
            self.largest.labels(model).set(size)


class MetricsMiddleware:
    """Counts every HTTP request by endpoint (the paths above, else "other"): in flight, status, latency."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "/static" if path.startswith("/static") else "other"
        status = {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        start = time.perf_counter()
        flying = self.metrics.in_flight.labels(endpoint)
        flying.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            flying.dec()
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            if status["code"] >= 400:
                self.metrics.errors.labels(endpoint).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
