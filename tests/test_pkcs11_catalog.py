"""keybridge's metadata records on a real SoftHSM2 token survive a replacement that failed halfway."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from keybridge import KeySpec
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

from pkcs11 import Attribute as A
from pkcs11 import ObjectClass as OC

from keybridge.providers.pkcs11 import Pkcs11Provider
from keybridge.providers.pkcs11._catalog import APPLICATION, find_meta
from keybridge.providers.pkcs11._session import PooledSession


@pytest.fixture(scope="module")
def provider(softhsm_token: SoftHsmToken) -> Iterator[Pkcs11Provider]:
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        yield p


def records(p: Pkcs11Provider, name: str) -> list[dict[str, object]]:
    def read(e: PooledSession) -> list[dict[str, object]]:
        return [json.loads(bytes(o[A.VALUE])) for o in find_meta(e.session, name)]

    return p._pool.run(read, "reading", name)


def test_an_older_leftover_record_loses_and_the_next_write_removes_it(provider: Pkcs11Provider) -> None:
    info = provider.create_key("meta-dup", KeySpec.aes(128), tags={"v": "new"})
    (current,) = records(provider, "meta-dup")
    assert current["seq"] == 1
    stale = {"versions": {info.ref.version: {**current["versions"][info.ref.version], "tags": {"v": "old"}}}, "seq": 0}

    def leave_stale(e: PooledSession) -> None:  # what a replacement that failed before its destroy leaves
        tpl = {A.CLASS: OC.DATA, A.TOKEN: True, A.PRIVATE: True, A.LABEL: "meta-dup", A.APPLICATION: APPLICATION}
        e.session.create_object({**tpl, A.VALUE: json.dumps(stale).encode()})

    provider._pool.run(leave_stale, "planting", "meta-dup", write=True)
    provider._catalog.forget("meta-dup")
    assert provider.get_key("meta-dup").tags == {"v": "new"}  # the higher seq wins, whichever is found first
    assert not provider.set_enabled("meta-dup", False).enabled
    (only,) = records(provider, "meta-dup")  # the write replaced both
    assert only["seq"] == 2
    assert provider.get_key("meta-dup").tags == {"v": "new"}
    provider.delete_key("meta-dup")
