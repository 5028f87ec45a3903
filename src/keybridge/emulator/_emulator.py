"""ManagedHsmEmulator: start, stop and describe one emulator instance."""

from __future__ import annotations

import contextlib
import datetime
import json
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from typing_extensions import Self

from .._files import atomic_write
from ..errors import InvalidArgument, OutputExists, ProviderUnavailable
from ..provider import KeyProvider, open_provider
from ._admin import Admin
from ._audit import AuditLog, AuditRecord
from ._auth import EmulatorCredential
from ._faults import FaultInjector, Faults
from ._rbac import Rbac
from ._records import RETENTION_DAYS
from ._release import AttestationIssuer, rsa_jwk
from ._routes import Router
from ._server import MAX_CONNECTIONS, REQUEST_TIMEOUT, EmulatorServer
from ._tls import make_server_context
from ._vault import Vault

__all__ = ["ManagedHsmEmulator"]

_KEYSTORE = "keys.kbks"
_STATE = "vault.json"
_PASSPHRASE = "passphrase"
_SETTINGS = "settings.json"


class ManagedHsmEmulator:
    """A local Key Vault / Managed HSM keys endpoint over HTTPS, backed by an in-memory provider.

    ``with ManagedHsmEmulator() as hsm:`` starts it on ``127.0.0.1`` (``port=0`` picks a free
    port) with a fresh CA; point the Azure SDK at ``hsm.vault_url`` with ``hsm.credential()``,
    ``connection_verify=hsm.ca_file`` and ``verify_challenge_resource=False`` (all of which
    :meth:`provider_options` returns). ``faults`` (a :class:`Faults` or a spec string for
    :meth:`Faults.parse`) injects throttling, latency and dropped connections. ``state_dir`` keeps
    keys and vault state across runs (the key store is encrypted under a random passphrase kept in
    the same directory: it is test data, not a place for real keys). ``require_token=False``
    accepts any bearer token, for clients that cannot use :meth:`credential`. Requests are
    checked against Managed HSM local RBAC (``hsm.rbac``): every key route needs its data action
    at ``/``, ``/keys`` or ``/keys/<name>``; ``rbac="strict"`` leaves the first principal without
    Crypto User, so key use must be granted explicitly. Slow or many clients are bounded:
    each request must arrive (TLS handshake, headers and body) within ``request_timeout``
    seconds, and at most ``max_connections`` connections are open at once (beyond that the one
    waiting longest for its request is closed; see "Fidelity limits" in docs/emulator.md).

    Time is the emulator's own: :meth:`advance` moves it forward, and what has come due then
    happens as in the service: rotation policies make new versions, and soft-deleted keys are
    purged ``retention_days`` (Managed HSM allows 7 to 90; default 90) after deletion.

    ``audit_log`` (a file path) and/or ``audit`` (a callable taking a dict) receive one Managed
    HSM ``AuditEvent`` record per answered request, 401 challenges and denials included; see
    :mod:`keybridge.emulator._audit` and docs/emulator.md for the fields. ``KeyVaultSettingsClient``
    and ``KeyVaultBackupClient`` work too: full backups go to folders under :attr:`backup_dir`.
    """

    def __init__(
        self,
        port: int = 0,
        faults: Faults | str | None = None,
        state_dir: str | Path | None = None,
        *,
        require_token: bool = True,
        rbac: str = "default",
        retention_days: int = RETENTION_DAYS,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        audit_log: str | Path | None = None,
        audit: Callable[[AuditRecord], None] | None = None,
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidArgument(f"port must be 0 (any free port) or 1-65535, got {port!r}")
        if faults is not None and not isinstance(faults, (Faults, str)):
            raise InvalidArgument(f"faults must be a Faults value or a spec string, got {type(faults).__name__}")
        if rbac not in ("default", "strict"):
            raise InvalidArgument(f"rbac must be 'default' or 'strict', got {rbac!r}")
        if not isinstance(retention_days, int) or isinstance(retention_days, bool) or not 7 <= retention_days <= 90:
            raise InvalidArgument(
                f"retention_days must be an integer from 7 to 90 (as in Managed HSM), got {retention_days!r}"
            )
        if isinstance(request_timeout, bool) or not isinstance(request_timeout, (int, float)):
            raise InvalidArgument(f"request_timeout must be a number of seconds, got {type(request_timeout).__name__}")
        if not 0 < request_timeout <= 3600:
            raise InvalidArgument(f"request_timeout must be above 0 and at most 3600 seconds, got {request_timeout!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise InvalidArgument(f"max_connections must be a whole number of at least 1, got {max_connections!r}")
        self._request_timeout = float(request_timeout)
        self._max_connections = max_connections
        self.faults = Faults.parse(faults) if isinstance(faults, str) else faults
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._port = port
        self._credential = EmulatorCredential()
        self._issuer = AttestationIssuer()
        self._require_token = require_token
        self.rbac = Rbac(self._credential.get_token().token, strict=rbac == "strict")
        self._audit = self._audit_log(audit_log, audit)
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._tmp: Path | None = None
        self._ca_file: Path | None = None
        self.provider: KeyProvider = self._open_provider()
        self._vault = Vault(self.provider, self._save_state if self.state_dir else None, retention_days=retention_days)
        if self.state_dir is not None and (self.state_dir / _STATE).exists():
            self._load_state(self.state_dir / _STATE)
        settings = self.state_dir / _SETTINGS if self.state_dir is not None else None
        self._admin = Admin(self._vault, lambda: Path(self.backup_dir), settings)

    def __repr__(self) -> str:
        where = self.vault_url if self._server else "stopped"
        return f"<ManagedHsmEmulator {where}>"

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind, generate the certificate and serve in a background thread. Idempotent."""
        if self._server is not None:
            return self
        self._tmp = Path(tempfile.mkdtemp(prefix="keybridge-emulator-"))
        ctx, self._ca_file = make_server_context(self._tmp)
        injector = FaultInjector(self.faults) if self.faults else None
        token = self._credential.get_token().token if self._require_token else None
        try:
            self._server = EmulatorServer(
                ctx,
                self._port,
                Router(self._vault, self._issuer, self._admin),
                token,
                injector,
                request_timeout=self._request_timeout,
                max_connections=self._max_connections,
            )
            self._server.rbac = self.rbac
            self._server.audit = self._audit
        except OSError as exc:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise ProviderUnavailable(f"cannot listen on 127.0.0.1:{self._port}: {exc.strerror}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="keybridge-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and delete this run's certificate directory. Idempotent.

        New connections are refused, and open ones, keep-alive connections of clients that
        already talked to it included, are closed, so no client gets another answer. ``ca_file``
        is deleted too, so a client still pointing at it fails before it even connects. Keys and
        state survive in ``provider`` (and in ``state_dir``, if given).
        """
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # the accept loop ends: no new connections
            server.server_close()
            server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- what clients need ---------------------------------------------------------------------

    def _running(self) -> EmulatorServer:
        if self._server is None:
            raise ProviderUnavailable("the emulator is not running; use it as a context manager or call start()")
        return self._server

    @property
    def vault_url(self) -> str:
        """``https://127.0.0.1:PORT``."""
        return self._running().vault_url

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return int(self._running().server_address[1])

    @property
    def ca_file(self) -> str:
        """Path of the PEM CA certificate to trust (``connection_verify=``)."""
        self._running()
        return str(self._ca_file)

    @property
    def backup_dir(self) -> str:
        """Where full backups land: ``<state_dir>/backups``, else this run's temporary directory
        (deleted by :meth:`stop`). A container URL ``https://HOST/CONTAINER`` is the folder
        ``HOST/CONTAINER`` inside it."""
        if self.state_dir is not None:
            return str(self.state_dir / "backups")
        self._running()
        assert self._tmp is not None  # made by start(), with the server
        return str(self._tmp / "backups")

    def credential(self, principal: str | None = None) -> EmulatorCredential:
        """A TokenCredential whose token this emulator accepts: as the first principal (which
        holds Administrator and Crypto Officer, and Crypto User unless ``rbac="strict"``), or as
        ``principal`` (an object id, which may do nothing until a role is assigned to it)."""
        if principal is None or principal == self.rbac.default_principal:
            return self._credential
        return EmulatorCredential(self.rbac.token_for(principal))

    def provider_options(self) -> dict[str, Any]:
        """Keyword arguments for ``AzureKeyVaultProvider``/``open_provider``/``KeyClient``."""
        return {"credential": self._credential, "connection_verify": self.ca_file, "verify_challenge_resource": False}

    # ---- secure key release -------------------------------------------------------------------

    @property
    def attestation_authority(self) -> str:
        """The attestation authority this emulator trusts, to name in release policies
        (``{"anyOf": [{"authority": hsm.attestation_authority, "allOf": [...]}]}``)."""
        return self._issuer.authority

    def attestation_token(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        runtime_key: rsa.RSAPublicKey | None = None,
        lifetime: float = 3600,
    ) -> str:
        """An attestation token (RS256 JWT) from :attr:`attestation_authority`, as Microsoft Azure
        Attestation would issue one to a confidential workload: ``claims`` plus ``iss``/``iat``/
        ``nbf``/``exp`` in emulator time (so :meth:`advance` expires it). ``runtime_key`` (the
        workload's RSA public key, which a release wraps the key for) goes into
        ``x-ms-runtime.keys``. Pass the token to ``KeyClient.release_key``."""
        if claims is not None and not isinstance(claims, Mapping):
            raise InvalidArgument(f"claims must be a mapping of claim names to values, got {type(claims).__name__}")
        if runtime_key is not None and not isinstance(runtime_key, rsa.RSAPublicKey):
            raise InvalidArgument("runtime_key must be an RSA public key (cryptography's RSAPublicKey)")
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not 1 <= lifetime <= 86400 * 365:
            raise InvalidArgument(f"lifetime must be from 1 second to a year, got {lifetime!r}")
        body = dict(claims or {})
        if runtime_key is not None:
            runtime = body.get("x-ms-runtime") or {}
            if not isinstance(runtime, Mapping):
                raise InvalidArgument("claims['x-ms-runtime'] must be an object when runtime_key is given")
            body["x-ms-runtime"] = {**runtime, "keys": [{"kid": "runtime-key", **rsa_jwk(runtime_key)}]}
        try:
            return self._issuer.token(body, self._vault.now(), int(lifetime))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"claims must be JSON values ({exc})") from None

    def attestation_jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set of :attr:`attestation_authority`, to check its tokens with."""
        return self._issuer.jwks()

    # ---- time ----------------------------------------------------------------------------------

    def now(self) -> datetime.datetime:
        """The emulator's current time (UTC): the wall clock plus every :meth:`advance`."""
        return datetime.datetime.fromtimestamp(self._vault.now(), datetime.timezone.utc)

    def advance(self, days: float = 0, *, hours: float = 0, seconds: float = 0) -> datetime.datetime:
        """Move the emulator's clock forward and run what came due: rotation policies fire (one new
        version per period, dated when it was due, with ``exp`` from the policy's ``expiryTime``) and
        soft-deleted keys past their retention are purged. Timestamps the emulator reports (created,
        updated, deletedDate, nbf/exp checks) all use this clock. Answers the new time."""
        try:
            total = float(days) * 86400 + float(hours) * 3600 + float(seconds)
        except (TypeError, ValueError):
            raise InvalidArgument("advance() takes numbers of days, hours and seconds") from None
        if not 0 <= total < 1e11:
            raise InvalidArgument(f"advance() moves time forward only, by less than 3000 years; got {total} seconds")
        self._vault.advance(int(total))
        return self.now()

    # ---- audit ---------------------------------------------------------------------------------

    def _audit_log(self, path: str | Path | None, callback: Callable[[AuditRecord], None] | None) -> AuditLog | None:
        if callback is not None and not callable(callback):
            raise InvalidArgument(f"audit must be a callable taking one record (a dict), got {type(callback).__name__}")
        if path is None and callback is None:
            return None
        if path is not None and not isinstance(path, (str, Path)):
            raise InvalidArgument(f"audit_log must be a file path, got {type(path).__name__}")
        try:
            audit = AuditLog(path, callback, self.rbac)
        except OSError as exc:
            raise InvalidArgument(f"cannot open the audit log {path}: {exc.strerror}; pass a writable path") from None
        audit.require_token = self._require_token
        return audit

    # ---- persistence ---------------------------------------------------------------------------

    def _open_provider(self) -> KeyProvider:
        # Key Vault semantics: creating under an existing name adds a version (add_versions).
        if self.state_dir is None:
            return open_provider("memory:", add_versions=True)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        secret = self.state_dir / _PASSPHRASE
        if not secret.exists():
            # Exclusive: of two emulators starting on one state_dir, the first one's secret stays.
            with contextlib.suppress(OutputExists):
                atomic_write(secret, secrets.token_urlsafe(32).encode("ascii"), mode=0o600)
        return open_provider(
            "memory:",
            keystore=self.state_dir / _KEYSTORE,
            passphrase=secret.read_text("ascii").strip(),
            create=True,
            add_versions=True,
        )

    def _load_state(self, path: Path) -> None:
        try:
            self._vault.load(json.loads(path.read_text("utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidArgument(
                f"{path} is not emulator state ({type(exc).__name__}); use another state_dir or delete the"
                " directory to start empty"
            ) from None

    def _save_state(self) -> None:
        assert self.state_dir is not None
        atomic_write(self.state_dir / _STATE, json.dumps(self._vault.dump()).encode("utf-8"), overwrite=True)
