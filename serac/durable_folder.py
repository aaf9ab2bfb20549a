"""Replacing a whole folder so that a crash at any moment leaves either the old or the new one.

A folder is written in a staging sibling, every file and folder in it is fsynced, and then the staging
folder takes the target's place in one rename: ``rename`` when the target does not exist, an atomic
exchange (Linux ``renameat2(RENAME_EXCHANGE)``) when it does. Saves to one target are serialized with a lock
on the parent folder, and each save first deletes the staging and retired folders that killed saves left.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

STAGING_MARK = ".serac-staging-"
RETIRED_MARK = ".serac-retired-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

__all__ = ["fsync_tree", "replace_folder", "restore_retired", "staging_folder"]


def _libc_renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _libc_renameat2()


def _rename_exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; ``False`` where the system or file system cannot."""
    if _renameat2 is None:
        return False
    result = _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(first))


def fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root``, ``root`` last (children before the entries naming them)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                fsync_path(path)
        fsync_path(Path(folder))


@contextlib.contextmanager
def _parent_lock(parent: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: saves to one folder are not serialized
        yield
        return
    descriptor = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _sweep(directory: Path) -> None:
    """Delete what killed saves to ``directory`` left; only called while holding the parent lock."""
    restore_retired(directory)
    for mark in (STAGING_MARK, RETIRED_MARK):
        for leftover in directory.parent.glob(f".{directory.name}{mark}*"):
            logger.info("Removing %s, left by an interrupted save", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def restore_retired(directory: Path) -> None:
    """Where a save without atomic exchange was killed between its two renames, put the old folder back."""
    if directory.exists():
        return
    retired = sorted(directory.parent.glob(f".{directory.name}{RETIRED_MARK}*"), key=os.path.getmtime)
    if retired:
        logger.warning("Restoring %s from %s, left by an interrupted save", directory, retired[-1])
        os.rename(retired[-1], directory)


@contextlib.contextmanager
def staging_folder(directory: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder to write ``directory``'s new contents in; on success it replaces ``directory``.

    On an exception the staging folder is deleted and ``directory`` is untouched; after a kill it is
    deleted by the next save to ``directory``.
    """
    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a directory")
    with _parent_lock(directory.parent):
        _sweep(directory)
        staging = directory.parent / f".{directory.name}{STAGING_MARK}{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            yield staging
            staging.chmod(0o755)
            fsync_tree(staging)
            replace_folder(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def replace_folder(staging: Path, directory: Path) -> None:
    """Put the complete, synced ``staging`` folder at ``directory`` in one rename, then sync the parent."""
    # Named after the target, whatever the staging folder is called, so the next save's sweep finds it.
    retired = directory.parent / f".{directory.name}{RETIRED_MARK}{uuid.uuid4().hex[:12]}"
    if not directory.exists():
        os.rename(staging, directory)
    elif _rename_exchange(staging, directory):
        # The old contents now sit at the staging name; a kill before this deletion leaves them to the sweep.
        os.rename(staging, retired)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        # No atomic exchange on this system: two renames. A kill between them leaves the previous folder at
        # the retired name, which the next save or load puts back.
        os.rename(directory, retired)
        os.rename(staging, directory)
        shutil.rmtree(retired, ignore_errors=True)
    fsync_path(directory.parent)
