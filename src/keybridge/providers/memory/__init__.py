"""The in-memory provider: software keys, optionally persisted to an encrypted keystore file.

It needs only ``cryptography``. It is what tests, the emulator and the CLI (when no HSM is named)
use, and it behaves like the other backends: versions, allowed operations, enable/disable and
validity windows are all enforced.
"""

from __future__ import annotations

from ._provider import InMemoryProvider, from_uri

__all__ = ["InMemoryProvider", "from_uri"]
