"""Recipients: any-of and k-of-n over keyrings, through the MaterialsSource protocol."""

from __future__ import annotations

import itertools
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keybridge import InMemoryProvider, KeyHandle, KeySpec
from keybridge.envelope import _shamir
from keybridge.envelope._keyring import DataKeyUnavailable, Keyring, NoMatchingEdk
from keybridge.envelope._materials import EncryptedDataKey
from keybridge.envelope._recipients import KOFN_PROVIDER_ID, AnyOf, KOfN, as_materials
from keybridge.errors import IntegrityError, InvalidArgument, KeyNotFound, OperationNotPermitted

SUITE = 0x0478
CTX = {"app": "recipients"}


@pytest.fixture(scope="module")
def keys() -> dict[str, KeyHandle]:
    """Five AES KEKs and one RSA KEK in one in-memory provider."""
    p = InMemoryProvider()
    for name in "abcde":
        p.create_key(name, KeySpec.aes(256))
    p.import_key("r", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return {name: p.key(name) for name in "abcder"}


def enc(source, context=CTX):
    return source.encryption_materials(suite_id=SUITE, context=context, plaintext_length=10)


def dec(source, edks, context=CTX) -> bytes:
    return source.decryption_materials(suite_id=SUITE, context=context, edks=edks)


# ---- as_materials ---------------------------------------------------------------------------------


def test_as_materials_maps_handles_sources_and_lists(keys) -> None:
    assert isinstance(as_materials(keys["a"]), Keyring)
    ring = Keyring(keys["b"])
    assert as_materials(ring) is ring
    assert as_materials([ring]) is ring
    many = as_materials([keys["a"], ring])
    assert isinstance(many, AnyOf)
    assert [type(s) for s in many.sources] == [Keyring, Keyring]


@pytest.mark.parametrize("bad", [[], "memory:a", b"x", 42])
def test_as_materials_refuses_what_is_not_keys(bad) -> None:
    with pytest.raises(InvalidArgument):
        as_materials(bad)


# ---- any-of ---------------------------------------------------------------------------------------


def test_any_of_wraps_one_data_key_for_every_member_and_each_alone_decrypts(keys) -> None:
    src = AnyOf(keys["a"], keys["b"], keys["r"])
    mat = enc(src)
    assert len(mat.edks) == 3
    for name in "abr":
        assert dec(Keyring(keys[name]), mat.edks) == mat.data_key


def test_any_of_encrypt_fails_if_one_member_fails(keys) -> None:
    p = InMemoryProvider()
    p.create_key("wrap-only-decrypt", KeySpec.aes(256), ops=["decrypt"])
    with pytest.raises(OperationNotPermitted, match="wrap-only-decrypt"):
        enc(AnyOf(keys["a"], p.key("wrap-only-decrypt")))


def test_any_of_reports_every_failure_by_key_reference(keys) -> None:
    mat = enc(AnyOf(keys["a"], keys["b"]))
    damaged = [EncryptedDataKey(e.provider_id, e.provider_info, bytes(len(e.ciphertext))) for e in mat.edks]
    with pytest.raises(DataKeyUnavailable) as info:
        dec(AnyOf(keys["c"], keys["a"], keys["b"]), damaged)
    err = info.value
    assert isinstance(err, IntegrityError)
    assert isinstance(err, KeyNotFound)
    assert [who for who, _ in err.failures] == ["memory:c", "memory:a", "memory:b"]
    assert [type(e) for _, e in err.failures] == [NoMatchingEdk, IntegrityError, IntegrityError]
    for ref in ("memory:a", "memory:b", "memory:c"):
        assert ref in str(err)
    assert mat.data_key.hex() not in str(err)


def test_any_of_wrap_existing_is_what_rewrap_needs(keys) -> None:
    data_key = os.urandom(32)
    edks = AnyOf(keys["a"], keys["r"]).wrap_existing(data_key, suite_id=SUITE, context=CTX)
    assert dec(Keyring(keys["r"]), edks) == data_key


# ---- k-of-n ---------------------------------------------------------------------------------------


def test_shamir_any_k_shares_recover_and_k_minus_1_do_not() -> None:
    secret = os.urandom(32)
    shares = _shamir.split(secret, 3, 5)
    for combo in itertools.combinations(range(1, 6), 3):
        assert _shamir.combine({x: shares[x - 1] for x in combo}) == secret
    for combo in itertools.combinations(range(1, 6), 2):
        assert _shamir.combine({x: shares[x - 1] for x in combo}) != secret


def test_shamir_one_share_of_a_2_of_n_split_is_consistent_with_every_secret() -> None:
    # Share y = s + c*x with a uniform coefficient c: for any share value and index, each secret
    # byte s is explained by exactly one c, so k - 1 = 1 share carries no information about s.
    for x in (1, 2, 3, 0x80, 0xFF):
        for y in (0, 0x5A, 0xFF):
            assert sorted(y ^ _shamir._mul(c, x) for c in range(256)) == list(range(256))


def test_gf256_multiplication_matches_a_reference() -> None:
    def slow(a: int, b: int) -> int:
        r = 0
        while b:
            if b & 1:
                r ^= a
            a <<= 1
            if a & 0x100:
                a ^= 0x11B
            b >>= 1
        return r

    for a, b in itertools.product(range(0, 256, 7), range(256)):
        assert _shamir._mul(a, b) == slow(a, b)
    assert _shamir._mul(0x57, 0x83) == 0xC1  # FIPS-197 example


def test_k_of_n_decrypts_with_any_k_members_and_not_with_k_minus_1(keys) -> None:
    members = [keys[n] for n in "abcd"]
    mat = enc(KOfN(3, *members))
    assert len(mat.edks) == 4
    assert {e.provider_id for e in mat.edks} == {KOFN_PROVIDER_ID}
    for combo in itertools.combinations(members, 3):
        assert dec(KOfN(3, *reversed(combo)), mat.edks) == mat.data_key
    for combo in itertools.combinations(members, 2):  # plus a key that holds no share
        with pytest.raises(DataKeyUnavailable, match="recovered 2 of the 3 shares"):
            dec(KOfN(3, *combo, keys["e"]), mat.edks)


def test_all_of_needs_every_member(keys) -> None:
    mat = enc(KOfN(2, keys["a"], keys["r"]))
    assert dec(KOfN(2, keys["r"], keys["a"]), mat.edks) == mat.data_key
    with pytest.raises(DataKeyUnavailable) as info:
        dec(KOfN(2, keys["a"], keys["e"]), mat.edks)
    assert [who for who, _ in info.value.failures] == ["memory:e"]


def test_k_of_n_shares_are_never_taken_for_a_data_key_by_a_plain_keyring(keys) -> None:
    mat = enc(KOfN(2, keys["a"], keys["b"]))
    with pytest.raises(DataKeyUnavailable) as info:
        dec(Keyring(keys["a"]), mat.edks)
    assert [type(e) for _, e in info.value.failures] == [NoMatchingEdk]
    # ... and k-of-n never reads plain keyring EDKs as shares.
    plain = enc(AnyOf(keys["a"], keys["b"]))
    with pytest.raises(DataKeyUnavailable, match="no k-of-n shares"):
        dec(KOfN(1, keys["a"], keys["b"]), plain.edks)


def test_k_of_n_share_edks_bind_the_context(keys) -> None:
    mat = enc(KOfN(2, keys["a"], keys["b"]))
    with pytest.raises(DataKeyUnavailable) as info:
        dec(KOfN(2, keys["a"], keys["b"]), mat.edks, context={"app": "other"})
    assert [type(e) for _, e in info.value.failures] == [IntegrityError, IntegrityError]


def test_k_of_n_groups_may_be_any_of(keys) -> None:
    # sops-style key groups: group 1 = a or b, group 2 = c or r; both groups needed.
    mat = enc(KOfN(2, AnyOf(keys["a"], keys["b"]), AnyOf(keys["c"], keys["r"])))
    assert dec(KOfN(2, keys["b"], keys["r"]), mat.edks) == mat.data_key
    with pytest.raises(DataKeyUnavailable):
        dec(KOfN(2, keys["a"], keys["b"]), mat.edks)


def test_two_k_of_n_splits_in_one_message_do_not_mix(keys) -> None:
    # Same data key, two independent splits (share x=1 of one and x=2 of the other would combine
    # to garbage); decryption keeps them apart by split id.
    mat = enc(AnyOf(KOfN(2, keys["a"], keys["b"]), KOfN(2, keys["c"], keys["d"])))
    assert dec(KOfN(2, keys["c"], keys["d"]), mat.edks) == mat.data_key
    with pytest.raises(DataKeyUnavailable, match="recovered 1 of the 2"):
        dec(KOfN(2, keys["a"], keys["d"]), mat.edks)


def test_a_tampered_share_index_gives_a_wrong_key_not_a_crash(keys) -> None:
    mat = enc(KOfN(2, keys["a"], keys["b"], keys["c"]))
    edk = mat.edks[0]
    info = bytearray(edk.provider_info)
    info[11] = 3  # share index byte: claims x=3 for the share of x=1
    edks = [EncryptedDataKey(edk.provider_id, bytes(info), edk.ciphertext), mat.edks[1]]
    # Fails closed later: the message layer's key commitment rejects the combined key.
    assert dec(KOfN(2, keys["a"], keys["b"]), edks) != mat.data_key


@pytest.mark.parametrize(("k", "n"), [(0, 2), (3, 2), (-1, 1)])
def test_k_of_n_refuses_impossible_thresholds(keys, k: int, n: int) -> None:
    with pytest.raises(InvalidArgument):
        KOfN(k, *[keys[x] for x in "abcde"[:n]])
    with pytest.raises(InvalidArgument):
        KOfN(1)


# ---- the same across real providers ---------------------------------------------------------------


@pytest.fixture
def three_providers(request):
    """One AES KEK in memory, one in SoftHSM, one RSA KEK in the Key Vault emulator."""
    from uuid import uuid4

    from keybridge import AzureKeyVaultProvider, Pkcs11Provider

    token = request.getfixturevalue("softhsm_token")
    emu = request.getfixturevalue("azure_emulator")
    tag = uuid4().hex[:8]
    mem = InMemoryProvider()
    mem.create_key(f"mem-{tag}", KeySpec.aes(256))
    hsm = Pkcs11Provider(token.module_path, token.token_label, token.user_pin)
    hsm.create_key(f"hsm-{tag}", KeySpec.aes(256))
    azure = AzureKeyVaultProvider(emu.vault_url, **emu.provider_options())
    azure.create_key(f"az-{tag}", KeySpec.rsa(2048))
    yield mem.key(f"mem-{tag}"), hsm.key(f"hsm-{tag}"), azure.key(f"az-{tag}")
    for p, name in ((hsm, f"hsm-{tag}"), (azure, f"az-{tag}")):
        p.delete_key(name)
        p.close()


def test_any_of_across_memory_softhsm_and_emulator_decrypts_with_each_alone(three_providers) -> None:
    mem, hsm, az = three_providers
    mat = enc(AnyOf(mem, hsm, az))
    assert len(mat.edks) == 3
    for handle in (az, hsm, mem):
        assert dec(Keyring(handle), mat.edks) == mat.data_key
    # No key name written into an EDK carries a PIN.
    assert all(b"pin" not in e.provider_info.lower() for e in mat.edks)


def test_k_of_n_across_providers_needs_k(three_providers) -> None:
    mem, hsm, az = three_providers
    mat = enc(KOfN(2, mem, hsm, az))
    for pair in itertools.combinations((mem, hsm, az), 2):
        assert dec(KOfN(2, *pair), mat.edks) == mat.data_key
    with pytest.raises(DataKeyUnavailable, match="recovered 1 of the 2"):
        dec(KOfN(2, hsm, InMemoryProvider().key("absent")), mat.edks)


def test_key_wrap_fallback_round_trips_in_softhsm(three_providers) -> None:
    _, hsm, _ = three_providers
    ring = Keyring(hsm, wrapping="CKM_AES_KEY_WRAP_PAD")
    mat = enc(ring)
    assert mat.edks[0].provider_info.endswith(b"CKM_AES_KEY_WRAP_PAD")
    assert dec(Keyring(hsm), mat.edks) == mat.data_key
