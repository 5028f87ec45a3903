"""Hostile .byok input: every shape either parses or is one typed InvalidPackage, never a crash.

The seeded fuzz runs 50,000 inputs by default (a few seconds); a larger ``KEYBRIDGE_FUZZ_N`` runs
that many (the variable also sizes the emulator's router fuzz, whose default is smaller). The CLI
half checks that ``keybridge byok inspect`` turns each bad shape into one line.
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from keybridge import InvalidPackage, KeybridgeError
from keybridge._byok import MAX_DEPTH, MAX_PACKAGE, is_full_key_id
from keybridge.byok import ByokPackage
from keybridge.cli import main

KID = "https://contoso.managedhsm.azure.net/keys/kek/0123456789abcdef"
_CIPHERTEXT = base64.urlsafe_b64encode(bytes(range(256)) * 2).decode().rstrip("=")
_GOOD = ByokPackage(kid=KID, ciphertext=bytes(range(256)) * 2, generator="fuzz").to_json()
_N = max(50_000, int(os.environ.get("KEYBRIDGE_FUZZ_N", "0")))

_ODD_KIDS = (
    "https://[::1/keys/a/b", "https://h:x/keys/a/b", "https://h:99999999/keys/a/b",
    "https://u:pw@h/keys/a/b", "https://h/keys/a/b?x=1", "https://h/keys/a/b#f", "https://h/keys/a/b/",
    "https://h/keys//b", "https://h/keys/a\n/b", "https://h/keys/a\x1b[31m/b", "https://\u2100/keys/a/b",
    "https://h\uff0fx/keys/a/b", "http://h/keys/a/b", "https:///keys/a/b", "https://h/keys/a", "//h/keys/a/b",
    "https://h/keys/a/b" + "x" * 5000, "https://%zz/keys/a/b", "https://[v1.x]/keys/a/b", "", " ",
)  # fmt: skip
_KIDS = (*_ODD_KIDS, "https://[::1]:8443/keys/a/b", KID)
_WRONG: tuple[object, ...] = (
    None, True, 0, -1, 10**30, 1e308, 1.5, "", "x", [], {}, [KID], {"kid": KID}, "=" * 9, "\ud800",
    "A" * 5000, _CIPHERTEXT + "!", _CIPHERTEXT[:-1], _CIPHERTEXT.upper(),
)  # fmt: skip


def _nested(rng: random.Random) -> bytes:
    depth = rng.choice((MAX_DEPTH, MAX_DEPTH + 1, 200, 1000, 5000, 30000))
    opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}"), (b'{"header":', b"}")))
    return opener * depth + (closer * depth if rng.random() < 0.5 else b"")


def _structured(rng: random.Random) -> bytes:
    doc: dict[str, object] = json.loads(_GOOD)
    header = dict(doc["header"])  # type: ignore[call-overload]
    for _ in range(rng.randint(1, 3)):
        where = rng.choice(("schema_version", "ciphertext", "generator", "header", "kid", "alg", "enc", "extra"))
        value = rng.choice(_KIDS) if where == "kid" and rng.random() < 0.7 else rng.choice(_WRONG)
        if where in ("kid", "alg", "enc"):
            if rng.random() < 0.1:
                header.pop(where, None)
            else:
                header[where] = value
        elif rng.random() < 0.1:
            doc.pop(where, None)
        else:
            doc[where] = value
    if "header" not in doc or isinstance(doc["header"], dict):
        doc["header"] = header
    return json.dumps(doc).encode("utf-8", "surrogatepass")


def _mutated(rng: random.Random) -> bytes:
    data = bytearray(_GOOD)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        i = rng.randrange(len(data) + 1)
        if op < 0.4 and data:
            data[min(i, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op < 0.6:
            del data[i:]
        elif op < 0.8:
            data[i:i] = rng.choice((b"[", b"{", b'"', b"\\", b"\x00", b"\xff", b"1e999999", b"9" * 5000, b"\\ud800"))
        else:
            del data[i : i + rng.randint(1, 20)]
    return bytes(data)


def _random(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(rng.randint(0, 300))
    return bytes(rng.choice(b'{}[]":,0123456789.eE-+ truefalsn\\u') for _ in range(rng.randint(0, 300)))


_MAKERS = (_nested, _structured, _structured, _mutated, _mutated, _random)


def test_seeded_fuzz_every_input_parses_or_is_a_typed_error() -> None:
    rng = random.Random(9_2026)
    outcomes: Counter[str] = Counter()
    others: list[tuple[bytes, BaseException]] = []
    for _ in range(_N):
        data = rng.choice(_MAKERS)(rng)
        try:
            ByokPackage.from_json(data if rng.random() < 0.8 else data.decode("utf-8", "replace"))
            outcomes["parsed"] += 1
        except InvalidPackage:
            outcomes["invalid"] += 1
        except KeybridgeError:
            outcomes["other keybridge error"] += 1
        except Exception as exc:  # the bug this test exists to find
            others.append((data[:100], exc))
    assert others == []
    assert sum(outcomes.values()) == _N
    # Both sides were exercised: some mutations leave a valid package, most do not.
    assert outcomes["parsed"] > 0
    assert outcomes["invalid"] > _N // 2


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000 // 2])
def test_deep_nesting_is_refused_before_the_decoder_recurses(depth: int) -> None:
    with pytest.raises(InvalidPackage, match=f"nested more than {MAX_DEPTH} levels"):
        ByokPackage.from_json(b"[" * min(depth, MAX_PACKAGE // 2) + b"]" * min(depth, MAX_PACKAGE // 2))


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    doc = json.loads(_GOOD)
    doc["generator"] = "[{" * 1000 + '\\"'
    pkg = ByokPackage.from_json(json.dumps(doc))
    assert pkg.generator == doc["generator"]


@pytest.mark.parametrize("kid", _ODD_KIDS)
def test_odd_kids_are_invalid_package_naming_the_kid(kid: str) -> None:
    assert not is_full_key_id(kid)
    doc = json.loads(_GOOD)
    doc["header"]["kid"] = kid
    with pytest.raises(InvalidPackage, match=r"header kid .* is not a full key identifier"):
        ByokPackage.from_json(json.dumps(doc))


def test_a_kid_with_credentials_is_not_quoted_with_them() -> None:
    doc = json.loads(_GOOD)
    doc["header"]["kid"] = "https://user:CANARY@h/keys/a/b#SECRET"
    with pytest.raises(InvalidPackage) as info:
        ByokPackage.from_json(json.dumps(doc))
    assert "CANARY" not in str(info.value)
    assert "SECRET" not in str(info.value)


def test_a_non_string_generator_is_refused() -> None:
    doc = json.loads(_GOOD)
    doc["generator"] = {"nested": [1, 2]}
    with pytest.raises(InvalidPackage, match="generator must be a string"):
        ByokPackage.from_json(json.dumps(doc))


def test_read_stops_at_the_size_bound(tmp_path: Path) -> None:
    big = tmp_path / "big.byok"
    big.write_bytes(b" " * (MAX_PACKAGE * 20))
    with pytest.raises(InvalidPackage, match=f"at most {MAX_PACKAGE}"):
        ByokPackage.read(big)


_BAD_SHAPES = {
    "deep": b"[" * 1000 + b"]" * 1000,
    "ipv6-kid": _GOOD.replace(KID.encode(), b"https://[::1/keys/a/b"),
    "truncated": _GOOD[: len(_GOOD) // 2],
    "huge-number": _GOOD.replace(b'"fuzz"', b"9" * 5000),
    "binary": bytes(range(256)),
    "big": b" " * (MAX_PACKAGE + 1),
}


@pytest.mark.parametrize("name", sorted(_BAD_SHAPES))
def test_inspect_prints_one_error_line_for_each_bad_shape(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{name}.byok"
    path.write_bytes(_BAD_SHAPES[name])
    with pytest.raises(SystemExit) as exit_info:
        main(["byok", "inspect", str(path)])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("keybridge: error: ")
    assert captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


def test_inspect_escapes_control_characters_in_the_generator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ansi.byok"
    ByokPackage(kid=KID, ciphertext=bytes(range(256)) * 2, generator="tool\x1b[2J\nfake line").write(path)
    with pytest.raises(SystemExit) as exit_info:
        main(["byok", "inspect", str(path)])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "tool\\x1b[2J\\nfake line" in out
