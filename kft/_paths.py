"""Path checks for messages, without heavy imports (the CLI checks its
arguments before numpy, JAX and Keras load)."""

import os


def not_a_folder(path):
    """Why `path` is no folder, for a message ("does not exist", or "is a
    file, not a folder": a file is not missing), or `None` for a folder.

    >>> not_a_folder(__file__)
    'is a file, not a folder'
    """
    if os.path.isdir(path):
        return None
    return ("is a file, not a folder" if os.path.exists(path)
            else "does not exist")
