"""Audit events: one structured record per provider operation.

Every :class:`~keybridge.base.BaseProvider` operation emits exactly one :class:`AuditEvent`
(from one place, the base class, so no backend can forget). Sinks are plain callables; the default
sink is the ``keybridge.audit`` logger at INFO level. Events carry key references and algorithm
names only, never key bytes, plaintext, PINs or passphrases.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._redact import redact_uri
from .keys import KeyRef

__all__ = ["AuditEvent", "AuditSink", "add_sink", "remove_sink"]

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


AuditSink = Callable[[AuditEvent], None]

_sinks: list[AuditSink] = []
_lock = threading.Lock()


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

    __slots__ = ("algorithm", "key", "operation", "provider", "start")

    def __init__(self, operation: str, provider: str, key: object, algorithm: str | None) -> None:
        self.operation = operation
        self.provider = provider
        # A reference the caller typed may carry a PIN or URL credentials until it is parsed.
        self.key = None if key is None else (key if isinstance(key, KeyRef) else redact_uri(key))
        self.algorithm = algorithm
        self.start = 0.0

    def __enter__(self) -> _Audit:
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        _emit(
            AuditEvent(
                operation=self.operation,
                provider=self.provider,
                key=None if self.key is None else str(self.key),
                algorithm=self.algorithm,
                outcome="ok" if exc_type is None else exc_type.__name__,
                duration=time.perf_counter() - self.start,
                timestamp=_dt.datetime.now(_dt.timezone.utc),
            )
        )


def audited(operation: str, provider: str, key: object, algorithm: str | None) -> _Audit | _Silent:
    """A context manager around one provider operation that emits its :class:`AuditEvent`."""
    if not _sinks and not logger.isEnabledFor(logging.INFO):
        return _SILENT  # nobody listens: keep the hot path free of clocks and allocations
    return _Audit(operation, provider, key, algorithm)


def _emit(event: AuditEvent) -> None:
    logger.info(
        "%s %s key=%s alg=%s outcome=%s %.1fms",
        event.operation,
        event.provider,
        event.key,
        event.algorithm,
        event.outcome,
        event.duration * 1000,
        extra={"keybridge_audit": event},
    )
    for sink in list(_sinks):
        try:
            sink(event)
        except Exception:  # a broken sink must never break the operation it reports on
            logger.exception("audit sink %r failed", sink)
