"""One exception tree for everything keybridge raises.

Every error is a :class:`KeybridgeError`. Backends translate their own errors (PKCS#11 return
codes, Azure HTTP errors) into these classes and keep the original as ``__cause__``. No message
ever contains a PIN, a token, a passphrase or key bytes: messages name keys by reference only.
"""

from __future__ import annotations

from ._meta import pip_install

__all__ = [
    "AuthenticationError",
    "IntegrityError",
    "InvalidArgument",
    "InvalidKeySpec",
    "InvalidKeyUri",
    "InvalidMessage",
    "InvalidPackage",
    "KeyDisabled",
    "KeyExists",
    "KeyExpired",
    "KeyNotFound",
    "KeybridgeError",
    "MissingDependency",
    "OutputExists",
    "OperationNotPermitted",
    "ProviderUnavailable",
    "UnsupportedAlgorithm",
    "UnsupportedOperation",
]


class KeybridgeError(Exception):
    """Base class of every error keybridge raises on purpose."""


class InvalidArgument(KeybridgeError, ValueError):
    """An argument has the wrong form, size or value; the message says what is expected."""


class InvalidKeyUri(InvalidArgument):
    """A key URI could not be parsed; the message quotes it and shows the expected form."""


class InvalidKeySpec(InvalidArgument):
    """A key type, size or curve that keybridge (or the provider) does not support."""


class InvalidPackage(InvalidArgument):
    """A BYOK package (.byok JSON) is malformed or does not fit the KEK or key type."""


class InvalidMessage(InvalidArgument):
    """An envelope message is malformed (bad header, unknown version or suite, truncated)."""


class OutputExists(KeybridgeError, FileExistsError):
    """A file output would replace an existing file and replacing was not asked for; nothing was
    written. ``path`` is the output; the message says how to allow replacing (``--force`` on the
    command line, ``overwrite=True`` in Python)."""

    def __init__(self, path: str, hint: str = "pass overwrite=True to replace it") -> None:
        super().__init__(f"{path} already exists; nothing was written ({hint})")
        self.path = path
        self.hint = hint

    def __reduce__(self) -> tuple[type[OutputExists], tuple[str, str]]:
        return (OutputExists, (self.path, self.hint))


class KeyNotFound(KeybridgeError, LookupError):
    """No key (or no such version) exists under the given reference."""


class KeyExists(KeybridgeError):
    """A key with this name already exists where a new one was to be created."""


class OperationNotPermitted(KeybridgeError):
    """The key's allowed operations, state or export policy forbid what was asked."""


class KeyDisabled(OperationNotPermitted):
    """The key (version) is disabled."""


class KeyExpired(OperationNotPermitted):
    """The key is outside its not-before / expires window."""


class UnsupportedAlgorithm(KeybridgeError):
    """The provider, or the key's type, does not support this algorithm."""


class UnsupportedOperation(UnsupportedAlgorithm):
    """The provider cannot do this operation at all (a backend without BYOK import, wrapped
    export, clear export, ...), whatever the key or algorithm. ``provider`` is the provider's
    scheme and ``operation`` the public method name (one of ``keybridge.OPERATIONS``); a
    provider's ``capabilities`` lists what it can do, so callers can check before trying.

    A subclass of :class:`UnsupportedAlgorithm` so that code written before it existed, which
    caught that for a missing backend feature, keeps working."""

    def __init__(self, provider: str, operation: str, detail: str | None = None) -> None:
        super().__init__(f"the {provider} provider does not support {operation}" + (f" ({detail})" if detail else ""))
        self.provider = provider
        self.operation = operation
        self.detail = detail

    def __reduce__(self) -> tuple[type[UnsupportedOperation], tuple[str, str, str | None]]:
        return (UnsupportedOperation, (self.provider, self.operation, self.detail))


class AuthenticationError(KeybridgeError):
    """Credentials (PIN, passphrase, token) were rejected or missing."""


class ProviderUnavailable(KeybridgeError):
    """The backend cannot be reached or is not ready (token absent, service down, retries exhausted)."""


class IntegrityError(KeybridgeError):
    """Authentication of ciphertext, a wrapped key, a signature-protected message or a file failed."""


class MissingDependency(KeybridgeError, ImportError):
    """An optional extra is not installed; the message names the ``pip install`` command."""

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(f"{feature} needs an optional dependency that is not installed: run  {pip_install(extra)}")
        self.extra = extra
