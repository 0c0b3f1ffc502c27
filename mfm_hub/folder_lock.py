"""One writer per folder: an exclusive lock that a process takes before it writes a folder and
holds until it exits. The lock file lies beside the folder (``<parent>/.<name>.mfm_hub.lock``),
so that taking a folder creates nothing in it (a refused run leaves no output folder, an upload
of the folder never carries the lock).

The lock is the operating system's (``flock``), not the file's existence: the system releases it
when its process ends, however it ends, so a lock file left by a crash is recognisably stale
(nobody holds it) and the next run simply takes it. The file records who holds it (process,
host, command, start time) for the message a second run gets. On network file systems
``flock`` is only as good as the server's lock support (NFSv4 and Lustre with ``flock`` mounts
honour it).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_SUFFIX = ".mfm_hub.lock"

_held: dict[Path, int] = {}


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


class FolderInUseError(RuntimeError):
    """Another live process holds the folder."""


def _describe_owner(fd: int, patience: float = 2.0) -> str:
    """Who holds the lock on ``fd``, as its holder recorded it (which it does just after locking:
    wait a moment for it)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):  # read while being written
            owner = {}
        if owner or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if not owner:
        return "another process"
    return f"process {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}: {owner.get('command')}"


def claim_folder(folder: str | Path, wait: bool = False) -> Path:
    """Take ``folder`` for this process until it exits or calls `release_folder`;
    `FolderInUseError` naming the holder if another process has it, or with ``wait`` say so and
    block until it is free. Taking a folder this process holds already is a no-op. Creates the folder's
    parents if needed (removed again on release if still empty), never the folder itself."""
    folder = Path(folder).resolve()
    if folder in _held:
        return folder
    path = lock_path(folder)
    created = next((str(ancestor) for ancestor in reversed(path.parents) if not ancestor.exists()), None)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy = f"{folder} is being written by {_describe_owner(fd)}."
            if not wait:
                os.close(fd)
                raise FolderInUseError(f"{busy} Two runs must not share an output folder: wait for it to finish or "
                                       "choose another folder.") from None
            print(f"{busy} Waiting for it.")
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # the holder before us may have removed the file between our open and our lock: lock the current one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
             "command": " ".join(sys.argv)[:500], "created": created}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)
    _held[folder] = fd
    atexit.register(release_folder, folder)
    return folder


def release_folder(folder: str | Path) -> None:
    """Give ``folder`` back: remove its lock file, and the parent folders the claim created if
    they are still empty. A folder this process does not hold is left alone."""
    folder = Path(folder).resolve()
    fd = _held.pop(folder, None)
    if fd is None:
        return
    created = json.loads(os.pread(fd, 4096, 0) or b"{}").get("created")
    path = lock_path(folder)
    path.unlink(missing_ok=True)  # while still locked, so nobody takes the file we remove
    os.close(fd)
    if created:
        for parent in path.parents:
            if parent.exists() and not any(parent.iterdir()):
                parent.rmdir()
            if str(parent) == created:
                break


def holds_folder(folder: str | Path) -> bool:
    return Path(folder).resolve() in _held


@contextmanager
def folder_claimed(folder: str | Path, wait: bool = False):
    """`claim_folder` for the duration of a ``with`` block (kept if this process held it before)."""
    held_before = holds_folder(folder)
    claim_folder(folder, wait=wait)
    try:
        yield
    finally:
        if not held_before:
            release_folder(folder)


__all__ = ["FolderInUseError", "claim_folder", "folder_claimed", "holds_folder", "lock_path", "release_folder"]
