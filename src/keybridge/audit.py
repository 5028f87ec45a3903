"""Audit events: one structured record per provider operation.

Every :class:`~keybridge.provider.BaseProvider` operation emits exactly one :class:`AuditEvent`
(from one place, the base class, so no backend can forget). Sinks are plain callables; the default
sink is the ``keybridge.audit`` logger at INFO level. Events carry key references and algorithm
names only, never key bytes, plaintext, PINs or passphrases.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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


class _Pending:
    """Mutable slot so the operation can refine the key reference once it is resolved."""

    __slots__ = ("key",)

    def __init__(self, key: str | None) -> None:
        self.key = key


@contextmanager
def audited(operation: str, provider: str, key: object, algorithm: str | None) -> Iterator[_Pending]:
    """Time the enclosed operation and emit its event, also when it raises."""
    if not _sinks and not logger.isEnabledFor(logging.INFO):
        # Nobody listens: skip building events on the hot path.
        yield _Pending(None)
        return
    pending = _Pending(None if key is None else str(key))
    start = time.perf_counter()
    outcome = "ok"
    try:
        yield pending
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        _emit(
            AuditEvent(
                operation=operation,
                provider=provider,
                key=pending.key,
                algorithm=algorithm,
                outcome=outcome,
                duration=time.perf_counter() - start,
                timestamp=_dt.datetime.now(_dt.timezone.utc),
            )
        )


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
