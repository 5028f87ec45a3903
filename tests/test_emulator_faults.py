"""Injected faults: 429/503 with Retry-After, dropped connections, and SDK retries getting through."""

from __future__ import annotations

import http.client
import logging
import re
import ssl
import uuid

import pytest

from keybridge.emulator import Faults, ManagedHsmEmulator
from keybridge.errors import InvalidArgument

_contexts: dict[str, ssl.SSLContext] = {}


def _get(emulator: ManagedHsmEmulator, path: str = "/deletedkeys") -> tuple[int, dict[str, str], bytes]:
    ctx = _contexts.setdefault(emulator.ca_file, ssl.create_default_context(cafile=emulator.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", emulator.port, context=ctx, timeout=10)
    try:
        token = emulator.credential().get_token().token
        conn.request("GET", f"{path}?api-version=7.6", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_faults_parse_and_validate() -> None:
    f = Faults.parse("error_rate=0.3, statuses=429/503, retry_after=0, latency=0.01, drop_rate=0.1, seed=4")
    assert f == Faults(error_rate=0.3, statuses=(429, 503), retry_after=0, latency=0.01, drop_rate=0.1, seed=4)
    for bad in ("error_rate=2", "statuses=404", "latency=60", "bogus=1", "error_rate", "seed=x"):
        with pytest.raises(InvalidArgument):
            Faults.parse(bad)


def test_error_rate_answers_throttling_with_retry_after_and_bounded_streaks() -> None:
    faults = Faults(error_rate=0.5, statuses=(429, 503), retry_after=0, seed=3, max_consecutive=2)
    with ManagedHsmEmulator(faults=faults) as hsm:
        answers = [_get(hsm) for _ in range(60)]
    statuses = [s for s, _, _ in answers]
    faulted = [(s, h, b) for s, h, b in answers if s != 200]
    assert {s for s, _, _ in faulted} == {429, 503}
    assert 10 <= len(faulted) <= 50
    assert all(h["retry-after"] == "0" and b"error" in b for _, h, b in faulted)
    assert "!!!" not in "".join("!" if s != 200 else "." for s in statuses)  # never more than 2 in a row


def test_dropped_connections_then_service_resumes() -> None:
    with ManagedHsmEmulator(faults=Faults(drop_rate=1.0, max_consecutive=1)) as hsm:
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
            _get(hsm)
        assert _get(hsm)[0] == 200
        pytest.importorskip("azure.keyvault.keys")
        from azure.core.exceptions import ResourceNotFoundError
        from azure.keyvault.keys import KeyClient

        client = KeyClient(hsm.vault_url, **hsm.provider_options())
        with pytest.raises(ResourceNotFoundError):  # every other connection dropped, GETs retried through
            client.get_key("missing")


def test_sdk_sequence_succeeds_with_30_percent_throttling(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("azure.keyvault.keys")
    from azure.keyvault.keys import KeyClient
    from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401 - ensures cryptography present

    caplog.set_level(logging.DEBUG, logger="keybridge.emulator")
    faults = Faults(error_rate=0.3, statuses=(429, 503), retry_after=0, seed=11)
    with ManagedHsmEmulator(faults=faults) as hsm:
        # retry_backoff_factor only shortens the sleeps between retries; the retry count is the SDK default
        opts = {**hsm.provider_options(), "retry_backoff_factor": 0.01}
        client = KeyClient(hsm.vault_url, **opts)
        name = "f-" + uuid.uuid4().hex[:8]
        key = client.create_oct_key(name, size=256, hardware_protected=True)
        assert client.get_key(name).id == key.id
        client.update_key_properties(name, tags={"x": "y"})
        rotated = client.rotate_key(name)
        assert [p.version for p in client.list_properties_of_key_versions(name)][-1] == rotated.properties.version
        crypto = CryptographyClient(rotated.id, **opts)
        for i in range(5):
            sealed = crypto.encrypt(EncryptionAlgorithm.a256_gcm, b"msg %d" % i)
            opened = crypto.decrypt(
                EncryptionAlgorithm.a256_gcm, sealed.ciphertext, iv=sealed.iv, authentication_tag=sealed.tag
            )
            assert opened.plaintext == b"msg %d" % i
        assert len(client.get_random_bytes(16)) == 16
        client.begin_delete_key(name).wait()
        client.begin_recover_deleted_key(name).wait()
        assert client.get_key(name).properties.tags == {"x": "y"}
    answered = [int(m.group(1)) for r in caplog.records if (m := re.search(r'" (\d{3}) ', r.getMessage()))]
    assert sum(s in (429, 503) for s in answered) >= 5  # faults really were injected
