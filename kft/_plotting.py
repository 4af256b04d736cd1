"""Matplotlib for kft's plots: an optional extra, on the backend
matplotlib chose (Keras imports pyplot first: Agg on a machine without a
display, the inline backend in a notebook).

Every plotting function in kft takes `path=None` and returns the Figure:

>>> from kft._plotting import new_figure, finish
>>> fig, ax = new_figure()
>>> _ = ax.plot([0, 1], [1, 0])
>>> finish(fig) is fig
True
"""

import io
import os

from kft._validation import check_int
from kft._writing import output_path
from kft._writing import refuse_dangling_link
from kft._writing import write_file

_INSTALL = 'pip install "kft[plots]"'


def available():
    """Whether matplotlib's pyplot imports: `False` without a word where
    matplotlib is not installed (plots are an optional extra), `False` with
    a warning naming the error where it is installed but fails to import
    (one built for numpy 1 under numpy 2: plots left out for no visible
    reason otherwise)."""
    try:
        pyplot()  # on Agg unless a backend was chosen, as every plot
    except ImportError as error:
        if isinstance(error.__cause__, ModuleNotFoundError) and (
                error.__cause__.name == "matplotlib"):
            return False
        import warnings

        warnings.warn(f"Plots skipped: {error}.", stacklevel=2)
        return False
    return True


def pyplot():
    """`matplotlib.pyplot` (on Agg if nothing imported it before).

    Raises:
        ImportError: matplotlib is not installed; says how to install it.
    """
    try:
        import matplotlib

        # Agg draws to files; set before pyplot is first imported, and
        # only if nobody chose an interactive backend already.
        if "matplotlib.pyplot" not in __import__("sys").modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as error:
        if error.name != "matplotlib":
            raise _broken_import(error) from error
        raise ImportError(
            f"kft's plots need matplotlib, an optional extra: {_INSTALL}"
        ) from error
    except Exception as error:  # one built for numpy 1 under numpy 2
        raise _broken_import(error) from error
    return plt


def _broken_import(error):
    return ImportError(
        f"matplotlib is installed but failed to import ({type(error).__name__}"
        f": {error}); reinstall or upgrade it ({_INSTALL})")


def new_figure(nrows=1, ncols=1, *, figsize=None, **kwargs):
    """`plt.subplots`; returns `(figure, axes)`."""
    plt = pyplot()
    return plt.subplots(nrows, ncols, figsize=figsize, **kwargs)


def plot_suffixes():
    """The file suffixes matplotlib writes (`.png`, `.svg`, `.pdf`, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted("." + s for s in FigureCanvasBase.get_supported_filetypes())


def check_path(path, name="path"):
    """`path` as a string; raises unless its suffix is a format matplotlib
    writes (`plot_suffixes()`), naming the argument `name`."""
    path = output_path(path, name)
    supported = plot_suffixes()
    if os.path.splitext(path)[1].lower() not in supported:
        raise ValueError(
            f"Argument `{name}` must end in one of {supported}. Received: "
            f"{name}={path!r}")
    return path


def finish(fig, path=None, *, dpi=120, close=True):
    """Lays out `fig`, saves it to `path` (format from the suffix: `.png`,
    `.svg`, `.pdf`) when given, and returns it.

    Closed in pyplot (and still usable: `savefig`, `canvas.draw()`) where
    pyplot would not show it or would show it again:

    - in a notebook (the inline backend), always: the Figure returned as
      a cell's value is shown once (pyplot showed its open figures at the
      end of the cell too: every plot twice, and every plot saved in a
      loop);
    - on a backend without windows (Agg, kft's default on a machine
      without a display) once saved: plots saved in a loop do not pile up
      open figures.

    A window backend keeps it open, for `plt.show()`. `close=False` keeps
    it open (a figure of the caller's own axes).

    Raises:
        ValueError: `path` has a suffix matplotlib cannot write (the
            figure is closed).
    """
    try:
        fig.tight_layout()
        if path is not None:
            path = check_path(path)
            form = os.path.splitext(path)[1][1:].lower()
            if form == "pgf":
                # PGF writes its images beside the file, named after it,
                # and refers to them by those names: saved at `path`.
                refuse_dangling_link(path)
                folder = os.path.dirname(path)
                if folder:
                    os.makedirs(folder, exist_ok=True)
                fig.savefig(path, dpi=dpi, format=form)
            else:
                # Made in memory (EPS records the file's name, svgz's gzip
                # header too: the temporary one's), then written as every
                # result file: a link to nothing refused, beside and moved
                # over (a cut-off write leaves the old plot).
                content = io.BytesIO()
                fig.savefig(content, dpi=dpi, format=form)
                write_file(path, content.getvalue())
    except BaseException:
        if close:  # not left open, to be shown under the error
            _close(fig)
        raise
    if close and (_inline() or path is not None and not _interactive()):
        _close(fig)
    return fig


def _close(fig):
    pyplot().close(fig)
    # Closing leaves a bare canvas; an Agg one keeps the figure drawable
    # (`canvas.get_renderer()`, `canvas.draw()`, a notebook's display).
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)


def _inline():
    """Whether pyplot runs in a notebook (IPython's inline backend)."""
    import matplotlib

    return "inline" in matplotlib.get_backend().lower()


def _interactive():
    """Whether pyplot shows figures (an interactive or notebook backend),
    rather than only writing files (Agg, pdf, svg, ...)."""
    import matplotlib

    backend = matplotlib.get_backend().lower()
    return backend not in ("agg", "pdf", "svg", "ps", "cairo", "pgf",
                           "template")


def wrap_title(ax, title, fontsize):
    """Sets `title` on `ax`, broken into lines that fit 80% of the
    figure's width (about 0.6 em per character)."""
    import textwrap

    width_pt = 0.8 * ax.figure.get_figwidth() * 72
    chars = max(20, int(width_pt / (0.6 * fontsize)))
    ax.set_title(textwrap.fill(title, chars), fontsize=fontsize)


def thin_ticks(n, max_labels=25):
    """Indices of `n` tick labels to show so that at most `max_labels`
    appear (every k-th): readable on 100 classes."""
    max_labels = check_int("max_labels", max_labels, min_value=1)
    step = max(1, -(-n // max_labels))
    return list(range(0, n, step))
