"""Writing a result file: its folder made if missing, and its content made
in full before the file is opened, so a failure making it (an array
`np.savez` cannot store, a value JSON cannot hold) leaves the previous
file as it was (opening it first emptied it).

The file is written in place, as `open` writes it: a symlink is followed,
the file's mode, owner and hard links are kept, and a FIFO or
`/dev/stdout` receives the bytes (a temporary file moved over the target
replaced each of them).
"""

import io
import os


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


def write_file(path, content):
    """Writes `content` (`str` as UTF-8, or `bytes`) to `path`.

    Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "new", "a.txt")
    >>> write_file(path, "done")
    >>> open(path).read()
    'done'
    """
    path = output_path(path)
    folder, name = os.path.split(path)
    if folder and name:  # "out/" names a folder: open says so
        os.makedirs(folder, exist_ok=True)
    if isinstance(content, str):
        with open(path, "w", encoding="utf-8") as file:
            file.write(content)
    else:
        with open(path, "wb") as file:
            file.write(content)


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
