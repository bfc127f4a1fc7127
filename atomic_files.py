"""Files that appear whole or not at all, so that a crash or an error never leaves half a file behind."""
import contextlib
import os
import tempfile
from pathlib import Path


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
