"""ServerMetrics and GET /metrics: Prometheus counters, histograms and engine gauges for one server.

Each app owns its registry (not prometheus_client's global one), so several servers in one process (tests) never
share or clash. Engine gauges (running, waiting, KV usage, prefix-cache hit rate) are read from engine.stats() at
scrape time, so they are never stale. Memory, for a server that runs for weeks: the process's resident memory
(`process_resident_memory_bytes`, prometheus_client's process collector), every bounded cache's bytes, entries and
bound (`glmv_cache_*{cache=...}`), and on CUDA the device memory the caching allocator holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from glmv.cpu.runtime import malloc_usage
from glmv.inputs.cache import CacheUsage

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
# engine.stats() keys present only on CUDA -> (metric name, help)
_DEVICE_GAUGES = {
    "device_memory_allocated": ("glmv_device_memory_allocated_bytes", "CUDA memory in tensors now (weights, KV "
                                "pool, CUDA graphs, vision cache, activations)."),
    "device_memory_reserved": ("glmv_device_memory_reserved_bytes", "CUDA memory PyTorch's caching allocator "
                               "holds (allocated plus cached free blocks)."),
    "vision_graph_in_use": ("glmv_vision_graph_in_use_bytes", "CUDA memory in tensors that the vision tower's "
                            "recorded graphs keep (static inputs and outputs; glmv_cache_bytes{cache=\"vision_graphs\"} "
                            "is what they have reserved)."),
    "pinned_host_memory_held": ("glmv_pinned_host_memory_held_bytes", "Pinned host memory PyTorch's host allocator "
                                "holds, in use or cached for reuse (part of resident memory)."),
    "pinned_host_memory_active": ("glmv_pinned_host_memory_active_bytes", "Pinned host memory in use now (staged "
                                  "pixels, step inputs, sampled tokens on their way back)."),
}


# replica_stats() key -> (metric name, help); one sample per replica, labelled replica="i" (--data-parallel-size)
_REPLICA_GAUGES = {key: (name.replace("glmv_", "glmv_replica_", 1), doc) for key, (name, doc) in _ENGINE_GAUGES.items()} | {
    "up": ("glmv_replica_up", "1 while the engine replica serves, 0 while it is down or restarting."),
    "restarts": ("glmv_replica_restarts", "Times the engine replica was restarted after it died."),
    "in_flight": ("glmv_replica_requests_in_flight", "Requests routed to the replica and not finished."),
    "routed_total": ("glmv_replica_routed_requests", "Requests routed to the replica."),
    "prefix_routed_total": ("glmv_replica_prefix_routed_requests", "Requests routed to the replica because it "
                            "holds their prompt's prefix."),
    "failed_requests_total": ("glmv_replica_failed_requests", "Requests that failed because the replica died."),
    "prefix_hits": ("glmv_replica_prefix_cache_hit_tokens", "Prompt tokens the replica served from its prefix cache."),
}


class _EngineGauges:
    """A custom collector: reads the engine's stats (and its replicas', if any), the caches and the process's
    memory when Prometheus scrapes."""

    def __init__(self, engine_stats: Callable[[], dict[str, float]], inflight: Callable[[], int],
                 replica_stats: Callable[[], list[dict[str, float]]] | None = None,
                 caches: Callable[[dict[str, float]], Sequence[CacheUsage]] = lambda _stats: ()):
        self.engine_stats = engine_stats
        self.inflight = inflight
        self.replica_stats = replica_stats
        self.caches = caches

    def collect(self):
        try:
            stats = dict(self.engine_stats() or {})
        except Exception:  # noqa: BLE001 - a scrape never fails because the engine is busy or gone
            stats = {}
        for key, (name, doc) in _ENGINE_GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=float(stats.get(key, 0.0)))
        yield GaugeMetricFamily("glmv_server_requests_in_flight", "Generation requests admitted by the HTTP server "
                                "and not finished (running plus queued).", value=float(self.inflight()))
        for key, (name, doc) in _DEVICE_GAUGES.items():
            if key in stats:
                yield GaugeMetricFamily(name, doc, value=stats[key])
        used = GaugeMetricFamily("glmv_cache_bytes", "Bytes a bounded cache holds now.", labels=["cache"])
        entries = GaugeMetricFamily("glmv_cache_entries", "Entries a bounded cache holds now.", labels=["cache"])
        bound = GaugeMetricFamily("glmv_cache_capacity_bytes", "The bound of a cache in bytes (its flag; 0: off, "
                                  "or bounded in entries only).", labels=["cache"])
        bound_entries = GaugeMetricFamily("glmv_cache_capacity_entries", "The bound of a cache in entries (0: "
                                          "bounded in bytes only).", labels=["cache"])
        for usage in self.caches(stats):
            used.add_metric([usage.name], float(usage.bytes_used))
            entries.add_metric([usage.name], float(usage.entries))
            bound.add_metric([usage.name], float(usage.capacity_bytes))
            bound_entries.add_metric([usage.name], float(usage.capacity_entries))
        yield from (used, entries, bound, bound_entries)
        heap = malloc_usage()
        if heap is not None:
            yield GaugeMetricFamily("glmv_malloc_in_use_bytes", "Bytes glibc malloc has handed out (all arenas, "
                                    "mapped blocks included).", value=float(heap.in_use_bytes))
            yield GaugeMetricFamily("glmv_malloc_free_bytes", "Bytes glibc malloc holds free for reuse (resident "
                                    "once touched).", value=float(heap.free_bytes))
        if self.replica_stats is not None:
            replicas = self.replica_stats()
            for key, (name, doc) in _REPLICA_GAUGES.items():
                family = GaugeMetricFamily(name, doc, labels=["replica"])
                for i, stats in enumerate(replicas):
                    family.add_metric([str(i)], float(stats.get(key, 0.0)))
                yield family


class ServerMetrics:
    def __init__(self, engine_stats: Callable[[], dict[str, float]], inflight: Callable[[], int],
                 replica_stats: Callable[[], list[dict[str, float]]] | None = None,
                 caches: Callable[[dict[str, float]], Sequence[CacheUsage]] = lambda _stats: ()):
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, open fds
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
        r.register(_EngineGauges(engine_stats, inflight, replica_stats, caches))

    def render(self) -> bytes:
        return generate_latest(self.registry)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(raw: Request) -> Response:
    state = raw.app.state.serving
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
