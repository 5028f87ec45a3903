"""Sessions for one provider: a pool without a pool lock, transparent recovery, errors translated.

Each call takes an idle session (or opens one), so threads never share a session; the module
itself is made thread-safe by :mod:`._library`. ``list.pop()`` and ``list.append()`` are atomic
under the GIL, so the hot path takes no pool lock: a session is either in the idle list or in the hands
of exactly one call. Object handles are cached per session and dropped whenever the library's
epoch moves (objects destroyed, a new login). Calls that write token objects hold the library's
object lock exclusively, every other call holds it shared (see :mod:`._locks` for why).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

from pkcs11 import ObjectClass as OC
from pkcs11 import exceptions as px

from ...errors import InvalidArgument, KeybridgeError, ProviderUnavailable
from ...keys import KeyInfo, KeyType
from ._errors import translate
from ._library import Library

__all__ = ["PooledSession", "SessionPool"]

T = TypeVar("T")

_RETRY_SESSION = (px.SessionHandleInvalid, px.SessionClosed, px.UserNotLoggedIn)
_RETRY_HANDLE = (
    px.ObjectHandleInvalid,
    px.KeyHandleInvalid,
    px.WrappingKeyHandleInvalid,
    px.UnwrappingKeyHandleInvalid,
)
# A search an earlier error left open in this session (python-pkcs11 finalises it only when its
# generator is collected): this session is unusable until then, another one is fine.
_RETRY_ELSEWHERE = (px.OperationActive, px.OperationNotInitialized)
# How a module that leaks until re-initialised (ModuleQuirks.leaks_until_reinitialised) fails.
_LEAK_SYMPTOMS = (px.GeneralError, px.FunctionFailed)
_LOGOUT_ATTEMPTS = 4  # retries of one call, each only after the token showed another logout


class _Leaked(Exception):
    """A call failed the way a module that leaks until re-initialised fails (``ModuleQuirks``).

    Raised out of the call so that its object lock is released before the module is
    re-initialised; ``error`` is what the caller gets if the call fails so again afterwards.
    """

    def __init__(self, generation: int, error: KeybridgeError) -> None:
        super().__init__(str(error))
        self.generation = generation
        self.error = error


class PooledSession:
    """A pooled session plus a per-session cache of object handles (valid while it stays open)."""

    __slots__ = ("cache", "epoch", "generation", "session")

    def __init__(self, session: Any, generation: int, epoch: int) -> None:
        self.session = session
        self.generation = generation
        self.epoch = epoch
        self.cache: dict[str, Any] = {}

    def key(self, info: KeyInfo) -> Any:
        """The private or secret key object of ``info`` in this session (looked up once).

        Cached by the canonical key URI, which names token, label and id (version).
        """
        ref = info.ref
        found = self.cache.get(ref.uri)
        if found is None:
            cls = OC.SECRET_KEY if info.spec.kty is KeyType.OCT else OC.PRIVATE_KEY
            query: dict[str, Any] = {"object_class": cls, "label": ref.name}
            if ref.version:
                query["id"] = bytes.fromhex(ref.version)
            found = self.cache[ref.uri] = self.session.get_key(**query)
        return found


class SessionPool:
    """Sessions for one provider: one per concurrently running call, reused, never shared."""

    def __init__(self, module_path: str, token_label: str, pin: str, init_args: str | None = None) -> None:
        self.lib = Library.get(module_path, init_args)
        self.token = self.lib.token(token_label)
        self._pin = pin
        self._mu = threading.Lock()  # slow paths only: re-login, close
        self._idle: list[PooledSession] = []
        self._closed = False
        self._generation = self.lib.acquire_login(self.token, pin)
        self.lib.watch_fork(self)

    def run(
        self,
        fn: Callable[[PooledSession], T],
        action: str,
        what: object = None,
        *,
        bad_input: type[KeybridgeError] = InvalidArgument,
        write: bool = False,
    ) -> T:
        """``fn(entry)`` on a session no other call uses meanwhile.

        An invalid session, a stale object handle or a lost login is repaired and ``fn`` retried
        once. PKCS#11 errors become keybridge errors naming ``action`` and ``what``; ``bad_input`` is the error
        for input the token refused (IntegrityError on decrypt/unwrap; see :func:`._errors.translate`). ``write``
        says ``fn`` creates, destroys or changes token objects: it then runs alone.
        """
        try:
            return self._locked(fn, action, what, bad_input, write)
        except _Leaked as leak:
            # C_Finalize must not run while another thread is inside the module (tpm2-pkcs11
            # deadlocked): re-initialise holding the object lock exclusively, then run fn again.
            objects = self.lib.objects
            objects.acquire_exclusive()
            try:
                self.lib.reinitialize_after_leak(leak.generation)
            finally:
                objects.release_exclusive()
        try:
            return self._locked(fn, action, what, bad_input, write)
        except _Leaked as again:
            raise again.error from again.__cause__

    def _locked(
        self, fn: Callable[[PooledSession], T], action: str, what: object, bad_input: type[KeybridgeError], write: bool
    ) -> T:
        objects = self.lib.objects
        if write:
            objects.acquire_exclusive()
            try:
                if self.lib.reload_before_write:
                    self.lib.reinitialize()  # nobody else is in the module now: see ModuleQuirks
                return self._run(fn, action, what, bad_input)
            finally:
                objects.release_exclusive()
        objects.acquire_shared()
        try:
            return self._run(fn, action, what, bad_input)
        finally:
            objects.release_shared()

    def _run(self, fn: Callable[[PooledSession], T], action: str, what: object, bad_input: type[KeybridgeError]) -> T:
        try:
            entry = self._idle.pop()
        except IndexError:
            entry = None
        if entry is None or entry.generation != self.lib.generation or entry.epoch != self.lib.epoch:
            entry = self._take(entry, action, what, bad_input)
        lock = self.lib.call_lock
        try:
            if lock is None:
                result = fn(entry)
            else:
                with lock:
                    result = fn(entry)
        except px.PKCS11Error as exc:
            return self._retry(entry, exc, fn, action, what, bad_input)
        except BaseException:
            self._give(entry)
            raise
        self._idle.append(entry)  # what _give does, inlined: this is the hot path
        if self._closed:
            self._drain()
        return result

    def _take(
        self, entry: PooledSession | None, action: str, what: object, bad_input: type[KeybridgeError]
    ) -> PooledSession:
        """A usable session: ``entry`` (popped from the idle list) if still good, else a new one."""
        if entry is None:
            try:
                entry = self._idle.pop()
            except IndexError:
                entry = None
        if entry is not None and entry.generation == self.lib.generation:
            if entry.epoch != self.lib.epoch:
                entry.cache.clear()
                entry.epoch = self.lib.epoch
            return entry
        try:  # none idle, or re-initialised / forked: _open drops the other stale ones too
            return self._open()
        except px.PKCS11Error as exc:
            raise translate(action, what, exc, bad_input=bad_input) from exc

    def _give(self, entry: PooledSession) -> None:
        self._idle.append(entry)
        if self._closed:  # close() may have emptied the list before this append: empty it again
            self._drain()

    def _open(self) -> PooledSession:
        if self._closed:
            raise ProviderUnavailable("this PKCS#11 provider is closed; open a new one")
        self.lib.check_fork()
        if self._generation != self.lib.generation:
            with self._mu:
                if self._generation != self.lib.generation:
                    self._idle.clear()  # their handles died with C_Finalize: nothing to close
                    self.token = self.lib.token(self.token.label)
                    self._generation = self.lib.acquire_login(self.token, self._pin)
        with self.lib.serialized():
            return PooledSession(self.token.open(rw=True), self._generation, self.lib.epoch)

    def _discard(self, entry: PooledSession) -> None:
        if entry.generation == self.lib.generation:  # else C_Finalize closed it (or a fork copied it)
            with self.lib.serialized(), suppress(px.PKCS11Error):
                entry.session.close()

    def _drain(self) -> None:
        while True:
            try:
                entry = self._idle.pop()
            except IndexError:
                return
            self._discard(entry)

    def _settle(self, entry: PooledSession, exc: BaseException) -> None:
        """Return ``entry`` after ``exc``, or close it if ``exc`` says the session is broken."""
        if isinstance(exc, _RETRY_SESSION + _RETRY_ELSEWHERE):
            self._discard(entry)
        else:
            if isinstance(exc, _RETRY_HANDLE):
                entry.cache.clear()
            self._give(entry)

    def _retry(
        self,
        entry: PooledSession,
        exc: px.PKCS11Error,
        fn: Callable[[PooledSession], T],
        action: str,
        what: object,
        bad_input: type[KeybridgeError],
    ) -> T:
        # Slow path: repair what ``exc`` says is broken, then run ``fn`` once more.
        started = entry.epoch  # == the library's epoch when fn began (run/_take ensure it)
        self._settle(entry, exc)
        self._raise_if_leaked(entry, exc, action, what, bad_input)
        if isinstance(exc, _RETRY_SESSION):
            self._drain()  # one session died: the others most likely with it (C_CloseAllSessions)
            if isinstance(exc, px.UserNotLoggedIn):
                self.confirm_login()  # the token said so, whatever the session state says
        elif isinstance(exc, (px.NoSuchKey, *_RETRY_HANDLE)):
            # Private objects vanish, and their handles die, when someone logs the process out:
            # log in again first, else the fresh lookup below finds nothing.
            if not self._logged_out_meanwhile(started) and isinstance(exc, px.NoSuchKey):
                raise translate(action, what, exc, bad_input=bad_input) from exc
        elif not isinstance(exc, _RETRY_ELSEWHERE) and not self._logged_out_meanwhile(started):
            # (A module may report a key it hides after a logout as anything: NSS says CKR_HOST_MEMORY.)
            raise translate(action, what, exc, bad_input=bad_input) from exc
        for attempt in range(_LOGOUT_ATTEMPTS):
            entry = self._take(None, action, what, bad_input)
            started = entry.epoch
            try:
                with self.lib.serialized():
                    result = fn(entry)
            except BaseException as again:
                self._settle(entry, again)
                if not isinstance(again, px.PKCS11Error):
                    raise
                self._raise_if_leaked(entry, again, action, what, bad_input)
                # Logouts from elsewhere come again and again under load: a retry that ran into
                # another one (the token says logged out now, or a relogin moved the epoch) is no
                # verdict on the key either.
                if attempt + 1 < _LOGOUT_ATTEMPTS and self._logged_out_meanwhile(started):
                    continue
                raise translate(action, what, again, bad_input=bad_input) from again
            self._give(entry)
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _raise_if_leaked(
        self, entry: PooledSession, exc: px.PKCS11Error, action: str, what: object, bad_input: type[KeybridgeError]
    ) -> None:
        if self.lib.quirks.leaks_until_reinitialised and isinstance(exc, _LEAK_SYMPTOMS):
            raise _Leaked(entry.generation, translate(action, what, exc, bad_input=bad_input)) from exc

    def _logged_out_meanwhile(self, started: int) -> bool:
        # A logout from elsewhere *during* a call surfaces as anything (SoftHSM: GeneralError, which
        # would read as a bad tag on decrypt). Worth another try if the process is logged out now,
        # or was and another thread already logged in again (the epoch moved since ``started``).
        # If nothing says so, C_Login has the last word: the session state may be stale (NSS).
        return self.relogin_if_logged_out() or self.lib.epoch != started or self.confirm_login()

    def relogin_if_logged_out(self) -> bool:
        """Log in again if the session state says someone logged the process out (private
        objects vanish then). True if that was needed: a lookup that found nothing is worth repeating.
        """
        if self.lib.logged_in(self.token):
            return False
        self._relogin()
        return True

    def confirm_login(self) -> bool:
        """Let C_Login, not the session state, say whether the process is logged in (see
        :meth:`Library.relogin`): for a call that failed, or found nothing, while the state says
        logged in. True if C_Login had to log in, i.e. the state was stale."""
        return self._relogin(ask_token=True)

    def _relogin(self, *, ask_token: bool = False) -> bool:
        with self._mu:
            if self._closed:
                raise ProviderUnavailable("this PKCS#11 provider is closed; open a new one")
            return self.lib.relogin(self.token, ask_token=ask_token)

    def destroy(self, obj: Any) -> None:
        """C_DestroyObject of ``obj``, noted on a module that then reuses handles (``ModuleQuirks``)."""
        if self.lib.quirks.reuses_handles_after_destroy:
            self.lib.reload_before_write = True
        obj.destroy()

    def invalidate_handles(self) -> None:
        """Objects were destroyed: cached handles may now point nowhere (or elsewhere)."""
        self.lib.bump_epoch()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's sessions (the child must not use or close them)."""
        self._mu = threading.Lock()
        self._idle = []

    def close(self) -> None:
        """Close idle sessions and release the login. Idempotent."""
        with self._mu:
            if self._closed:
                return
            self._closed = True
        self._drain()  # sessions in use are closed when their call gives them back
        self.lib.release_login(self.token, self._generation)
