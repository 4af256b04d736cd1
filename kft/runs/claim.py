"""Output folders before long work: can files be written there, and is
another process writing the same run folder.

Standard library only: the `kft` command checks its folders with these
before Keras and JAX are imported.
"""

import errno
import os
import tempfile

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

# The probe file's prefix: another run's check may see it for a moment.
WRITE_CHECK = ".kft-write-check-"


def cannot_write(folder):
    """Why no file can be created in the existing `folder`, or `None`.

    A file is made and removed: permission bits say nothing for root, a
    read-only mount or a full quota.
    """
    try:
        handle, path = tempfile.mkstemp(prefix=WRITE_CHECK, dir=folder)
    except OSError as error:
        return error.strerror or str(error)
    os.close(handle)
    os.remove(path)
    return None


class FolderInUse(Exception):
    """Another process holds the run folder's lock."""


def lock_folder(folder):
    """An exclusive lock on `folder` for this process: an open descriptor
    to close when done (the kernel drops it when a killed process ends).

    Returns `None` where the file system has no locks (some network
    file systems): the run goes on unlocked, as before there were locks.

    Raises:
        FolderInUse: another process holds the lock.
    """
    if fcntl is None:
        return None
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(handle)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise FolderInUse(folder) from None
        return None
    return handle


def unlock_folder(handle):
    if handle is not None:
        os.close(handle)


def inside(path, folder):
    """Whether `path` is `folder` or inside it (links resolved).

    >>> inside("data/cat/report", "data"), inside("runs/a", "data")
    (True, False)
    """
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # on two Windows drives
        return False
