"""Files that appear whole or not at all, so that a crash or an error never leaves half a file behind, and a
lock that keeps a second process out of a directory in use."""
import contextlib
import os
import socket
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None


@contextlib.contextmanager
def atomic_output(path):
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


def fsync_directory(directory):
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

    def __init__(self, path, holder):
        super().__init__(f"{path} is held by {holder}")
        self.holder = holder


@contextlib.contextmanager
def exclusive_lock(path):
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
