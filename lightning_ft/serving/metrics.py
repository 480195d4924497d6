"""Prometheus metrics of a server, per version, in prometheus-client's multiprocess mode: the HTTP process counts
requests and times them, the inference workers count batches and queues, and `/metrics` adds up every process's
files (PROMETHEUS_MULTIPROC_DIR, which `serve` sets before anything imports prometheus_client)."""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Seconds: fine enough at the low end that a percentile read from the buckets is within one of the true one.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)
TOKEN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)

REQUESTS = Counter(
    "lightning_ft_requests",
    "Requests answered, by version, endpoint and HTTP status",
    ["version", "endpoint", "status"],
)
LATENCY = Histogram(
    "lightning_ft_request_latency_seconds",
    "End-to-end latency: from the server's first sight of a request to its last byte sent",
    ["version", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
FIRST_TOKEN = Histogram(
    "lightning_ft_time_to_first_token_seconds", "Time to first token", ["version"], buckets=LATENCY_BUCKETS
)
PER_TOKEN = Histogram(
    "lightning_ft_time_per_output_token_seconds",
    "Time per output token after the first",
    ["version"],
    buckets=TOKEN_BUCKETS,
)
OUTPUT_TOKENS = Counter("lightning_ft_output_tokens", "Tokens generated (rate() of it is tokens/s)", ["version"])
PROMPT_TOKENS = Counter("lightning_ft_prompt_tokens", "Prompt tokens read", ["version"])
BATCH_SIZE = Histogram(
    "lightning_ft_batch_size", "Requests decoded together per step", ["version"], buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
QUEUE_DEPTH = Gauge(
    "lightning_ft_queue_depth", "Requests waiting for a place in the batch", ["version"], multiprocess_mode="livesum"
)
ACTIVE = Gauge("lightning_ft_active_requests", "Requests being decoded", ["version"], multiprocess_mode="livesum")
DRIFT = Gauge(
    "lightning_ft_drift_score",
    "Drift of live inputs from the training profile",
    ["version", "statistic"],
    multiprocess_mode="livemax",
)
DRIFT_ALERTS = Counter("lightning_ft_drift_alerts", "Drift alerts raised", ["version", "statistic"])


def exposition() -> tuple[bytes, str]:
    """The metrics of all processes, in Prometheus' text format, and its content type."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


ARRIVED, ANSWERED = "lightning_ft_arrived", "lightning_ft_answered"  # keys of a request's ASGI scope["state"]


class RequestTiming:
    """ASGI middleware, the outermost layer of the app: it times a request from the moment the server first sees it
    to its last byte sent, and observes LATENCY for the requests a model answered (the handler names their version
    and endpoint in the scope's state). A clock started in the handler would miss what a client waits for anyway:
    the event loop busy before the handler starts, a slowly sent body, logging the answer and sending it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        state = scope.setdefault("state", {})
        state[ARRIVED] = arrived

        async def timed(message) -> None:
            await send(message)
            last = message["type"] == "http.response.body" and not message.get("more_body", False)
            if last and (labels := state.get(ANSWERED)):
                LATENCY.labels(*labels).observe(time.perf_counter() - arrived)

        await self.app(scope, receive, timed)


def arrival(scope: dict) -> float:
    """When RequestTiming first saw the request (now, in an app without it)."""
    return scope.get("state", {}).get(ARRIVED) or time.perf_counter()
