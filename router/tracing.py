"""OpenTelemetry traces: one server span per request, with GenAI attributes.

Off unless ``tracing.otlp_endpoint`` is configured (or a tracer is handed to ``create_app``),
and then free: this module imports ``opentelemetry`` only inside ``RequestTracer``, which the
application builds only when tracing is on (the ``otel`` extra: ``pip install
'di-router[otel]'``).

A client's W3C ``traceparent``/``tracestate`` makes the router's span its child; the router's
span context is then sent upstream (``RequestContext.trace_headers``), so a backend that traces
(vLLM does, with ``--otlp-traces-endpoint``) continues the same trace. Attributes follow the
GenAI semantic conventions (``gen_ai.operation.name``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``, ...) plus ``di.*`` for the routing decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from router import __version__
from router.context import RequestContext

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from router.config import TracingConfig

# The operation a path performs, in the conventions' vocabulary.
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/responses": "chat",
    "/v1/messages": "chat",
}


def missing_extra() -> str | None:
    """Why tracing cannot run here (the ``otel`` extra is not installed), or None."""
    from importlib.util import find_spec

    for module in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"):
        try:
            found = find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return (
                f"tracing needs the otel extra ({module} is missing): pip install 'di-router[otel]'"
            )
    return None


class RequestTracer:
    """Starts and ends the request spans of one application."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._trace = trace
        self._tracer = provider.get_tracer("di-router", __version__)
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_config(
        cls, config: TracingConfig, *, exporter: SpanExporter | None = None
    ) -> RequestTracer:
        """A tracer exporting to ``config.otlp_endpoint`` over OTLP/HTTP, in batches off the
        event loop; ``exporter`` replaces it (tests pass an in-memory one, exported at once)."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint))
            )
        return cls(provider)

    def start(
        self, headers: Mapping[str, str], method: str, path: str, ctx: RequestContext
    ) -> Span:
        """The request's span, child of the client's ``traceparent`` when it sent one; its own
        context goes into ``ctx.trace_headers`` for the upstream call."""
        from opentelemetry.trace import SpanKind

        parent = self._propagator.extract(headers)
        span = self._tracer.start_span(
            f"{method} {path}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "di.request_id": ctx.request_id,
            },
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        ctx.trace_headers = carrier
        return span

    def finish(self, span: Any, ctx: RequestContext, status: int, path: str) -> None:
        """Name the span after the operation, add what the request learned, and end it."""
        from opentelemetry.trace import Status, StatusCode

        attributes = _attributes(ctx, status, path)
        operation = attributes.get("gen_ai.operation.name")
        if operation is not None and ctx.model:
            span.update_name(f"{operation} {ctx.model}")
        span.set_attributes(attributes)
        if status >= 500 or ctx.error is not None:
            span.set_status(Status(StatusCode.ERROR, ctx.error or f"HTTP {status}"))
        span.end()

    def shutdown(self) -> None:
        """Flush and stop the exporter (blocking: call it off the event loop)."""
        self._provider.shutdown()


def _attributes(ctx: RequestContext, status: int, path: str) -> dict[str, str | int | float]:
    attributes: dict[str, str | int | float] = {"http.response.status_code": status}
    if ctx.backend is not None:  # a routed request: a GenAI operation
        attributes["gen_ai.operation.name"] = _OPERATIONS.get(path, "chat")
    optional: dict[str, str | int | float | None] = {
        "gen_ai.request.model": ctx.model,
        "di.request_type": ctx.request_type,
        "di.backend": ctx.backend,
        "di.replica": ctx.replica,
        "di.cache": ctx.cache,
        "di.tenant": getattr(ctx, "tenant", None),
        "di.ttft_ms": ctx.ttft_ms,
        "di.router_ms": ctx.router_ms if ctx.upstream_ms else None,
        "di.upstream_ms": ctx.upstream_ms or None,
    }
    if ctx.usage is not None:
        optional["gen_ai.usage.input_tokens"] = ctx.usage.prompt_tokens
        optional["gen_ai.usage.output_tokens"] = ctx.usage.completion_tokens
        optional["gen_ai.usage.cache_read.input_tokens"] = ctx.usage.cached_tokens
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes
