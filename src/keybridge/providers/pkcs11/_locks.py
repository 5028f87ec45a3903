"""A shared/exclusive lock with writer preference, for token objects of one PKCS#11 module.

Why (measured on SoftHSM 2.6 with OS locking, see docs/pkcs11.md): while one session creates,
destroys or changes a token object, another session's C_FindObjects can miss unrelated objects and
its cached handles can read as invalid (the file object store re-reads the token directory), and
both sides may get CKR_GENERAL_ERROR. Crypto calls and searches share the lock and run in parallel;
calls that write token objects take it alone. Writers are preferred, else eight busy crypto
threads would starve key management forever.
"""

from __future__ import annotations

import threading

__all__ = ["SharedExclusiveLock"]


class SharedExclusiveLock:
    """Many holders in shared mode, or one in exclusive mode; not re-entrant."""

    __slots__ = ("_cond", "_readers", "_writer", "_writers_waiting")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    # Plain methods, not context managers: this is on every call's path, and a generator-based
    # context manager costs several times the two lock round-trips below.
    def acquire_shared(self) -> None:
        """Hold the lock alongside other shared holders (waits while a writer holds or waits)."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_shared(self) -> None:
        """Give back one shared hold."""
        with self._cond:
            self._readers -= 1
            if not self._readers and self._writers_waiting:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        """Hold the lock alone."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True

    def release_exclusive(self) -> None:
        """Give back the exclusive hold."""
        with self._cond:
            self._writer = False
            self._cond.notify_all()
