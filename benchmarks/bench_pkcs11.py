"""Ops/s of keybridge's PKCS#11 provider vs raw python-pkcs11 on the same fresh SoftHSM2 token.

RSA-2048 sign (RS256), ECDSA P-256 sign (ES256) and AES key wrap (A256KW of a 32-byte key), each
with 1 and 2 threads. The raw side does the same PKCS#11 work (same mechanisms, key handles looked
up once, one session per thread) so the ratio shows keybridge's own overhead. Also measured: the
provider with the process-wide lock instead of OS locking (KEYBRIDGE_PKCS11_THREADING=lock).

    python benchmarks/bench_pkcs11.py [--seconds 0.8] [--reps 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
LABEL, PIN = "bench", "1234"
DIGEST = hashlib.sha256(b"bench").digest()
DEK = os.urandom(32)
OPS = ("RSA-2048 sign", "ECDSA P-256 sign", "AES key wrap")


def make_token(root: str) -> str:
    os.makedirs(f"{root}/tokens")
    conf = f"{root}/softhsm2.conf"
    with open(conf, "w") as fh:
        fh.write(f"directories.tokendir = {root}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": conf}
    cmd = ["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--so-pin", "12345678", "--pin", PIN]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return conf


def rate(make_op: Callable[[], Callable[[], object]], threads: int, seconds: float) -> float:
    """Calls per second of the op ``make_op()`` returns, summed over ``threads`` threads."""
    counts = [0] * threads
    ready = threading.Barrier(threads + 1)
    stop = threading.Event()

    def loop(i: int) -> None:
        op = make_op()
        op()  # warm up (session, handle cache)
        ready.wait()
        n = 0
        while not stop.is_set():
            op()
            n += 1
        counts[i] = n

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    ready.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def keybridge_ops(module: str) -> tuple[dict[str, Callable[[], Callable[[], object]]], object]:
    from keybridge import KeySpec
    from keybridge.providers.pkcs11 import Pkcs11Provider

    p = Pkcs11Provider(module, LABEL, PIN)
    for name, spec in (("rsa", KeySpec.rsa(2048)), ("ec", KeySpec.ec("P-256")), ("aes", KeySpec.aes(256))):
        if not any(k.ref.name == name for k in p.list_keys()):
            p.create_key(name, spec)
    ops = {
        OPS[0]: lambda: lambda: p.sign("rsa", "RS256", DIGEST),
        OPS[1]: lambda: lambda: p.sign("ec", "ES256", DIGEST),
        OPS[2]: lambda: lambda: p.wrap_key("aes", "A256KW", DEK),
    }
    return ops, p


def raw_ops(module: str) -> dict[str, Callable[[], Callable[[], object]]]:
    import pkcs11
    from pkcs11 import Attribute as A
    from pkcs11 import KeyType as KT
    from pkcs11 import Mechanism as M
    from pkcs11 import ObjectClass as OC

    token = pkcs11.lib(module).get_token(token_label=LABEL)  # the provider's (OS-locking) instance
    prefix = bytes.fromhex("3031300d060960864801650304020105000420")
    tpl = {A.CLASS: OC.SECRET_KEY, A.KEY_TYPE: KT.GENERIC_SECRET, A.TOKEN: False, A.VALUE: DEK}
    tpl.update({A.EXTRACTABLE: True, A.SENSITIVE: True})

    def session_key(cls: OC, label: str) -> object:
        s = token.open(rw=True)
        return s, s.get_key(object_class=cls, label=label)

    def rsa() -> Callable[[], object]:
        _, k = session_key(OC.PRIVATE_KEY, "rsa")
        return lambda: k.sign(prefix + DIGEST, mechanism=M.RSA_PKCS)

    def ecdsa() -> Callable[[], object]:
        _, k = session_key(OC.PRIVATE_KEY, "ec")
        return lambda: k.sign(DIGEST, mechanism=M.ECDSA)

    def wrap() -> Callable[[], object]:
        s, k = session_key(OC.SECRET_KEY, "aes")

        def op() -> bytes:
            tmp = s.create_object(tpl)
            try:
                return k.wrap_key(tmp, mechanism=M.AES_KEY_WRAP)
            finally:
                tmp.destroy()

        return op

    return {OPS[0]: rsa, OPS[1]: ecdsa, OPS[2]: wrap}


def measure(module: str, seconds: float, reps: int, *, with_raw: bool) -> dict[str, dict[str, float]]:
    """Best of ``reps`` runs per cell, raw and keybridge interleaved so background load hits both."""
    ops, provider = keybridge_ops(module)
    sides = {"keybridge": ops, **({"raw": raw_ops(module)} if with_raw else {})}
    results: dict[str, dict[str, float]] = {side: {} for side in sides}
    for op in OPS:
        for n in (1, 2):
            for _ in range(reps):
                for side, table in sides.items():
                    got = rate(table[op], n, seconds)
                    results[side][f"{op}/{n}"] = max(got, results[side].get(f"{op}/{n}", 0.0))
    provider.close()  # type: ignore[attr-defined]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.8, help="measuring time per run")
    parser.add_argument("--reps", type=int, default=3, help="runs per cell (the best counts)")
    parser.add_argument("--quick", action="store_true", help="one short run per cell (a smoke test)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.reps = 0.2, 1
    module = next((m for m in MODULES if os.path.exists(m)), None)
    if module is None or shutil.which("softhsm2-util") is None:
        print("softhsm2 is not installed; nothing to measure")
        return 0
    if args.child:  # lock-mode provider in a fresh process, token already set up by the parent
        print(json.dumps(measure(module, args.seconds, args.reps, with_raw=False)))
        return 0
    root = tempfile.mkdtemp(prefix="kb-bench-")
    try:
        conf = make_token(root)
        os.environ["SOFTHSM2_CONF"] = conf
        os_mode = measure(module, args.seconds, args.reps, with_raw=True)
        env = {**os.environ, "KEYBRIDGE_PKCS11_THREADING": "lock"}
        child = [sys.executable, __file__, "--child", "--seconds", str(args.seconds), "--reps", str(args.reps)]
        out = subprocess.run(child, env=env, check=True, capture_output=True, text=True).stdout
        lock_mode = json.loads(out)["keybridge"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    kb, raw = os_mode["keybridge"], os_mode["raw"]
    print(f"{'operation':<18}{'thr':>4}{'raw ops/s':>12}{'keybridge':>12}{'kb/raw':>8}{'kb lock-mode':>14}")
    for op in OPS:
        for n in (1, 2):
            key = f"{op}/{n}"
            print(f"{op:<18}{n:>4}{raw[key]:>12.0f}{kb[key]:>12.0f}{kb[key] / raw[key]:>8.2f}{lock_mode[key]:>14.0f}")
    print()
    print(f"{'operation':<18}{'2thr/1thr raw':>15}{'keybridge':>11}{'kb lock-mode':>14}")
    for op in OPS:
        scale = [d[f"{op}/2"] / d[f"{op}/1"] for d in (raw, kb, lock_mode)]
        print(f"{op:<18}{scale[0]:>15.2f}{scale[1]:>11.2f}{scale[2]:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
