"""Prometheus metrics of one server, in a registry of its own (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/answer", "/v1/models", "/info", "/health", "/metrics", "/")


class Metrics:
    """Requests by endpoint and status, latency, queue depth, batch sizes, tokens, cancelled rows."""

    def __init__(self, max_batch_size: int):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edgeqa_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "edgeqa_request_seconds",
            "Request latency until the last byte, by endpoint.",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.queue_depth = Gauge("edgeqa_queue_depth", "Requests waiting for a batch.", registry=self.registry)
        self.active_rows = Gauge("edgeqa_active_rows", "Rows in the batch being decoded.", registry=self.registry)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, max_batch_size})
        self.batch_size = Histogram("edgeqa_batch_size", "Requests per batch.", buckets=buckets, registry=self.registry)
        self.tokens = Counter("edgeqa_generated_tokens", "Answer tokens generated.", registry=self.registry)
        self.cancelled = Counter(
            "edgeqa_cancelled_rows",
            "Requests dropped from the queue or their batch because the caller left.",
            registry=self.registry,
        )

    def endpoint(self, path: str) -> str:
        return path if path in ENDPOINTS else "other"

    def render(self) -> bytes:
        return generate_latest(self.registry)
