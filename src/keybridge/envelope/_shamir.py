"""Shamir secret sharing over GF(2^8), byte by byte, for k-of-n recipients.

Each byte of the secret is the constant term of its own random polynomial of degree ``k - 1``
over GF(256) (the AES field, x^8 + x^4 + x^3 + x + 1); share ``x`` (1..n) holds every polynomial's
value at ``x``. Any ``k`` shares determine the polynomials (Lagrange interpolation at 0); any
``k - 1`` shares are consistent with every possible secret byte with equal probability, so they
reveal nothing about it (information-theoretic, given uniformly random coefficients from the OS).

Field multiplication is written without secret-dependent branches or table lookups (shift and
mask), because its operands include secret bytes; inverses are only taken of share indices,
which are public.
"""

from __future__ import annotations

import secrets

from ..errors import IntegrityError, InvalidArgument

__all__ = ["combine", "split"]


def _mul(a: int, b: int) -> int:
    """Product in GF(2^8), branch-free in both operands."""
    r = 0
    for _ in range(8):
        r ^= a & -(b & 1)
        b >>= 1
        a = ((a << 1) ^ (0x11B & -(a >> 7))) & 0xFF
    return r


def _inv(a: int) -> int:
    """Multiplicative inverse (a^254); only ever applied to public share indices."""
    r, p = 1, a
    for bit in range(8):
        if (254 >> bit) & 1:
            r = _mul(r, p)
        p = _mul(p, p)
    return r


def split(secret: bytes, k: int, n: int) -> list[bytes]:
    """``n`` shares of ``secret`` (share i belongs to x = i + 1); any ``k`` recover it."""
    if not 1 <= k <= n <= 255:
        raise InvalidArgument(f"Shamir sharing needs 1 <= k <= n <= 255, got k={k}, n={n}")
    shares = [bytearray(len(secret)) for _ in range(n)]
    for pos, byte in enumerate(secret):
        coeffs = [byte, *secrets.token_bytes(k - 1)]
        for i in range(n):
            x, y = i + 1, 0
            for c in reversed(coeffs):  # Horner's rule
                y = _mul(y, x) ^ c
            shares[i][pos] = y
    return [bytes(s) for s in shares]


def combine(shares: dict[int, bytes]) -> bytes:
    """The secret from shares by index (``{x: share}``); with too few or mixed-up shares the
    result is simply wrong, which the caller's key commitment detects."""
    if not shares or any(not 1 <= x <= 255 for x in shares):
        raise InvalidArgument("Shamir combine needs share indices between 1 and 255")
    lengths = {len(s) for s in shares.values()}
    if len(lengths) != 1:
        raise IntegrityError("k-of-n shares have different lengths; they do not belong together")
    xs = list(shares)
    # Lagrange basis at 0: l_j = prod_{m != j} x_m / (x_m - x_j); subtraction is XOR in GF(2^8).
    basis = {}
    for j in xs:
        num = den = 1
        for m in xs:
            if m != j:
                num = _mul(num, m)
                den = _mul(den, m ^ j)
        basis[j] = _mul(num, _inv(den))
    out = bytearray(lengths.pop())
    for x, share in shares.items():
        lx = basis[x]
        for pos, y in enumerate(share):
            out[pos] ^= _mul(y, lx)
    return bytes(out)
