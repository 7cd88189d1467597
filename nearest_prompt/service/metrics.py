"""The service's Prometheus metrics, in a registry of its own (so that several apps in one process,
as in tests, do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("nearest_prompt_requests", "requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("nearest_prompt_errors", "4xx and 5xx answers by endpoint", ["endpoint"],
                              registry=self.registry)
        self.latency = Histogram("nearest_prompt_request_seconds", "request latency by endpoint", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.batch = Histogram("nearest_prompt_batch_size", "items per encoder forward pass", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.queue = Gauge("nearest_prompt_queue_depth", "items waiting for the encoder", registry=self.registry)
