"""Envelope encryption speed: keybridge against the AES-GCM kernel, a naive AES-GCM loop and
aws-encryption-sdk, all measured in this one run, plus a 1 GiB file round trip's peak memory.

    python benchmarks/bench_envelope.py            # 64 MiB in memory, 1 GiB file
    python benchmarks/bench_envelope.py --quick    # 8 MiB, 64 MiB file (CI size)

Keybridge uses a real Keyring over an InMemoryProvider AES-256 key; the ESDK uses a RawMasterKey
with the same key (both AES-GCM wrap the data key). The encryption context has two pairs.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MiB = 1 << 20
CHUNK = 64 * 1024
CTX = {"purpose": "bench", "tenant": "t-1"}


def best_rate(fn: Callable[[], object], nbytes: int, reps: int) -> float:
    """Median MiB/s over ``reps`` runs."""
    times = []
    for _ in range(reps):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return nbytes / MiB / statistics.median(times)


def per_second(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second, run for about ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        for _ in range(50):
            fn()
        n += 50
    return n / elapsed


def our_key(kek: bytes):  # type: ignore[no-untyped-def]
    from keybridge import InMemoryProvider
    from keybridge.envelope import Keyring

    provider = InMemoryProvider()
    provider.import_key("kek", kek)
    return Keyring(provider.key("kek"), namespace="bench", name="kek")


def keys():  # type: ignore[no-untyped-def]
    from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
    from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
    from aws_encryption_sdk.key_providers.raw import RawMasterKey

    kek = os.urandom(32)
    ours = our_key(kek)
    theirs = RawMasterKey(
        provider_id="bench",
        key_id=b"kek",
        wrapping_key=WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=kek,
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        ),
    )
    return ours, theirs


def in_memory(size: int, reps: int) -> dict[str, float]:
    import aws_encryption_sdk
    from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy

    from keybridge.envelope import Suite, decrypt, encrypt, open_decryptor, open_encryptor

    ours, theirs = keys()
    esdk = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    data = os.urandom(size)
    view = memoryview(data)
    aead = AESGCM(os.urandom(32))
    aad = os.urandom(72)
    r: dict[str, float] = {}

    def kernel_enc() -> None:
        buf = bytearray(CHUNK + 16)
        for i in range(0, size, CHUNK):
            aead.encrypt_into(i.to_bytes(12, "big"), view[i : i + CHUNK], aad, buf)

    sealed = [aead.encrypt(i.to_bytes(12, "big"), view[i : i + CHUNK], aad) for i in range(0, size, CHUNK)]

    def kernel_dec() -> None:
        buf = bytearray(CHUNK)
        for n, c in enumerate(sealed):
            aead.decrypt_into((n * CHUNK).to_bytes(12, "big"), c, aad, buf)

    r["kernel enc"] = best_rate(kernel_enc, size, reps)
    r["kernel dec"] = best_rate(kernel_dec, size, reps)
    r["naive enc"] = best_rate(
        lambda: b"".join(aead.encrypt(i.to_bytes(12, "big"), view[i : i + CHUNK], aad) for i in range(0, size, CHUNK)),
        size,
        reps,
    )
    r["naive dec"] = best_rate(
        lambda: b"".join(aead.decrypt((n * CHUNK).to_bytes(12, "big"), c, aad) for n, c in enumerate(sealed)),
        size,
        reps,
    )

    msg = encrypt(data, ours, context=CTX)
    assert decrypt(msg, ours).plaintext == data
    r["keybridge enc"] = best_rate(lambda: encrypt(data, ours, context=CTX), size, reps)
    r["keybridge dec"] = best_rate(lambda: decrypt(msg, ours), size, reps)

    def stream_enc() -> None:
        src, buf = io.BytesIO(data), bytearray(MiB)
        with open(os.devnull, "wb", buffering=0) as sink, open_encryptor(sink, ours, context=CTX) as w:
            while n := src.readinto(buf):
                w.write(memoryview(buf)[:n])

    def stream_dec() -> None:
        buf = bytearray(MiB)
        with open(os.devnull, "wb", buffering=0) as sink, open_decryptor(io.BytesIO(msg), ours) as rd:
            while n := rd.readinto(buf):
                sink.write(memoryview(buf)[:n])

    r["keybridge stream enc"] = best_rate(stream_enc, size, reps)
    r["keybridge stream dec"] = best_rate(stream_dec, size, reps)
    signed = Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384
    smsg = encrypt(data, ours, context=CTX, suite=signed, frame_length=4096)
    r["keybridge 0578/4K enc"] = best_rate(
        lambda: encrypt(data, ours, context=CTX, suite=signed, frame_length=4096), size, reps
    )
    r["keybridge 0578/4K dec"] = best_rate(lambda: decrypt(smsg, ours), size, reps)

    alg = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
    emsg, _ = esdk.encrypt(source=data, key_provider=theirs, encryption_context=CTX, algorithm=alg, frame_length=CHUNK)
    assert decrypt(emsg, ours).plaintext == data  # the comparison is between interoperable messages
    r["esdk 0478/64K enc"] = best_rate(
        lambda: esdk.encrypt(
            source=data, key_provider=theirs, encryption_context=CTX, algorithm=alg, frame_length=CHUNK
        ),
        size,
        reps,
    )
    r["esdk 0478/64K dec"] = best_rate(lambda: esdk.decrypt(source=emsg, key_provider=theirs), size, reps)
    dmsg, _ = esdk.encrypt(source=data, key_provider=theirs, encryption_context=CTX)
    r["esdk defaults enc"] = best_rate(
        lambda: esdk.encrypt(source=data, key_provider=theirs, encryption_context=CTX), size, reps
    )
    r["esdk defaults dec"] = best_rate(lambda: esdk.decrypt(source=dmsg, key_provider=theirs), size, reps)
    return r


def small_messages(seconds: float) -> dict[str, float]:
    import aws_encryption_sdk
    from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy

    from keybridge.envelope import decrypt, encrypt

    ours, theirs = keys()
    esdk = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    pt = os.urandom(1024)
    alg = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
    msg = encrypt(pt, ours, context=CTX)
    emsg, _ = esdk.encrypt(source=pt, key_provider=theirs, encryption_context=CTX, algorithm=alg)
    dmsg, _ = esdk.encrypt(source=pt, key_provider=theirs, encryption_context=CTX)
    return {
        "keybridge enc": per_second(lambda: encrypt(pt, ours, context=CTX), seconds),
        "keybridge dec": per_second(lambda: decrypt(msg, ours), seconds),
        "esdk 0478 enc": per_second(
            lambda: esdk.encrypt(source=pt, key_provider=theirs, encryption_context=CTX, algorithm=alg), seconds
        ),
        "esdk 0478 dec": per_second(lambda: esdk.decrypt(source=emsg, key_provider=theirs), seconds),
        "esdk defaults enc": per_second(
            lambda: esdk.encrypt(source=pt, key_provider=theirs, encryption_context=CTX), seconds
        ),
        "esdk defaults dec": per_second(lambda: esdk.decrypt(source=dmsg, key_provider=theirs), seconds),
    }


def file_child(directory: str, size: int) -> None:
    """Run in a fresh interpreter: make a file, encrypt and decrypt it, report speed and peak RSS."""
    import hashlib

    from keybridge.envelope import decrypt_file, encrypt_file

    ours = our_key(os.urandom(32))  # no ESDK import here: it would dominate the peak RSS
    plain, enc, dec = (os.path.join(directory, n) for n in ("plain", "enc", "dec"))
    h = hashlib.sha256()
    with open(plain, "wb") as f:
        block = os.urandom(MiB)
        for i in range(size // MiB):
            chunk = i.to_bytes(8, "big") + block[8:]  # distinct blocks, cheap to make
            h.update(chunk)
            f.write(chunk)
    t0 = time.perf_counter()
    encrypt_file(plain, enc, ours, context=CTX)
    t1 = time.perf_counter()
    decrypt_file(enc, dec, ours)
    t2 = time.perf_counter()
    check = hashlib.sha256()
    with open(dec, "rb") as f:
        while chunk := f.read(MiB):
            check.update(chunk)
    assert check.digest() == h.digest(), "round trip mismatch"
    print(f"{size / MiB / (t1 - t0):.0f} {size / MiB / (t2 - t1):.0f} {peak_rss_mib():.1f}")


def peak_rss_mib() -> float:
    """This process's peak resident set. VmHWM first: on Linux, ru_maxrss survives execve and would
    report the (large) parent that spawned us."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def big_file(size: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        free = shutil.disk_usage(d).free
        if free < 3.2 * size:
            raise SystemExit(f"need {3.2 * size / MiB:.0f} MiB free in {d} for the file test, have {free / MiB:.0f}")
        out = subprocess.run(
            [sys.executable, __file__, "--file-child", d, str(size)], check=True, capture_output=True, text=True
        ).stdout.split()
    enc, dec, peak = map(float, out)
    return enc, dec, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI size: 8 MiB in memory, 64 MiB file")
    ap.add_argument("--file-mib", type=int, default=None, help="size of the file round trip (default 1024)")
    ap.add_argument("--file-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.file_child:
        file_child(args.file_child[0], int(args.file_child[1]))
        return
    size = (8 if args.quick else 64) * MiB
    reps = 3
    file_size = (args.file_mib or (64 if args.quick else 1024)) * MiB

    r = in_memory(size, reps)
    print(f"\nIn memory, {size // MiB} MiB, median of {reps} (MiB/s)")
    print(f"{'configuration':28} {'encrypt':>9} {'decrypt':>9}")
    for name in dict.fromkeys(k.rsplit(" ", 1)[0] for k in r):
        print(f"{name:28} {r[name + ' enc']:9.0f} {r[name + ' dec']:9.0f}")

    m = small_messages(0.5 if args.quick else 2.0)
    print("\n1 KiB messages per second")
    for name in dict.fromkeys(k.rsplit(" ", 1)[0] for k in m):
        print(f"{name:28} {m[name + ' enc']:9.0f} {m[name + ' dec']:9.0f}")

    fenc, fdec, peak = big_file(file_size)
    print(
        f"\nFile round trip, {file_size // MiB} MiB: encrypt_file {fenc:.0f} MiB/s, decrypt_file {fdec:.0f} MiB/s,"
        f" peak RSS {peak:.1f} MiB"
    )

    print("\nRatios (target)")
    checks = []

    def ratio(label: str, value: float, target: float, unit: str = "x") -> None:
        ok = value >= target if unit == "x" else value < target
        checks.append(ok)
        bound = f">= {target}" if unit == "x" else f"< {target}"
        shown = f"{value:.2f}x" if unit == "x" else f"{value:.1f} MiB"
        print(f"  {label:52} {shown:>10}  ({bound}{'' if unit == 'x' else ' MiB'})  {'ok' if ok else 'MISSED'}")

    for op in ("enc", "dec"):
        kb = r[f"keybridge {op}"]
        ratio(f"one-shot {op} vs naive AES-GCM loop", kb / r[f"naive {op}"], 1.0)
        ratio(f"one-shot {op} vs ESDK 0x0478, 64 KiB frames", kb / r[f"esdk 0478/64K {op}"], 2.0)
        ratio(f"one-shot {op} vs ESDK defaults (0x0578, 4 KiB)", kb / r[f"esdk defaults {op}"], 10.0)
        ratio(f"stream {op} vs kernel", r[f"keybridge stream {op}"] / r[f"kernel {op}"], 0.35)
        ratio(f"1 KiB messages/s {op} vs ESDK defaults", m[f"keybridge {op}"] / m[f"esdk defaults {op}"], 5.0)
        ratio(f"1 KiB messages/s {op} vs ESDK 0x0478", m[f"keybridge {op}"] / m[f"esdk 0478 {op}"], 1.0)
    ratio(f"peak RSS, {file_size // MiB} MiB file enc + dec", peak, 100.0, unit="MiB")
    if not all(checks):
        print("\nsome targets were missed (see above)")


if __name__ == "__main__":
    main()
