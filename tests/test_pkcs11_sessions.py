"""Threads, fork, login and session hygiene of the PKCS#11 provider on a real SoftHSM2 token.

Run as a script (``python tests/test_pkcs11_sessions.py``) it performs the 8-thread stress once
and prints the error count; the lock-mode test uses that to run in a fresh process.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from keybridge import AuthenticationError, KeySpec, ProviderUnavailable
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

from keybridge.providers.pkcs11 import THREADING_ENV, Pkcs11Provider
from keybridge.providers.pkcs11._library import Library

DIGEST = hashlib.sha256(b"stress").digest()


def stress(p: Pkcs11Provider, threads: int = 8, rounds: int = 40) -> list[str]:
    """Mixed operations from ``threads`` threads on shared keys; returns every failure seen."""
    names = {"rsa": "stress-rsa", "ec": "stress-ec", "aes": "stress-aes"}
    p.create_key(names["rsa"], KeySpec.rsa(2048))
    p.create_key(names["ec"], KeySpec.ec("P-256"))
    p.create_key(names["aes"], KeySpec.aes(256))
    errors: list[str] = []
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        start.wait()
        for i in range(rounds):
            try:
                data = os.urandom(16 + i)
                step = (n + i) % 4
                if step == 0:
                    ok = p.verify(names["rsa"], "PS256", DIGEST, p.sign(names["rsa"], "PS256", DIGEST))
                elif step == 1:
                    ok = p.verify(names["ec"], "ES256", DIGEST, p.sign(names["ec"], "ES256", DIGEST))
                elif step == 2:
                    ok = (
                        p.decrypt(names["aes"], "A256GCM", p.encrypt(names["aes"], "A256GCM", data, aad=b"a"), aad=b"a")
                        == data
                    )
                else:
                    dek = os.urandom(32)
                    ok = p.unwrap_key(names["aes"], "A256KW", p.wrap_key(names["aes"], "A256KW", dek)) == dek
                ok = ok and p.get_key(names["ec"]).spec == KeySpec.ec("P-256")
                if not ok:
                    errors.append(f"thread {n} round {i}: wrong result")
            except Exception as exc:
                errors.append(f"thread {n} round {i}: {exc!r}")

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for name in names.values():
        p.delete_key(name)
    return errors


@pytest.fixture(scope="module")
def provider(softhsm_token: SoftHsmToken) -> Iterator[Pkcs11Provider]:
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        yield p


def open_sessions(lib: Library, token_label: str) -> set[int]:
    """Handles of every session this process has open (SoftHSM numbers them upwards)."""
    probe = lib.lib.get_token(token_label=token_label).open()
    top = probe.handle
    probe.close()
    return {h for h in range(1, top) if lib.raw.session_valid(h)}


def test_eight_threads_mixed_operations_without_errors(provider: Pkcs11Provider) -> None:
    assert provider._pool.lib.os_locking, "expected the module to be initialised with CKF_OS_LOCKING_OK"
    assert stress(provider) == []


def test_eight_threads_in_process_wide_lock_mode(softhsm_token: SoftHsmToken) -> None:
    env = {**softhsm_token.env, THREADING_ENV: "lock"}
    args = [sys.executable, __file__, softhsm_token.module_path, softhsm_token.token_label]
    out = subprocess.run(args, env=env, input=softhsm_token.user_pin, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["mode=lock", "errors=0"], out.stdout


def test_wrong_pin_is_authentication_error_and_leaks_no_session(softhsm_token: SoftHsmToken) -> None:
    # A fresh process, so no login of this one is shared (which would refuse another PIN early).
    code = f"""
import sys
from keybridge import AuthenticationError
from keybridge.providers.pkcs11 import Pkcs11Provider
from keybridge.providers.pkcs11._library import Library
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_pkcs11_sessions import open_sessions
mod, label, pin = {softhsm_token.module_path!r}, {softhsm_token.token_label!r}, sys.stdin.read()
lib = Library.get(mod)
before = open_sessions(lib, label)
try:
    Pkcs11Provider(mod, label, "0000-wrong")
except AuthenticationError as exc:
    assert "0000-wrong" not in str(exc) and "incorrect" in str(exc), str(exc)
else:
    raise SystemExit("wrong PIN accepted")
assert open_sessions(lib, label) == before, "session leaked after a wrong PIN"
with Pkcs11Provider(mod, label, pin) as p:
    p.get_key
assert open_sessions(lib, label) == before, "session leaked after close()"
# the probe can see a leak: python-pkcs11's own Token.open leaks on a wrong PIN
import pkcs11
try:
    lib.lib.get_token(token_label=label).open(user_pin="0000-wrong")
except pkcs11.PinIncorrect:
    pass
assert len(open_sessions(lib, label) - before) == 1
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=softhsm_token.env,
        input=softhsm_token.user_pin,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_second_provider_with_other_pin_is_refused(softhsm_token: SoftHsmToken, provider: Pkcs11Provider) -> None:
    # Login is per process: without this check a wrong PIN would ride on the existing login.
    with pytest.raises(AuthenticationError, match="different PIN"):
        Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, "0000-wrong")


def test_closing_one_provider_keeps_the_other_logged_in(softhsm_token: SoftHsmToken, provider: Pkcs11Provider) -> None:
    provider.create_key("two-providers", KeySpec.aes(128))
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as other:
        assert other.get_key("two-providers").spec.size == 128
    assert provider.decrypt("two-providers", "A128GCM", provider.encrypt("two-providers", "A128GCM", b"x")) == b"x"
    provider.delete_key("two-providers")


# python-pkcs11's operation object complains from __del__ when its session was killed under it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_invalid_session_is_reopened_transparently(provider: Pkcs11Provider) -> None:
    provider.create_key("recover", KeySpec.ec("P-256"))
    provider.sign("recover", "ES256", DIGEST)  # leaves a pooled session with a cached handle
    pool = provider._pool
    for entry in pool._idle:
        assert pool.lib.raw.close_session(entry.session.handle) == 0  # killed behind the pool's back
    sig = provider.sign("recover", "ES256", DIGEST)
    assert provider.verify("recover", "ES256", DIGEST, sig)
    provider.delete_key("recover")


def test_logout_by_someone_else_is_recovered(provider: Pkcs11Provider) -> None:
    provider.create_key("relogin", KeySpec.aes(256))
    pool = provider._pool
    login = pool.lib._logins[pool.token.slot.slot_id]
    assert pool.lib.raw.logout(login.session.handle) == 0  # C_Logout logs out every session
    ct = provider.encrypt("relogin", "A256GCM", b"still works")
    assert provider.decrypt("relogin", "A256GCM", ct) == b"still works"
    provider.delete_key("relogin")


def test_logout_is_recovered_when_several_providers_share_the_login(
    softhsm_token: SoftHsmToken, provider: Pkcs11Provider
) -> None:
    provider.create_key("relogin-shared", KeySpec.aes(256))
    pool = provider._pool
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as other:
        login = pool.lib._logins[pool.token.slot.slot_id]
        assert login.refs >= 2
        assert pool.lib.raw.logout(login.session.handle) == 0
        # other has nothing cached: its first lookup sees no private objects until it logs in again
        ct = other.encrypt("relogin-shared", "A256GCM", b"shared")
        assert provider.decrypt("relogin-shared", "A256GCM", ct) == b"shared"
        assert pool.lib.logged_in(pool.token)
    provider.delete_key("relogin-shared")


def test_threads_use_at_most_one_session_each_and_close_leaves_none(softhsm_token: SoftHsmToken) -> None:
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        before = open_sessions(p._pool.lib, softhsm_token.token_label)
        assert stress(p, threads=8, rounds=12) == []
        assert 1 <= len(p._pool._idle) <= 8
        during = open_sessions(p._pool.lib, softhsm_token.token_label)
        assert len(during - before) == len(p._pool._idle)
    assert open_sessions(p._pool.lib, softhsm_token.token_label) == before


def test_closed_provider_raises_provider_unavailable(softhsm_token: SoftHsmToken) -> None:
    p = Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin)
    p.close()
    p.close()  # idempotent
    with pytest.raises(ProviderUnavailable, match="closed"):
        p.list_keys()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_forked_while_another_thread_holds_the_library_lock_works(provider: Pkcs11Provider) -> None:
    # Only the forking thread survives in the child: a lock held by another thread at fork time
    # would stay locked forever there unless the library replaces it.
    provider.create_key("fork-locked", KeySpec.ec("P-256"))
    lib = provider._pool.lib
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lib._mu:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ok = provider.verify("fork-locked", "ES256", DIGEST, provider.sign("fork-locked", "ES256", DIGEST))
                code = 0 if ok else 2
            finally:
                os._exit(code)
        status = _wait_or_kill(pid, 60)
    finally:
        release.set()
        holder.join()
    assert status is not None, "the forked child hung on a lock another thread held at fork time"
    assert os.waitstatus_to_exitcode(status) == 0
    provider.delete_key("fork-locked")


def _wait_or_kill(pid: int, limit: float) -> int | None:
    """The child's wait status, or None after killing it when it has not finished within ``limit`` s
    (a hang guard, not a speed check)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_reinitialises_and_works(provider: Pkcs11Provider) -> None:
    provider.create_key("fork-key", KeySpec.ec("P-256"))
    parent_sig = provider.sign("fork-key", "ES256", DIGEST)
    pid = os.fork()
    if pid == 0:  # child: must re-initialise the module, log in again, and work
        code = 1
        try:
            ok = provider.verify("fork-key", "ES256", DIGEST, provider.sign("fork-key", "ES256", DIGEST))
            child_key = provider.create_key("fork-child", KeySpec.aes(128))
            code = 0 if ok and provider._pool.lib.generation > 0 and child_key.spec.size == 128 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert provider.verify("fork-key", "ES256", DIGEST, parent_sig)
    assert provider.get_key("fork-child", version=None).spec.size == 128  # the child's key is on the token
    assert provider.verify("fork-key", "ES256", DIGEST, provider.sign("fork-key", "ES256", DIGEST))
    provider.delete_key("fork-key")
    provider.delete_key("fork-child")


if __name__ == "__main__":
    with Pkcs11Provider(sys.argv[1], sys.argv[2], sys.stdin.read()) as p:
        failures = stress(p)
        print(f"mode={'os' if p._pool.lib.os_locking else 'lock'} errors={len(failures)}")
        for line in failures[:5]:
            print(line, file=sys.stderr)
