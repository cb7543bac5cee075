"""Traces: one span per request with GenAI attributes; traceparent in, traceparent upstream."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router.config import TracingConfig
from router.tracing import RequestTracer

from .conftest import with_replicas

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"


def test_a_span_per_request_child_of_the_clients_trace(make_stack: Any, fake_upstream: Any) -> None:
    exporter = InMemorySpanExporter()
    tracer = RequestTracer.from_config(TracingConfig(), exporter=exporter)
    stack = make_stack(
        tracer=tracer, edit=lambda c: with_replicas(c, "sim-text", [fake_upstream.url])
    )
    client = stack.client(default_headers={"traceparent": TRACEPARENT})
    client.chat.completions.create(model="my-model", messages=[{"role": "user", "content": "hi"}])
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat my-model"
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == CLIENT_TRACE
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "my-model"
    assert attributes["di.request_type"] == "text"
    assert attributes["di.backend"] == "sim-text"
    assert attributes["di.replica"] == "sim-text-f0"
    assert attributes["di.cache"] == "none"
    assert attributes["http.response.status_code"] == 200
    assert isinstance(attributes["gen_ai.usage.input_tokens"], int)
    # The router's span context went upstream: the backend's spans join the same trace.
    sent = fake_upstream.upstream.received[-1].headers["traceparent"]
    assert sent.split("-")[1] == CLIENT_TRACE
    assert sent.split("-")[2] == f"{span.context.span_id:016x}"


def test_a_request_without_traceparent_starts_a_trace(make_stack: Any) -> None:
    exporter = InMemorySpanExporter()
    stack = make_stack(tracer=RequestTracer.from_config(TracingConfig(), exporter=exporter))
    client = stack.client()
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "x"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
    )
    client.models.list()
    routed, listing = exporter.get_finished_spans()
    assert routed.parent is None
    assert dict(routed.attributes or {})["di.request_type"] == "code"
    assert listing.name == "GET /v1/models"
    assert "gen_ai.operation.name" not in dict(listing.attributes or {})


def test_tracing_off_loads_no_tracer() -> None:
    code = (
        "import sys\n"
        "from router.app import create_app\n"
        "from router.config import embedded_config\n"
        "create_app(embedded_config({f'sim-{t}': [(t, 'http://h/v1')] for t in "
        "('text','code','json','vision')}))\n"
        # redis-py itself imports parts of the API when installed; the router's tracing needs
        # the SDK's tracer and the W3C propagator, which must stay unloaded.
        "assert 'opentelemetry.sdk.trace' not in sys.modules\n"
        "assert 'opentelemetry.trace.propagation.tracecontext' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
