"""The service's Prometheus metrics: requests by endpoint and status, latency, batch sizes,
images by outcome, the depths of both queues and the drift gauges, in a registry of the
app's own."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The Prometheus metrics of one app, in a registry of its own."""

    def __init__(self, queue_depth: Callable[[], int],
                 explain_depth: Callable[[], int] = lambda: 0,
                 drift: Callable[[], dict] | None = None):
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
        if drift is not None:
            self.registry.register(DriftGauges(drift))


class DriftGauges:
    """The drift gauges, read from `DriftMonitor.gauges` (`pawnet.serve.drift`) at each
    scrape: the window's photos and share of each label, the KS statistic of its OOD scores
    against the validation photos' and its p-value (when there is a reference), and each
    alert (1 while it holds)."""

    def __init__(self, gauges: Callable[[], dict]):
        self.gauges = gauges

    def collect(self):
        found = self.gauges()
        yield GaugeMetricFamily("pawnet_drift_window_photos",
                                "Answered photos in the drift window.", value=found["photos"])
        shares = GaugeMetricFamily("pawnet_drift_share", "Share of each label (a class, "
                                   "unsure, neither) in the drift window.", labels=["label"])
        for label, share in found["shares"].items():
            shares.add_metric([label], share)
        yield shares
        if found["score"] is not None:
            yield GaugeMetricFamily("pawnet_drift_score", "Kolmogorov-Smirnov statistic of the "
                                    "window's OOD scores against the validation photos'.",
                                    value=found["score"])
            yield GaugeMetricFamily("pawnet_drift_score_pvalue", "p-value of "
                                    "pawnet_drift_score.", value=found["score_p"])
        alerts = GaugeMetricFamily("pawnet_drift_alert", "1 while the window's label shares "
                                   "or OOD scores are beyond what validation makes plausible.",
                                   labels=["what"])
        for what, held in found["alerts"].items():
            alerts.add_metric([what], held)
        yield alerts


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
