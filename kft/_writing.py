"""Writing a result file whole: its folder made if missing, the text or
arrays written to a temporary file beside it and moved over the target,
so a failed write leaves the previous file as it was (an `open(path,
"w")` emptied it first)."""

import contextlib
import os
import tempfile


def _umask():
    # Linux shows it; setting it to read it back would change it for a
    # moment for every thread (grain's readers make files too).
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replaced(path, mode="w", **open_kwargs):
    """Opens a temporary file that replaces `path` when the block ends
    without an error (and is removed otherwise).

    Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "new", "a.txt")
    >>> with replaced(path) as f:
    ...     _ = f.write("done")
    >>> open(path).read()
    'done'
    """
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder or ".")
    try:
        # mkstemp's file is the owner's alone (0600); `open` would have
        # made it 0666 less the umask, as the user's other files.
        os.chmod(temporary, 0o666 & ~_umask())
        with os.fdopen(handle, mode, **open_kwargs) as file:
            yield file
        os.replace(temporary, path)
    except BaseException:
        os.remove(temporary)
        raise
