"""DataKeyCache: fewer backend calls within age / message / byte limits, counted through the audit
sink of a real provider; time comes from an injected clock, never from sleeping."""

from __future__ import annotations

import threading

import pytest

from keybridge import InMemoryProvider, KeySpec, audit
from keybridge.envelope._cache import DataKeyCache
from keybridge.envelope._keyring import Keyring
from keybridge.errors import IntegrityError, InvalidArgument

SUITE = 0x0478
CTX = {"app": "cache"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ring() -> Keyring:
    p = InMemoryProvider()
    p.create_key("kek", KeySpec.aes(256))
    ring = Keyring(p.key("kek"))
    ring.encryption_materials(suite_id=SUITE, context={}, plaintext_length=1)  # resolve the key once
    return ring


@pytest.fixture
def wraps():
    """Count real wrap (encrypt) and unwrap (decrypt) operations at the provider."""
    events: list[audit.AuditEvent] = []
    audit.add_sink(events.append)

    def count(op: str) -> int:
        return sum(1 for e in events if e.operation == op and e.outcome == "ok")

    yield count
    audit.remove_sink(events.append)


def enc(cache: DataKeyCache, n: int | None = 100, context=CTX):
    return cache.encryption_materials(suite_id=SUITE, context=context, plaintext_length=n)


def test_encrypt_materials_are_reused_until_cache_seconds(ring, clock, wraps) -> None:
    cache = DataKeyCache(ring, cache_seconds=60, clock=clock)
    first = enc(cache)
    assert enc(cache) == first
    clock.now += 59.9
    assert enc(cache) == first
    assert wraps("encrypt") == 1
    clock.now += 0.1
    fresh = enc(cache)
    assert fresh.data_key != first.data_key
    assert wraps("encrypt") == 2


def test_encrypt_materials_are_partitioned_by_context_and_suite(ring, clock, wraps) -> None:
    cache = DataKeyCache(ring, cache_seconds=60, clock=clock)
    a = enc(cache, context={"t": "1"})
    b = enc(cache, context={"t": "2"})
    assert a.data_key != b.data_key
    assert enc(cache, context={"t": "1"}) == a
    signed = cache.encryption_materials(suite_id=0x0578, context={"t": "1"}, plaintext_length=1)
    assert signed.data_key != a.data_key
    assert wraps("encrypt") == 3


def test_max_messages_limits_how_often_a_data_key_is_used(ring, clock, wraps) -> None:
    cache = DataKeyCache(ring, cache_seconds=60, max_messages=3, clock=clock)
    keys = [enc(cache).data_key for _ in range(7)]
    assert keys[0] == keys[1] == keys[2] != keys[3]
    assert keys[3] == keys[4] == keys[5] != keys[6]
    assert len(set(keys)) == 3
    assert wraps("encrypt") == 3


def test_max_bytes_limits_the_plaintext_under_one_data_key(ring, clock) -> None:
    cache = DataKeyCache(ring, cache_seconds=60, max_bytes=250, clock=clock)
    k1 = enc(cache, 100).data_key
    assert enc(cache, 100).data_key == k1  # 200 bytes so far
    k2 = enc(cache, 100).data_key  # would make 300: new key
    assert k2 != k1
    assert enc(cache, 150).data_key == k2  # 250: exactly at the limit, then retired
    assert enc(cache, 1).data_key not in (k1, k2)


def test_plaintext_longer_than_max_bytes_bypasses_the_cache(ring, clock, wraps) -> None:
    cache = DataKeyCache(ring, cache_seconds=60, max_bytes=10, clock=clock)
    a, b = enc(cache, 11), enc(cache, 11)
    assert a.data_key != b.data_key
    assert len(cache) == 0


def test_unknown_length_is_never_served_from_or_stored_in_the_cache(ring, clock, wraps) -> None:
    cache = DataKeyCache(ring, cache_seconds=60, clock=clock)
    known = enc(cache, 10)
    streams = [enc(cache, None) for _ in range(3)]
    assert all(s.data_key != known.data_key for s in streams)
    assert len({s.data_key for s in streams}) == 3
    assert enc(cache, 10) == known  # the stream requests neither used nor replaced the entry
    assert wraps("encrypt") == 4


def test_decryption_materials_are_cached_by_edks_and_context_until_cache_seconds(ring, clock, wraps) -> None:
    cache = DataKeyCache(ring, cache_seconds=30, clock=clock)
    mat = ring.encryption_materials(suite_id=SUITE, context=CTX, plaintext_length=1)
    for _ in range(3):
        assert cache.decryption_materials(suite_id=SUITE, context=CTX, edks=mat.edks) == mat.data_key
    assert wraps("decrypt") == 1
    clock.now += 30
    assert cache.decryption_materials(suite_id=SUITE, context=CTX, edks=mat.edks) == mat.data_key
    assert wraps("decrypt") == 2


def test_a_cached_decryption_key_is_not_served_for_another_context(ring, clock) -> None:
    cache = DataKeyCache(ring, cache_seconds=30, clock=clock)
    mat = ring.encryption_materials(suite_id=SUITE, context=CTX, plaintext_length=1)
    cache.decryption_materials(suite_id=SUITE, context=CTX, edks=mat.edks)
    with pytest.raises(IntegrityError):
        cache.decryption_materials(suite_id=SUITE, context={"app": "other"}, edks=mat.edks)


def test_capacity_evicts_least_recently_used_and_wipes_it(ring, clock) -> None:
    cache = DataKeyCache(ring, cache_seconds=60, capacity=2, clock=clock)
    enc(cache, context={"n": "1"})
    entry = next(iter(cache._entries.values()))
    enc(cache, context={"n": "2"})
    enc(cache, context={"n": "3"})
    assert len(cache) == 2
    assert entry.key == bytearray(32)  # overwritten when it left


def test_clear_forgets_everything(ring, clock, wraps) -> None:
    cache = DataKeyCache(ring, cache_seconds=60, clock=clock)
    first = enc(cache)
    cache.clear()
    assert len(cache) == 0
    assert enc(cache).data_key != first.data_key


def test_concurrent_use_keeps_the_message_count(ring, clock) -> None:
    cache = DataKeyCache(ring, cache_seconds=60, max_messages=10, clock=clock)
    got: list[bytes] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(25):
            key = enc(cache, 1).data_key
            with lock:
                got.append(key)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 100
    assert max(got.count(k) for k in set(got)) <= 10
    assert len(set(got)) <= 20  # and the cache was really used: 100 messages, at most ~10 fresh keys


def test_wrap_existing_passes_through(ring, clock) -> None:
    cache = DataKeyCache(ring, cache_seconds=60, clock=clock)
    data_key = bytes(range(32))
    edks = cache.wrap_existing(data_key, suite_id=SUITE, context=CTX)
    assert ring.decryption_materials(suite_id=SUITE, context=CTX, edks=edks) == data_key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cache_seconds": 0},
        {"cache_seconds": -1},
        {"cache_seconds": 1, "max_messages": 0},
        {"cache_seconds": 1, "max_messages": 2**32 + 1},
        {"cache_seconds": 1, "max_bytes": -1},
        {"cache_seconds": 1, "capacity": 0},
    ],
)
def test_bad_limits_are_refused(ring, kwargs) -> None:
    with pytest.raises(InvalidArgument):
        DataKeyCache(ring, **kwargs)


def test_repr_shows_no_key(ring, clock) -> None:
    cache = DataKeyCache(ring, cache_seconds=60, clock=clock)
    mat = enc(cache)
    assert mat.data_key.hex() not in repr(cache) + repr(mat)
