"""Crash-safe, exclusive file output shared by the keystore, BYOK packages, envelope files and the CLI.

On Linux the data goes into an unnamed file (``O_TMPFILE``) in the target's directory, and gets
its name only once it is complete and fsynced, through ``linkat(/proc/self/fd/N, AT_SYMLINK_FOLLOW)``:
a process killed at any moment, even by SIGKILL, leaves no file name holding part of the data.
Elsewhere (other systems, filesystems without ``O_TMPFILE``) it is a named temp file beside the
target, removed on any exception. Without ``overwrite`` the name is given by a hard link, which
fails if the name exists, so two writers can never both think they created it.

A named temp file (``.NAME.<random>.kbtmp``) can still be left by SIGKILL: in the fallback, or in
the instant between linking and renaming with ``overwrite``. Its writer holds an flock on it for
as long as it lives, so the next write of the same target removes every such file whose lock it
can take: a killed writer's leftovers go, a live writer's file stays.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import signal
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import InvalidArgument, OutputExists

__all__ = ["atomic_output", "atomic_write", "check_output"]

PathArg = str | os.PathLike[str]

# Errors with which a kernel or filesystem says "no O_TMPFILE here" (EISDIR: kernels before 3.11).
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}
# Errors with which a filesystem says "no hard links here" (FAT, some FUSE and network mounts).
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}
# Signals the CLI turns into exceptions; held back while a name is being given, so that such an
# exception cannot land between "link the temp name" and "rename it" (which would strand the name).
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE}
_EXISTS_HINT = "pass overwrite=True to replace it"
_TMP_SUFFIX = ".kbtmp"


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _identities(paths: Iterable[PathArg]) -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) of each existing path, following symlinks, so hard links and symlinks match."""
    found: dict[tuple[int, int], str] = {}
    for p in paths:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            found.setdefault((st.st_dev, st.st_ino), os.fspath(p))
    return found


def _check_target(target: Path, protected: dict[tuple[int, int], str], overwrite: bool, hint: str) -> None:
    """Refuse a target that is (a link to) a protected file, or that exists without ``overwrite``."""
    for stat_of in (os.lstat, os.stat):
        try:
            st = stat_of(target)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in protected:
            raise InvalidArgument(
                f"{target} is the same file as {protected[(st.st_dev, st.st_ino)]}; nothing was written:"
                " write to another path"
            )
    if os.path.isdir(target):  # os.replace would fail late, naming the hidden temp file
        raise InvalidArgument(f"{target} is a directory; give the path of a file to write")
    if not overwrite and os.path.lexists(target):
        raise OutputExists(os.fspath(target), hint)


def check_output(
    path: PathArg, *, overwrite: bool = False, protect: Iterable[PathArg] = (), exists_hint: str = _EXISTS_HINT
) -> None:
    """Raise now what :func:`atomic_output` would raise at its start, for callers that must know
    before doing work that cannot be undone (creating a key)."""
    _check_target(Path(path), _identities(protect), overwrite, exists_hint)


def _open_unnamed(directory: Path) -> int | None:
    """An unnamed 0600 file in ``directory``, or None where the system cannot make one."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):  # the name is given through /proc
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            return None
        raise


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[int]:
    """An exclusive flock on the directory (held only while a name is given, so it never nests)
    and its fd, for linkat and fsync. A lock on the directory leaves no lock file behind."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        yield dfd
    finally:
        os.close(dfd)


def _temp_name(target: Path) -> str:
    return f".{target.name}.{secrets.token_hex(8)}{_TMP_SUFFIX}"


def _sweep(target: Path, dfd: int) -> None:
    """Remove temp files of ``target`` whose writer is dead (no flock on them), under the directory lock."""
    prefix = f".{target.name}."
    for entry in os.listdir(dfd):
        if not (entry.startswith(prefix) and entry.endswith(_TMP_SUFFIX)):
            continue
        try:  # O_NOFOLLOW: a planted symlink is never opened, let alone its target removed
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or not stat.S_ISREG(st.st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its writer lives
            now = os.stat(entry, dir_fd=dfd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(entry, dir_fd=dfd)
        except OSError:
            continue
        finally:
            os.close(fd)


def _link(src: str, name: str, dfd: int, *, src_is_proc: bool) -> bool:
    """Hard-link ``src`` as ``name`` in ``dfd``; False where the filesystem has no hard links."""
    try:
        # dst_dir_fd makes CPython call linkat(AT_SYMLINK_FOLLOW): plain link() would try to
        # link the /proc magic symlink itself and fail with EXDEV.
        os.link(src, name, dst_dir_fd=dfd, follow_symlinks=True)
    except OSError as exc:
        if exc.errno in _NO_LINKS and not src_is_proc:
            return False
        raise
    return True


@contextlib.contextmanager
def atomic_output(
    path: PathArg,
    *,
    mode: int = 0o600,
    overwrite: bool = False,
    protect: Iterable[PathArg] = (),
    exists_hint: str = _EXISTS_HINT,
) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path``, complete and fsynced, only if the block succeeds.

    Without ``overwrite`` an existing ``path`` raises :class:`~keybridge.errors.OutputExists`
    (``exists_hint`` says how to allow it) before the block runs, and a file created there by
    someone else meanwhile makes it raise at the end, with nothing replaced. With ``overwrite``
    the new file is renamed over ``path`` atomically. ``path`` must never be, or link to, one of
    ``protect`` (inputs, a keystore): that is an :class:`~keybridge.errors.InvalidArgument`, even
    with ``overwrite``. The file gets ``mode``; on an exception nothing new stays under any name."""
    target = Path(path)
    directory = target.parent
    protected = _identities(protect)
    _check_target(target, protected, overwrite, exists_hint)
    fd = _open_unnamed(directory)
    tmp: str | None = None  # the temp file's name while one exists
    if fd is None:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_TMP_SUFFIX, dir=directory)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # "this writer is alive", for _sweep; released when it dies
        with os.fdopen(fd, "wb", closefd=False) as f:
            yield f
            f.flush()
            os.fchmod(fd, mode)
            os.fsync(fd)
        with _signals_held(), _directory_lock(directory) as dfd:
            _check_target(target, protected, overwrite, exists_hint)
            _sweep(target, dfd)
            if tmp is None and overwrite:
                # No linkat replaces a name: link under a fresh temp name, then rename it over.
                tmp = os.fspath(target.with_name(_temp_name(target)))
                _link(f"/proc/self/fd/{fd}", os.path.basename(tmp), dfd, src_is_proc=True)
            if tmp is None:
                _link_new(f"/proc/self/fd/{fd}", target, dfd, exists_hint, src_is_proc=True)
            elif overwrite:
                os.replace(tmp, target)
            else:
                _link_new(tmp, target, dfd, exists_hint, src_is_proc=False)
                with contextlib.suppress(FileNotFoundError):  # gone already if it was renamed
                    os.unlink(tmp)
            tmp = None
            os.fsync(dfd)
    except BaseException:
        with _signals_held():
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def _link_new(src: str, target: Path, dfd: int, hint: str, *, src_is_proc: bool) -> None:
    """Give ``src`` the name ``target``, which must not exist (under the directory lock)."""
    try:
        linked = _link(src, target.name, dfd, src_is_proc=src_is_proc)
    except FileExistsError:
        raise OutputExists(os.fspath(target), hint) from None
    if not linked:
        # No hard links on this filesystem: the check made under the directory lock is what is left.
        os.rename(src, target)


def atomic_write(
    path: PathArg,
    data: bytes,
    *,
    mode: int = 0o600,
    overwrite: bool = False,
    protect: Iterable[PathArg] = (),
    exists_hint: str = _EXISTS_HINT,
) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_output` (same options)."""
    with atomic_output(path, mode=mode, overwrite=overwrite, protect=protect, exists_hint=exists_hint) as f:
        f.write(data)
