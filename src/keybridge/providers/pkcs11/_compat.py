"""Every use of python-pkcs11 *internals*, in one place, for the supported release range only.

keybridge needs three things python-pkcs11 0.10 has no public API for:

* initialising the module with ``CKF_OS_LOCKING_OK`` (it always calls ``C_Initialize(NULL)``):
  done by subclassing the Cython ``_pkcs11.lib`` and overriding its ``initialize``;
* sharing that instance with other code in the process that calls ``pkcs11.lib(path)``: done
  through its private per-path cache ``pkcs11._loaded``;
* passing mechanisms it has no ``Mechanism`` member for (CKM_RSA_AES_KEY_WRAP): its calls accept
  only members, so one is forged.

These may change in any release, so they are used only with a version in ``SUPPORTED`` (the
``pkcs11`` extra's range in pyproject.toml); anything else raises :class:`ProviderUnavailable`
naming the installed version and the range. :func:`reinitialize` is the public entry point for
code outside the backend (the SoftHSM test-token bring-up).
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pkcs11
from pkcs11 import Mechanism

from ...errors import ProviderUnavailable

__all__ = [
    "SUPPORTED",
    "check_version",
    "forge_mechanism",
    "is_os_locking_lib",
    "loaded_lib",
    "os_locking_lib",
    "register_reinitializer",
    "reinitialize",
    "require_supported",
]

SUPPORTED = ((0, 10), (0, 11))  # >=0.10,<0.11, as the pkcs11 extra in pyproject.toml
_DIST = "python-pkcs11"
_checked: list[bool] = []  # one successful check per process is enough

_initializers: dict[str, Callable[[], None]] = {}  # module path -> our C_Initialize for it
_reinitializers: dict[str, Callable[[], None]] = {}  # realpath -> keybridge's Library.reinitialize
_hooked_class: list[type] = []


def _release(text: str) -> tuple[int, ...]:
    # "0.10.1" -> (0, 10, 1); "0.11.0rc1" -> (0, 11, 0): the leading digits of each part
    parts = []
    for piece in text.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def check_version(found: str) -> None:
    """Raise ProviderUnavailable unless python-pkcs11 ``found`` is in the supported range."""
    low, high = SUPPORTED
    if not low <= _release(found)[:2] < high:
        want = f">={low[0]}.{low[1]},<{high[0]}.{high[1]}"
        raise ProviderUnavailable(
            f"python-pkcs11 {found} is installed, but keybridge's PKCS#11 provider supports python-pkcs11"
            f" {want} only (it relies on internals that change between releases); run"
            f"  pip install 'python-pkcs11{want}'"
        )


def require_supported() -> None:
    """Check the installed python-pkcs11 once per process (see :func:`check_version`)."""
    if _checked:
        return
    try:
        found = metadata.version(_DIST)
    except metadata.PackageNotFoundError:
        found = str(getattr(pkcs11, "__version__", "of unknown version"))
    check_version(found)
    _checked.append(True)


def _hooked() -> type:
    # Built on first use, so an unsupported release fails in require_supported() with a clear
    # message instead of an AttributeError at import.
    if not _hooked_class:
        from pkcs11 import _pkcs11

        class OsLockingLib(_pkcs11.lib):
            """python-pkcs11's lib whose ``initialize`` is keybridge's C_Initialize for the path."""

            def initialize(self) -> None:
                _initializers[self.so]()

        _hooked_class.append(OsLockingLib)
    return _hooked_class[0]


def os_locking_lib(path: str, initialize: Callable[[], None], *aliases: str) -> Any:
    """A python-pkcs11 lib for ``path`` whose C_Initialize is ``initialize``.

    Later ``pkcs11.lib(path)`` calls (for ``path`` and ``aliases``) return this same instance, and
    it is never deallocated: python-pkcs11's dealloc cannot run on a Python subclass during
    interpreter shutdown, and the module must stay loaded while any handle lives.
    """
    require_supported()
    _initializers[path] = initialize
    lib = _hooked()(path)
    for name in (path, *aliases):
        pkcs11._loaded.setdefault(name, lib)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(lib))
    return lib


def is_os_locking_lib(lib: Any) -> bool:
    """True for a lib made by :func:`os_locking_lib` (its C_Finalize is ours to call)."""
    return bool(_hooked_class) and isinstance(lib, _hooked_class[0])


def loaded_lib(*paths: str) -> Any | None:
    """The python-pkcs11 lib someone in this process already loaded for one of ``paths``."""
    require_supported()
    for path in paths:
        lib = pkcs11._loaded.get(path)
        if lib is not None:
            return lib
    return None


def forge_mechanism(value: int, name: str) -> Mechanism:
    """The ``Mechanism`` member for ``value``, made if python-pkcs11 lacks one (0.10: 0x1054)."""
    try:
        return Mechanism(value)
    except ValueError:
        member = int.__new__(Mechanism, value)
        member._name_, member._value_ = name, value
        return member


def register_reinitializer(real_path: str, fn: Callable[[], None]) -> None:
    """How :func:`reinitialize` re-initialises a module keybridge loaded (its Library does it)."""
    _reinitializers[real_path] = fn


def reinitialize(module_path: str) -> bool:
    """C_Finalize + C_Initialize the module at ``module_path`` if this process loaded it.

    For a module whose configuration changed after loading (SoftHSM reads ``SOFTHSM2_CONF`` only in
    C_Initialize). Every session and object handle of that module becomes invalid; keybridge's
    providers notice and log in again. Returns False when the module was not loaded (its first
    C_Initialize will read the new configuration anyway).
    """
    real = os.path.realpath(module_path)
    fn = _reinitializers.get(real)
    if fn is not None:
        fn()
        return True
    lib = loaded_lib(module_path, real)
    if lib is None:
        return False
    lib.reinitialize()
    return True
