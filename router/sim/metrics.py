"""The sim replica's ``GET /metrics``: its live state under vLLM's Prometheus metric names.

A router scraping a sim replica must see what it would see on vLLM: requests running and
waiting, KV cache usage as a fraction, prefix cache queries and hits in tokens, and the cache
geometry in ``vllm:cache_config_info``. The figures are read from the engine at scrape time
through a custom collector, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.sim.engine import SimEngine


class EngineCollector(Collector):
    """Reads one engine's state on every collection."""

    def __init__(self, engine: SimEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        settings = engine.settings
        model = [settings.model]
        now = engine.occupancy()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(model, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(model, value)
            return family

        yield gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            now.running,
        )
        yield gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", now.waiting
        )
        capacity = settings.cache_blocks
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            now.blocks_in_use / capacity if capacity else 0.0,
        )
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            engine.stats.prompt_tokens,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            engine.stats.cached_tokens,
        )
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=["block_size", "enable_prefix_caching", "num_gpu_blocks"],
        )
        info.add_metric([str(settings.block_size), "True", str(capacity)], 1.0)
        yield info


def render_metrics(engine: SimEngine) -> tuple[bytes, str]:
    """The Prometheus text page and its content type.

    A registry per call keeps replicas of one process apart (the default registry is global);
    building it costs microseconds next to a scrape's round trip.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return generate_latest(registry), CONTENT_TYPE_LATEST
