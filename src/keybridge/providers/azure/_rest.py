"""Private- and secret-key operations, sent straight to the service.

keybridge does not use ``CryptographyClient`` for these. For an ``oct``/``oct-HSM`` key fetched from
the service (which never returns ``k``), ``CryptographyClient`` builds a local symmetric key from
*random bytes* and "succeeds" at A*KW wraps and CBC encryption without sending anything (see
docs/azure.md). Posting the documented REST operation through the ``KeyClient``'s own pipeline
(same credential, challenge auth, retries and TLS settings) makes a local fallback impossible by
construction, and saves the extra GET the crypto client does before its first operation.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.keyvault.keys import KeyClient

from ... import _b64url, _crypto, audit
from ...errors import ProviderUnavailable
from ...keys import KeyInfo


def b64url(data: bytes) -> str:
    """Base64url without padding, as Key Vault sends and accepts it."""
    return _b64url.encode(data)


def _field(doc: dict[str, Any], name: str, what: str) -> bytes:
    value = doc.get(name)
    if not isinstance(value, str):
        raise ProviderUnavailable(f"{what}: the service response has no {name!r} field")
    try:
        return _b64url.decode(value)
    except ValueError as exc:
        raise ProviderUnavailable(f"{what}: the service returned a malformed {name!r} field") from exc


def correlate(request: Any) -> None:
    """``raw_request_hook``: send the audited operation's correlation id as the request's
    ``x-ms-client-request-id`` (otherwise azure-core's random one stays), so keybridge's audit
    event and the service's audit record of each request of that operation share one id."""
    cid = audit.correlation_id()
    if cid is not None:
        request.http_request.headers["x-ms-client-request-id"] = cid


def key_operation(client: KeyClient, info: KeyInfo, op: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``/keys/NAME/VERSION/OP`` and return the JSON answer (HTTP errors raise ``HttpResponseError``)."""
    ref = info.ref
    path = f"/keys/{quote(ref.name, safe='')}/{quote(ref.version or '', safe='')}/{op}"
    response = client.send_request(HttpRequest("POST", path, json=body))
    if response.status_code != 200:
        raise HttpResponseError(response=response)
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ProviderUnavailable(f"{op} with {ref}: the service answered with something other than a JSON object")
    return doc


def transform(client: KeyClient, info: KeyInfo, op: str, alg: str, data: bytes) -> bytes:
    """wrapkey / unwrapkey / decrypt (RSA) / sign: ``{"alg","value"}`` in, ``{"value"}`` out."""
    doc = key_operation(client, info, op, {"alg": alg, "value": b64url(data)})
    return _field(doc, "value", f"{op} with {info.ref}")


def gcm_encrypt(client: KeyClient, info: KeyInfo, alg: str, data: bytes, aad: bytes | None) -> bytes:
    """A*GCM encrypt: the service picks the IV (callers may not on real Managed HSM) and returns
    IV and tag apart; keybridge's wire form is IV || ciphertext || tag."""
    body: dict[str, Any] = {"alg": alg, "value": b64url(data)}
    if aad:
        body["aad"] = b64url(aad)
    doc = key_operation(client, info, "encrypt", body)
    what = f"encrypt with {info.ref}"
    iv, ct, tag = _field(doc, "iv", what), _field(doc, "value", what), _field(doc, "tag", what)
    if len(iv) != _crypto.GCM_IV or len(tag) != _crypto.GCM_TAG:
        raise ProviderUnavailable(f"{what}: the service returned a {len(iv)}-byte IV and {len(tag)}-byte tag")
    return iv + ct + tag


def gcm_decrypt(client: KeyClient, info: KeyInfo, alg: str, data: bytes, aad: bytes | None) -> bytes:
    """Inverse of :func:`gcm_encrypt`: split IV || ciphertext || tag and send the parts."""
    iv, ct, tag = data[: _crypto.GCM_IV], data[_crypto.GCM_IV : -_crypto.GCM_TAG], data[-_crypto.GCM_TAG :]
    body: dict[str, Any] = {"alg": alg, "value": b64url(ct), "iv": b64url(iv), "tag": b64url(tag)}
    if aad:
        body["aad"] = b64url(aad)
    doc = key_operation(client, info, "decrypt", body)
    return _field(doc, "value", f"decrypt with {info.ref}")
