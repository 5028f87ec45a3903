"""keybridge._files: unnamed (O_TMPFILE) outputs, exclusive creation, protected inputs, and what a
SIGKILL in the middle of a write leaves behind (nothing). Real files, real processes."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keybridge import _files
from keybridge._files import atomic_output, atomic_write, check_output
from keybridge.errors import InvalidArgument, KeybridgeError, OutputExists


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _write_then(target: Path, meanwhile: Callable[[], object], **options: Any) -> None:
    """Write into ``target`` through atomic_output and run ``meanwhile`` before leaving the block."""
    with atomic_output(target, **options) as f:
        f.write(b"mine")
        meanwhile()


def _boom() -> None:
    raise RuntimeError("boom")


def test_the_data_has_no_name_until_it_is_complete(tmp_path: Path) -> None:
    with atomic_output(tmp_path / "out") as f:
        f.write(b"secret plaintext" * 1000)
        f.flush()
        assert _names(tmp_path) == []  # an O_TMPFILE: no temp name, not even a hidden one
        link = os.readlink(f"/proc/self/fd/{f.fileno()}")
        assert link.startswith(str(tmp_path))
        assert link.endswith("(deleted)")
    assert _names(tmp_path) == ["out"]
    assert (tmp_path / "out").read_bytes() == b"secret plaintext" * 1000
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o600


def test_an_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"keep me")
    ran: list[bool] = []
    with pytest.raises(OutputExists, match="overwrite=True") as caught:
        _write_then(target, lambda: ran.append(True))
    assert not ran  # refused before any work is done
    assert isinstance(caught.value, FileExistsError)
    assert isinstance(caught.value, KeybridgeError)
    assert caught.value.path == str(target)
    assert target.read_bytes() == b"keep me"
    atomic_write(target, b"new", mode=0o644, overwrite=True)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert _names(tmp_path) == ["out"]


def test_a_dangling_symlink_counts_as_taken(tmp_path: Path) -> None:
    (tmp_path / "out").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputExists):
        atomic_write(tmp_path / "out", b"x")
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_is_refused_as_an_output(tmp_path: Path, overwrite: bool) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(InvalidArgument, match="is a directory"):
        atomic_write(tmp_path / "d", b"x", overwrite=overwrite)
    assert _names(tmp_path) == ["d"]
    assert _names(tmp_path / "d") == []


def test_a_file_created_meanwhile_wins_and_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(OutputExists, match="nothing was written"):
        _write_then(target, lambda: target.write_bytes(b"theirs"))  # another process got there first
    assert target.read_bytes() == b"theirs"
    assert _names(tmp_path) == ["out"]


def test_two_writers_racing_for_one_name_exactly_one_wins(tmp_path: Path) -> None:
    target = tmp_path / "out"
    both_inside = threading.Barrier(2)
    results: dict[str, str] = {}

    def writer(name: str) -> None:
        try:
            with atomic_output(target) as f:
                f.write(name.encode() * 10_000)
                both_inside.wait(timeout=10)  # both passed the up-front check
        except OutputExists:
            results[name] = "refused"
        else:
            results[name] = "wrote"

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["refused", "wrote"]
    winner = next(n for n, r in results.items() if r == "wrote")
    assert target.read_bytes() == winner.encode() * 10_000
    assert _names(tmp_path) == ["out"]


def test_an_exception_leaves_nothing_and_the_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        _write_then(target, _boom, overwrite=True)
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["out"]


@pytest.mark.parametrize("link", ["same", "hardlink", "symlink"])
def test_a_protected_file_is_never_written_even_with_overwrite(tmp_path: Path, link: str) -> None:
    keystore = tmp_path / "keystore.kbks"
    keystore.write_bytes(b"precious keys")
    target = {"same": keystore, "hardlink": tmp_path / "h", "symlink": tmp_path / "s"}[link]
    if link == "hardlink":
        os.link(keystore, target)
    elif link == "symlink":
        target.symlink_to(keystore)
    with pytest.raises(InvalidArgument, match="same file as"):
        check_output(target, overwrite=True, protect=[keystore])
    with pytest.raises(InvalidArgument, match="same file as"):
        atomic_write(target, b"junk", overwrite=True, protect=[keystore])
    assert keystore.read_bytes() == b"precious keys"
    assert os.path.lexists(target)


def test_a_protected_file_swapped_in_during_the_write_is_still_refused(tmp_path: Path) -> None:
    keystore = tmp_path / "keystore.kbks"
    keystore.write_bytes(b"precious keys")
    target = tmp_path / "out"
    with pytest.raises(InvalidArgument, match="same file as"):
        _write_then(target, lambda: os.link(keystore, target), overwrite=True, protect=[keystore])
    assert keystore.read_bytes() == b"precious keys"


@pytest.fixture
def no_tmpfile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without O_TMPFILE (FAT, older NFS): tmpfs and ext4 here cannot be made to
    refuse it, so this is the one fault simulated, at the os.open call that asks for it."""
    real_open = os.open

    def open_(path: object, flags: int, *args: object, **kw: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_files.os, "open", open_)


@pytest.mark.usefixtures("no_tmpfile")
def test_without_o_tmpfile_a_named_temp_is_used_and_cleaned_up(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    with pytest.raises(RuntimeError):
        _write_then(tmp_path / "out", lambda: (seen.append(_names(tmp_path)), _boom()))
    ((tmp,),) = seen
    assert tmp.startswith(".out.")
    assert tmp.endswith(_files._TMP_SUFFIX)
    assert _names(tmp_path) == []
    atomic_write(tmp_path / "out", b"first")
    with pytest.raises(OutputExists):
        atomic_write(tmp_path / "out", b"second")
    atomic_write(tmp_path / "out", b"third", overwrite=True)
    assert (tmp_path / "out").read_bytes() == b"third"
    assert _names(tmp_path) == ["out"]


@pytest.mark.usefixtures("no_tmpfile")
def test_without_o_tmpfile_a_racing_file_still_wins(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(OutputExists):
        _write_then(target, lambda: target.write_bytes(b"theirs"))
    assert target.read_bytes() == b"theirs"
    assert _names(tmp_path) == ["out"]


_WRITER = textwrap.dedent(
    """
    import os, sys
    from keybridge._files import atomic_output
    with atomic_output(sys.argv[1], overwrite=sys.argv[2] == "1") as f:
        f.write(b"p" * 65536)
        f.flush()
        print("writing", flush=True)
        while True:
            f.write(b"p" * 65536)
    """
)


@pytest.mark.parametrize("overwrite", [False, True], ids=["exclusive", "overwrite"])
def test_sigkill_mid_write_leaves_no_name_holding_data(tmp_path: Path, overwrite: bool) -> None:
    out_dir = tmp_path / "d"
    out_dir.mkdir()
    if overwrite:
        (out_dir / "out").write_bytes(b"old")
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(out_dir / "out"), "1" if overwrite else "0"],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert child.stdout is not None
        assert child.stdout.readline() == b"writing\n"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        assert _names(out_dir) == (["out"] if overwrite else [])
        if overwrite:
            assert (out_dir / "out").read_bytes() == b"old"


_KILLED_AT = textwrap.dedent(
    """
    import os, signal, sys
    from keybridge import _files
    where = sys.argv[2]
    if where != "unnamed":
        _files._open_unnamed = lambda directory: None  # a filesystem without O_TMPFILE
    if where == "rename":  # SIGKILL in the instant between linking the temp name and the rename
        _files.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    with _files.atomic_output(sys.argv[1], overwrite=True) as f:
        f.write(b"secret" * 1000)
        f.flush()
        print("writing", flush=True)
        if where != "rename":
            sys.stdin.read()  # until the parent has looked, or kills it
    """
)


def _writer(target: Path, where: str) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_AT, str(target), where],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"writing\n"
    return child


def _killed(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    for stream in (child.stdin, child.stdout):
        assert stream is not None
        stream.close()
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("where", ["rename", "named-temp"])
def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path: Path, where: str) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"old")
    _killed(_writer(target, where))
    left = [n for n in _names(tmp_path) if n != "out"]
    assert len(left) == 1  # the fault is real: SIGKILL left a named temp file beside the target
    assert left[0].startswith(".out.")
    assert left[0].endswith(_files._TMP_SUFFIX)
    atomic_write(target, b"new", overwrite=True)
    assert _names(tmp_path) == ["out"]
    assert target.read_bytes() == b"new"


def test_a_live_writers_temp_file_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "out"
    child = _writer(target, "named-temp")
    try:
        (theirs,) = _names(tmp_path)
        atomic_write(target, b"mine", overwrite=True)
        assert _names(tmp_path) == sorted([theirs, "out"])  # still writing: its file stays
    finally:
        _killed(child)
    atomic_write(target, b"again", overwrite=True)
    assert _names(tmp_path) == ["out"]


def test_a_symlink_named_like_a_temp_file_is_neither_followed_nor_removed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / f".out.0123456789abcdef{_files._TMP_SUFFIX}").symlink_to(victim)
    atomic_write(tmp_path / "out", b"x")
    assert victim.read_bytes() == b"keep"
    assert len(_names(tmp_path)) == 3
