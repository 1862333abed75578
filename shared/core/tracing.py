"""Traces with OpenTelemetry: one trace per creation request, from the create function through the enqueue, the
consumer's job, the database writes and the SES call (sync and fallback paths included).

Two modes, chosen once per process by `setup()`:
- recording (OTEL_EXPORTER_OTLP_ENDPOINT set: OTLP/HTTP; else TRACE_FILE set: one JSON line per span, the dev
  sink read by `invoke traces`): the SDK's tracer, spans batched and exported by a background thread, so an
  exporter that is down or slow never fails or slows a request (it logs, and drops spans past the queue);
- ids only (nothing configured, or TRACING_ENABLED=false): no SDK is loaded; an incoming `traceparent` is still
  continued (or a trace id is minted), so the request row, its timeline and its health events carry a trace id.

The context travels in `creation_requests.traceparent` (written at record time); the consumer's job span is a
child of it (and links to it). Span attributes are ids and fixed words only (request id, mode, attempt, outcome):
never an address, a name or a token; exceptions are recorded as their class name only (a driver's message may
quote a row). Nothing is imported at module import: the API (about 30 ms) on the first `setup()`, the SDK only
when recording.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from shared.core.settings import Settings

log = logging.getLogger(__name__)

_tracing: Tracing | None = None
_setup_lock = threading.Lock()
# Ids-only mode's current (trace id, traceparent): set by `Tracing.span` blocks, per task like any context.
_IDS: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("provisioner_trace_ids", default=None)


class Tracing:
    """This process's tracer (recording) or id minting (ids only)."""

    def __init__(self, settings: Settings, service: str) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._context = otel_context
        self._propagator = TraceContextTextMapPropagator()
        self.provider: Any = None
        self.tracer: Any = None
        endpoint = settings.otel_exporter_otlp_endpoint
        if settings.tracing_enabled and (endpoint or settings.trace_file):
            self.provider = _sdk_provider(settings, service)
            self.tracer = self.provider.get_tracer("provisioner")

    @property
    def recording(self) -> bool:
        """True when spans are recorded and exported."""
        return self.tracer is not None

    def extract(self, carrier: Mapping[str, str]) -> Any:
        """The context of a W3C `traceparent` in `carrier` (an empty context when absent or malformed)."""
        return self._propagator.extract(dict(carrier))

    @contextlib.contextmanager
    def span(self, name: str, *, parent: Any = None, kind: str = "INTERNAL",
             attributes: Mapping[str, Any] | None = None, link_parent: bool = False) -> Iterator[Any]:
        """A span, current for the block; `parent` (a context) makes it a child of a remote span. Errors mark it
        failed with the exception's class name only."""
        trace = self._trace
        if self.tracer is None:
            with self._ids_only(parent):
                yield None
            return
        links: Sequence[Any] = ()
        if link_parent and parent is not None:
            remote = trace.get_current_span(parent).get_span_context()
            links = [trace.Link(remote)] if remote.is_valid else ()
        with self.tracer.start_as_current_span(
                name, context=parent, kind=getattr(trace.SpanKind, kind), attributes=dict(attributes or {}),
                links=links, record_exception=False, set_status_on_exception=False) as span:
            try:
                yield span
            except BaseException as exc:
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", type(exc).__name__)
                raise

    @contextlib.contextmanager
    def _ids_only(self, parent: Any) -> Iterator[None]:
        """Without the SDK: a root or remote-parented block gets fresh ids (so a trace id exists and travels);
        nested blocks keep the current one. The ids live in a context variable of their own, formatted once per
        block (no OpenTelemetry span objects per request: issue 23's profile)."""
        if parent is None:
            if _IDS.get() is not None:
                yield
                return
            remote = None
        else:
            remote = self._trace.get_current_span(parent).get_span_context()
        if remote is not None and remote.is_valid:
            trace_id, flags = remote.trace_id, int(remote.trace_flags)
        else:
            trace_id, flags = int.from_bytes(secrets.token_bytes(16), "big") or 1, 1  # 1: sampled
        span_id = int.from_bytes(secrets.token_bytes(8), "big") or 1
        hex_id = f"{trace_id:032x}"
        token = _IDS.set((hex_id, f"00-{hex_id}-{span_id:016x}-{flags:02x}"))
        try:
            yield
        finally:
            _IDS.reset(token)

    def current_ids(self) -> tuple[str, str] | None:
        """(trace id, traceparent) of the current span, or None outside any."""
        if self.tracer is None:
            return _IDS.get()
        ctx = self._trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return None
        trace_id = f"{ctx.trace_id:032x}"
        return trace_id, f"00-{trace_id}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def flush(self) -> None:
        """Export what is buffered (tests, shutdown)."""
        if self.provider is not None:
            self.provider.force_flush(5000)


def _sdk_provider(settings: Settings, service: str) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                                        or f"provisioner-{service}"}))
    if settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter: Any = OTLPSpanExporter(endpoint=settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces",
                                         timeout=5)
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=2048, export_timeout_millis=5000))
    else:
        provider.add_span_processor(BatchSpanProcessor(jsonl_span_exporter(Path(settings.trace_file), service),
                                                       schedule_delay_millis=500))
    return provider


def jsonl_span_exporter(path: Path, service: str) -> Any:
    """The dev sink: one JSON object per span appended to `path` (one write per batch, O_APPEND). A class made
    here, so the SDK is imported only when it is used."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class _Exporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> Any:
            lines = []
            for span in spans:
                ctx = span.get_span_context()
                lines.append(json.dumps({
                    "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                    "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
                    "name": span.name, "kind": span.kind.name, "service": service,
                    "start_ns": span.start_time, "end_ns": span.end_time, "status": span.status.status_code.name,
                    "attributes": dict(span.attributes or {}),
                    "links": [f"{link.context.trace_id:032x}-{link.context.span_id:016x}" for link in span.links]}))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, ("\n".join(lines) + "\n").encode())
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("span file not written (%s)", type(exc).__name__)
                return SpanExportResult.FAILURE
            return SpanExportResult.SUCCESS

    return _Exporter()


# -- the process-wide instance ---------------------------------------------------------------------------------

def setup(settings: Settings, service: str) -> Tracing:
    """This process's tracing, made on first call (later calls return it)."""
    global _tracing
    if _tracing is None:
        with _setup_lock:
            if _tracing is None:
                _tracing = Tracing(settings, service)
    return _tracing


def install(tracing: Tracing | None) -> None:
    """Replace the process's tracing (tests)."""
    global _tracing
    _tracing = tracing


@contextlib.contextmanager
def span(name: str, **kwargs: Any) -> Iterator[Any]:
    """A span of the process's tracing; nothing at all before `setup()` (scripts, some tests)."""
    if _tracing is None:
        yield None
        return
    with _tracing.span(name, **kwargs) as current:
        yield current


def current_ids() -> tuple[str, str] | None:
    """(trace id, traceparent) of the current span, or None."""
    return _tracing.current_ids() if _tracing is not None else None


def current_trace_id() -> str | None:
    """The current trace id (for health events' metadata), or None."""
    ids = current_ids()
    return ids[0] if ids else None


def extract(carrier: Mapping[str, str]) -> Any:
    """A remote parent context from a W3C `traceparent` (None before `setup()`)."""
    return _tracing.extract(carrier) if _tracing is not None else None
