"""`kft.fine_tune` with a `kft.runs.RunBackup`, resumed in a new model
after a crash: the weights kept are the best of the whole run, the epochs
before the crash included."""

import json
import os
import warnings

import kft
import keras
import numpy as np
import pytest

from kft.runs import RunBackup


class _Crash(keras.callbacks.Callback):
    """Raises inside phase 2's epoch `epoch` (a crash mid-run)."""

    def __init__(self, epoch):
        super().__init__()
        self.crash_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.crash_epoch:
            raise RuntimeError("crash")


class _KillBeforeCheckpoint(RunBackup):
    """A RunBackup killed at the end of epoch `at`, between its state
    file's write and its checkpoint's."""

    def __init__(self, at, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.at = at

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        checkpoint = self._inner.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            if epoch == self.at:
                raise KeyboardInterrupt
            checkpoint(epoch, logs)
        self._inner.on_epoch_end = on_epoch_end


def _run(directory, extra=(), data_options=None, model_options=None,
         **kwargs):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (12, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 3, 12)
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=(16, 16, 3),
                                 **(model_options() if model_options
                                    else {}))
    data = kft.data.from_arrays(x, y, batch_size=4,
                                **(data_options or {"shuffle": False}))
    backup = RunBackup(directory, model, monitor="loss", print_fn=None,
                       data=data)
    # A rate this high makes phase 2 worse than the head phase: the best
    # epoch is epoch 0, before the crash.
    result = kft.fine_tune(
        model, data,
        **{"strategy": "full", "head_epochs": 1, "epochs": 3,
           "learning_rate": 3.0, "schedule": "constant", "monitor": "loss",
           "verbose": 0, "callbacks": [backup, *extra], **kwargs})
    return result, [np.array(v.value) for v in model.weights], backup


def test_a_resumed_run_keeps_the_best_epoch_from_before_the_crash(tmp_path):
    whole, whole_weights, _ = _run(tmp_path / "whole")
    assert whole.best_epoch == 0
    assert min(whole.histories[1]["loss"]) > whole.best_value
    # A folder named like a weights file: the temporary best file's name
    # was made by replacing in the whole path, into a missing folder.
    crashed = tmp_path / "exp.weights.h5"
    with pytest.raises(RuntimeError, match="crash"):
        _run(crashed, [_Crash(2)])
    # Resumed in a fresh model: epoch 2 and 3 run here, epoch 0 ran before.
    resumed, weights, backup = _run(crashed)
    assert sorted(backup.history) == [0, 1, 2, 3]
    assert (resumed.best_epoch, resumed.best_value) == (
        whole.best_epoch, whole.best_value)
    for got, want in zip(weights, whole_weights):
        np.testing.assert_array_equal(got, want)


def _crashed(directory):
    """`directory` of a run that crashed in phase 2's epoch 2."""
    with pytest.raises(RuntimeError, match="crash"):
        _run(directory, [_Crash(2)])
    return directory


def _recorded_classes(directory, change):
    """Applies `change(records)` to every recorded `[path, trainable,
    class]` list of the run's state file."""
    path = directory / "run_state.json"
    state = json.loads(path.read_text())
    changed = [change(records) for epochs in state["trainable"].values()
               for records in epochs.values()]
    assert any(changed)
    path.write_text(json.dumps(state))


def test_a_run_crashed_under_a_kft_before_classifier_resumes(tmp_path):
    # kft before `kft.Classifier` recorded the model as a plain
    # "Functional": the resume was refused as another model.
    whole, whole_weights, _ = _run(tmp_path / "whole")
    crashed = _crashed(tmp_path / "crashed")

    def as_before(records):
        # (The head phase trained a head-only model on cached features.)
        if records[0][2] == "Classifier":
            records[0][2] = "Functional"
            return True
    _recorded_classes(crashed, as_before)
    resumed, weights, _ = _run(crashed)
    assert resumed.best_epoch == whole.best_epoch
    for got, want in zip(weights, whole_weights):
        np.testing.assert_array_equal(got, want)


def test_a_resume_into_other_layers_names_the_first_difference(tmp_path):
    crashed = _crashed(tmp_path / "crashed")

    def another_layer(records):
        if records[0][2] == "Classifier":
            records[3][2] = "Conv1D"
            return True
    _recorded_classes(crashed, another_layer)
    with pytest.raises(RuntimeError, match=r"layers differ .*layer 3 was a "
                       r"Conv1D \(.*\), the model's is a \w+ .*kft version"):
        _run(crashed)


def test_a_backup_given_to_a_second_run_refuses_it(tmp_path):
    # Its epochs restarted at 0 over the first run's: epoch 1's number
    # matched the kept best epoch, and the second run's (worse) weights
    # were saved and loaded as the first run's best.
    first, _, backup = _run(tmp_path / "run")
    kept = backup.history[first.best_epoch]
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=(16, 16, 3))
    x = np.zeros((4, 16, 16, 3), "float32")
    with pytest.raises(ValueError, match=r"starts at epoch 1, but epochs "
                       r"\[1, 2, 3, 4\] .* make a new RunBackup"):
        kft.fine_tune(model, (x, np.arange(4) % 3), head_epochs=1, epochs=1,
                      monitor="loss", verbose=0, callbacks=[backup])
    assert backup.history[first.best_epoch] == kept


def test_a_rerun_best_epoch_keeps_the_weights_of_its_value(tmp_path):
    # Killed after the best epoch's weights and logs were written, before
    # its checkpoint: the rerun epoch saved its own weights under the
    # first attempt's value (arrays: other shuffles in the rerun).
    backup = RunBackup(tmp_path, keras.Sequential([keras.Input((2,)),
                       keras.layers.Dense(1)]), monitor="loss",
                       print_fn=None)
    model = backup.target
    model.compile("sgd", "mse")
    backup.set_model(model)
    backup.history = {0: {"phase": 1, "loss": 1.0}}
    backup.best_epoch, backup.best_value, backup.mode = 0, 1.0, "min"
    backup._inner = keras.callbacks.Callback()  # the checkpoint, not tested
    backup.on_epoch_end(0, {"loss": 2.0})
    assert (backup.best_epoch, backup.best_value) == (0, 1.0)
    assert not backup.load_best()  # nothing saved for the worse rerun


def test_an_epoch_with_weights_that_are_not_finite_is_not_saved_as_best(
        tmp_path):
    # kft train keeps RunBackup's best epoch: diverged weights, which
    # predict one class, could hold the best accuracy and be the result.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    backup = RunBackup(tmp_path, model, monitor="val_accuracy",
                       print_fn=None)
    model.compile("sgd", "mse")
    backup.set_model(model)
    backup.mode = "max"
    backup._inner = keras.callbacks.Callback()  # the checkpoint, not tested
    backup.on_epoch_end(0, {"val_accuracy": 0.4})
    kernel = model.layers[-1].kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    backup.on_epoch_end(1, {"val_accuracy": 0.6})
    assert (backup.best_epoch, backup.best_value) == (0, 0.4)
    assert backup.load_best()
    assert np.isfinite(kernel.value).all()


def test_an_accuracy_monitor_keeps_the_most_accurate_epoch(tmp_path):
    # Every other test monitors a loss, where "min" is right anyway: a
    # backup choosing by "min" whatever its mode kept the least accurate
    # epoch of `kft train --monitor val_accuracy` as model.keras.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(True),
                  metrics=["accuracy"])
    model.evaluate(np.ones((2, 2)), np.zeros(2), verbose=0)  # its metrics
    # mode="auto", as `kft train` makes it: "max" from the metric.
    backup = RunBackup(tmp_path, model, monitor="val_accuracy",
                       print_fn=None)
    backup.set_model(model)
    backup._inner = keras.callbacks.Callback()  # the checkpoint, not tested
    kernel = model.layers[-1].kernel
    values = [0.5, 0.9, 0.6]
    for epoch, value in enumerate(values):
        kernel.assign(np.full(kernel.shape, epoch, "float32"))
        backup.on_epoch_end(epoch, {"val_accuracy": value, "val_loss": 1.0})
    assert backup.mode == "max"
    best = int(np.argmax(values))
    assert (backup.best_epoch, backup.best_value) == (best, 0.9)
    kernel.assign(np.full(kernel.shape, -1, "float32"))
    assert backup.load_best()
    np.testing.assert_array_equal(kernel.value, best)
    # What a resume (and `kft train`'s run.json) reads back.
    again = RunBackup(tmp_path, model, monitor="val_accuracy",
                      print_fn=None)
    assert (again.best_epoch, again.best_value, again.mode) == (
        best, 0.9, "max")


def test_the_best_file_holds_the_weights_without_the_optimizer(tmp_path):
    # Keras' save_weights writes the optimizer's slots too (Adam: 2/3 of
    # the file, 180 of 277 MB for ResNet50), at every improving epoch;
    # `load_best` reads the weights alone.
    import h5py

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    backup = RunBackup(tmp_path, model, monitor="loss", print_fn=None)
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.ones((4, 2)), np.ones((4, 3)), verbose=0)
    backup.set_model(model)
    backup.mode = "min"
    backup._inner = keras.callbacks.Callback()  # the checkpoint, not tested
    backup.on_epoch_end(0, {"loss": 1.0})
    with h5py.File(tmp_path / "best.weights.h5") as saved:
        assert sorted(saved) == ["layers", "vars"]
    kept = [np.array(w) for w in model.get_weights()]
    model.layers[-1].kernel.assign(np.zeros((2, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "optimizer skipped" either
        assert backup.load_best()
    for got, want in zip(model.get_weights(), kept):
        np.testing.assert_array_equal(got, want)


def test_a_backup_folder_holding_links_is_refused(tmp_path):
    # Keras writes its checkpoint files through links: one planted in a
    # run folder from elsewhere created files where it pointed.
    (tmp_path / "phase0").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere.h5",
               tmp_path / "phase0" / "latest.weights.h5")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"latest.weights.h5' is a symbolic "
                       r"link \(to '.*elsewhere.h5'\); checkpoints would"):
        RunBackup(tmp_path, model, print_fn=None)
    # A hard link (a `cp -al` snapshot of the run): the file gets a copy
    # of its own, and the snapshot stays as it was when Keras writes.
    os.remove(tmp_path / "phase0" / "latest.weights.h5")
    (tmp_path / "phase0" / "latest.weights.h5").write_bytes(b"weights")
    os.link(tmp_path / "phase0" / "latest.weights.h5", tmp_path / "snap.h5")
    # Links elsewhere in the folder are none of the backup's business.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    os.symlink("/usr/bin/python3", tmp_path / ".venv" / "bin" / "python")
    RunBackup(tmp_path, model, print_fn=None)
    latest = tmp_path / "phase0" / "latest.weights.h5"
    assert latest.read_bytes() == b"weights" and latest.stat().st_nlink == 1
    latest.write_bytes(b"new")
    assert (tmp_path / "snap.h5").read_bytes() == b"weights"


def _mix_and_dropout():
    return {"dropout": 0.3,
            "batch_augment": kft.layers.MixUp(num_classes=3, seed=1)}


@pytest.mark.parametrize("settings", [
    # Passes were numbered from 0 again after a restart: the resumed
    # epochs repeated the first epochs' shuffled orders (balanced draws,
    # augmentation), and the run ended elsewhere than the uninterrupted
    # one (`kft train --resume`: epoch 7's loss 0.7659 for 0.8205).
    {"data_options": {"shuffle": True, "seed": 5}},
    {"data_options": {"sampling": "balanced", "seed": 5}},
    {"data_options": {"shuffle": True, "seed": 5, "augmentation": "light"}},
    # Mixup's and dropout's seed states are no weights: Keras' checkpoint
    # left them out, and a resumed `kft train --mixup` drew the first
    # epochs' lambdas and masks again (epoch 5's loss 0.817 for 0.768).
    {"model_options": _mix_and_dropout},
    # A crash in phase 1, which trains on cached features shuffled by
    # Keras from NumPy's global generator: the resumed process drew the
    # first epoch's order again (weights 0.167 apart).
    {"data_options": {"shuffle": True, "seed": 5}, "head_epochs": 3,
     "epochs": 4, "crash": 1, "phase": 0}])
def test_a_resumed_run_reads_and_draws_what_the_whole_run_did(tmp_path,
                                                              settings):
    settings = {"learning_rate": 0.05, **settings}
    crash, phase = settings.pop("crash", 2), settings.pop("phase", 1)
    whole, whole_weights, _ = _run(tmp_path / "whole", **settings)
    with pytest.raises(RuntimeError, match="crash"):
        _run(tmp_path / "crashed", [_Crash(crash)], **settings)
    resumed, weights, _ = _run(tmp_path / "crashed", **settings)
    assert resumed.histories[phase]["loss"] == \
        whole.histories[phase]["loss"][1:]
    for got, want in zip(weights, whole_weights):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_the_cached_phase_order_is_seeded_by_epoch_and_numpy_given_back():
    # The order is a function of (seed, epoch), and NumPy's global
    # generator is the user's again after the epoch's first batch.
    from kft.training.fine_tune_phases import EpochSeededShuffle

    shuffle = EpochSeededShuffle(5)
    orders = []
    for _ in range(2):
        np.random.seed(3)
        shuffle.on_epoch_begin(2)
        orders.append(np.random.permutation(10))
        shuffle.on_train_batch_end(0)
        after = np.random.random()
    np.random.seed(3)
    assert after == np.random.random()
    np.testing.assert_array_equal(*orders)
    shuffle.on_epoch_begin(3)
    assert not np.array_equal(np.random.permutation(10), orders[0])
    shuffle.on_train_end()


def test_seed_states_of_another_model_are_left_with_a_warning(tmp_path):
    x = np.zeros((8, 16, 16, 3), "float32")
    y = np.arange(8) % 3

    def fit(options, extra=()):
        model = kft.build_classifier("simple_cnn", 3, weights=None,
                                     input_shape=(16, 16, 3), **options)
        loss = (keras.losses.CategoricalCrossentropy
                if "batch_augment" in options
                else keras.losses.SparseCategoricalCrossentropy)
        model.compile("sgd", loss(from_logits=True))
        model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[
            kft.callbacks.BackupAndRestore(tmp_path / "backup"), *extra])

    with pytest.raises(RuntimeError, match="crash"):
        fit(_mix_and_dropout(), [_Crash(2)])
    with pytest.warns(UserWarning, match=r"holds 2 seed states where model "
                      r"'kft_simple_cnn\w*' has 1: its random layers") as seen:
        fit({"dropout": 0.3})
    # Said at the user's line, not inside kft.
    assert {w.filename for w in seen if "seed states" in str(w.message)} \
        == {__file__}


def test_backups_refuse_data_whose_passes_they_cannot_continue(tmp_path):
    # RunBackup dropped arrays silently (kft.callbacks.BackupAndRestore
    # refused them): a resumed fine_tune on arrays read other orders
    # (2e-3 from the uninterrupted run) while the user thought otherwise.
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 3))
    arrays = (np.zeros((4, 16, 16, 3)), np.zeros(4, int))
    for make in (lambda: RunBackup(tmp_path, model, data=arrays),
                 lambda: kft.callbacks.BackupAndRestore(tmp_path,
                                                        data=arrays)):
        with pytest.raises(TypeError, match=r"`data` must be the training "
                           r"data when it is a kft\.data dataset .* "
                           r"Received: data='tuple'"):
            make()
    # A folder that is not a path failed in os.path.join's words.
    with pytest.raises(TypeError, match=r"`backup_dir` must be a folder "
                       r"path .* Received: backup_dir=3"):
        kft.callbacks.BackupAndRestore(3)
    with pytest.raises(ValueError, match=r"not empty"):
        kft.callbacks.BackupAndRestore("")
    assert kft.callbacks.BackupAndRestore(tmp_path).backup_dir == tmp_path
    with pytest.raises(TypeError, match=r"`double_checkpoint` must be True "
                       r"or False. Received: double_checkpoint='no'"):
        kft.callbacks.BackupAndRestore(tmp_path, double_checkpoint="no")
    kft.callbacks.BackupAndRestore(tmp_path, double_checkpoint=np.bool_(True))


def test_a_run_resumed_after_its_last_checkpoint_keeps_its_best(tmp_path):
    # Killed after the last epoch's checkpoint (e.g. while the report was
    # written): nothing is left to train, and the run's best is loaded
    # (it raised "every epoch's 'loss' was NaN").
    whole, whole_weights, _ = _run(tmp_path)
    again, weights, _ = _run(tmp_path)
    assert again.histories[0] == {} or not again.histories[0].get("loss")
    assert (again.best_epoch, again.best_value) == (
        whole.best_epoch, whole.best_value)
    for got, want in zip(weights, whole_weights):
        np.testing.assert_array_equal(got, want)


def test_phase_start_counts_the_first_stage_of_gradual_unfreezing(tmp_path):
    # It counted before GradualUnfreezing's first stage: the head alone.
    lines = []
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=(16, 16, 3))
    backup = RunBackup(tmp_path, model, monitor="loss", print_fn=lines.append)
    seen = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(sum(int(np.prod(v.shape))
                            for v in self.model.trainable_weights))

    kft.fine_tune(model, (x, rng.integers(0, 3, 8)), strategy="gradual",
                  head_epochs=1, epochs=1, batch_size=4, monitor="loss",
                  cache_features=False, verbose=0,
                  callbacks=[backup, Count()])
    starts = [line for line in lines if "starts:" in line]
    assert starts == [f"phase {i + 1} starts: {n:,} trainable parameters "
                      f"({model.name})" for i, n in enumerate(seen)]
    assert seen[1] > seen[0]


@pytest.mark.parametrize("stopped", ["head phase", "phase 2"])
def test_a_run_that_stopped_early_resumes_finished(tmp_path, stopped):
    # Resumed after its end (killed while the report was written), a run
    # that early stopping had ended trained the epochs it cut off, kept
    # another epoch, and (head phase) dropped phase 2's logs.
    # Phase 2's losses at rate 3: 9e9, 6e7, 1.41, 0.865, 1.07 (stops), ...
    kwargs = {"early_stopping_patience": 0, "epochs": 6}
    if stopped == "head phase":
        kwargs.update(early_stopping_patience=1, epochs=4, head_epochs=4,
                      head_learning_rate=3.0, learning_rate=1e-3)
    whole, whole_weights, backup = _run(tmp_path, **kwargs)
    epochs = sorted(backup.history)
    phase_of = {k: v["phase"] for k, v in backup.history.items()}
    stopped_phase = 1 if stopped == "head phase" else 2
    planned = {1: kwargs.get("head_epochs", 1), 2: kwargs["epochs"]}[
        stopped_phase]
    assert sum(p == stopped_phase for p in phase_of.values()) < planned
    again, weights, backup = _run(tmp_path, **kwargs)
    assert sorted(backup.history) == epochs
    assert {k: v["phase"] for k, v in backup.history.items()} == phase_of
    assert (again.best_epoch, again.best_value) == (
        whole.best_epoch, whole.best_value)
    for got, want in zip(weights, whole_weights):
        np.testing.assert_array_equal(got, want)


def test_early_stopping_counts_the_epochs_before_a_restart(tmp_path):
    # Phase 2's losses at rate 3: 9e9, 6e7, 1.41, 0.865, 1.07, 0.920: with
    # patience 2 the run stops after epoch 6. Killed at epoch 6's start,
    # the resumed call counted its patience anew (epoch 6 "improved" on
    # nothing) and trained epochs the whole run did not.
    kwargs = {"early_stopping_patience": 2, "epochs": 10}
    whole, whole_weights, backup = _run(tmp_path / "whole", **kwargs)
    epochs = sorted(backup.history)
    assert epochs[-1] < 10
    with pytest.raises(RuntimeError, match="crash"):
        _run(tmp_path / "crashed", [_Crash(epochs[-1])], **kwargs)
    resumed, weights, backup = _run(tmp_path / "crashed", **kwargs)
    assert sorted(backup.history) == epochs
    assert (resumed.best_epoch, resumed.best_value) == (
        whole.best_epoch, whole.best_value)
    for got, want in zip(weights, whole_weights):
        np.testing.assert_array_equal(got, want)


def test_a_tie_keeps_the_earlier_epoch_after_a_restart(tmp_path):
    # val_accuracy on 6 images ties often: the run never restarted keeps
    # the first epoch of a tie, a resumed one kept its own later epoch
    # over the one RunBackup recorded before the restart.
    def run(directory, extra=()):
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (12, 16, 16, 3)).astype("float32")
        y = rng.integers(0, 3, 12)
        val = (rng.uniform(0, 255, (6, 16, 16, 3)).astype("float32"),
               rng.integers(0, 3, 6))
        model = kft.build_classifier("simple_cnn", num_classes=3,
                                     weights=None, input_shape=(16, 16, 3))
        backup = RunBackup(directory, model, monitor="val_accuracy",
                           mode="max", print_fn=None)
        result = kft.fine_tune(
            model, kft.data.from_arrays(x, y, batch_size=4, shuffle=False),
            val, strategy="full", head_epochs=1, epochs=2,
            learning_rate=1e-3, schedule="constant",
            monitor="val_accuracy", mode="max", verbose=0,
            callbacks=[backup, *extra])
        history = [value for h in result.histories
                   for value in h.get("val_accuracy", [])]
        return result, history, [np.array(v.value) for v in model.weights]

    whole, values, whole_weights = run(tmp_path / "whole")
    assert values.count(whole.best_value) > 1  # a tie, the first kept
    assert whole.best_epoch == values.index(whole.best_value)
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "crashed", [_Crash(whole.best_epoch + 1)])
    resumed, _, weights = run(tmp_path / "crashed")
    assert resumed.best_epoch == whole.best_epoch
    for got, want in zip(weights, whole_weights):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kwargs,message", [
    (dict(monitor="val_accuracy", mode="MAX"), r"`mode` must be one of"),
    (dict(monitor="val_accuracy", mode=None), r"`mode` must be one of"),
    (dict(monitor=None), r"`monitor` must be the name of a logged "
                         r"quantity.*Received: monitor=None"),
    (dict(monitor=3), r"Received: monitor=3")])
def test_run_backup_checks_monitor_and_mode(tmp_path, kwargs, message):
    # Any mode but "max" was read as "min": mode="MAX" on val_accuracy kept
    # the worst epoch's weights; monitor=None failed at the first epoch end.
    model = kft.build_classifier("simple_cnn", num_classes=2, weights=None,
                                 input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match=message):
        RunBackup(str(tmp_path), model, print_fn=None, **kwargs)


def test_an_error_in_a_cached_head_phase_gives_numpy_state_back():
    # The phase reseeds NumPy per epoch for its shuffle and put the state
    # back after the first batch or at the fit's end, neither of which
    # comes when the fit raises: the user's state was left seeded.
    x = np.random.default_rng(0).random((8, 16, 16, 3)).astype("float32")
    data = kft.data.from_arrays(x, np.arange(8) % 2, batch_size=4, seed=1)

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise ValueError("stop")

    def next_draw(user_seed):
        model = kft.build_classifier("simple_cnn", num_classes=2,
                                     weights=None, input_shape=(16, 16, 3))
        np.random.seed(user_seed)
        with pytest.raises(ValueError, match="stop"):
            kft.fine_tune(model, data.with_seed(1),
                          strategy="feature_extraction", head_epochs=2,
                          verbose=0, callbacks=[Stop()])
        return np.random.rand()

    # Seeded by (1, 1) both times, the next draw was the same.
    assert next_draw(123) != next_draw(456)


def _dam_run(directory, extra=()):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    ys = rng.integers(0, 3, 16)
    xt = rng.uniform(0, 100, (16, 16, 16, 3)).astype("float32")
    classifier = kft.build_classifier("simple_cnn", num_classes=3,
                                      weights=None, input_shape=(16, 16, 3))
    model = kft.DomainAdaptationModel(classifier, method="coral",
                                      hidden_units=(16,))
    data = kft.adaptation.domain_pairs((xs, ys), xt, batch_size=8, seed=1)
    backup = RunBackup(directory, model, monitor="val_loss", print_fn=None,
                       data=data)
    kft.fine_tune(model, data, (xs[:8], ys[:8]), strategy="full",
                  head_epochs=2, epochs=2, learning_rate=3e-3, verbose=0,
                  callbacks=[backup, *extra])
    return [np.array(v.value) for v in model.weights]


def test_a_domain_adaptation_run_resumes_with_its_head_phase_flags(tmp_path):
    # Its features and head sub-models share the classifier's layers and
    # come after them in the flattened list: restoring flags in that order
    # set the frozen backbone trainable again, and the resume was refused
    # ("did not restore the optimizer state").
    whole = _dam_run(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="crash"):
        _dam_run(tmp_path / "crashed", [_Crash(1)])
    resumed = _dam_run(tmp_path / "crashed")
    for got, want in zip(resumed, whole):
        np.testing.assert_array_equal(got, want)


def test_a_relative_directory_stays_where_the_backup_was_made(
        tmp_path, monkeypatch):
    # A chdir during the run (a callback, a notebook cell) wrote phase 1
    # into one folder and phase 2 into another: neither resumable.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")

    class _Move(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            os.chdir(tmp_path / "b")

    _, _, backup = _run("ckpt", [_Move()])
    assert backup.directory == str(tmp_path / "a" / "ckpt")
    assert sorted(os.listdir(tmp_path / "a" / "ckpt")) == [
        "best.weights.h5", "phase0", "phase1", "run_state.json"]
    assert os.listdir(tmp_path / "b") == []


@pytest.mark.parametrize("kill", ["before_epoch_1", "before_checkpoint_1"])
def test_a_resume_after_the_first_epoch_restores_its_trainable_set(tmp_path,
                                                                    kill):
    # A callback unfroze the body at the end of epoch 0; killed before
    # epoch 1 and resumed, the checkpoint's (unfrozen) set must be
    # restored first, or its optimizer state does not load (the resume
    # was refused: "did not restore the optimizer state"). Killed at the
    # end of epoch 1 between RunBackup's state (epoch 1 recorded) and its
    # checkpoint (still epoch 0's), the set of epoch 0 must still be in
    # the state: the last two epochs are kept for that.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    y = np.arange(16) % 3

    def model():
        keras.utils.set_random_seed(0)
        m = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=(16, 16, 3))
        kft.freeze(m, "feature_extraction")
        m.compile(kft.BlockwiseOptimizer(keras.optimizers.Adam(1e-3),
                                         model=m),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
        return m

    class Unfreeze(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                with kft.changing_trainable(self.model):
                    for layer in self.model.layers:
                        layer.trainable = True

    class KillBeforeEpoch1(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    folder = str(tmp_path / "run")
    first = model()
    callbacks = {
        "before_epoch_1": [Unfreeze(), RunBackup(folder, first,
                                                 print_fn=None),
                           KillBeforeEpoch1()],
        "before_checkpoint_1": [Unfreeze(), _KillBeforeCheckpoint(
            1, folder, first, print_fn=None)]}[kill]
    with pytest.raises(KeyboardInterrupt):
        first.fit(x, y, validation_data=(x, y), epochs=3, batch_size=8,
                  verbose=0, callbacks=callbacks)
    with open(os.path.join(folder, "run_state.json")) as f:
        assert (str(1) in json.load(f)["history"]) == (
            kill == "before_checkpoint_1")
    unfrozen = {v.path for v in first.trainable_variables}
    again = model()
    history = again.fit(x, y, validation_data=(x, y), epochs=3, batch_size=8,
                        verbose=0, callbacks=[Unfreeze(), RunBackup(
                            folder, again, print_fn=None)])
    assert len(history.history["loss"]) == 2
    assert {v.path for v in again.trainable_variables} == unfrozen


def test_an_early_stop_lost_in_a_kill_is_forgotten_when_its_epoch_reruns(
        tmp_path):
    # Early stopping ended epoch 1, and the kill came before that epoch's
    # checkpoint: the resume reruns epoch 1 (not stopped this time) and
    # is killed in epoch 2. The next resume, from epoch 1's checkpoint,
    # must train on: the stop belonged to the lost attempt (had it been
    # kept, the run "had stopped early after epoch 2").
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    y = np.arange(8) % 3
    folder = str(tmp_path / "run")

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    class KillAt2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    def fit(before=(), after=(), kill_before_checkpoint=None):
        keras.utils.set_random_seed(0)
        model = kft.build_classifier("simple_cnn", num_classes=3,
                                     weights=None, input_shape=(16, 16, 3))
        model.compile(keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        run = (RunBackup(folder, model, print_fn=None)
               if kill_before_checkpoint is None else _KillBeforeCheckpoint(
                   kill_before_checkpoint, folder, model, print_fn=None))
        return model.fit(x, y, validation_data=(x, y), epochs=4,
                         batch_size=4, verbose=0,
                         callbacks=[*before, run, *after]).history

    with pytest.raises(KeyboardInterrupt):
        fit(before=[Stop()], kill_before_checkpoint=1)
    with open(os.path.join(folder, "run_state.json")) as f:
        assert json.load(f)["stopped"] == {"0": 1}
    with pytest.raises(KeyboardInterrupt):
        fit(after=[KillAt2()])
    assert len(fit()["loss"]) == 2
