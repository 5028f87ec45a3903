"""Service fidelity of the emulator through the real azure-keyvault-keys SDK over HTTPS: rotation
policy rules and schedules, soft-delete retention on the emulator's own clock, the versionless
release/attestation routes, and error messages that name keys as the service does.

These tests move the emulator's clock, so they use their own emulator, not the session one."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("azure.keyvault.keys")

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.keyvault.keys import KeyClient, KeyRotationLifetimeAction, KeyRotationPolicy, KeyRotationPolicyAction

from keybridge.emulator import ManagedHsmEmulator
from keybridge.errors import InvalidArgument

_ROTATE = KeyRotationPolicyAction.rotate


def _name() -> str:
    return "f-" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def hsm() -> Iterator[ManagedHsmEmulator]:
    with ManagedHsmEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def client(hsm: ManagedHsmEmulator) -> KeyClient:
    return KeyClient(hsm.vault_url, **hsm.provider_options())


def _raw(client: KeyClient, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = client.send_request(HttpRequest(method, path, json=body))
    return response.status_code, response.json() if response.content else None


def _policy(after_create: str | None = None, before_expiry: str | None = None, expires_in: str | None = None) -> Any:
    action = KeyRotationLifetimeAction(_ROTATE, time_after_create=after_create, time_before_expiry=before_expiry)
    return KeyRotationPolicy(lifetime_actions=[action], expires_in=expires_in)


# ---- rotation policy validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        (_policy(after_create="P6D"), "minimum is 7 days"),
        (_policy(after_create="PT167H"), "minimum is 7 days"),
        (_policy(before_expiry="P6D", expires_in="P90D"), "minimum is 7 days"),
        (_policy(after_create="P30D", expires_in="P27D"), "minimum is 28 days"),
        (_policy(after_create="P25D", expires_in="P28D"), "7 days before the key version expires"),
        (_policy(before_expiry="P22D", expires_in="P28D"), "7 days before the key version expires"),
        (_policy(after_create="90D"), "not an ISO 8601 duration"),
        (_policy(after_create="P1.5D"), "not an ISO 8601 duration"),
        (_policy(after_create="P30D", expires_in="1 year"), "not an ISO 8601 duration"),
        (_policy(after_create="P"), "not an ISO 8601 duration"),
    ],
)
def test_rotation_policy_rules_are_the_services(client: KeyClient, policy: Any, fragment: str) -> None:
    name = client.create_ec_key(_name()).name
    with pytest.raises(HttpResponseError) as err:
        client.update_key_rotation_policy(name, policy)
    assert err.value.status_code == 400
    assert err.value.error is not None
    assert err.value.error.code == "BadParameter"
    assert fragment in str(err.value.message)
    # nothing was stored: the key still has the default policy
    assert client.get_key_rotation_policy(name).lifetime_actions[0].action == KeyRotationPolicyAction.notify


def test_rotation_policy_limits_themselves_are_accepted(client: KeyClient) -> None:
    name = client.create_ec_key(_name()).name
    for policy in (
        _policy(after_create="P7D"),
        _policy(after_create="P21D", expires_in="P28D"),
        _policy(before_expiry="P7D", expires_in="P28D"),
        _policy(after_create="P1Y", expires_in="P2Y"),
    ):
        assert client.update_key_rotation_policy(name, policy).lifetime_actions[0].action == _ROTATE


def test_a_trigger_needs_exactly_one_time(client: KeyClient) -> None:
    name = client.create_ec_key(_name()).name
    both = {"lifetimeActions": [{"trigger": {"timeAfterCreate": "P30D", "timeBeforeExpiry": "P30D"},
                                 "action": {"type": "Rotate"}}],
            "attributes": {"expiryTime": "P1Y"}}  # fmt: skip
    status, body = _raw(client, "PUT", f"/keys/{name}/rotationpolicy", both)
    assert (status, body["error"]["code"]) == (400, "BadParameter")
    assert "exactly one of timeAfterCreate or timeBeforeExpiry" in body["error"]["message"]
    twice = {"lifetimeActions": [{"trigger": {"timeAfterCreate": "P30D"}, "action": {"type": "Rotate"}}] * 2}
    status, body = _raw(client, "PUT", f"/keys/{name}/rotationpolicy", twice)
    assert (status, body["error"]["code"]) == (400, "BadParameter")


# ---- the emulator's clock ----------------------------------------------------------------------


def _created(client: KeyClient, name: str) -> list[dt.datetime]:
    versions = list(client.list_properties_of_key_versions(name))
    return sorted(v.created_on for v in versions if v.created_on is not None)


def test_rotation_policy_fires_when_its_time_comes(client: KeyClient, hsm: ManagedHsmEmulator) -> None:
    name = client.create_rsa_key(_name(), size=2048).name
    client.update_key_rotation_policy(name, _policy(after_create="P30D", expires_in="P90D"))
    first = client.get_key(name)
    hsm.advance(days=29)
    assert len(_created(client, name)) == 1  # not due yet
    hsm.advance(days=2)
    created = _created(client, name)
    assert len(created) == 2
    latest = client.get_key(name)
    assert latest.properties.version != first.properties.version
    assert first.properties.created_on is not None
    assert latest.properties.created_on is not None
    # dated when it was due (30 days after the first), expiring expiryTime later
    assert latest.properties.created_on - first.properties.created_on == dt.timedelta(days=30)
    assert latest.properties.expires_on == latest.properties.created_on + dt.timedelta(days=90)
    assert latest.key.key_ops == first.key.key_ops
    # a long jump makes one version per period, as the service would have along the way
    hsm.advance(days=95)
    created = _created(client, name)
    assert [b - a for a, b in itertools.pairwise(created)] == [dt.timedelta(days=30)] * 4


def test_time_before_expiry_rotation_follows_each_versions_expiry(client: KeyClient, hsm: ManagedHsmEmulator) -> None:
    name = client.create_ec_key(_name(), curve="P-256").name
    client.update_key_rotation_policy(name, _policy(before_expiry="P10D", expires_in="P40D"))
    # the first version has no exp, so nothing counts down until a rotation gives one
    hsm.advance(days=60)
    assert len(_created(client, name)) == 1
    rotated = client.rotate_key(name)
    assert rotated.properties.created_on is not None
    assert rotated.properties.expires_on == rotated.properties.created_on + dt.timedelta(days=40)
    hsm.advance(days=31)  # 40 - 10 days after the manual rotation
    created = _created(client, name)
    assert len(created) == 3
    assert created[2] - created[1] == dt.timedelta(days=30)


def test_soft_deleted_keys_are_purged_after_their_retention(client: KeyClient, hsm: ManagedHsmEmulator) -> None:
    name = client.create_ec_key(_name()).name
    deleted = client.begin_delete_key(name).result()
    assert deleted.recovery_id is not None
    assert deleted.deleted_date is not None
    assert deleted.scheduled_purge_date is not None
    assert deleted.scheduled_purge_date - deleted.deleted_date == dt.timedelta(days=90)
    assert deleted.properties.recoverable_days == 90
    hsm.advance(days=89)
    assert client.get_deleted_key(name).name == name  # still recoverable
    hsm.advance(days=2)
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_key(name)
    assert name not in {k.name for k in client.list_deleted_keys()}
    assert client.create_rsa_key(name, size=2048).name == name  # the name is free again
    assert len(list(client.list_properties_of_key_versions(name))) == 1


def test_retention_days_is_the_emulators_setting() -> None:
    with ManagedHsmEmulator(retention_days=7) as hsm:
        client = KeyClient(hsm.vault_url, **hsm.provider_options())
        name = client.create_ec_key(_name()).name
        deleted = client.begin_delete_key(name).result()
        assert deleted.properties.recoverable_days == 7
        hsm.advance(days=7)
        with pytest.raises(ResourceNotFoundError):
            client.get_deleted_key(name)
    for wrong in (6, 91, True, "90"):
        with pytest.raises(InvalidArgument, match="retention_days"):
            ManagedHsmEmulator(retention_days=wrong)  # type: ignore[arg-type]


def test_advance_moves_every_timestamp_and_refuses_going_back(client: KeyClient, hsm: ManagedHsmEmulator) -> None:
    before = hsm.now()
    after = hsm.advance(hours=5)
    assert dt.timedelta(hours=5) <= after - before < dt.timedelta(hours=5, minutes=1)
    key = client.create_ec_key(_name())
    assert key.properties.created_on is not None
    assert abs(key.properties.created_on - hsm.now()) < dt.timedelta(minutes=1)
    with pytest.raises(InvalidArgument, match="forward only"):
        hsm.advance(days=-1)
    with pytest.raises(InvalidArgument):
        hsm.advance(days="soon")  # type: ignore[arg-type]


def test_key_expiry_is_judged_on_the_emulators_clock(client: KeyClient, hsm: ManagedHsmEmulator) -> None:
    exp = hsm.now() + dt.timedelta(days=2)
    key = client.create_rsa_key(_name(), size=2048, expires_on=exp)
    body = {"alg": "RS256", "value": "A" * 43}
    assert _raw(client, "POST", f"/keys/{key.name}/{key.properties.version}/sign", body)[0] == 200
    hsm.advance(days=3)
    status, answer = _raw(client, "POST", f"/keys/{key.name}/{key.properties.version}/sign", body)
    assert (status, answer["error"]["innererror"]["code"]) == (403, "KeyOperationForbidden")


# ---- release and attestation routes ------------------------------------------------------------


@pytest.mark.parametrize("form", ["versioned", "double-slash", "versionless"])
def test_release_and_attestation_route_in_every_form(client: KeyClient, form: str) -> None:
    key = client.create_rsa_key(_name(), size=2048)
    version = {"versioned": f"/{key.properties.version}", "double-slash": "/", "versionless": ""}[form]
    status, body = _raw(client, "POST", f"/keys/{key.name}{version}/release", {"target": "x"})
    assert (status, body["error"]["innererror"]["code"]) == (403, "KeyOperationForbidden")
    # the answer names the key version it resolved (the current one when versionless)
    assert f"{key.id}: the key is not exportable" in body["error"]["message"]
    status, body = _raw(client, "GET", f"/keys/{key.name}{version}/attestation")
    assert status == 200
    assert body["key"]["kid"] == key.id
    assert body["attributes"]["attestation"]["version"] == "keybridge-emulator-1"
    for method, op in (("POST", "release"), ("GET", "attestation")):
        status, body = _raw(client, method, f"/keys/missing-{key.name}{version}/{op}", {"target": "x"})
        assert (status, body["error"]["code"]) == (404, "KeyNotFound")
        if form == "versioned":
            status, body = _raw(client, method, f"/keys/{key.name}/{'0' * 32}/{op}", {"target": "x"})
            assert (status, body["error"]["code"]) == (404, "KeyNotFound")


# ---- error messages ----------------------------------------------------------------------------


def test_errors_name_keys_by_kid_not_provider_reference(client: KeyClient, hsm: ManagedHsmEmulator) -> None:
    key = client.create_oct_key(_name(), size=128, hardware_protected=True)
    status, body = _raw(client, "POST", f"/keys/{key.name}//encrypt", {"alg": "A256GCM", "value": "AAAA"})
    message = body["error"]["message"]
    assert status == 400
    assert "memory" not in message
    assert key.id in message  # the versioned kid, as the service names keys
    client.update_key_properties(key.name, enabled=False)
    status, body = _raw(client, "POST", f"/keys/{key.name}//encrypt", {"alg": "A128GCM", "value": "AAAA"})
    assert status == 403
    assert "memory" not in body["error"]["message"]
    assert key.id in body["error"]["message"]


def test_key_ops_errors_name_the_key_not_a_stand_in(client: KeyClient) -> None:
    key = client.create_ec_key(_name(), curve="P-384")
    status, body = _raw(client, "PATCH", f"/keys/{key.name}/{key.properties.version}", {"key_ops": ["encrypt"]})
    assert status == 400
    assert "EC-P-384" in body["error"]["message"]
    status, body = _raw(
        client, "POST", f"/keys/{_name()}/create", {"kty": "EC", "crv": "P-521", "key_ops": ["wrapKey"]}
    )
    assert status == 400
    assert "EC keys" in body["error"]["message"]
    assert "P-256" not in body["error"]["message"]


def test_no_error_shows_the_provider_reference(client: KeyClient) -> None:
    ec_key = client.create_ec_key(_name(), curve="P-384")
    aes = client.create_oct_key(_name(), size=256, hardware_protected=True)
    rsa = client.create_rsa_key(_name(), size=2048)
    z = "A" * 43  # 32 zero bytes, base64url
    requests = [
        (f"/keys/{ec_key.name}//sign", {"alg": "ES256", "value": z}),
        (f"/keys/{aes.name}//encrypt", {"alg": "A128GCM", "value": z}),
        (f"/keys/{aes.name}//encrypt", {"alg": "A128CBC", "value": z, "iv": z[:22]}),
        (f"/keys/{rsa.name}//wrapkey", {"alg": "A256KW", "value": z}),
        (f"/keys/{rsa.name}//sign", {"alg": "ES256", "value": z}),
    ]
    client.update_key_properties(rsa.name, enabled=False)
    requests.append((f"/keys/{rsa.name}//sign", {"alg": "RS256", "value": z}))
    for path, body in requests:
        status, answer = _raw(client, "POST", path, body)
        assert status in (400, 403), (path, body)
        assert "memory" not in answer["error"]["message"], answer


def test_the_clock_and_schedules_survive_a_restart_with_state_dir(tmp_path: Any) -> None:
    with ManagedHsmEmulator(state_dir=tmp_path, retention_days=30) as hsm:
        client = KeyClient(hsm.vault_url, **hsm.provider_options())
        name = client.create_ec_key(_name()).name
        client.begin_delete_key(name).result()
        moved = hsm.advance(days=10)
    with ManagedHsmEmulator(state_dir=tmp_path) as again:
        assert again.now() >= moved  # time did not jump back
        client = KeyClient(again.vault_url, **again.provider_options())
        assert client.get_deleted_key(name).properties.recoverable_days == 30
        again.advance(days=20)
        with pytest.raises(ResourceNotFoundError):
            client.get_deleted_key(name)
