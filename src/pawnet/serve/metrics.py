"""The service's Prometheus metrics: requests by endpoint and status, latency, batch sizes,
images by outcome and the depths of both queues, in a registry of the app's own."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The Prometheus metrics of one app, in a registry of its own."""

    def __init__(self, queue_depth: Callable[[], int],
                 explain_depth: Callable[[], int] = lambda: 0):
        self.registry = CollectorRegistry()
        self.requests = Counter("pawnet_requests", "HTTP requests by endpoint and status.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("pawnet_request_duration_seconds",
                                 "Time from request to response, by endpoint.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("pawnet_batch_size", "Images per model call.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.images = Counter("pawnet_images", "Images received, by outcome.", ["outcome"],
                              registry=self.registry)
        depth = Gauge("pawnet_queue_depth", "Images waiting for the model.",
                      registry=self.registry)
        depth.set_function(queue_depth)
        explaining = Gauge("pawnet_explain_queue_depth", "Photos waiting for a heat-map.",
                           registry=self.registry)
        explaining.set_function(explain_depth)


class MetricsMiddleware:
    """Counts every response by endpoint (the route's path, never the raw URL) and status."""

    def __init__(self, app, metrics: Callable[[], Metrics | None]):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            metrics = self.metrics()
            if metrics is not None:
                metrics.requests.labels(endpoint, str(status[0])).inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
