"""Writing a result file: its folder made if missing, and its content made
in full before the file is opened, so a failure making it (an array
`np.savez` cannot store, a value JSON cannot hold) leaves the previous
file as it was (opening it first emptied it).

A new file, or a regular file no other name links to, is written beside
the target and moved over it, with the target's mode: a write cut off (a
full disk) left a truncated file that a later run took for the result. A
symlink is followed and its target written in place, as is a file with
other hard links, a FIFO or `/dev/stdout` (a file moved over any of them
replaced it). A symlink to nothing is refused: writing through it would
create a file wherever it points (a folder received from elsewhere can
hold such links). Files kft owns (a run folder's) are written with
`replace_links=True`: always beside and moved over, a link or another
hard link at the path replaced, never written through.
"""

import contextlib
import io
import os
import shutil
import stat


def output_path(path, name="path"):
    """`path` as a string; raises for one that starts with "~" (or
    "~user"): Python's file functions do not expand it, so kft made a
    folder named "~" in the working directory and wrote there.

    >>> output_path("runs/a.json")
    'runs/a.json'
    """
    path = os.fspath(path)
    if isinstance(path, str) and os.path.expanduser(path) != path:
        raise ValueError(
            f"Argument `{name}` must be a path without '~', which kft does "
            "not expand (it would make a folder named '~' in the working "
            f"directory): pass os.path.expanduser({path!r}). Received: "
            f"{name}={path!r}")
    return path


def write_file(path, content, *, replace_links=False):
    """Writes `content` (`str` as UTF-8, or `bytes`) to `path`
    (`replace_links`: see `written_beside`).

    Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "new", "a.txt")
    >>> write_file(path, "done")
    >>> open(path).read()
    'done'
    """
    path = output_path(path)
    # A file name of another encoding (a skipped file listed) is written
    # escaped: strict UTF-8 failed on it after the work was done.
    data = (content.encode("utf-8", "backslashreplace")
            if isinstance(content, str) else content)
    with written_beside(path, replace_links=replace_links) as target, open(
            target, "wb") as file:
        file.write(data)


@contextlib.contextmanager
def written_beside(path, *, replace_links=False):
    """Yields the file to write `path`'s new content to, its folder made:
    a file beside `path`, moved over it (with its mode) when the block
    ends, removed if it raises; `path` itself (written in place) for a
    symlink, a file with other hard links, a FIFO or a device, or a path
    ending in "/" (which `open` names as a folder). With `replace_links`
    (a file kft owns) a symlink or hard link at `path` is replaced too.

    Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "new", "a.txt")
    >>> with written_beside(path) as target:
    ...     _ = open(target, "w").write("done")
    >>> open(path).read(), target != path
    ('done', True)
    """
    folder, name = os.path.split(path)
    if folder and name:
        os.makedirs(folder, exist_ok=True)
    if not replace_links:
        refuse_dangling_link(path)
    if not name or not (replace_links or _replaceable(path)):
        yield path
        return
    target = os.path.join(folder, _beside_name(folder, name))
    if os.path.lexists(target):  # a stale one of this pid, or a link
        os.remove(target)
    try:
        yield target
        if os.path.exists(path) and not os.path.islink(path):
            shutil.copymode(path, target)
        os.replace(target, path)
    except OSError as error:
        # Named by the path given, not by a file the user never named;
        # a write cut off by a full disk names no file at all (one with a
        # message only keeps it: its text is made from errno and strerror
        # once it has a file name).
        if error.filename == target or (error.filename is None
                                        and error.errno is not None):
            error.filename = path
        raise
    finally:
        if os.path.exists(target):
            os.remove(target)


def refuse_dangling_link(path):
    """Raises `FileExistsError` for a symlink to nothing at `path`."""
    if os.path.islink(path) and not os.path.exists(path):
        raise FileExistsError(
            f"{path!r} is a symbolic link to {os.readlink(path)!r}, which "
            "does not exist: kft does not create a file through a link "
            "(one in a folder from elsewhere can point anywhere); remove "
            "the link, or write to another path")


def _beside_name(folder, name):
    """The temporary file's name for `name`: hidden, with the process id
    and `name`'s suffix (Keras saves only to a name ending in ".keras"),
    its stem cut to fit the file system's longest name (a valid name of
    up to 255 bytes failed with "File name too long")."""
    stem, suffix = os.path.splitext(name)
    if len(os.fsencode(suffix)) > 16:  # not a format's: the name's end
        stem, suffix = name, ""
    tail = f".{os.getpid()}.tmp{suffix}"
    try:
        longest = os.pathconf(folder or ".", "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # none on Windows
        longest = 255
    room = max(longest - len(os.fsencode("." + tail)), 1)
    stem = os.fsencode(stem)[:room].decode("utf-8", "ignore") if len(
        os.fsencode(stem)) > room else stem
    return f".{stem}{tail}"


def release(path):
    """Removes `path` if it is a symbolic link or a file with other hard
    links (the name only, not what it leads to), so that the next write
    of a file kft owns makes one of its own.

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> os.symlink("/nowhere", os.path.join(folder, "a.png"))
    >>> release(os.path.join(folder, "a.png")); os.listdir(folder)
    []
    """
    if os.path.islink(path) or (os.path.isfile(path)
                                and os.stat(path).st_nlink > 1):
        os.remove(path)


def _replaceable(path):
    """A new file, or a regular file (not a symlink) with one name."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return True
    return stat.S_ISREG(status.st_mode) and status.st_nlink == 1


def npz_bytes(**arrays):
    """`np.savez` of `arrays`, as bytes (made before any file is opened).

    Example:
    >>> import numpy as np
    >>> npz_bytes(a=np.zeros(2))[:2]
    b'PK'
    """
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
