"""Signals during ``keybridge encrypt -o`` / ``decrypt -o``, with real processes and real signals:
SIGTERM and SIGHUP end the command like Ctrl-C (exit 128+N, one line on stderr, no traceback), and
no signal, SIGKILL included, ever leaves a partial output or a temp file in the output directory."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keybridge import InMemoryProvider, KeySpec

PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    keystore = tmp_path / "ks.kbks"
    InMemoryProvider.open(keystore, PASSPHRASE, create=True).create_key("a", KeySpec.aes(256))
    return {
        **os.environ,
        "KEYBRIDGE_KEYSTORE": str(keystore),
        "KEYBRIDGE_PASSPHRASE": PASSPHRASE,
        "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path),
    }


def _start(env: dict[str, str], *args: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "keybridge.cli", *args],
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def _writing_unnamed(pid: int, directory: Path) -> bool:
    """True while ``pid`` holds an O_TMPFILE in ``directory`` (shown as ``DIR/#INODE (deleted)``)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith(f"{directory}/#") and link.endswith(" (deleted)"):
            return True
    return False


def _wait_until_writing(proc: subprocess.Popen[bytes], directory: Path) -> None:
    deadline = time.monotonic() + 60
    while not _writing_unnamed(proc.pid, directory):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        assert time.monotonic() < deadline, "the command never opened its output"
        time.sleep(0.02)


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_mid_write_exits_cleanly_and_leaves_nothing(
    env: dict[str, str], tmp_path: Path, command: str, signum: signal.Signals
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    plaintext = os.urandom(1 << 20)
    if command == "decrypt":
        from keybridge.envelope import encrypt

        key = InMemoryProvider.open(tmp_path / "ks.kbks", PASSPHRASE).key("memory:a")
        feed = encrypt(plaintext * 4, key, frame_length=4096)
    else:
        feed = plaintext * 4
    proc = _start(env, command, "-", "-o", str(out_dir / "result"), "-k", "a", stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(feed[: len(feed) // 2])  # half the input: the command is mid-write, waiting for more
    proc.stdin.flush()
    _wait_until_writing(proc, out_dir)
    assert os.listdir(out_dir) == []  # the partial output has no name, not even a hidden temp one
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    proc.stdin.close()
    assert proc.returncode == 128 + signum, err
    how = "" if signum == signal.SIGINT else f" by {signum.name}"
    # click writes a newline first (after a terminal's ^C), then the one message line.
    assert err.strip() == f"keybridge: interrupted{how}".encode()
    assert os.listdir(out_dir) == []


def test_an_outside_sigpipe_is_ignored_and_the_output_completes(env: dict[str, str], tmp_path: Path) -> None:
    # SIGPIPE stays ignored (sockets raise it on closed connections); a real broken stdout is an
    # error handled elsewhere. So `kill -PIPE` mid-write must not leave a partial output either.
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    data = os.urandom(1 << 21)
    proc = _start(env, "encrypt", "-", "-o", str(out_dir / "result"), "-k", "a", stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(data[: 1 << 20])
    proc.stdin.flush()
    _wait_until_writing(proc, out_dir)
    proc.send_signal(signal.SIGPIPE)
    _, err = proc.communicate(data[1 << 20 :], timeout=60)
    assert proc.returncode == 0, err
    assert os.listdir(out_dir) == ["result"]
    key = InMemoryProvider.open(tmp_path / "ks.kbks", PASSPHRASE).key("memory:a")
    from keybridge.envelope import decrypt

    assert decrypt((out_dir / "result").read_bytes(), key).plaintext == data


def test_a_closed_stdout_is_a_clean_sigpipe_exit(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(os.urandom(8 << 20))
    proc = subprocess.Popen(
        [sys.executable, "-m", "keybridge.cli", "encrypt", str(tmp_path / "plain"), "-k", "a"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.read(100)
    proc.stdout.close()  # `| head -c 100`
    err = proc.stderr.read() if proc.stderr else b""
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGPIPE, err
    assert err.strip() == b"keybridge: interrupted by SIGPIPE"


KILLS_PER_SIGNAL = 30
CHUNK = 64 << 10


def _kill_at_random(
    env: dict[str, str], args: tuple[str, ...], feed: bytes, signum: signal.Signals, rng: random.Random, out_dir: Path
) -> tuple[bool, subprocess.Popen[bytes], bytes]:
    """Run the command on ``feed`` through a pipe we throttle, and signal it at a random point:
    during start-up, mid-write after a random number of chunks, or after the whole input."""
    proc = _start(env, *args, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    mid_write = False
    try:
        if rng.random() < 0.15:
            time.sleep(rng.uniform(0, 0.3))  # start-up: keystore, keys, no output yet
        else:
            proc.stdin.write(feed[:CHUNK])
            proc.stdin.flush()
            _wait_until_writing(proc, out_dir)
            chunks = rng.randint(1, len(feed) // CHUNK + 3)
            for i in range(1, chunks):
                proc.stdin.write(feed[i * CHUNK : (i + 1) * CHUNK])
                proc.stdin.flush()
                time.sleep(0.002)
            if chunks * CHUNK >= len(feed):
                proc.stdin.close()  # all in: the last frame, fsync and link race the signal
                time.sleep(rng.uniform(0, 0.2))
            mid_write = _writing_unnamed(proc.pid, out_dir)
    except BrokenPipeError:
        pass
    proc.send_signal(signum)
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.wait(timeout=120)
    return mid_write, proc, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_random_kills_during_decrypt_never_leave_a_partial_or_temp_file(
    env: dict[str, str], tmp_path: Path, signum: signal.Signals
) -> None:
    from keybridge.envelope import encrypt

    plaintext = os.urandom(4 << 20)
    key = InMemoryProvider.open(tmp_path / "ks.kbks", PASSPHRASE).key("memory:a")
    message = encrypt(plaintext, key, frame_length=4096)
    inputs = sorted(os.listdir(tmp_path))
    out = tmp_path / "result"
    args = ("decrypt", "-", "-o", str(out), "-k", "a")
    rng = random.Random(int(signum))
    outcomes = {"mid_write": 0, "absent": 0, "complete": 0}
    for _ in range(KILLS_PER_SIGNAL):
        mid_write, proc, err = _kill_at_random(env, args, message, signum, rng, tmp_path)
        outcomes["mid_write"] += mid_write
        # Handled: 128+N and one line. -N: before main() installed the handlers, or SIGKILL.
        assert proc.returncode in (0, 128 + signum, -signum), err
        assert b"Traceback" not in err
        assert sorted(set(os.listdir(tmp_path)) - {"result"}) == inputs  # no temp file, ever
        if out.exists():
            assert out.read_bytes() == plaintext  # complete, or not there at all
            outcomes["complete"] += 1
            out.unlink()
        else:
            outcomes["absent"] += 1
    print(f"{signum.name}: {KILLS_PER_SIGNAL} kills, {outcomes}, leftovers 0")
    assert outcomes["mid_write"] >= KILLS_PER_SIGNAL // 2, outcomes  # most landed while plaintext was written
