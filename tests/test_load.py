"""router/load.py: reading vLLM/SGLang metrics pages, and the load figure made from them."""

from __future__ import annotations

import pytest

from router.config import LoadConfig
from router.load import LoadGauge, LoadReport, NotMetrics, parse_report

from .scripted import vllm_metrics

SGLANG = b"""# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="qwen"} 7.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="qwen"} 3.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="qwen"} 0.42
"""


def test_vllm_page_gives_running_waiting_and_kv_usage() -> None:
    assert parse_report(vllm_metrics(5, 2, 0.5)) == LoadReport(5.0, 2.0, 0.5)


def test_sglang_names_are_understood() -> None:
    assert parse_report(SGLANG) == LoadReport(7.0, 3.0, 0.42)


def test_several_engines_are_summed_and_kv_is_the_fullest() -> None:
    page = b"""vllm:num_requests_running{engine="0"} 2
vllm:num_requests_running{engine="1"} 3
vllm:num_requests_waiting{engine="0"} 1
vllm:num_requests_waiting{engine="1"} 0
vllm:gpu_cache_usage_perc{engine="0"} 0.2
vllm:gpu_cache_usage_perc{engine="1"} 0.9
"""
    assert parse_report(page) == LoadReport(5.0, 1.0, 0.9)


def test_a_page_without_kv_usage_still_gives_load() -> None:
    assert parse_report(b"vllm:num_requests_waiting 4\n") == LoadReport(0.0, 4.0, None)


def test_samples_that_are_not_counts_are_left_out() -> None:
    page = b"""vllm:num_requests_running{engine="0"} NaN
vllm:num_requests_running{engine="1"} 3
vllm:num_requests_waiting{engine="0"} +Inf
vllm:num_requests_waiting{engine="1"} -2
vllm:gpu_cache_usage_perc{engine="0"} NaN
"""
    assert parse_report(page) == LoadReport(3.0, 0.0, None)


@pytest.mark.parametrize(
    "page",
    [
        b"vllm:num_requests_running NaN\nvllm:num_requests_waiting +Inf\n",
        b"",
        b"<html><body>Not Found</body></html>",
        b"# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 12.5\n",
        b"vllm:num_requests_running{model_name=broken 3\n",
        b"vllm:kv_cache_usage_perc 0.5\n",  # usage alone says nothing about queues
    ],
)
def test_pages_without_load_metrics_are_refused(page: bytes) -> None:
    with pytest.raises(NotMetrics):
        parse_report(page)


def gauge(**settings: float) -> LoadGauge:
    return LoadGauge(LoadConfig(**settings), "http://replica/metrics")


def test_without_a_report_the_load_is_local_in_flight() -> None:
    assert gauge().load(now=10.0, in_flight=3) == 3.0


def test_fresh_report_plus_what_was_sent_since() -> None:
    g = gauge(stale_after=2.0)
    g.update(LoadReport(10, 5, 0.1), now=100.0, started=g.scrape_started())
    assert g.load(now=101.0, in_flight=0) == 15.0
    first, second = g.sent(), g.sent()
    assert g.load(now=101.0, in_flight=2) == 17.0
    g.ended(first)  # sent after the scrape, so never in the report: only the addition goes
    assert g.load(now=101.0, in_flight=1) == 16.0
    g.ended(second)
    assert g.load(now=101.0, in_flight=0) == 15.0


def test_stale_report_falls_back_to_local_in_flight() -> None:
    g = gauge(stale_after=2.0)
    g.update(LoadReport(50, 50, 0.99), now=100.0, started=g.scrape_started())
    assert g.fresh(101.9) and not g.fresh(102.1)
    assert g.load(now=102.5, in_flight=1) == 1.0
    assert not g.kv_full(102.5)


def test_a_scrape_absorbs_what_was_sent_before_it_started() -> None:
    g = gauge()
    early = [g.sent(), g.sent()]
    started = g.scrape_started()
    late = g.sent()  # on the wire while the scrape ran: the report may not include it
    g.update(LoadReport(2, 0, None), now=5.0, started=started)
    assert g.sent_since == 1
    assert g.load(now=5.0, in_flight=3) == 3.0
    # Requests the report counted end: they come off its figures at once.
    for token in early:
        g.ended(token)
    assert g.load(now=5.0, in_flight=1) == 1.0
    g.ended(late)
    assert g.load(now=5.0, in_flight=0) == 0.0


def test_the_reported_part_never_goes_below_zero() -> None:
    g = gauge()
    token = g.sent()
    g.update(LoadReport(0, 0, None), now=1.0, started=g.scrape_started())
    g.ended(token)  # it had ended before the replica was asked
    assert g.load(now=1.0, in_flight=0) == 0.0


def test_kv_full_refuses_new_prefixes_at_the_threshold() -> None:
    g = gauge(kv_full=0.9)
    g.update(LoadReport(0, 0, 0.89), now=1.0, started=g.scrape_started())
    assert not g.kv_full(1.0)
    g.update(LoadReport(0, 0, 0.9), now=1.0, started=g.scrape_started())
    assert g.kv_full(1.0)
