"""ServerMetrics and GET /metrics: Prometheus counters, histograms and engine gauges for one server.

Each app owns its registry (not prometheus_client's global one), so several servers in one process (tests) never
share or clash. Engine gauges (running, waiting, KV usage, prefix-cache hit rate) are read from engine.stats() at
scrape time, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                    80.0, 160.0, 640.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                0.5, 0.75, 1.0, 2.5, 5.0)

# engine.stats() key -> (metric name, help)
_ENGINE_GAUGES = {
    "running": ("glmv_num_requests_running", "Sequences the engine is decoding or prefilling now."),
    "waiting": ("glmv_num_requests_waiting", "Requests queued in the engine, waiting to be scheduled."),
    "kv_usage": ("glmv_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use (0-1)."),
    "prefix_cache_hit_rate": ("glmv_prefix_cache_hit_rate", "Share of prompt tokens served from the prefix cache (0-1)."),
}


class _EngineGauges:
    """A custom collector: reads the engine's stats when Prometheus scrapes."""

    def __init__(self, engine_stats: Callable[[], dict[str, float]], inflight: Callable[[], int]):
        self.engine_stats = engine_stats
        self.inflight = inflight

    def collect(self):
        try:
            stats = dict(self.engine_stats() or {})
        except Exception:  # noqa: BLE001 - a scrape never fails because the engine is busy or gone
            stats = {}
        for key, (name, doc) in _ENGINE_GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=float(stats.get(key, 0.0)))
        yield GaugeMetricFamily("glmv_server_requests_in_flight", "Generation requests admitted by the HTTP server "
                                "and not finished (running plus queued).", value=float(self.inflight()))


class ServerMetrics:
    def __init__(self, engine_stats: Callable[[], dict[str, float]], inflight: Callable[[], int]):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.http_responses = Counter("glmv_http_responses", "HTTP responses by method, route and status code.",
                                      ["method", "route", "status"], registry=r)
        self.request_finished = Counter("glmv_request_finished", "Generation requests (each choice) by finish "
                                        "reason: stop, length, abort (client gone), error.", ["finished_reason"],
                                        registry=r)
        self.prompt_tokens = Counter("glmv_prompt_tokens", "Prompt tokens of admitted requests.", registry=r)
        self.cached_prompt_tokens = Counter("glmv_prompt_cached_tokens", "Prompt tokens served from the prefix "
                                            "cache.", registry=r)
        self.generation_tokens = Counter("glmv_generation_tokens", "Generated tokens.", registry=r)
        self.aborted = Counter("glmv_requests_aborted", "Requests aborted because the client went away.", registry=r)
        self.rejected = Counter("glmv_requests_rejected", "Requests refused with 503 because the server was full.",
                                registry=r)
        self.ttft = Histogram("glmv_time_to_first_token_seconds", "Time from admission to the first output token.",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("glmv_inter_token_latency_seconds", "Time between consecutive output tokens.",
                             buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("glmv_e2e_request_latency_seconds", "Time from admission to the last token.",
                             buckets=_LATENCY_BUCKETS, registry=r)
        r.register(_EngineGauges(engine_stats, inflight))

    def render(self) -> bytes:
        return generate_latest(self.registry)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(raw: Request) -> Response:
    state = raw.app.state.serving
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
