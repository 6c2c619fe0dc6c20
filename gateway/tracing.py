"""Distributed traces shared by both services: a request's spans, recorded as it runs, emitted at its end.

Tracing is on only when the standard ``OTEL_*`` variables ask for it (an OTLP endpoint, or
``OTEL_TRACES_EXPORTER``); otherwise nothing is recorded or exported, and ``traceparent`` is still
propagated so that the worker's log lines share the caller's trace id.

A request's spans are plain records (name, ids, timestamps, attributes) taken along the request and
handed to a ``SpanSink`` when it ends. Services export through ``ExporterProcess``
(``gateway.span_export``): a child process turns the records into the SDK's spans and batches and
exports them over OTLP, because encoding OTLP costs about 50 µs a span in Python, which in the
service's own process (and under its GIL) would cost the gateway a third of its throughput at full
sampling. Tests use ``ProcessorSink``, which builds the SDK's ``ReadableSpan`` in process for any
span processor (an in-memory exporter). Attributes carry ids, decisions, counts and sizes only,
never prompts, outputs, bearer tokens or personal data.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

logger = logging.getLogger(__name__)

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int]
Attributes = Mapping[str, AttributeValue]
# name, span id, parent span id (0: none), parent is remote, start ns, end ns, SpanKind value, error,
# attributes: plain values, cheap to build on the request path and to send to the exporter process.
SpanRecord = tuple[str, int, int, bool, int, int, int, bool, dict[str, AttributeValue]]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_IDS = RandomIdGenerator()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this build cannot do (named in the message)."""


class SpanSink(Protocol):
    """Where a finished request's spans go."""

    def emit(self, trace_id: int, spans: list[SpanRecord]) -> None: ...

    def flush(self, timeout_ms: int) -> None: ...

    def shutdown(self) -> None: ...


class ProcessorSink:
    """Spans built as the SDK's ``ReadableSpan`` in this process and handed to ``processor``."""

    def __init__(self, service_name: str, processor: SpanProcessor) -> None:
        self.processor = processor
        self.resource = service_resource(service_name)
        self.scope = InstrumentationScope(f"warden.{service_name}", package_version())

    def emit(self, trace_id: int, spans: list[SpanRecord]) -> None:
        for span in readable_spans(self.resource, self.scope, trace_id, spans):
            self.processor.on_end(span)

    def flush(self, timeout_ms: int) -> None:
        self.processor.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.processor.shutdown()


@dataclass(frozen=True, slots=True)
class Tracing:
    """Which traces are kept and where their spans go; ``None`` in place of it means tracing is off."""

    sink: SpanSink
    sampler: Sampler

    @classmethod
    def create(cls, service_name: str, processor: SpanProcessor, sampler: Sampler | None = None) -> Tracing:
        """Tracing into ``processor`` in this process (tests pass a SimpleSpanProcessor over an
        InMemorySpanExporter)."""
        return cls(ProcessorSink(service_name, processor), sampler or ParentBased(ALWAYS_ON))

    def begin(self, name: str, traceparent: str | None, kind: SpanKind = SpanKind.SERVER) -> RequestTrace:
        return RequestTrace.begin(self, name, traceparent, kind)

    def flush(self, timeout_ms: int = 5000) -> None:
        """Export what this process still holds (before a shutdown that may not run its cleanup)."""
        self.sink.flush(timeout_ms)

    def shutdown(self) -> None:
        """Flush what is batched (bounded by the exporter's timeout) and stop."""
        self.sink.shutdown()


def service_resource(service_name: str) -> Resource:
    """The resource from OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME, named ``service_name`` by default."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "unknown_service")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    return resource


def readable_spans(
    resource: Resource, scope: InstrumentationScope, trace_id: int, spans: list[SpanRecord]
) -> list[ReadableSpan]:
    built = []
    for name, span_id, parent_id, remote, start_ns, end_ns, kind, error, attributes in spans:
        parent = None
        if parent_id:
            parent = SpanContext(trace_id, parent_id, is_remote=remote, trace_flags=_SAMPLED)
        built.append(
            ReadableSpan(
                name=name,
                context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED),
                parent=parent,
                resource=resource,
                attributes=attributes,
                kind=SpanKind(kind),
                status=_ERROR if error else _OK,
                start_time=start_ns,
                end_time=max(end_ns, start_ns),
                instrumentation_scope=scope,
            )
        )
    return built


def tracing_from_env(service_name: str, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """Tracing as the standard OTEL_* variables configure it, or ``None`` when they do not ask for it."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter_names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoint_set = bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if not exporter_names:
        exporter_names = ["otlp"] if endpoint_set else []
    exporter_names = [n for n in exporter_names if n != "none"]
    if not exporter_names:
        return None
    if len(exporter_names) > 1:
        raise TracingConfigError("OTEL_TRACES_EXPORTER: one exporter at a time (otlp or console)")
    exporter_name = exporter_names[0]
    span_exporter(exporter_name, env)  # refuses what cannot be exported before the process starts
    sampler = sampler_from_env(env)
    from gateway.span_export import ExporterProcess

    return Tracing(ExporterProcess(service_name, exporter_name), sampler)


def span_exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    """The exporter named by OTEL_TRACES_EXPORTER (its own settings come from the OTEL_* variables)."""
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={name!r} is not supported (otlp, console or none)")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip().lower() != "http/protobuf":
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use http/protobuf "
            "(every OpenTelemetry collector accepts it, on port 4318)"
        )
    # Imported here: the exporter pulls in protobuf, needed only when traces are exported.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, certificates, compression, timeout: from OTEL_*


def sampler_from_env(env: Mapping[str, str]) -> Sampler:
    """The sampler named by OTEL_TRACES_SAMPLER (default parentbased_always_on, as the spec says)."""
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    argument = env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
    try:
        ratio = float(argument)
    except ValueError:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={argument!r} is not a number") from None
    if not 0.0 <= ratio <= 1.0:
        raise TracingConfigError("OTEL_TRACES_SAMPLER_ARG must lie in [0, 1]")
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER={name!r} is not supported ({', '.join(samplers)})")
    return samplers[name]


def parse_traceparent(header: str | None) -> SpanContext | None:
    """The caller's span context from a well-formed W3C ``traceparent``; anything else is ignored."""
    match = _TRACEPARENT.match(header or "")
    if match is None:
        return None
    trace_id, span_id = int(match.group(1), 16), int(match.group(2), 16)
    if trace_id == 0 or span_id == 0:
        return None
    flags = TraceFlags(int(match.group(3), 16) & TraceFlags.SAMPLED)
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)


class RequestTrace:
    """One request's trace: ids fixed up front, spans recorded as its steps end, emitted by ``end``.

    Without ``Tracing`` (or when the sampler drops the trace) it still carries the trace id for the
    log line and for the ``traceparent`` sent upstream, and recording costs nothing.
    """

    __slots__ = ("_spans", "kind", "name", "parent", "sampled", "span_id", "start_ns", "trace_id", "tracing")

    def __init__(
        self,
        tracing: Tracing | None,
        name: str,
        trace_id: int,
        parent: SpanContext | None,
        sampled: bool,
        kind: SpanKind,
    ) -> None:
        self.tracing = tracing
        self.name = name
        self.trace_id = trace_id
        self.span_id = _IDS.generate_span_id()
        self.parent = parent
        self.sampled = sampled
        self.kind = kind
        self.start_ns = time.time_ns()
        self._spans: list[SpanRecord] = []

    @classmethod
    def begin(
        cls, tracing: Tracing | None, name: str, traceparent: str | None, kind: SpanKind = SpanKind.SERVER
    ) -> RequestTrace:
        parent = parse_traceparent(traceparent)
        trace_id = parent.trace_id if parent is not None else _IDS.generate_trace_id()
        sampled = False
        if tracing is not None:
            parent_context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else None
            result = tracing.sampler.should_sample(parent_context, trace_id, name, kind)
            sampled = result.decision.is_sampled()  # type: ignore[no-untyped-call]
        return cls(tracing, name, trace_id, parent, sampled, kind)

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    def new_span_id(self) -> int:
        return _IDS.generate_span_id()

    def traceparent(self, span_id: int | None = None) -> str:
        """The W3C header naming ``span_id`` (a child about to call out) or this request's root span."""
        flags = "01" if self.sampled else "00"
        return f"00-{self.trace_id:032x}-{span_id or self.span_id:016x}-{flags}"

    def record(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: Attributes | None = None,
        *,
        span_id: int | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        error: bool = False,
    ) -> None:
        """A finished child span of the request's root span."""
        if not self.sampled:
            return
        self._spans.append(
            (name, span_id or _IDS.generate_span_id(), self.span_id, False, start_ns, end_ns, _KIND[kind],
             error, _plain(attributes))
        )  # fmt: skip

    def end(
        self, attributes: Attributes | None = None, *, error: bool = False, end_ns: int | None = None
    ) -> None:
        """Close the root span and hand every span of the request to the sink."""
        if not self.sampled or self.tracing is None:
            return
        parent = self.parent
        self._spans.append(
            (self.name, self.span_id, parent.span_id if parent else 0, parent is not None, self.start_ns,
             end_ns or time.time_ns(), _KIND[self.kind], error, _plain(attributes))
        )  # fmt: skip
        spans, self._spans = self._spans, []
        self.tracing.sink.emit(self.trace_id, spans)


_KIND = {kind: kind.value for kind in SpanKind}  # Enum.value is a property call; this is a dict hit


def _plain(attributes: Attributes | None) -> dict[str, AttributeValue]:
    if isinstance(attributes, dict):
        return attributes  # built for this span by the caller
    return dict(attributes) if attributes else {}


def package_version() -> str:
    """The installed distribution's version (for span scopes and the OpenAPI document)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("warden-inference")
    except PackageNotFoundError:
        return "0"
