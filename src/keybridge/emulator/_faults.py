"""Injected faults: throttling and unavailability answers, latency, dropped connections."""

from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass, field

from ..errors import InvalidArgument

__all__ = ["FaultDecision", "Faults", "FaultInjector"]

_MAX_LATENCY = 5.0  # seconds; faults must slow tests down, never hang them
_MAX_RETRY_AFTER = 60


@dataclass(frozen=True)
class Faults:
    """What to inject, per request, after TLS and before auth.

    ``error_rate`` of requests get one of ``statuses`` (429/500/502/503/504) with a
    ``Retry-After: retry_after`` header, ``drop_rate`` have their connection closed without an
    answer, and every request is delayed by ``latency`` seconds. At most ``max_consecutive``
    requests in a row are faulted, so a client that retries that many times always gets through
    (azure-core retries status answers 3 times by default). ``seed`` makes the choices repeatable.
    """

    error_rate: float = 0.0
    statuses: tuple[int, ...] = (429, 503)
    retry_after: int = 0
    latency: float = 0.0
    drop_rate: float = 0.0
    max_consecutive: int = 3
    seed: int | None = None

    def __post_init__(self) -> None:
        for what, rate in (("error_rate", self.error_rate), ("drop_rate", self.drop_rate)):
            if not 0.0 <= rate <= 1.0:
                raise InvalidArgument(f"{what} must be between 0 and 1, got {rate}")
        if not 0.0 <= self.latency <= _MAX_LATENCY:
            raise InvalidArgument(f"latency must be between 0 and {_MAX_LATENCY} seconds, got {self.latency}")
        if not 0 <= self.retry_after <= _MAX_RETRY_AFTER:
            raise InvalidArgument(f"retry_after must be between 0 and {_MAX_RETRY_AFTER}, got {self.retry_after}")
        if not self.statuses or any(s not in (429, 500, 502, 503, 504) for s in self.statuses):
            raise InvalidArgument(f"statuses must be drawn from 429, 500, 502, 503, 504, got {self.statuses}")
        if self.max_consecutive < 1:
            raise InvalidArgument("max_consecutive must be at least 1")

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """Parse ``"error_rate=0.3,statuses=429/503,retry_after=0,latency=0.05,drop_rate=0,seed=1"``."""
        kwargs: dict[str, object] = {}
        for item in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            try:
                if not sep:
                    raise ValueError
                if key in ("error_rate", "latency", "drop_rate"):
                    kwargs[key] = float(value)
                elif key in ("retry_after", "max_consecutive", "seed"):
                    kwargs[key] = int(value)
                elif key == "statuses":
                    kwargs[key] = tuple(int(s) for s in re.split(r"[/ ;|]+", value.strip()) if s)
                else:
                    raise KeyError(key)
            except KeyError:
                valid = "error_rate, statuses, retry_after, latency, drop_rate, max_consecutive, seed"
                raise InvalidArgument(f"unknown fault setting {key!r}; valid: {valid}") from None
            except ValueError:
                raise InvalidArgument(f"bad fault setting {item!r}; expected NAME=NUMBER") from None
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FaultDecision:
    """What to do with one request: drop it, or answer ``status`` (None = serve normally)."""

    drop: bool = False
    status: int | None = None


@dataclass
class FaultInjector:
    """Draws :class:`FaultDecision` values from :class:`Faults`; thread-safe."""

    faults: Faults
    _rng: random.Random = field(init=False)
    _streak: int = field(init=False, default=0)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.faults.seed)  # not for secrets: picks which requests fail

    def decide(self) -> FaultDecision:
        """The fate of the next request."""
        f = self.faults
        with self._lock:
            if self._streak >= f.max_consecutive:
                self._streak = 0
                return FaultDecision()
            roll = self._rng.random()
            if roll < f.drop_rate:
                self._streak += 1
                return FaultDecision(drop=True)
            if roll < f.drop_rate + f.error_rate:
                self._streak += 1
                return FaultDecision(status=self._rng.choice(f.statuses))
            self._streak = 0
            return FaultDecision()
