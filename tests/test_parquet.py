"""keybridge.parquet against pyarrow's own KmsClient holding the same raw master keys."""

from __future__ import annotations

import base64
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pe = pytest.importorskip("pyarrow.parquet.encryption")

from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap  # noqa: E402

from keybridge import audit  # noqa: E402
from keybridge.errors import IntegrityError, InvalidArgument, KeyNotFound, MissingDependency  # noqa: E402
from keybridge.keys import KeyOp  # noqa: E402
from keybridge.parquet import ParquetKeys, crypto_factory  # noqa: E402
from keybridge.providers.memory import InMemoryProvider  # noqa: E402

RAW = {"footer": os.urandom(32), "col": os.urandom(32)}
PASSPHRASE = "parquet-test-passphrase"


VERSIONS: dict[str, str] = {}


def _spec(store: Path, *names: str, pinned: bool = False) -> ParquetKeys:
    """A spec over real ``memory:`` URIs backed by the keystore file, as the CLI opens them;
    ``pinned`` names each key's version, which gives the plain wrapped form other clients read."""
    opts = {"keystore": str(store), "passphrase": PASSPHRASE}
    uris = {n: f"memory:{n}" + (f"/{VERSIONS[n]}" if pinned else "") for n in names}
    return ParquetKeys(uris, options={uri: opts for uri in uris.values()})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pq") / "keys.kbks"
    provider = InMemoryProvider.open(path, PASSPHRASE, create=True)
    for name, raw in RAW.items():
        info = provider.import_key(name, raw, ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
        assert info.ref.version
        VERSIONS[name] = info.ref.version
    provider.close()
    return path


class PlainKms(pe.KmsClient):  # type: ignore[misc]
    """Reference client written from pyarrow's docs, independent of keybridge."""

    def __init__(self, _config: Any) -> None:
        pe.KmsClient.__init__(self)

    def wrap_key(self, key_bytes: bytes, mk: str) -> str:
        return base64.b64encode(aes_key_wrap(RAW[mk], key_bytes)).decode()

    def unwrap_key(self, wrapped: str, mk: str) -> bytes:
        return aes_key_unwrap(RAW[mk], base64.b64decode(wrapped))


TABLE = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
CONN = pe.KmsConnectionConfig()
ENC = pe.EncryptionConfiguration(footer_key="footer", column_keys={"col": ["a"]})


def _write(cf: Any, path: Path) -> None:
    pq.write_table(TABLE, path, encryption_properties=cf.file_encryption_properties(CONN, ENC))


def _read(cf: Any, path: Path, **kw: Any) -> Any:
    return pq.read_table(path, decryption_properties=cf.file_decryption_properties(CONN), **kw)


def test_keybridge_file_decrypts_with_plain_pyarrow(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "kb.parquet"
    _write(crypto_factory(_spec(store, "footer", "col", pinned=True)), path)
    assert path.read_bytes()[:4] == b"PARE"
    with pytest.raises(OSError):
        pq.read_table(path)
    assert _read(pe.CryptoFactory(PlainKms), path).equals(TABLE)


@pytest.mark.parametrize("pinned", [False, True])
def test_plain_pyarrow_file_decrypts_with_keybridge(tmp_path: Path, store: Path, pinned: bool) -> None:
    # Untagged wrapped keys unwrap under the URI as given: the current version when unpinned.
    path = tmp_path / "plain.parquet"
    _write(pe.CryptoFactory(PlainKms), path)
    assert _read(crypto_factory(_spec(store, "footer", "col", pinned=pinned)), path).equals(TABLE)


def test_reader_missing_column_key_sees_only_plain_columns(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "kb.parquet"
    _write(crypto_factory(_spec(store, "footer", "col")), path)
    partial = _spec(store, "footer")
    assert _read(crypto_factory(partial), path, columns=["b"]).column("b").to_pylist() == ["x", "y", "z"]
    with pytest.raises(KeyNotFound, match="'col'"):
        _read(crypto_factory(partial), path)


def test_spec_pickles_after_use_without_secrets_in_repr(store: Path) -> None:
    spec = _spec(store, "footer")
    spec.handle("footer")  # an open handle and a lock must not stop it travelling to a worker
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec
    assert copy.handle("footer").wrap_key("A256KW", bytes(16)) == aes_key_wrap(RAW["footer"], bytes(16))
    assert PASSPHRASE not in repr(spec)


def test_repr_redacts_a_pin_in_a_key_uri() -> None:
    spec = ParquetKeys({"footer": "pkcs11:token=t;object=f?module-path=/x.so&pin-value=s3cret-pin"})
    assert "s3cret-pin" not in repr(spec)
    assert "'footer'" in repr(spec)


def test_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "parquet.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert blocks, "docs/parquet.md lost its example"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/parquet.md", "exec"), {"__name__": "parquet_doc"})
    assert (tmp_path / "people.parquet").read_bytes()[:4] == b"PARE"


def test_one_kms_call_per_master_key_across_files(tmp_path: Path, store: Path) -> None:
    events: list[audit.AuditEvent] = []
    audit.add_sink(events.append)
    try:
        writer, reader = crypto_factory(_spec(store, "footer", "col")), crypto_factory(_spec(store, "footer", "col"))
        paths = [tmp_path / f"part-{i}.parquet" for i in range(3)]
        for path in paths:
            _write(writer, path)
        for path in paths:
            assert _read(reader, path).equals(TABLE)
    finally:
        audit.remove_sink(events.append)

    def calls(op: str) -> list[str]:
        return sorted(str(e.key).split("/")[0] for e in events if e.operation == op and e.outcome == "ok")

    # Double wrapping caches one KEK per master key in each factory: three files, one call per key.
    assert calls("wrap_key") == ["memory:col", "memory:footer"]
    assert calls("unwrap_key") == ["memory:col", "memory:footer"]


def test_without_pyarrow_a_typed_error_names_the_extra(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet.encryption", None)  # makes the import fail
    with pytest.raises(MissingDependency, match=r"keybridge-sdk\[parquet\]"):
        crypto_factory(_spec(store, "footer"))


def test_importing_keybridge_parquet_does_not_import_pyarrow() -> None:
    code = "import sys, keybridge.parquet; assert 'pyarrow' not in sys.modules, 'pyarrow imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("wrapped", ["kb1::AAAA", "not base64!", "kb1:v1:not base64!"])
def test_malformed_wrapped_keys_are_typed_errors(store: Path, wrapped: str) -> None:
    from keybridge.parquet._keys import unwrap

    with pytest.raises(InvalidArgument, match="corrupt"):
        unwrap(_spec(store, "footer"), "footer", wrapped)


def test_a_tampered_wrapped_key_fails_integrity(store: Path) -> None:
    from keybridge.parquet._keys import unwrap, wrap

    spec = _spec(store, "footer")
    tag, version, blob = wrap(spec, "footer", bytes(range(16))).split(":")
    assert (tag, version) == ("kb1", VERSIONS["footer"])
    assert unwrap(spec, "footer", f"{tag}:{version}:{blob}") == bytes(range(16))
    raw = bytearray(base64.b64decode(blob))
    raw[3] ^= 1
    with pytest.raises(IntegrityError):
        unwrap(spec, "footer", f"{tag}:{version}:{base64.b64encode(bytes(raw)).decode()}")


def test_versions_of_one_key_share_its_session(store: Path) -> None:
    spec = _spec(store, "footer")
    current = spec.handle("footer")
    pinned = spec.handle("footer", VERSIONS["footer"])
    assert pinned.provider is current.provider
    assert pinned.ref.version == VERSIONS["footer"]
    assert spec.handle("footer", VERSIONS["footer"]) is pinned
