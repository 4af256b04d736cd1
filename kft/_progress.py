"""Ending a Keras progress bar that could not end itself."""


def finish(bar, done):
    """Ends `bar` (a `keras.utils.Progbar`) at `done` steps unless it
    ended itself at its target: for data of unknown length, or with fewer
    steps than counted (files found bad while read). The target becomes
    `done`, which `verbose=2` needs to print its one line.

    Example:
    >>> import keras
    >>> bar = keras.utils.Progbar(None, verbose=2)
    >>> bar.update(3)
    >>> finish(bar, 3)  # doctest: +ELLIPSIS
    3/3 - ...
    """
    if done != bar.target:
        bar.target = done
        bar.update(done, finalize=True)
