"""Files that appear whole or not at all, so that a crash or an error never leaves half a file behind, a lock
that keeps a second process out of a directory in use, and the one strict reader of the JSON files others wrote."""
from __future__ import annotations

import contextlib
import json
import os
import reprlib
import socket
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that replaces `path` only when the `with` block succeeds.

    It is a temporary file in the same directory (os.replace is atomic within one file system), flushed
    and fsynced before the rename, and the directory is fsynced after it so that the rename itself
    survives a power cut. On any error the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as output:
            yield output
            output.flush()
            os.fsync(output.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes owner-only files; these are ordinary data files
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` as UTF-8 to `path` whole or not at all (atomic_output), creating its directory first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as output:
        output.write(text.encode("utf-8"))


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename durable: on POSIX it lives in the directory, which has buffers of its own."""
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class LockHeld(RuntimeError):
    """Another process holds the lock; `holder` says which ("pid 123 on host")."""

    def __init__(self, path: str | os.PathLike, holder: str) -> None:
        super().__init__(f"{path} is held by {holder}")
        self.holder = holder


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an advisory lock on the file `path` (created if missing) for the `with` block, or raise LockHeld at
    once when another process holds it.

    It is a POSIX flock, which the kernel drops when its holder exits however it exits: a lock file that a
    killed run left behind is simply taken over. The file records the holder's pid and host for the message
    a second process gets. Without fcntl (Windows) nothing is locked.
    """
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(descriptor, 256).decode("utf-8", "replace").strip()
                raise LockHeld(path, holder or "another process") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(descriptor)


def read_json(path: str | os.PathLike) -> object:
    """The JSON value in the UTF-8 file `path`; every flaw is a ValueError that names the file.

    Stricter than json.load where a lenient reading would be silently wrong or crash deep inside: a key given
    twice in one object is refused (a dict would keep the last one), and nesting too deep for the parser or an
    integer of thousands of digits is a ValueError, not a RecursionError. A missing or unreadable file is the
    OSError open() raises (FileNotFoundError, IsADirectoryError, ...), left for the caller to word.
    """
    with open(path, "rb") as file:
        raw = file.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    try:
        return json.loads(text, object_pairs_hook=_object_without_repeated_keys)
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as error:  # a syntax error, a repeated key, an integer of thousands of digits
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def _object_without_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object as a dict; a key given twice is an error (a plain dict would keep the last silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        repeated = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise ValueError(f"the key {reprlib.repr(repeated)} appears more than once in an object")
    return obj
