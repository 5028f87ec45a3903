"""The provider conformance suite: one set of tests every :class:`~keybridge.provider.KeyProvider`
must pass, whoever wrote it. See docs/testing.md for a walk-through."""

from __future__ import annotations

from ._conformance_contract import ContractChecks
from ._conformance_crypto import CryptoChecks
from ._conformance_lifecycle import LifecycleChecks
from ._conformance_policy import PolicyChecks

__all__ = ["ProviderConformance"]


class ProviderConformance(LifecycleChecks, CryptoChecks, PolicyChecks, ContractChecks):
    """Base class of a pytest test class that proves a provider follows the keybridge protocol.

    Subclass it (the subclass name must start with ``Test``) and give it a **class-scoped**
    ``provider`` fixture that yields the provider under test::

        import pytest
        from keybridge.testing import ProviderConformance

        class TestMyProvider(ProviderConformance):
            supports_versions = False          # narrow the claims where the backend must

            @pytest.fixture(scope="class")
            @classmethod
            def provider(cls):
                with MyProvider(...) as p:
                    yield p

    The suite writes only through the :class:`~keybridge.provider.KeyProvider` protocol; it creates
    keys under unique names (``kbconf-<hex>``) and deletes them afterwards, so a provider (or a vault)
    may be shared with other data. Results are checked against ``cryptography`` directly: signatures
    are verified with ``KeyInfo.public_key``, RSA ciphertexts are made outside and opened inside,
    imported AES keys must give byte-identical RFC 3394/5649 wraps and GCM output that ``AESGCM``
    opens, and wrapped exports are unwrapped by hand.

    What is exercised comes from the provider and the class:

    * every algorithm in ``provider.algorithms``, on every key spec of ``specs`` it fits (A128KW only
      on AES-128, ES384 only on P-384, ...); known algorithms the provider does not claim are skipped
      with the reason and must raise ``UnsupportedAlgorithm`` when used;
    * a spec the provider refuses to create (``InvalidKeySpec``/``UnsupportedAlgorithm``) skips its
      tests, with the reason.

    Capability flags (class attributes; a test whose capability is switched off is skipped and says
    which flag did it):

    ``rsa_bits = 2048``
        RSA size in the default specs.
    ``specs = None``
        The :class:`~keybridge.keys.KeySpec` tuple to exercise; ``None`` means RSA-``rsa_bits``,
        EC P-256/P-384/P-521 and AES-128/192/256.
    ``supports_import = True``
        ``import_key`` of RSA/EC private keys and AES bytes (enables the byte-exact checks).
    ``supports_export = True``
        ``export_key`` hands out keys created ``exportable=True`` in clear.
    ``supports_export_wrapped = True``
        ``export_wrapped`` (CKM_RSA_AES_KEY_WRAP under an RSA KEK, for Azure BYOK) of exportable keys.
        Non-exportable keys must refuse both exports with ``OperationNotPermitted`` whatever the flags
        (``UnsupportedOperation`` for an export the provider's ``capabilities`` leave out).
    ``supports_versions = True``
        ``rotate_key`` makes a new version; old versions stay usable by versioned reference.
    ``supports_disable = True``
        ``set_enabled``; a disabled key (version) raises ``KeyDisabled`` for every operation.
    ``supports_expiry = True``
        ``not_before``/``expires`` are stored and enforced with ``KeyExpired``.
    ``supports_import_byok = True``
        ``import_byok`` of a .byok package (built by the suite with ``cryptography``) under an RSA
        KEK with ``ops={KeyOp.IMPORT}``; off, ``import_byok`` must raise ``UnsupportedAlgorithm``.
    ``threads = 8``
        Threads of the concurrency test (sign, wrap, decrypt, unwrap at once, every result checked).

    Also always checked: ``IntegrityError`` keeps the backend's error as ``__cause__``; no spelling
    of an imported key's secret, nor any of ``known_secrets``, is in a repr, message or audit event;
    after ``close()`` the ``spare_provider`` raises ``ProviderUnavailable``. A key type with no
    claimed algorithm skips, with the reason, the tests that need one.

    Always checked: metadata and ``get_key``/``list_keys``/``list_versions``; a name in use refused
    by ``create_key``/``import_key`` (``KeyExists``); a name holding a PIN attribute refused without
    echo (``InvalidArgument``); allowed-ops
    restrictions (``OperationNotPermitted``); unknown names and versions (``KeyNotFound``); algorithms
    for another key type or operation, and unknown names (``UnsupportedAlgorithm``); wrong-length
    digests and keys (``InvalidArgument``); aad with RSA (``UnsupportedAlgorithm``); tampered
    ciphertexts and wrapped keys (``IntegrityError``; RSA1_5 may instead return something else than
    the plaintext); tampered signatures and other digests (``verify`` returns False, never raises);
    deletion; every reference form (name, :class:`~keybridge.keys.KeyRef`, URI, handle); and exactly
    one audit event per operation, named ``create_key``, ``import_key``, ``get_key``, ``list_keys``,
    ``list_versions``, ``rotate_key``, ``enable_key``/``disable_key``, ``delete_key``, ``sign``,
    ``verify``, ``encrypt``, ``decrypt``, ``wrap_key``, ``unwrap_key``, ``export_key`` or
    ``export_wrapped``, whose outcome is ``"ok"`` or the error class name.

    Fixtures the suite adds (usable in extra tests of the subclass): ``shared_keys`` (class-scoped
    :class:`Keys` cache: one key per spec, generated once because RSA keygen is slow on HSMs),
    ``new_keys`` (keys one test owns and may change), ``audit_events`` and ``byok_kek``. Fixtures the
    subclass may override: ``spare_provider`` (a new provider like ``provider``, closed by the close
    test; skipped without it) and ``known_secrets`` (the PIN, passphrase or token in use).
    """
