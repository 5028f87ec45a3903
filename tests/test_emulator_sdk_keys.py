"""The azure-keyvault-keys sample flows, run with the real KeyClient over HTTPS against the emulator."""

from __future__ import annotations

import time
import uuid

import pytest

pytest.importorskip("azure.keyvault.keys")

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.keys import (
    KeyClient,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
)
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from keybridge.emulator import ManagedHsmEmulator


def _name() -> str:
    return "k-" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def client(azure_emulator: ManagedHsmEmulator) -> KeyClient:
    return KeyClient(azure_emulator.vault_url, **azure_emulator.provider_options())


def _rsa_public(key) -> rsa.RSAPublicKey:  # type: ignore[no-untyped-def]
    return rsa.RSAPublicNumbers(int.from_bytes(key.key.e, "big"), int.from_bytes(key.key.n, "big")).public_key()


def _sign_remote(emulator: ManagedHsmEmulator, key_id: str, data: bytes) -> bytes:
    crypto = CryptographyClient(key_id, **emulator.provider_options())
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return crypto.sign(SignatureAlgorithm.rs256, digest.finalize()).signature


def test_created_keys_report_type_size_ops_and_the_providers_public_key(
    client: KeyClient, azure_emulator: ManagedHsmEmulator
) -> None:
    rsa_key = client.create_rsa_key(_name(), size=2048, hardware_protected=True)
    assert rsa_key.key_type == "RSA-HSM"
    assert sorted(rsa_key.key_operations) == ["decrypt", "encrypt", "sign", "unwrapKey", "verify", "wrapKey"]
    assert len(rsa_key.key.n) == 256
    held = azure_emulator.provider.get_key(rsa_key.name).public_key
    assert isinstance(held, rsa.RSAPublicKey)
    assert held.public_numbers() == _rsa_public(rsa_key).public_numbers()
    assert rsa_key.id == f"{azure_emulator.vault_url}/keys/{rsa_key.name}/{rsa_key.properties.version}"

    ec_key = client.create_ec_key(_name(), curve="P-384", hardware_protected=True)
    assert (ec_key.key_type, ec_key.key.crv, sorted(ec_key.key_operations)) == ("EC-HSM", "P-384", ["sign", "verify"])
    ec_held = azure_emulator.provider.get_key(ec_key.name).public_key
    assert isinstance(ec_held, ec.EllipticCurvePublicKey)
    assert ec_held.public_numbers().x == int.from_bytes(ec_key.key.x, "big")
    assert len(ec_key.key.x) == len(ec_key.key.y) == 48

    oct_key = client.create_oct_key(_name(), size=256, hardware_protected=True)
    assert oct_key.key_type == "oct-HSM"
    assert oct_key.key.k is None  # secret material never leaves
    assert sorted(oct_key.key_operations) == ["decrypt", "encrypt", "unwrapKey", "wrapKey"]


def test_create_with_an_unsupported_size_is_a_bad_parameter(client: KeyClient) -> None:
    with pytest.raises(HttpResponseError) as err:
        client.create_rsa_key(_name(), size=1024)
    assert err.value.status_code == 400
    assert err.value.error is not None
    assert err.value.error.code == "BadParameter"


def test_get_latest_and_versioned_and_missing(client: KeyClient) -> None:
    name = _name()
    first = client.create_oct_key(name, size=128, hardware_protected=True)
    second = client.create_oct_key(name, size=128, hardware_protected=True)  # same name: a new version
    assert first.properties.version != second.properties.version
    assert client.get_key(name).id == second.id
    assert client.get_key(name, first.properties.version).id == first.id
    with pytest.raises(ResourceNotFoundError):
        client.get_key(_name())
    with pytest.raises(ResourceNotFoundError):
        client.get_key(name, "0" * 32)


def test_update_properties_changes_enabled_expiry_tags_and_ops(
    client: KeyClient, azure_emulator: ManagedHsmEmulator
) -> None:
    name = _name()
    key = client.create_rsa_key(name, size=2048, tags={"env": "test"})
    assert key.properties.tags == {"env": "test"}
    expires = int(time.time()) + 3600
    from datetime import datetime, timezone

    updated = client.update_key_properties(
        name,
        enabled=False,
        expires_on=datetime.fromtimestamp(expires, timezone.utc),
        tags={"env": "prod", "owner": "me"},
        key_operations=["sign", "verify"],
    )
    assert updated.properties.enabled is False
    assert int(updated.properties.expires_on.timestamp()) == expires
    assert updated.properties.tags == {"env": "prod", "owner": "me"}
    assert sorted(updated.key_operations) == ["sign", "verify"]
    got = client.get_key(name)
    assert got.properties.enabled is False
    assert sorted(got.key_operations) == ["sign", "verify"]
    # the enabled flag is the provider's own state, not only the emulator's
    assert azure_emulator.provider.get_key(name).enabled is False
    with pytest.raises(HttpResponseError) as err:
        _sign_remote(azure_emulator, key.id, b"data")
    assert err.value.status_code == 403


def test_list_keys_follows_next_link_pages(client: KeyClient) -> None:
    names = {_name() for _ in range(5)}
    for name in names:
        client.create_oct_key(name, size=128)
    pages = list(client.list_properties_of_keys(max_page_size=2).by_page())
    assert len(pages) >= 3
    listed = [p.name for page in pages for p in page]
    assert names <= set(listed)
    assert len(listed) == len(set(listed))  # no key listed twice across pages
    assert all(p.version is None for page in client.list_properties_of_keys().by_page() for p in page)


def test_list_versions_after_rotation(client: KeyClient) -> None:
    name = _name()
    created = client.create_ec_key(name, curve="P-256")
    rotated = [client.rotate_key(name) for _ in range(2)]
    versions = [p.version for p in client.list_properties_of_key_versions(name, max_page_size=1)]
    expected = [created.properties.version] + [r.properties.version for r in rotated]
    assert versions == expected
    assert client.get_key(name).properties.version == expected[-1]
    assert rotated[0].key.x != created.key.x  # rotation made new key material


def test_delete_then_recover(client: KeyClient, azure_emulator: ManagedHsmEmulator) -> None:
    name = _name()
    key = client.create_rsa_key(name, size=2048)
    deleted = client.begin_delete_key(name).result()
    assert deleted.name == name
    assert deleted.recovery_id == f"{azure_emulator.vault_url}/deletedkeys/{name}"
    assert deleted.scheduled_purge_date > deleted.deleted_date
    with pytest.raises(ResourceNotFoundError):
        client.get_key(name)
    assert client.get_deleted_key(name).id == key.id
    assert name in {d.name for d in client.list_deleted_keys()}
    assert name not in {p.name for p in client.list_properties_of_keys()}
    with pytest.raises(ResourceExistsError) as err:
        client.create_rsa_key(name, size=2048)
    assert err.value.error is not None
    assert err.value.error.innererror["code"] == "ObjectIsDeletedButRecoverable"

    recovered = client.begin_recover_deleted_key(name).result()
    assert recovered.id == key.id
    signature = _sign_remote(azure_emulator, key.id, b"after recovery")
    _rsa_public(key).verify(signature, b"after recovery", padding.PKCS1v15(), hashes.SHA256())


def test_delete_then_purge_frees_the_name(client: KeyClient, azure_emulator: ManagedHsmEmulator) -> None:
    name = _name()
    old = client.create_rsa_key(name, size=2048)
    client.begin_delete_key(name).wait()
    client.purge_deleted_key(name)
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_key(name)
    with pytest.raises(ResourceNotFoundError):
        client.purge_deleted_key(name)
    assert name not in {i.ref.name for i in azure_emulator.provider.list_keys()}  # gone from the provider too
    new = client.create_rsa_key(name, size=2048)
    assert new.key.n != old.key.n
    assert [p.version for p in client.list_properties_of_key_versions(name)] == [new.properties.version]


def test_backup_purge_restore_brings_back_the_same_key(client: KeyClient, azure_emulator: ManagedHsmEmulator) -> None:
    name = _name()
    key = client.create_rsa_key(name, size=2048, tags={"a": "b"})
    rotated = client.rotate_key(name)
    blob = client.backup_key(name)
    with pytest.raises(ResourceExistsError):
        client.restore_key_backup(blob)  # the name is still in use
    client.begin_delete_key(name).wait()
    with pytest.raises(ResourceExistsError) as err:
        client.restore_key_backup(blob)  # soft-deleted: recover or purge first
    assert err.value.error is not None
    assert err.value.error.innererror["code"] == "ObjectIsDeletedButRecoverable"
    client.purge_deleted_key(name)
    restored = client.restore_key_backup(blob)
    assert restored.id == rotated.id
    assert restored.properties.tags == {"a": "b"}
    assert [p.version for p in client.list_properties_of_key_versions(name)] == [
        key.properties.version,
        rotated.properties.version,
    ]
    signature = _sign_remote(azure_emulator, restored.id, b"restored")
    _rsa_public(rotated).verify(signature, b"restored", padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(HttpResponseError) as err:
        client.restore_key_backup(b"not a backup")
    assert err.value.status_code == 400


def test_rotation_policy_default_update_and_rotate(client: KeyClient) -> None:
    name = _name()
    client.create_ec_key(name, curve="P-256")
    default = client.get_key_rotation_policy(name)
    assert [a.action for a in default.lifetime_actions] == [KeyRotationPolicyAction.notify]
    assert default.lifetime_actions[0].time_before_expiry == "P30D"

    policy = KeyRotationPolicy(
        expires_in="P90D",
        lifetime_actions=[KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P30D")],
    )
    stored = client.update_key_rotation_policy(name, policy)
    assert stored.expires_in == "P90D"
    again = client.get_key_rotation_policy(name)
    assert again.expires_in == "P90D"
    assert again.lifetime_actions[0].action == KeyRotationPolicyAction.rotate
    assert again.lifetime_actions[0].time_after_create == "P30D"

    rotated = client.rotate_key(name)
    lifetime = rotated.properties.expires_on - rotated.properties.created_on
    assert lifetime.days == 90

    bad = KeyRotationPolicy(lifetime_actions=[KeyRotationLifetimeAction("Explode", time_after_create="P1D")])
    with pytest.raises(HttpResponseError) as err:
        client.update_key_rotation_policy(name, bad)
    assert err.value.status_code == 400


def test_random_bytes(client: KeyClient) -> None:
    a, b = client.get_random_bytes(32), client.get_random_bytes(32)
    assert len(a) == len(b) == 32
    assert a != b
    with pytest.raises(HttpResponseError) as err:
        client.get_random_bytes(129)  # the service caps a request at 128 bytes
    assert err.value.status_code == 400


def test_exportable_keys_need_a_release_policy(client: KeyClient) -> None:
    from azure.keyvault.keys import KeyReleasePolicy

    with pytest.raises(HttpResponseError) as err:
        client.create_ec_key(_name(), curve="P-256", exportable=True)
    assert err.value.status_code == 400
    policy = b'{"version":"1.0.0","anyOf":[{"authority":"https://attest.example","allOf":[{"claim":"c","equals":1}]}]}'
    key = client.create_ec_key(
        _name(), curve="P-256", exportable=True, release_policy=KeyReleasePolicy(policy, immutable=True)
    )
    assert key.properties.exportable is True
    assert key.properties.release_policy is not None
    assert key.properties.release_policy.encoded_policy == policy
    assert client.get_key(key.name).properties.exportable is True
