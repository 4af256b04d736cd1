"""Says so when a train step is being compiled for a long time."""

import threading
import time

import keras

from kft import _compat
from kft._validation import check_number


class CompileNotice(keras.callbacks.Callback):
    """Prints a line when a new train step takes long to compile.

    The first step of `fit`, and the first step after the trainable set
    changed (`kft.changing_trainable`, a `GradualUnfreezing` stage), trace
    and compile a new XLA program: 20-120 s for a large backbone on CPU,
    during which the progress bar does not move. If such a step is still
    running after `after` seconds this prints that it is compiling, and how
    long it took once it is done. Steps that reuse the compiled program
    start no timer; an epoch's last batch is timed the first time too (a
    partial batch compiles a program of its own). `kft.fine_tune` adds it
    when `verbose`.

    Args:
        after: Seconds a new step may take before the notice. Defaults to
            `5.0`.

    Example:
    >>> import keras, numpy as np, kft
    >>> model = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                              input_shape=(16, 16, 3))
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
    >>> x, y = np.zeros((8, 16, 16, 3), "float32"), np.arange(8) % 3
    >>> _ = model.fit(x, y, epochs=1, verbose=0,
    ...               callbacks=[kft.callbacks.CompileNotice(after=60)])
    """

    def __init__(self, after: float = 5.0):
        super().__init__()
        self.after = check_number("after", after, low=0.0)
        self._function = None
        self._last_timed = False
        self._step = None
        self._batch_start = 0.0
        self._timer = None
        self._started = None
        self._noticed = False
        self._running = None

    def _notice(self, message, running):
        # The timer's thread only prints: reading the model from it, while
        # a step runs, raced Keras' state sync (donated buffers deleted).
        with running.lock:
            if running.ended:
                return
            self._noticed = True
            _compat.print_msg(message)

    def on_train_begin(self, logs=None):
        # A fit interrupted inside a timed step never ran `on_train_end`:
        # its timer would print into this fit, and its step is timed anew.
        if self._timer is not None:
            self._function = None
        self._stop_timer()

    def on_train_batch_begin(self, batch, logs=None):
        # Not `self.model`, which copies the step's state back every batch.
        model = _compat.callback_model(self)
        function = model.train_function
        self._batch_start = time.perf_counter()
        # An epoch's last batch, if partial, compiles another program
        # under the same function: timed the first time too, its notice
        # past `after` plus three of the steps before it (a full last
        # batch is one more such step).
        last = batch == (self.params or {}).get("steps", 0) - 1
        why = "the first step of a new trainable set takes a while..."
        if function is not self._function:
            self._function, self._last_timed, self._step = function, last, None
            delay = self.after
        elif last and not self._last_timed and self._step is not None:
            self._last_timed = True
            delay = self.after + 3 * self._step
            why = ("a last batch of another size is another program; once "
                   "per trainable set...")
        else:
            return
        self._started, self._noticed = time.perf_counter(), False
        message = (
            f"\nkft: compiling the train step for {model.name!r} "
            f"({len(model.trainable_variables)} trainable variables); "
            + why)
        self._running = _Running()
        self._timer = threading.Timer(delay, self._notice,
                                      (message, self._running))
        self._timer.daemon = True
        self._timer.start()

    def on_train_batch_end(self, batch, logs=None):
        if self._timer is None:
            # A step that compiled nothing: how long steps take.
            step = time.perf_counter() - self._batch_start
            self._step = step if self._step is None else min(self._step,
                                                             step)
            return
        self._stop_timer()
        if self._noticed:
            _compat.print_msg(
                "kft: compiled in "
                f"{time.perf_counter() - self._started:.1f} s.")

    def on_train_end(self, logs=None):
        self._stop_timer()

    def _stop_timer(self):
        if self._timer is None:
            return
        with self._running.lock:
            self._running.ended = True
        self._timer.cancel()
        self._timer = self._running = None


class _Running:
    """A timed step: `ended` is set under `lock`, which the timer holds
    from its check of `ended` to the end of its print, so "compiling..."
    never comes after the step's end (a timer that passed its check as the
    step ended printed it after "compiled in", or with none). Made per
    timer, so the callback copies and pickles between fits."""

    def __init__(self):
        self.lock, self.ended = threading.Lock(), False
