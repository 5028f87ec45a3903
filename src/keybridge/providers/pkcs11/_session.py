"""Library initialisation, login and a session pool that are safe under threads and ``fork``.

Why this exists (measured, see docs/pkcs11.md): python-pkcs11 calls ``C_Initialize(NULL)``, which
tells SoftHSM 2.6 to disable its own mutexes, yet releases the GIL around every C call; two
threads then crash the module. We initialise the module ourselves with ``CKF_OS_LOCKING_OK`` so it
locks internally and threads really run in parallel. When someone else in the process already
initialised the module (mode unknown), or ``KEYBRIDGE_PKCS11_THREADING=lock`` asks for it, every
call is serialised by one process-wide lock instead.

Login state belongs to the process, not to a session, and ``C_Logout`` on any session logs out all
of them, so each (module, slot) has one reference-counted login session that stays open while any
provider uses the token. python-pkcs11's ``Token.open(user_pin=...)`` leaks its session when the
PIN is wrong, so we open the session without a PIN and call ``C_Login`` ourselves.
"""

from __future__ import annotations

import ctypes
import hmac
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any, ClassVar, TypeVar

import pkcs11
from pkcs11 import _pkcs11
from pkcs11 import exceptions as px

from ...errors import AuthenticationError, KeybridgeError, ProviderUnavailable

T = TypeVar("T")

THREADING_ENV = "KEYBRIDGE_PKCS11_THREADING"
_CKR_ALREADY_INITIALIZED = 0x191
_CKR_USER_ALREADY_LOGGED_IN = 0x100
_CKF_OS_LOCKING_OK = 0x2
_CKU_USER = 1
_PIN_ERRORS = {0xA0: "incorrect", 0xA1: "invalid", 0xA2: "of the wrong length", 0xA3: "expired", 0xA4: "locked"}

# The first entries of CK_FUNCTION_LIST, in the order the standard fixes.
_NAMES = [
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
]
_UL = ctypes.c_ulong


class _FunctionList(ctypes.Structure):
    _fields_: ClassVar[list[tuple[str, Any]]] = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]
    _fields_ += [(n, ctypes.c_void_p) for n in _NAMES]


class _InitArgs(ctypes.Structure):
    _fields_: ClassVar[list[tuple[str, Any]]] = [
        (n, ctypes.c_void_p) for n in ("create", "destroy", "lock", "unlock")
    ] + [
        ("flags", _UL),
        ("reserved", ctypes.c_void_p),
    ]


class _SessionInfo(ctypes.Structure):
    _fields_: ClassVar[list[tuple[str, Any]]] = [("slot", _UL), ("state", _UL), ("flags", _UL), ("device_error", _UL)]


class RawModule:
    """The handful of C_* calls python-pkcs11 does not offer the way we need them (ctypes)."""

    def __init__(self, path: str) -> None:
        cdll = ctypes.CDLL(path)  # same file -> same dlopen handle python-pkcs11 uses
        ptr = ctypes.POINTER(_FunctionList)()
        rv = cdll.C_GetFunctionList(ctypes.byref(ptr))
        if rv:
            raise ProviderUnavailable(f"PKCS#11 module {path} failed C_GetFunctionList (CKR 0x{rv:x})")
        fl = ptr.contents
        f = ctypes.CFUNCTYPE
        self.initialize = f(_UL, ctypes.c_void_p)(fl.C_Initialize)
        self.finalize = f(_UL, ctypes.c_void_p)(fl.C_Finalize)
        self.login = f(_UL, _UL, _UL, ctypes.c_char_p, _UL)(fl.C_Login)
        self.logout = f(_UL, _UL)(fl.C_Logout)
        self.close_session = f(_UL, _UL)(fl.C_CloseSession)
        self._session_info = f(_UL, _UL, ctypes.POINTER(_SessionInfo))(fl.C_GetSessionInfo)

    def init_os_locking(self) -> int:
        """C_Initialize with CKF_OS_LOCKING_OK; returns the CKR code."""
        args = _InitArgs(None, None, None, None, _CKF_OS_LOCKING_OK, None)
        return int(self.initialize(ctypes.byref(args)))

    def session_valid(self, handle: int) -> bool:
        """True if ``handle`` is an open session of this process (used to prove no session leaks)."""
        return self.session_state(handle) is not None

    def session_state(self, handle: int) -> int | None:
        """CKS_* state of a session (1/3: user functions, i.e. logged in), None if invalid."""
        info = _SessionInfo()
        if int(self._session_info(handle, ctypes.byref(info))):
            return None
        return int(info.state)


class _OsLockingLib(_pkcs11.lib):
    """python-pkcs11's lib whose ``initialize`` asks the module for OS locking (via ctypes)."""

    def initialize(self) -> None:
        raw = _RAW_BY_PATH[self.so]
        rv = raw.init_os_locking()
        if rv == 0:
            _OWNED.add(self.so)
        elif rv != _CKR_ALREADY_INITIALIZED:
            raise ProviderUnavailable(f"C_Initialize of PKCS#11 module {self.so} failed (CKR 0x{rv:x})")


_RAW_BY_PATH: dict[str, RawModule] = {}
_OWNED: set[str] = set()  # paths this process initialised with OS locking


class _Login:
    __slots__ = ("pin", "refs", "session")

    def __init__(self, session: Any, pin: str) -> None:
        self.session = session
        self.pin = pin
        self.refs = 1


class Library:
    """One loaded PKCS#11 module in this process: init mode, fork detection, shared logins."""

    _registry: ClassVar[dict[str, Library]] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: str, alias: str) -> None:
        self.path = path
        self.raw = RawModule(path)
        _RAW_BY_PATH[path] = self.raw
        self._mu = threading.RLock()  # guards logins/reinit; also the call lock in lock mode
        self.generation = 0
        self.pid = os.getpid()
        self._logins: dict[int, _Login] = {}
        want_os = os.environ.get(THREADING_ENV, "os").lower() != "lock"
        existing = pkcs11._loaded.get(path) or pkcs11._loaded.get(alias)
        if existing is not None:
            self.lib: Any = existing  # someone initialised it already: mode unknown
            self.os_locking = False
        elif want_os:
            self.lib = _OsLockingLib(path)
            self.os_locking = path in _OWNED
            for name in (path, alias):  # later pkcs11.lib(path) calls share this instance
                pkcs11._loaded.setdefault(name, self.lib)
            # The module stays loaded for the life of the process: python-pkcs11's dealloc cannot
            # run on a Python subclass during interpreter shutdown, so keep one reference forever.
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(self.lib))
        else:
            self.lib = pkcs11.lib(path)
            self.os_locking = False

    @classmethod
    def get(cls, path: str) -> Library:
        """The process-wide instance for ``path`` (loads and initialises the module once)."""
        key = os.path.realpath(path)
        if not os.path.exists(key):
            raise ProviderUnavailable(f"PKCS#11 module {path} does not exist; check module-path")
        with cls._registry_lock:
            lib = cls._registry.get(key)
            if lib is None:
                try:
                    lib = cls(key, path)
                except px.PKCS11Error as exc:
                    raise ProviderUnavailable(f"cannot load PKCS#11 module {path}: {type(exc).__name__}") from exc
                cls._registry[key] = lib
        lib.check_fork()
        return lib

    def serialized(self) -> AbstractContextManager[Any]:
        """Context to hold around every PKCS#11 call: nothing in OS-locking mode, else the lock."""
        return nullcontext() if self.os_locking else self._mu

    def check_fork(self) -> None:
        """In a forked child, initialise the module again (the standard requires it)."""
        if self.pid != os.getpid():
            with self._mu:
                if self.pid != os.getpid():
                    self.pid = os.getpid()
                    self.reinitialize()

    def reinitialize(self) -> None:
        """C_Finalize + C_Initialize (picks up a new SOFTHSM2_CONF); every session becomes invalid."""
        with self._mu:
            if isinstance(self.lib, _OsLockingLib):
                self.raw.finalize(None)
                self.os_locking = self.raw.init_os_locking() == 0
            else:
                self.lib.reinitialize()
            self._logins.clear()  # the finalize logged everyone out and closed every session
            self.generation += 1

    def token(self, label: str) -> Any:
        """The token with CKA_LABEL ``label``."""
        with self.serialized():
            try:
                return self.lib.get_token(token_label=label)
            except px.NoSuchToken as exc:
                raise ProviderUnavailable(f"no PKCS#11 token labelled {label!r} in {self.path}") from exc
            except px.MultipleTokensReturned as exc:
                raise ProviderUnavailable(f"several tokens are labelled {label!r} in {self.path}") from exc

    def acquire_login(self, token: Any, pin: str) -> int:
        """Log the user in to ``token`` once per process; returns the generation it belongs to."""
        slot = token.slot.slot_id
        with self._mu:
            login = self._logins.get(slot)
            if login is not None:
                if not hmac.compare_digest(login.pin.encode(), pin.encode()):
                    raise AuthenticationError(
                        f"token {token.label!r} is already logged in by this process with a different PIN"
                    )
                login.refs += 1
                return self.generation
            session = token.open(rw=True)  # no PIN: python-pkcs11 would leak the session on a wrong one
            pin_b = pin.encode()
            rv = int(self.raw.login(session.handle, _CKU_USER, pin_b, len(pin_b)))
            if rv not in (0, _CKR_USER_ALREADY_LOGGED_IN):
                session.close()
                if rv in _PIN_ERRORS:
                    raise AuthenticationError(f"the user PIN for token {token.label!r} is {_PIN_ERRORS[rv]}")
                raise ProviderUnavailable(f"login to token {token.label!r} failed (CKR 0x{rv:x})")
            self._logins[slot] = _Login(session, pin)
            return self.generation

    def release_login(self, token: Any, generation: int) -> None:
        """Drop one reference; the last one logs out and closes the login session."""
        slot = token.slot.slot_id
        with self._mu:
            login = self._logins.get(slot)
            if login is None or generation != self.generation:
                return
            login.refs -= 1
            if login.refs == 0:
                del self._logins[slot]
                self.raw.logout(login.session.handle)
                login.session.close()


class Entry:
    """A pooled session plus a per-session cache of object handles (valid while it stays open)."""

    __slots__ = ("cache", "epoch", "generation", "session")

    def __init__(self, session: Any, generation: int, epoch: int) -> None:
        self.session = session
        self.generation = generation
        self.epoch = epoch
        self.cache: dict[Any, Any] = {}


_RETRY_SESSION = (px.SessionHandleInvalid, px.SessionClosed, px.UserNotLoggedIn)
_PUBLIC_STATES = (0, 2)  # CKS_RO_PUBLIC_SESSION, CKS_RW_PUBLIC_SESSION: nobody logged in
_RETRY_HANDLE = (px.ObjectHandleInvalid, px.KeyHandleInvalid)


class SessionPool:
    """Sessions for one provider: one per concurrently running thread, reused, never shared."""

    def __init__(self, module_path: str, token_label: str, pin: str) -> None:
        self.lib = Library.get(module_path)
        self.token = self.lib.token(token_label)
        self._pin = pin
        self._mu = threading.Lock()
        self._idle: list[Entry] = []
        self._closed = False
        self.epoch = 0  # bumped when objects are destroyed so cached handles are dropped
        with self.lib.serialized():
            self._generation = self.lib.acquire_login(self.token, pin)

    def _sync(self) -> None:
        """After a fork or a re-initialisation, forget dead sessions and log in again."""
        self.lib.check_fork()
        if self._generation != self.lib.generation:
            with self._mu:
                if self._generation != self.lib.generation:
                    self._idle.clear()  # handles died with C_Finalize; nothing to close
                    self.token = self.lib.token(self.token.label)
                    self._generation = self.lib.acquire_login(self.token, self._pin)

    def _acquire(self, *, fresh: bool = False) -> Entry:
        if self._closed:
            raise ProviderUnavailable("this PKCS#11 provider is closed")
        self._sync()
        with self._mu:
            stale, self._idle = (self._idle, []) if fresh else ([], self._idle)
            while self._idle:
                entry = self._idle.pop()
                if entry.generation == self._generation:
                    if entry.epoch != self.epoch:
                        entry.cache.clear()
                        entry.epoch = self.epoch
                    return entry
        for entry in stale:  # one session died: the others most likely with it (C_CloseAllSessions)
            self._close_entry(entry)
        with self.lib.serialized():
            return Entry(self.token.open(rw=True), self._generation, self.epoch)

    def _release(self, entry: Entry) -> None:
        with self._mu:
            if not self._closed and entry.generation == self._generation:
                self._idle.append(entry)
                return
        self._close_entry(entry)

    def _close_entry(self, entry: Entry) -> None:
        if entry.generation == self.lib.generation:
            with self.lib.serialized(), _suppress_pkcs11():
                entry.session.close()

    def run(self, fn: Callable[[Entry], T]) -> T:
        """Run ``fn`` with a session; an invalid session or stale handle is retried once."""
        fresh = False
        for attempt in (0, 1):
            entry = self._acquire(fresh=fresh)
            try:
                with self.lib.serialized():
                    result = fn(entry)
            except _RETRY_HANDLE:
                entry.cache.clear()
                self._release(entry)
                if attempt:
                    raise
            except px.NoSuchKey:
                # Private objects vanish when someone logs the process out: log in and retry.
                if attempt or self.lib.raw.session_state(entry.session.handle) not in _PUBLIC_STATES:
                    self._release(entry)
                    raise
                self._release(entry)
                self._relogin()
            except _RETRY_SESSION as exc:
                self._close_entry(entry)
                if attempt:
                    raise
                fresh = True
                if isinstance(exc, px.UserNotLoggedIn):
                    self._relogin()
            except BaseException:
                self._release(entry)
                raise
            else:
                self._release(entry)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _relogin(self) -> None:
        # Someone logged the process out (C_Logout on any session does that): log in again.
        with self.lib.serialized():
            self.lib.release_login(self.token, self._generation)
            self._generation = self.lib.acquire_login(self.token, self._pin)

    def invalidate_handles(self) -> None:
        """Objects were destroyed: cached handles may now point nowhere (or elsewhere)."""
        self.epoch += 1

    @contextmanager
    def session(self) -> Iterator[Entry]:
        """A session for a sequence of calls (no retry; prefer :meth:`run`)."""
        entry = self._acquire()
        try:
            with self.lib.serialized():
                yield entry
        finally:
            self._release(entry)

    def close(self) -> None:
        """Close idle sessions and release the login. Idempotent."""
        with self._mu:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
        for entry in idle:
            self._close_entry(entry)
        if self.lib.pid == os.getpid():
            with self.lib.serialized():
                self.lib.release_login(self.token, self._generation)


@contextmanager
def _suppress_pkcs11() -> Iterator[None]:
    with suppress(px.PKCS11Error, KeybridgeError):
        yield
