"""A replica's load as the replica itself reports it: scraped vLLM/SGLang metrics.

Each router process only sees its own in-flight requests, so with N routers each one sees about
1/N of a replica's load. Serving engines publish the whole truth at ``/metrics``; this module
turns one scrape into a ``LoadReport`` and keeps, per replica, a ``LoadGauge`` that answers
"how loaded is it now" as: reported running + waiting, plus the requests this router sent it
since that scrape started (the report cannot know them yet), less this router's requests the
report counted that have ended since. Figures older than
``load.stale_after`` are not trusted: the gauge then falls back to the local in-flight count,
which is also all a replica without metrics (a hosted API, Ollama) ever gets. This router's
own requests that end after a scrape are taken off its figures at once, so a replica this
router just relieved does not look busy until the next scrape.

The scraping itself (a background task per replica) lives in ``router/watch.py``; nothing
here does I/O, so the request path only reads numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from router.config import LoadConfig

# Gauge names per engine, vLLM's first. ``gpu_cache_usage_perc`` is vLLM's name before v0.10.
_RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
_WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
_WANTED = _RUNNING + _WAITING + _KV_USAGE
# A line is worth parsing only if it starts with one of these (a sample, not HELP/TYPE):
# vLLM's page holds hundreds of histogram lines the parser would otherwise walk through.
_WANTED_PREFIXES = tuple(name.encode() for name in _WANTED)


class NotMetrics(ValueError):
    """A page that is not Prometheus text or carries none of the load metrics we read."""


@dataclass(frozen=True, slots=True)
class LoadReport:
    """One scrape's figures; ``kv_usage`` is a fraction (0..1) or None when not published."""

    running: float
    waiting: float
    kv_usage: float | None


def parse_report(page: bytes) -> LoadReport:
    """Read running, waiting and KV usage from a /metrics page (vLLM or SGLang names).

    Several samples of one metric (several models or engines behind one server) are summed,
    KV usage is the highest of them; raises ``NotMetrics`` when no load metric is present.
    """
    lines = [line for line in page.splitlines() if line.startswith(_WANTED_PREFIXES)]
    if not lines:
        raise NotMetrics("no vLLM or SGLang load metrics on the page")
    try:
        text = b"\n".join(lines).decode() + "\n"
        families = list(text_string_to_metric_families(text))
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotMetrics(f"not Prometheus text: {type(exc).__name__}") from None
    values: dict[str, list[float]] = {}
    for family in families:
        for sample in family.samples:
            value = float(sample.value)
            # Prometheus text allows NaN and infinities; a count or usage that is one (or is
            # negative) says nothing, and would poison every comparison of loads.
            if math.isfinite(value) and value >= 0:
                values.setdefault(sample.name, []).append(value)
    running = _first(values, _RUNNING, total=True)
    waiting = _first(values, _WAITING, total=True)
    if running is None and waiting is None:
        raise NotMetrics("the page has no running or waiting request counts")
    kv = _first(values, _KV_USAGE, total=False)
    return LoadReport(running or 0.0, waiting or 0.0, kv)


def _first(values: dict[str, list[float]], names: tuple[str, ...], *, total: bool) -> float | None:
    """The first of ``names`` present: the sum of its samples (``total``) or their maximum."""
    for name in names:
        if name in values:
            found = values[name]
            return sum(found) if total else max(found)
    return None


class LoadGauge:
    """What one router knows about one replica's load; read on the request path, O(1).

    Scrapes are numbered (epochs). Each request this router sends carries the epoch it was
    sent in, so when it ends the gauge knows whether the current report counted it: a request
    sent before the report's scrape began was running (or waiting) in it, and once it ends it
    is subtracted; one sent after is not in the report and is added while it runs.
    """

    def __init__(self, settings: LoadConfig, url: str | None = None) -> None:
        self._settings = settings
        self.url = url  # its metrics page; None: local in-flight only (a hosted API, Ollama)
        self.report: LoadReport | None = None
        self.reported_at = float("-inf")
        self.last_error: str | None = None
        self.scrapes_ok = 0  # scrapes that gave figures, for di_replica_scrapes_total
        self.scrapes_failed = 0
        self._epoch = 0  # scrapes started so far
        self._report_epoch = 0  # the epoch the current report's scrape started in
        self._running: dict[int, int] = {}  # this router's requests in flight, by epoch sent
        self._gone = 0  # requests the report counted that have ended since

    @property
    def sent_since(self) -> int:
        """This router's requests in flight that the current report cannot know about."""
        return sum(n for epoch, n in self._running.items() if epoch >= self._report_epoch)

    def fresh(self, now: float) -> bool:
        return self.report is not None and now - self.reported_at <= self._settings.stale_after

    def sent(self) -> int:
        """A request is being sent to the replica; give the token back to ``ended``."""
        epoch = self._epoch
        self._running[epoch] = self._running.get(epoch, 0) + 1
        return epoch

    def ended(self, token: int) -> None:
        """The request sent with ``token`` is over (answered, failed or abandoned)."""
        left = self._running.get(token, 0) - 1
        if left > 0:
            self._running[token] = left
        else:
            self._running.pop(token, None)
        if token < self._report_epoch:
            self._gone += 1

    def scrape_started(self) -> int:
        """Mark a scrape's start; pass the result to ``update`` when it ends."""
        self._epoch += 1
        return self._epoch

    def update(self, report: LoadReport, now: float, started: int) -> None:
        """A scrape that began in epoch ``started`` finished: requests sent before then are
        in its figures; those sent while it was on the wire count as not (erring on busy)."""
        self.report = report
        self.reported_at = now
        self._report_epoch = started
        self._gone = 0
        self.last_error = None
        self.scrapes_ok += 1

    def failed(self, reason: str) -> None:
        self.last_error = reason
        self.scrapes_failed += 1

    def load(self, now: float, in_flight: int) -> float:
        """Reported running + waiting, less this router's requests it counted that have ended,
        plus this router's requests sent since that scrape began; without fresh figures, the
        local in-flight count."""
        report = self.report
        if report is None or now - self.reported_at > self._settings.stale_after:
            return float(in_flight)
        reported = max(0.0, report.running + report.waiting - self._gone)
        return reported + self.sent_since

    def kv_full(self, now: float) -> bool:
        """Reported KV usage is at or above ``load.kv_full`` (fresh figures only)."""
        report = self.report
        return (
            report is not None
            and report.kv_usage is not None
            and now - self.reported_at <= self._settings.stale_after
            and report.kv_usage >= self._settings.kv_full
        )
