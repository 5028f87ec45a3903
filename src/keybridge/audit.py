"""Audit events: one structured record per provider operation.

Every :class:`~keybridge.base.BaseProvider` operation emits exactly one :class:`AuditEvent`
(from one place, the base class, so no backend can forget). Sinks are plain callables; the default
sink is the ``keybridge.audit`` logger at INFO level. Events carry key references and algorithm
names only, never key bytes, plaintext, PINs or passphrases.

Each audited operation gets a fresh ``correlation_id`` while anyone listens; the Azure provider
sends it as ``x-ms-client-request-id`` on every request of that operation, so an event joins the
service's (or the emulator's) audit records on their ``correlationId``. :class:`JsonLinesSink`
writes events to a file, one JSON object per line.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from typing_extensions import Self

from ._redact import redact_uri
from .errors import InvalidArgument
from .keys import KeyRef

__all__ = ["AuditEvent", "AuditSink", "JsonLinesSink", "add_sink", "correlated", "correlation_id", "remove_sink"]

logger = logging.getLogger("keybridge.audit")


@dataclass(frozen=True)
class AuditEvent:
    """One provider operation: what, on which key, with which algorithm, how it ended, how long."""

    operation: str
    provider: str
    key: str | None
    algorithm: str | None
    outcome: str  # "ok", or the keybridge error class name
    duration: float  # seconds
    timestamp: _dt.datetime
    correlation_id: str | None = None  # sent as x-ms-client-request-id by the Azure provider


AuditSink = Callable[[AuditEvent], None]

_sinks: list[AuditSink] = []
_lock = threading.Lock()
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("keybridge_audit_correlation", default=None)


def correlation_id() -> str | None:
    """The correlation id of the audited operation running in this context, or None (no
    operation, or nobody listens to audit events)."""
    return _current.get()


@contextlib.contextmanager
def correlated(correlation: str | None) -> Iterator[None]:
    """Audit events of the operations inside the block carry ``correlation`` (e.g. the request id
    a caller such as Managed HSM or AWS KMS sent), so they join that caller's own logs; None or
    empty leaves each operation its own new id. Context-local: set it in the thread that runs them."""
    if not correlation:
        yield
        return
    reset = _current.set(str(correlation)[:128])
    try:
        yield
    finally:
        _current.reset(reset)


def add_sink(sink: AuditSink) -> None:
    """Send every future audit event to ``sink`` as well as to the ``keybridge.audit`` logger."""
    with _lock:
        _sinks.append(sink)


def remove_sink(sink: AuditSink) -> None:
    """Stop sending events to ``sink`` (no error if it was not registered)."""
    with _lock:
        if sink in _sinks:
            _sinks.remove(sink)


class _Silent:
    """The context used while nobody listens: no clock, no event, nothing allocated."""

    __slots__ = ("key",)
    key: str | KeyRef | None

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_SILENT = _Silent()


class _Audit:
    """Times one operation and emits its event on exit, also when it raises. ``key`` may be
    refined inside the block once the reference is resolved to a concrete version."""

    __slots__ = ("algorithm", "correlation", "key", "operation", "provider", "reset", "start")

    def __init__(self, operation: str, provider: str, key: object, algorithm: str | None) -> None:
        self.operation = operation
        self.provider = provider
        # A reference the caller typed may carry a PIN or URL credentials until it is parsed.
        self.key = None if key is None else (key if isinstance(key, KeyRef) else redact_uri(key))
        self.algorithm = algorithm
        self.start = 0.0
        self.correlation = _current.get() or str(uuid.uuid4())  # a caller's id (correlated()), else new
        self.reset: contextvars.Token[str | None] | None = None

    def __enter__(self) -> _Audit:
        self.reset = _current.set(self.correlation)
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if self.reset is not None:
            _current.reset(self.reset)
        _emit(
            AuditEvent(
                operation=self.operation,
                provider=self.provider,
                key=None if self.key is None else str(self.key),
                algorithm=self.algorithm,
                outcome="ok" if exc_type is None else exc_type.__name__,
                duration=time.perf_counter() - self.start,
                timestamp=_dt.datetime.now(_dt.timezone.utc),
                correlation_id=self.correlation,
            )
        )


def audited(operation: str, provider: str, key: object, algorithm: str | None) -> _Audit | _Silent:
    """A context manager around one provider operation that emits its :class:`AuditEvent`."""
    if not _sinks and not logger.isEnabledFor(logging.INFO):
        return _SILENT  # nobody listens: keep the hot path free of clocks and allocations
    return _Audit(operation, provider, key, algorithm)


def _emit(event: AuditEvent) -> None:
    logger.info(
        "%s %s key=%s alg=%s outcome=%s %.1fms correlation=%s",
        event.operation,
        event.provider,
        event.key,
        event.algorithm,
        event.outcome,
        event.duration * 1000,
        event.correlation_id,
        extra={"keybridge_audit": event},
    )
    for sink in list(_sinks):
        try:
            sink(event)
        except Exception:  # a broken sink must never break the operation it reports on
            logger.exception("audit sink %r failed", sink)


class JsonLinesSink:
    """An audit sink that appends each event to ``path`` as one JSON object per line.

    ``audit.add_sink(JsonLinesSink("audit.jsonl"))``. The file is created (or narrowed) to mode
    0600 and opened for append; each event is a single unbuffered ``write`` of one whole line, so
    lines from several threads or processes never interleave and a crash loses at most the event
    being written. Fields: ``time`` (ISO 8601 UTC), ``operation``, ``provider``, ``key``,
    ``algorithm``, ``outcome``, ``duration_ms`` and ``correlation_id``; events carry no secrets, so
    neither does the file. Close it (or use it as a context manager) after removing it as a sink.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgument(f"JsonLinesSink takes a file path, got {type(path).__name__}")
        self.path = Path(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(self._fd, 0o600)  # an existing, wider file must not go on exposing the log
        except OSError as exc:
            raise InvalidArgument(f"cannot open audit log {self.path}: {exc.strerror}; pass a writable path") from None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JsonLinesSink({str(self.path)!r})"

    def __call__(self, event: AuditEvent) -> None:
        """Write one event (a sink's signature)."""
        record = {
            "time": event.timestamp.isoformat(timespec="milliseconds"),
            "operation": event.operation,
            "provider": event.provider,
            "key": event.key,
            "algorithm": event.algorithm,
            "outcome": event.outcome,
            "duration_ms": round(event.duration * 1000, 3),
            "correlation_id": event.correlation_id,
        }
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise InvalidArgument(f"{self!r} is closed; remove it with audit.remove_sink before closing")
            os.write(self._fd, line)

    def close(self) -> None:
        """Close the file. Idempotent."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
