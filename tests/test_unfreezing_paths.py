"""GradualUnfreezing on the paths around a resume: checkpoints within an
epoch (`save_freq` an integer), and its argument checks."""

import json
import os
import shutil
import warnings

import keras
import numpy as np
import pytest

import kft
from kft.training.unfreeze_schedules import Milestones
from kft.training.unfreeze_schedules import Plateau
from kft.training.unfreezing import GradualUnfreezing

SHAPE = (16, 16, 3)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
RNG = np.random.default_rng(0)
X = RNG.uniform(0, 255, (16,) + SHAPE).astype("float32")
Y = RNG.integers(0, 3, 16).astype("int32")


def _slot(variable):
    # Without the optimizer's name ("adam_1/..."), which differs per model.
    return variable.path.split("/", 1)[1]


class _Stop(keras.callbacks.Callback):
    """Interrupts after batch `batch` of `epoch`, keeping the optimizer
    state and trainable set then (what a checkpoint saved there holds)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.slots, self.trainable = (epoch, batch), None, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.slots = {_slot(v): np.array(v.value)
                          for v in self.model.optimizer.variables}
            self.trainable = {v.path for v in self.model.trainable_variables}
            raise KeyboardInterrupt


class _Start(keras.callbacks.Callback):
    """The first epoch's number, optimizer state and trainable set."""

    def on_epoch_begin(self, epoch, logs=None):
        if not hasattr(self, "epoch"):
            self.epoch = epoch
            self.slots = {_slot(v): np.array(v.value)
                          for v in self.model.optimizer.variables}
            self.trainable = {v.path for v in self.model.trainable_variables}


def _fit(backup, unfreeze, last, backup_class=keras.callbacks.BackupAndRestore,
         first=()):
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=SHAPE)
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    return model.fit(X, Y, epochs=4, batch_size=8, shuffle=False,
                     verbose=0, callbacks=[
                         *first, unfreeze, backup_class(backup, save_freq=1),
                         last])


def _fake_loss(values):
    class FakeLoss(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["fake_loss"] = values[epoch]
    return FakeLoss()


def test_resume_from_saves_within_an_epoch(tmp_path, capsys):
    # fake_loss does not improve in epoch 1: stage 1 from epoch 2. A save
    # after batch 0 of epoch 2 records (epoch 2, batch 0), as an
    # end-of-epoch save of epoch 1 (stage 0) does; after batch 1 it
    # records (2, 1) while the plateau record is epoch 1's.
    values = [1.0, 1.0, 0.5, 0.4]
    for batch in (0, 1):
        backup = str(tmp_path / f"backup{batch}")

        def unfreeze():
            return GradualUnfreezing(schedule=Plateau("fake_loss", 1),
                                     backup_dir=backup)

        stop = _Stop(2, batch)
        with pytest.raises(KeyboardInterrupt):
            _fit(backup, unfreeze(), stop, first=[_fake_loss(values)])
        with open(os.path.join(backup, "training_metadata.json")) as f:
            assert json.load(f) == {"epoch": 2, "batch": batch}
        start, callback = _Start(), unfreeze()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = _fit(backup, callback, start,
                           first=[_fake_loss(values)])
        messages = [str(w.message) for w in caught]
        assert not [m for m in messages if "plateau record" in m
                    or "Skipping variable loading" in m], messages
        assert "resumed within epoch 3 (training reruns it" in (
            capsys.readouterr().out)
        assert start.epoch == 2 and start.trainable == stop.trainable
        assert len(stop.trainable) == 3  # head kernel, bias; block3 conv
        assert start.slots.keys() == stop.slots.keys()
        for path, value in stop.slots.items():
            np.testing.assert_array_equal(start.slots[path], value, path)
        assert history.history["unfrozen_blocks"] == [1, 1]
        assert callback.schedule.stage_epochs == [2]


def test_second_resume_within_an_epoch(tmp_path):
    # Interrupted within epoch 2, resumed, interrupted within epoch 2
    # again: the checkpoint must still say epoch 2.
    for backup_class in (kft.callbacks.BackupAndRestore,
                         keras.callbacks.BackupAndRestore):
        backup = str(tmp_path / backup_class.__module__)
        for batch in (0, 1):
            with pytest.raises(KeyboardInterrupt):
                _fit(backup, GradualUnfreezing(every=1, backup_dir=backup,
                                               verbose=0),
                     _Stop(2, batch), backup_class)
        with open(os.path.join(backup, "training_metadata.json")) as f:
            meta = json.load(f)
        if backup_class is kft.callbacks.BackupAndRestore:
            assert meta == {"epoch": 2, "batch": 1}
            continue
        # Keras' own callback records epoch 0 there; restarting from epoch
        # 0 with epoch 2's weights must not pass silently.
        assert meta == {"epoch": 0, "batch": 1}
        with pytest.raises(RuntimeError, match="saved in epoch 1, but epoch "
                                               "2 had already ended.*"
                                               "kft.callbacks.Backup"):
            _fit(backup, GradualUnfreezing(every=1, backup_dir=backup,
                                           verbose=0), _Start(), backup_class)


def test_a_resume_after_epoch_ten_keeps_the_plateau_stage(tmp_path):
    # The schedule's records beside the checkpoint keep the last two
    # epochs; sorted as text ("10" < "8") epoch 10's record was dropped and
    # a resume in epoch 11 lost the stage its plateau had started.
    values = [1.0 - 0.05 * i for i in range(10)] + [0.55, 0.55]
    backup = str(tmp_path / "backup")

    def fit(last):
        model = kft.build_classifier("simple_cnn", num_classes=3,
                                     weights=None, input_shape=SHAPE)
        model.compile(keras.optimizers.Adam(1e-3), LOSS)
        callback = GradualUnfreezing(schedule=Plateau("fake_loss", 1),
                                     backup_dir=backup)
        history = model.fit(X, Y, epochs=12, batch_size=8, shuffle=False,
                            verbose=0, callbacks=[
                                _fake_loss(values), callback,
                                kft.callbacks.BackupAndRestore(
                                    backup, save_freq=1), last])
        return callback, history

    with pytest.raises(KeyboardInterrupt):
        fit(_Stop(11, 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback, history = fit(_Start())
    assert not [w for w in caught if "plateau record" in str(w.message)]
    assert history.history["unfrozen_blocks"] == [1]
    assert callback.schedule.stage_epochs == [11]


def test_plateau_counts_epochs_without_improvement_in_a_row():
    # An improvement restarts the count (it kept counting: a stage at
    # epoch 5 of a loss that never went 2 epochs without improving); a
    # NaN first value is no best to compare with (every later value was
    # "no improvement": a stage at 3 of a loss improving every epoch).
    for values in ([1.0, 0.9, 1.0, 0.8, 0.85, 0.7],
                   [float("nan"), 1.0, 0.9, 0.8, 0.7]):
        schedule = Plateau("loss", patience=2, mode="min")
        for epoch, value in enumerate(values):
            schedule.on_epoch_end(epoch, {"loss": value}, None, limit=3)
        assert schedule.stage_epochs == [] and schedule.best == 0.7, values


def test_a_resume_after_the_first_epoch_keeps_the_plateau_count(tmp_path):
    # A flat loss (learning rate 0), patience 1: stage 1 from epoch 2. Killed
    # after epoch 0 and resumed, epoch 1 had no record to restore and the
    # stage came an epoch late.
    def fit(backup, extra=()):
        keras.utils.set_random_seed(0)
        model = kft.build_classifier("simple_cnn", num_classes=3,
                                     weights=None, input_shape=SHAPE)
        model.compile(keras.optimizers.SGD(0.0), LOSS)
        return model.fit(X, Y, epochs=4, batch_size=8, shuffle=False,
                         verbose=0, callbacks=[
                             kft.callbacks.BackupAndRestore(backup),
                             GradualUnfreezing(schedule=Plateau("loss", 1),
                                               backup_dir=backup, verbose=0),
                             *extra])

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    whole = fit(str(tmp_path / "whole")).history["unfrozen_blocks"]
    assert whole == [0, 0, 1, 1]
    with pytest.raises(KeyboardInterrupt):
        fit(str(tmp_path / "cut"), [Kill()])
    resumed = fit(str(tmp_path / "cut")).history["unfrozen_blocks"]
    assert resumed == whole[1:]


def test_resume_within_the_first_epoch(tmp_path, capsys):
    # Saved after batch 0 of epoch 0 and resumed with per-block rates:
    # epoch 0 has no earlier epoch's stage to roll back to (taken as
    # stage -1, the resume's message raised an IndexError); the run goes
    # on from epoch 0 as the uninterrupted one would.
    backup = str(tmp_path / "backup")

    def fit(*extra, verbose=0):
        keras.utils.set_random_seed(0)
        model = kft.build_classifier("simple_cnn", num_classes=3,
                                     weights=None, input_shape=SHAPE)
        model.compile(kft.BlockwiseOptimizer(keras.optimizers.Adam(1e-3),
                                             model=model), LOSS)
        return model.fit(X, Y, epochs=3, batch_size=4, shuffle=False,
                         verbose=0, callbacks=[
                             kft.callbacks.BackupAndRestore(
                                 backup, save_freq=1),
                             GradualUnfreezing(every=1, backup_dir=backup,
                                               verbose=verbose), *extra])

    with pytest.raises(KeyboardInterrupt):
        fit(_Stop(0, 0))
    with open(os.path.join(backup, "training_metadata.json")) as f:
        assert json.load(f) == {"epoch": 0, "batch": 0}
    start = _Start()
    capsys.readouterr()
    history = fit(start, verbose=1)
    assert start.epoch == 0
    assert history.history["unfrozen_blocks"] == [0, 1, 2]
    assert ("GradualUnfreezing: resumed within epoch 1 (training reruns it "
            "from its first batch): stage 0") in capsys.readouterr().out


def test_argument_errors_name_the_value():
    # The schedule object itself: "'int' object is not iterable", a
    # string read as its characters, "epochs[i]" for every element.
    for epochs in (3, "12", None):
        with pytest.raises(TypeError, match=r"`epochs` must be a list of "
                           rf"increasing epochs >= 1, .*epochs={epochs!r}"):
            Milestones(epochs)
    with pytest.raises(ValueError, match=r"`epochs\[1\]` must be an "
                       r"integer.*'x'"):
        Milestones([1, "x"])
    cases = [
        (dict(milestones=2), "Argument `milestones` must be a list of "
                             "increasing epochs >= 1. Received: milestones=2"),
        (dict(milestones="12"), "Received: milestones='12'"),
        (dict(every=1, patience=3), "belong to the plateau schedule.*"
                                    "Received: patience=3"),
        (dict(milestones=[2], mode="max", min_delta=0.1),
         "Received: min_delta=0.1, mode='max'"),
        (dict(every=1, verbose="yes"), "Received: verbose='yes'"),
        (dict(every=1, backup_dir=3), "Received: backup_dir=3"),
    ]
    for kwargs, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            GradualUnfreezing(**kwargs)
    # Still accepted: booleans for `verbose`, paths for `backup_dir`.
    callback = GradualUnfreezing(every=1, verbose=False,
                                 backup_dir=os.path.join("a", "b"))
    assert callback.backup_dir == os.path.join("a", "b")


class _StopAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.stop_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.stop_epoch:
            raise KeyboardInterrupt


def _fit_every_epoch(backup, unfreeze_dir, extra=()):
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=SHAPE)
    model.compile(kft.BlockwiseOptimizer(keras.optimizers.Adam(1e-3),
                                         model=model), LOSS)
    return model.fit(X, Y, epochs=4, batch_size=8, shuffle=False, verbose=0,
                     callbacks=[GradualUnfreezing(every=1,
                                                  backup_dir=unfreeze_dir,
                                                  verbose=0),
                                kft.callbacks.BackupAndRestore(backup),
                                *extra])


@pytest.mark.parametrize("unfreeze_dir", ["other", None])
def test_resume_without_the_checkpoints_backup_dir_raises(tmp_path,
                                                          unfreeze_dir):
    # BackupAndRestore resumed the weights, but without this callback's
    # backup_dir the stage was not set first, the optimizer state was
    # skipped (a Keras warning) and training went on with fresh slots.
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        _fit_every_epoch(backup, backup, [_StopAtEpoch(2)])
    other = None if unfreeze_dir is None else str(tmp_path / unfreeze_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="resuming at epoch 3 but the "
                           "optimizer state was not restored from the "
                           "BackupAndRestore checkpoint"):
            _fit_every_epoch(backup, other)


def test_resume_from_a_checkpoint_cut_short_uses_the_previous(tmp_path):
    # A kill while the end-of-epoch save wrote latest.weights.h5: Keras
    # falls back to the .bkp pair, and GradualUnfreezing crashed reading
    # the cut file (OSError: truncated file).
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        _fit_every_epoch(backup, backup, [_StopAtEpoch(2)])
    # The .bkp pair was written, the metadata not yet: it names the
    # previous checkpoint, as the .bkp one does.
    shutil.copy(os.path.join(backup, "training_metadata.json.bkp"),
                os.path.join(backup, "training_metadata.json"))
    with open(os.path.join(backup, "latest.weights.h5"), "r+b") as f:
        f.truncate(1000)
    history = _fit_every_epoch(backup, backup).history
    # The previous checkpoint is after epoch 1: epochs 2-4 run again.
    assert history["unfrozen_blocks"] == [1, 2, 3]


def test_small_argument_slips_get_clear_answers():
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=SHAPE)
    # A bare string was read as its letters: blocks 'h', 'e', 'a', 'd'.
    with pytest.raises(TypeError, match=r"a list of block names \(e.g. "
                       r"\['head'\]\)"):
        kft.set_trainable_blocks(model, "head")
    # An array of milestones was refused; Milestones(array) was not.
    callback = GradualUnfreezing(milestones=np.array([1, 3]), verbose=0)
    # Before fit: AttributeError 'NoneType' object has no attribute.
    with pytest.raises(ValueError, match="needs the model"):
        callback.stage_at(2)
    callback.set_model(model)
    assert [callback.stage_at(e) for e in range(4)] == [0, 1, 1, 2]


def _resumed_weights(tmp_path, make_model, make_data, data_arg):
    """Final weights of an uninterrupted 3-epoch fit, and of one stopped
    before epoch 2 and resumed in a fresh model and data object (as a new
    process would have)."""
    def fit(data, backup, extra=()):
        model = make_model()
        model.fit(data, epochs=3, verbose=0, shuffle=False, callbacks=[
            kft.callbacks.BackupAndRestore(
                backup, data=data if data_arg else None), *extra])
        return model

    whole = fit(make_data(), tmp_path / "whole").get_weights()
    with pytest.raises(KeyboardInterrupt):
        fit(make_data(), tmp_path / "cut", [_StopAtEpoch(2)])
    resumed = fit(make_data(), tmp_path / "cut").get_weights()
    return whole, resumed


def _assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["kft.data", "domain_pairs"])
def test_backup_with_data_resumes_the_passes_of_the_uninterrupted_fit(
        tmp_path, kind):
    # Without `data`, the fresh data object numbered its passes from 0:
    # the resumed epoch repeated epoch 0's shuffled order.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 8, 8, 3)).astype("float32")
    y = np.arange(16) % 2

    def make_model():
        keras.utils.set_random_seed(0)
        model = kft.build_classifier("simple_cnn", 2, weights=None,
                                     input_shape=(8, 8, 3))
        if kind == "domain_pairs":
            model = kft.DomainAdaptationModel(model, hidden_units=(4,))
        model.compile(keras.optimizers.SGD(0.1),
                      keras.losses.SparseCategoricalCrossentropy(True))
        return model

    def make_data():
        if kind == "domain_pairs":
            return kft.adaptation.domain_pairs((x, y), x[::-1], batch_size=4,
                                               seed=3)
        return kft.data.from_arrays(x, y, batch_size=4, seed=3)

    whole, resumed = _resumed_weights(tmp_path, make_model, make_data, True)
    _assert_same(whole, resumed)
    whole, resumed = _resumed_weights(tmp_path / "no_data", make_model,
                                      make_data, False)
    assert max(np.abs(a - b).max() for a, b in zip(whole, resumed)) > 1e-4
    with pytest.raises(TypeError, match=r"`data` must be the training "
                       r"data .*Received: data='ndarray'"):
        kft.callbacks.BackupAndRestore(tmp_path / "x", data=x)


def test_a_callback_reused_for_a_new_model_freezes_it_at_stage_0():
    # Stage 0 of the first fit was kept: the second model (fresh, all
    # trainable) trained whole while its history said "0 blocks, head".
    callback = GradualUnfreezing(every=3, verbose=0)
    counts = []

    class Count(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            counts.append(len(self.model.trainable_weights))

    for _ in range(2):
        model = kft.build_classifier("simple_cnn", num_classes=3,
                                     weights=None, input_shape=SHAPE)
        model.compile(keras.optimizers.SGD(1e-3), LOSS)
        history = model.fit(X, Y, batch_size=8, epochs=2, verbose=0,
                            callbacks=[callback, Count()])
        head = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
        assert history.history["trainable_params"] == [head, head]
    assert counts == [2, 2, 2, 2]


def test_a_callback_that_resumed_starts_a_new_fit_over(tmp_path):
    # Reused after it resumed a run, it took the new fit for a resume too
    # ("resuming at epoch 1 but the optimizer state was not restored").
    backup = str(tmp_path / "backup")

    def fit(callbacks, epochs=4):
        model = kft.build_classifier("simple_cnn", num_classes=3,
                                     weights=None, input_shape=SHAPE)
        model.compile(keras.optimizers.Adam(1e-3), LOSS)
        return model.fit(X, Y, batch_size=8, epochs=epochs, verbose=0,
                         callbacks=callbacks).history["unfrozen_blocks"]

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit([GradualUnfreezing(every=1, backup_dir=backup, verbose=0),
             kft.callbacks.BackupAndRestore(backup), Kill()])
    callback = GradualUnfreezing(every=1, backup_dir=backup, verbose=0)
    assert fit([callback, kft.callbacks.BackupAndRestore(backup)]) == [2, 3]
    assert fit([callback], epochs=2) == [0, 1]


def test_a_callback_whose_restoring_fit_ran_no_epoch_starts_over(tmp_path):
    # A rerun of a finished run's command (its checkpoint after the last
    # epoch kept) restores and runs no epoch: no epoch began to clear the
    # "restored" mark, and the callback's next fit from epoch 0 was taken
    # for that resume ("the optimizer state was not restored").
    backup = str(tmp_path / "backup")

    def fit(callbacks):
        model = kft.build_classifier("simple_cnn", num_classes=3,
                                     weights=None, input_shape=SHAPE)
        model.compile(keras.optimizers.Adam(1e-3), LOSS)
        return model.fit(X, Y, batch_size=8, epochs=2, verbose=0,
                         callbacks=callbacks).history

    def restoring():
        return kft.callbacks.BackupAndRestore(backup, delete_checkpoint=False)

    assert fit([GradualUnfreezing(every=1, backup_dir=backup, verbose=0),
                restoring()])["unfrozen_blocks"] == [0, 1]
    callback = GradualUnfreezing(every=1, backup_dir=backup, verbose=0)
    assert "unfrozen_blocks" not in fit([callback, restoring()])
    assert fit([callback])["unfrozen_blocks"] == [0, 1]


def test_a_plateau_callback_reused_for_a_new_fit_starts_over():
    # Kept from the first fit, its plateau unfroze a block in the second
    # one, where the loss improved every epoch (stage_epochs [2, 1]); a
    # fit that goes on from a later epoch keeps the schedule's state.
    callback = GradualUnfreezing(schedule=Plateau("fake_loss", 1))

    def fit(values, **kwargs):
        model = kft.build_classifier("simple_cnn", num_classes=3,
                                     weights=None, input_shape=SHAPE)
        model.compile(keras.optimizers.SGD(1e-3), LOSS)
        return model, model.fit(X, Y, batch_size=8, verbose=0, callbacks=[
            _fake_loss(values), callback], **kwargs)

    _, first = fit([1.0, 2.0, 1.5], epochs=3)
    assert first.history["unfrozen_blocks"] == [0, 0, 1]
    _, second = fit([1.4, 1.0, 0.5], epochs=3)
    assert second.history["unfrozen_blocks"] == [0, 0, 0]
    assert callback.schedule.stage_epochs == []
    model, third = fit({0: 9.0, 1: 9.0, 2: 9.0, 3: 9.0}, epochs=4,
                       initial_epoch=2)
    assert third.history["unfrozen_blocks"] == [0, 1]


def test_backup_with_data_warns_about_epochs_inside_a_pass(tmp_path):
    # Only whole passes are checkpointed: with epochs shorter than a pass a
    # resumed fit read other batches than the uninterrupted one, silently.
    x = np.zeros((16, 8, 8, 3), "float32")
    y = np.arange(16) % 2
    data = kft.data.from_arrays(x, y, batch_size=4, seed=3)  # 4 batches
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(8, 8, 3))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(True))
    for steps, warned in ((2, True), (None, False), (4, False)):
        backup = kft.callbacks.BackupAndRestore(tmp_path / str(steps),
                                                data=data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0,
                      callbacks=[backup])
        said = [w for w in caught
                if "shorter than a pass" in str(w.message)]
        assert bool(said) is warned, (steps, said)
        if warned:
            assert str(said[0].message).startswith(
                "fit's steps_per_epoch=2 is shorter than a pass over `data` "
                "(4 batches)")
            assert said[0].filename == __file__  # the user's line
