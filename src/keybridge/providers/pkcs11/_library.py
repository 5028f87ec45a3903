"""One PKCS#11 module per process: initialisation mode, ``fork``, and the shared user login.

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
import itertools
import os
import threading
import weakref
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any, ClassVar, Protocol

import pkcs11
from pkcs11 import exceptions as px

from ...errors import AuthenticationError, ProviderUnavailable
from . import _compat
from ._locks import SharedExclusiveLock
from ._quirks import module_quirks_of

THREADING_ENV = "KEYBRIDGE_PKCS11_THREADING"
_CKR_ALREADY_INITIALIZED = 0x191
_CKR_ARGUMENTS_BAD = 0x7
_CKR_USER_ALREADY_LOGGED_IN = 0x100
_CKF_OS_LOCKING_OK = 0x2
_CKU_USER = 1
_USER_STATES = (1, 3)  # CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS
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


class LoginFunctionList(ctypes.Structure):
    """CK_FUNCTION_LIST up to C_Logout: what :class:`RawModule` calls (``_sized`` extends it)."""

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
        ptr = ctypes.POINTER(LoginFunctionList)()
        rv = cdll.C_GetFunctionList(ctypes.byref(ptr))
        if rv:
            raise ProviderUnavailable(
                f"PKCS#11 module {path} failed C_GetFunctionList (CKR 0x{rv:x}); is it a PKCS#11 module?"
            )
        fl = ptr.contents
        f = ctypes.CFUNCTYPE
        self.initialize = f(_UL, ctypes.c_void_p)(fl.C_Initialize)
        self.finalize = f(_UL, ctypes.c_void_p)(fl.C_Finalize)
        self.login = f(_UL, _UL, _UL, ctypes.c_char_p, _UL)(fl.C_Login)
        self.logout = f(_UL, _UL)(fl.C_Logout)
        self.close_session = f(_UL, _UL)(fl.C_CloseSession)
        self._session_info = f(_UL, _UL, ctypes.POINTER(_SessionInfo))(fl.C_GetSessionInfo)

    def init_with(self, flags: int, init_args: str | None = None) -> int:
        """C_Initialize with ``flags`` and ``pReserved`` = ``init_args`` (NUL-terminated); the CKR code.

        ``init_args`` is the module-specific init string some modules require (NSS softokn:
        ``configdir='sql:DIR' ...``); PKCS#11 reserves the field, and modules that do not use it
        ignore it.
        """
        text = ctypes.c_char_p(init_args.encode()) if init_args is not None else None
        args = _InitArgs(None, None, None, None, flags, ctypes.cast(text, ctypes.c_void_p) if text else None)
        return int(self.initialize(ctypes.byref(args)))  # ``text`` stays alive until this returns

    def session_valid(self, handle: int) -> bool:
        """True if ``handle`` is an open session of this process (used to prove no session leaks)."""
        return self.session_state(handle) is not None

    def session_state(self, handle: int) -> int | None:
        """CKS_* state of a session (1/3: user functions, i.e. logged in), None if invalid."""
        info = _SessionInfo()
        if int(self._session_info(handle, ctypes.byref(info))):
            return None
        return int(info.state)


class ForkAware(Protocol):
    """Something holding per-process PKCS#11 state that a forked child must drop."""

    def after_fork(self) -> None:
        """Called in the child of ``os.fork`` before any other Python code runs."""


class _Login:
    __slots__ = ("pin", "refs", "session")

    def __init__(self, session: Any, pin: str) -> None:
        self.session = session
        self.pin = pin
        self.refs = 1


class Library:
    """One loaded PKCS#11 module in this process: init mode, fork detection, shared logins.

    ``call_lock`` is what to hold around every PKCS#11 call: None when the module locks itself
    (OS locking), else the process-wide lock. ``generation`` changes whenever every session and
    object handle became invalid (re-initialisation, or a ``fork``: the child must not use them).
    ``epoch`` changes whenever some cached object handles may have gone stale (objects destroyed,
    or a new login: SoftHSM hands out new handles for private objects then). ``objects`` is held
    shared around calls that only use token objects and exclusively around calls that create,
    destroy or change them (see :mod:`._locks`).
    """

    _registry: ClassVar[dict[str, Library]] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: str, alias: str, init_args: str | None = None) -> None:
        self.path = path
        self.init_args = init_args
        self.raw = RawModule(path)
        self._mu = threading.RLock()  # guards logins/reinit; also the call lock in lock mode
        self.generation = 0
        self._epochs = itertools.count(1)
        self.epoch = 0
        self._relogins = itertools.count(1)
        self.relogins = 0  # bumped by every relogin(): a search that overlapped one may have missed keys
        self.objects = SharedExclusiveLock()
        self._forked = False
        self._serial = False  # a token behind this module crashes on parallel calls (_quirks)
        # Set when a module that reuses handles after a destroy (ModuleQuirks) destroyed an object:
        # the next write re-initialises it first.
        self.reload_before_write = False
        self._logins: dict[int, _Login] = {}
        self._dependents: weakref.WeakSet[ForkAware] = weakref.WeakSet()
        want_os = os.environ.get(THREADING_ENV, "os").lower() != "lock"
        existing = _compat.loaded_lib(path, alias)
        self.call_lock: AbstractContextManager[Any] | None = self._mu
        self._want_os = False
        if existing is not None:
            self.lib: Any = existing  # someone initialised it already: mode unknown
        elif want_os or init_args is not None:  # python-pkcs11 could pass neither flag nor init string
            self._want_os = want_os
            self.lib = _compat.os_locking_lib(path, self._initialize_os_locking, alias)
        else:
            self.lib = pkcs11.lib(path)
        _compat.register_reinitializer(path, self.reinitialize)
        self.quirks = module_quirks_of(getattr(self.lib, "manufacturer_id", ""))

    def _initialize_os_locking(self) -> None:
        # python-pkcs11 calls this instead of its C_Initialize(NULL) (see _compat.os_locking_lib).
        rv = self._init()
        if rv == 0:
            if self._want_os:
                self.call_lock = None  # we own the initialisation: the module locks itself
        elif rv != _CKR_ALREADY_INITIALIZED:
            hint = ""
            if rv == _CKR_ARGUMENTS_BAD and self.init_args is None:
                hint = "; this module may need an init string: pass init_args= (e.g. NSS softokn's configdir=...)"
            raise ProviderUnavailable(f"C_Initialize of PKCS#11 module {self.path} failed (CKR 0x{rv:x}){hint}")

    def _init(self) -> int:
        return self.raw.init_with(_CKF_OS_LOCKING_OK if self._want_os else 0, self.init_args)

    @property
    def os_locking(self) -> bool:
        """True when the module was initialised with CKF_OS_LOCKING_OK by us (calls run unlocked)."""
        return self.call_lock is None

    @classmethod
    def get(cls, path: str, init_args: str | None = None) -> Library:
        """The process-wide instance for ``path`` (loads and initialises the module once).

        ``init_args`` is passed to C_Initialize (see :meth:`RawModule.init_with`); a module is
        initialised once per process, so a second provider must give the same string.
        """
        _compat.require_supported()
        key = os.path.realpath(path)
        if not os.path.exists(key):
            raise ProviderUnavailable(f"PKCS#11 module {path} does not exist; check module-path")
        with cls._registry_lock:
            lib = cls._registry.get(key)
            if lib is not None and lib.init_args != init_args:
                raise ProviderUnavailable(
                    f"PKCS#11 module {path} is already initialised in this process with"
                    f" {'other' if lib.init_args else 'no'} init_args; a module is initialised once per"
                    " process, so give every provider of it the same init_args"
                )
            if lib is None:
                try:
                    lib = cls(key, path, init_args)
                except AttributeError as exc:  # python-pkcs11 reports a missing C_GetFunctionList so
                    raise ProviderUnavailable(
                        f"{path} is a shared library but not a PKCS#11 module (it exports no C_GetFunctionList);"
                        " check that module-path names the token vendor's PKCS#11 library"
                    ) from exc
                except (px.PKCS11Error, OSError) as exc:
                    raise ProviderUnavailable(
                        f"cannot load PKCS#11 module {path} ({type(exc).__name__}); check that it is a PKCS#11"
                        " module for this platform"
                    ) from exc
                cls._registry[key] = lib
        lib.check_fork()
        return lib

    def serialized(self) -> AbstractContextManager[Any]:
        """Context to hold around a PKCS#11 call: nothing in OS-locking mode, else the lock."""
        lock = self.call_lock
        return nullcontext() if lock is None else lock

    def serialize_calls(self) -> None:
        """Hold the process-wide lock around every call from now on, even in OS-locking mode.

        For a module with a token known to crash on parallel calls (``TokenQuirks.parallel_calls_crash``):
        the module was initialised before its tokens could be asked, so the mode changes here.
        """
        with self._mu:
            self._serial = True
            self.call_lock = self._mu

    def bump_epoch(self) -> None:
        """Cached object handles may be stale now: every session drops its cache before next use."""
        self.epoch = next(self._epochs)  # next() on a count is atomic under the GIL; += is not

    def watch_fork(self, dependent: ForkAware) -> None:
        """Have ``dependent.after_fork()`` called in a forked child (held weakly)."""
        self._dependents.add(dependent)

    def _after_fork(self) -> None:
        # Only the forking thread survives in the child: locks another thread held stay locked
        # forever, so replace them. The standard requires C_Initialize again; that is done lazily
        # by check_fork(), so a child that never touches the token (e.g. a worker pool) pays nothing.
        self._mu = threading.RLock()
        self.objects = SharedExclusiveLock()
        if self.call_lock is not None:
            self.call_lock = self._mu
        self._forked = True
        self.generation += 1  # parent's sessions and handles must not be used, nor closed
        for dependent in list(self._dependents):
            dependent.after_fork()

    def check_fork(self) -> None:
        """In a forked child, initialise the module again (the standard requires it).

        Raises ProviderUnavailable, without calling the module, if that would break the parent
        (``quirks.fork_unusable``).
        """
        if not self._forked:
            return
        if self.quirks.fork_unusable:
            raise ProviderUnavailable(
                f"PKCS#11 module {self.path} cannot be used in a process forked from one that initialised it:"
                " initialising it again here would break the parent's connection to its device; open the"
                " provider in a process started with multiprocessing's 'spawn' or 'forkserver' method, or"
                " fork before this process first opens a provider on it"
            )
        with self._mu:
            if self._forked:
                self._forked = False
                self.reinitialize()

    def reinitialize(self) -> None:
        """C_Finalize + C_Initialize (picks up a new SOFTHSM2_CONF); every session becomes invalid."""
        with self._mu:
            if _compat.is_os_locking_lib(self.lib):
                self.raw.finalize(None)
                self.call_lock = None if self._init() == 0 and self._want_os and not self._serial else self._mu
            else:
                self.lib.reinitialize()
            self._logins.clear()  # the finalize logged everyone out and closed every session
            self.generation += 1
            self.reload_before_write = False

    def reinitialize_after_leak(self, generation: int) -> None:
        """Re-initialise a module whose per-process leaks only that clears (``quirks``), once per
        ``generation``: threads that ran into the same leak meanwhile find it done."""
        with self._mu:
            if self.generation == generation:
                self.reinitialize()

    def token(self, label: str) -> Any:
        """The token with CKA_LABEL ``label``."""
        with self.serialized():
            try:
                return self.lib.get_token(token_label=label)
            except px.NoSuchToken as exc:
                raise ProviderUnavailable(
                    f"no PKCS#11 token labelled {label!r} in {self.path}; list them with"
                    f" `pkcs11-tool --module {self.path} --list-token-slots`"
                ) from exc
            except px.MultipleTokensReturned as exc:
                raise ProviderUnavailable(
                    f"several tokens are labelled {label!r} in {self.path}; give each token a unique label"
                ) from exc

    def acquire_login(self, token: Any, pin: str) -> int:
        """Log the user in to ``token`` once per process; returns the generation it belongs to."""
        slot = token.slot.slot_id
        with self._mu:
            login = self._logins.get(slot)
            if login is not None:
                if not hmac.compare_digest(login.pin.encode(), pin.encode()):
                    raise AuthenticationError(
                        f"token {token.label!r} is already logged in by this process with a different PIN;"
                        " use the same PIN for every provider of one token"
                    )
                login.refs += 1
                return self.generation
            with self.serialized():
                session = token.open(rw=True)  # no PIN: python-pkcs11 would leak the session on a wrong one
                try:
                    self._log_in(session, token, pin)
                except BaseException:
                    session.close()
                    raise
            self._logins[slot] = _Login(session, pin)
            return self.generation

    def _log_in(self, session: Any, token: Any, pin: str) -> bool:
        """C_Login as the user: True if that logged in, False if the token says it already was."""
        pin_b = pin.encode()
        rv = int(self.raw.login(session.handle, _CKU_USER, pin_b, len(pin_b)))
        if rv in (0, _CKR_USER_ALREADY_LOGGED_IN):
            return rv == 0
        if rv in _PIN_ERRORS:
            raise AuthenticationError(f"the user PIN for token {token.label!r} is {_PIN_ERRORS[rv]}")
        raise ProviderUnavailable(f"login to token {token.label!r} failed (CKR 0x{rv:x})")

    def logged_in(self, token: Any) -> bool:
        """False when someone logged the process out of ``token`` (C_Logout on any session)."""
        with self._mu, self.serialized():
            login = self._logins.get(token.slot.slot_id)
            return login is not None and self.raw.session_state(login.session.handle) in _USER_STATES

    def relogin(self, token: Any, *, ask_token: bool = False) -> bool:
        """Log in again after someone logged the process out (or closed the login session).

        True if a login happened. The session state says whether one is needed; with
        ``ask_token`` C_Login itself decides, for when the token's other answers contradict that
        state: NSS softokn can leave a session reporting "user functions" after a logout from
        elsewhere overlapped a login, while it hides every private object.
        """
        with self._mu, self.serialized():
            login = self._logins.get(token.slot.slot_id)
            if login is None:
                return False  # re-initialised meanwhile: the pool logs in again when it notices
            state = self.raw.session_state(login.session.handle)
            if state in _USER_STATES and not ask_token:
                return False  # another thread did it already
            if state is not None:
                if not self._log_in(login.session, token, login.pin):
                    return False
            else:
                session = token.open(rw=True)  # the login session itself was closed behind our back
                try:
                    self._log_in(session, token, login.pin)
                except BaseException:
                    session.close()
                    raise
                login.session = session
            self.relogins = next(self._relogins)
            self.bump_epoch()  # handles of private objects found before the logout are dead
            return True

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
                with self.serialized(), suppress(px.PKCS11Error):  # closing must not fail halfway
                    self.raw.logout(login.session.handle)
                    login.session.close()


def _after_fork_in_child() -> None:
    Library._registry_lock = threading.Lock()
    for lib in Library._registry.values():
        lib._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
