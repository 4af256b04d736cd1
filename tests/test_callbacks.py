import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import kft
from kft.training.unfreeze_schedules import Every
from kft.training.unfreeze_schedules import Milestones
from kft.training.unfreeze_schedules import Plateau
from kft.training.unfreezing import GradualUnfreezing

SHAPE = (16, 16, 3)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (n,) + SHAPE).astype("float32"),
            rng.integers(0, 3, n).astype("int32"))


def _model():
    return kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                input_shape=SHAPE)


class Recorder(keras.callbacks.Callback):
    """Snapshots weights after the stage switch and at epoch end, and the
    loss of an eager forward pass on the (single) training batch."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y
        self.begin, self.end, self.eager_loss, self.step_loss = [], [], [], []
        self.trainable, self.slots_end, self.slots_begin = [], [], []

    def _weights(self):
        return {v.path: np.array(v.value) for v in self.model.weights}

    def _slots(self):
        return {v.path: np.array(v.value)
                for v in self.model.optimizer.variables}

    def on_epoch_begin(self, epoch, logs=None):
        self.begin.append(self._weights())
        self.slots_begin.append(self._slots())
        self.trainable.append({v.path for v in self.model.trainable_variables})
        logits = self.model(self.x, training=True)
        self.eager_loss.append(float(LOSS(self.y, logits)))

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.step_loss.append(float(logs["loss"]))

    def on_epoch_end(self, epoch, logs=None):
        self.end.append(self._weights())
        self.slots_end.append(self._slots())


def test_stages_train_only_the_intended_weights_and_keep_slots():
    x, y = _data()
    model = _model()
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    recorder = Recorder(x, y)
    history = model.fit(
        x, y, epochs=4, batch_size=16, shuffle=False, verbose=0,
        callbacks=[GradualUnfreezing(every=1, verbose=0), recorder])
    assert history.history["unfrozen_blocks"] == [0, 1, 2, 3]
    params = history.history["trainable_params"]
    assert params == sorted(params) and len(set(params)) == 4
    blocks = ["head", "block3", "block2", "block1"]
    for epoch in range(4):
        trainable = recorder.trainable[epoch]
        prefixes = tuple(
            {"head": "head_", "block3": "block3_", "block2": "block2_",
             "block1": "block1_"}[b] for b in blocks[:epoch + 1])
        expected = {p for p in recorder.begin[epoch]
                    if p.startswith(prefixes) and "_bn/" not in p
                    and p.rsplit("/", 1)[1] in ("kernel", "bias")}
        assert trainable == expected
        changed = {p for p, v in recorder.end[epoch].items()
                   if not np.array_equal(v, recorder.begin[epoch][p])}
        assert changed == expected, epoch
        # The compiled step's loss is the eager loss of the same weights.
        np.testing.assert_allclose(recorder.step_loss[epoch],
                                   recorder.eager_loss[epoch], rtol=1e-5)
    # Adam moments of the head carry over unchanged across each switch.
    for epoch in range(1, 4):
        before, after = recorder.slots_end[epoch - 1], recorder.slots_begin[epoch]
        head_slots = [p for p in before if "head_dense" in p]
        assert len(head_slots) == 4
        for p in head_slots:
            np.testing.assert_array_equal(before[p], after[p])
        new = [p for p in after if p not in before]
        assert new and all(not after[p].any() for p in new)
    # evaluate uses the final weights.
    eager = float(LOSS(y, model(x, training=False)))
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), eager,
                               rtol=1e-5)


def _dense_blocks():
    """Blocks a, b and head of identically shaped Dense layers, compiled,
    with their `patterns` and a batch of 8."""
    inputs = keras.Input((4,))
    h = keras.layers.Dense(4, name="a")(inputs)
    h = keras.layers.Dense(4, name="b")(h)
    outputs = keras.layers.Dense(4, name="head_out")(h)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.1), keras.losses.MeanSquaredError())
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
    return model, {"a": "^a$", "b": "^b$", "head": "^head_"}, x, y


def test_identical_shapes_inside_fit():
    model, patterns, x, y = _dense_blocks()
    recorder = Recorder(x, y)
    recorder.on_epoch_begin = lambda epoch, logs=None: recorder.begin.append(
        recorder._weights())
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[
        GradualUnfreezing(every=1, patterns=patterns, verbose=0), recorder])
    expected = [{"head_out"}, {"head_out", "b"}, {"head_out", "b", "a"}]
    for epoch in range(3):
        changed = {p.split("/")[0] for p, v in recorder.end[epoch].items()
                   if not np.array_equal(v, recorder.begin[epoch][p])}
        assert changed == expected[epoch]


def test_milestones_and_validation_use_current_weights():
    x, y = _data()
    xv, yv = _data(8, seed=1)
    model = _model()
    model.compile(keras.optimizers.SGD(0.05), LOSS)

    class ValCheck(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            eager = float(LOSS(yv, self.model(xv, training=False)))
            np.testing.assert_allclose(logs["val_loss"], eager, rtol=1e-5)
            self.checked = epoch + 1

    check = ValCheck()
    history = model.fit(x, y, validation_data=(xv, yv), epochs=4,
                        batch_size=8, verbose=0, callbacks=[
                            GradualUnfreezing(milestones=[1, 3], verbose=0),
                            check])
    assert history.history["unfrozen_blocks"] == [0, 1, 1, 2]
    assert check.checked == 4


def test_plateau_mode_unfreezes_after_patience():
    class Fake(keras.callbacks.Callback):
        values = [1.0, 0.5, 0.5, 0.5, 0.4, 0.4]

        def on_epoch_end(self, epoch, logs=None):
            logs["fake_loss"] = self.values[epoch]

    x, y = _data(8)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    callback = GradualUnfreezing(monitor="fake_loss", patience=2, verbose=0)
    history = model.fit(x, y, epochs=6, batch_size=8, verbose=0,
                        callbacks=[Fake(), callback])
    # Best 0.5 at epoch 1; no improvement in epochs 2 and 3 -> stage 1 from
    # epoch 4; the comparison restarts there.
    assert history.history["unfrozen_blocks"] == [0, 0, 0, 0, 1, 1]
    assert callback.schedule.stage_epochs == [4]


def test_stage_log_is_printed(capsys):
    x, y = _data(8)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0,
              callbacks=[GradualUnfreezing(every=1)])
    out = capsys.readouterr().out
    assert "epoch 1: stage 0, unfroze 'head'" in out
    assert "epoch 2: stage 1, unfroze 'block3', trainable params" in out


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of"):
        GradualUnfreezing()
    with pytest.raises(ValueError, match="exactly one of"):
        GradualUnfreezing(every=1, milestones=[2])
    with pytest.raises(ValueError, match="Received: every=0"):
        GradualUnfreezing(every=0)
    with pytest.raises(ValueError, match="milestones"):
        GradualUnfreezing(milestones=[3, 2])
    # No milestone never unfreezes a block: the callback did nothing.
    with pytest.raises(ValueError, match=r"at least one epoch.*"
                       r"Received: milestones=\[\]"):
        GradualUnfreezing(milestones=[])
    with pytest.raises(ValueError, match="at least one epoch"):
        GradualUnfreezing(milestones=np.array([], int))
    for make in (lambda: Milestones([]),
                 lambda: Milestones.from_config({"epochs": []})):
        with pytest.raises(ValueError, match=r"`epochs` must be at least "
                           r"one epoch"):
            make()
    with pytest.raises(ValueError, match="Received: mode='up'"):
        GradualUnfreezing(every=1, mode="up")
    x, y = _data(8)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    # No validation data: said once (validation_freq > 1 looks the same
    # at a single epoch end), as Keras' EarlyStopping does.
    with pytest.warns(UserWarning, match="'val_acc', which is not logged "
                                         "at every epoch.*no validation") \
            as caught:
        model.fit(x, y, epochs=1, verbose=0, callbacks=[
            GradualUnfreezing(monitor="val_acc", verbose=0)])
    # At the user's fit, not inside kft.
    assert {w.filename for w in caught if "val_acc" in str(w.message)} == {
        __file__}
    with pytest.raises(ValueError, match="'acc'.*not in the epoch logs"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[
            GradualUnfreezing(monitor="acc", verbose=0)])


def test_config_round_trip():
    callback = GradualUnfreezing(milestones=[2, 4], bn="train", verbose=0)
    config = json.loads(json.dumps(callback.get_config()))
    clone = GradualUnfreezing.from_config(config)
    assert clone.get_config() == callback.get_config()


@pytest.mark.parametrize("schedule", [
    Every(3), Milestones([2, 5]),
    Plateau("val_top2", patience=3, min_delta=0.01, mode="max"),
])
def test_config_round_trip_of_each_schedule(schedule):
    callback = GradualUnfreezing(schedule=schedule, max_blocks=2,
                                 patterns={"a": "^a$", "head": "^head_"},
                                 backup_dir="ckpt", verbose=0)
    config = json.loads(json.dumps(callback.get_config()))
    clone = GradualUnfreezing.from_config(config)
    assert clone.get_config() == callback.get_config()
    assert type(clone.schedule) is type(schedule)
    assert clone.schedule is not schedule
    assert clone.schedule.get_config() == schedule.get_config()
    assert [clone.schedule.stage_at(e) for e in range(8)] == [
        schedule.stage_at(e) for e in range(8)]
    assert (clone.max_blocks, clone.backup_dir) == (2, "ckpt")


def test_arguments_build_the_schedule_objects():
    every = GradualUnfreezing(every=2, verbose=0).schedule
    assert isinstance(every, Every) and every.n == 2
    milestones = GradualUnfreezing(milestones=[1, 3], verbose=0).schedule
    assert isinstance(milestones, Milestones) and milestones.epochs == [1, 3]
    plateau = GradualUnfreezing(monitor="val_loss", patience=3,
                                min_delta=-0.1, mode="min").schedule
    assert isinstance(plateau, Plateau)
    assert plateau.get_config() == {"monitor": "val_loss", "patience": 3,
                                    "min_delta": 0.1, "mode": "min"}
    # A configuration in the argument form loads as well.
    argument_form = GradualUnfreezing.from_config(
        {"every": None, "milestones": None, "monitor": "loss",
         "patience": 4, "min_delta": 0.0, "mode": "auto", "max_blocks": None,
         "bn": "frozen", "patterns": None, "backup_dir": None, "verbose": 0})
    assert isinstance(argument_form.schedule, Plateau)
    assert argument_form.schedule.patience == 4


def test_schedule_objects_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of.*schedule"):
        GradualUnfreezing(every=1, schedule=Every(1))
    with pytest.raises(TypeError, match="Received: schedule='every'"):
        GradualUnfreezing(schedule="every")
    # A schedule object passed first, where `every` stands.
    with pytest.raises(TypeError, match=r"by keyword: GradualUnfreezing\("
                       r"schedule=Milestones\(epochs=\[2\]\)\)"):
        GradualUnfreezing(Milestones([2]))
    with pytest.raises(ValueError, match="pass them to `Plateau`.*"
                                         "Received: patience=5"):
        GradualUnfreezing(schedule=Plateau("loss"), patience=5)
    with pytest.raises(ValueError, match="Received: n=0"):
        Every(0)
    with pytest.raises(ValueError, match="Received: epochs=\\[2, 2\\]"):
        Milestones([2, 2])
    with pytest.raises(ValueError, match="Received: epochs=\\[0\\]"):
        Milestones([0])
    with pytest.raises(ValueError, match="Received: patience=0"):
        Plateau("loss", patience=0)
    with pytest.raises(ValueError, match="Received: mode='up'"):
        Plateau("loss", mode="up")
    with pytest.raises(ValueError, match="Received: monitor=None"):
        Plateau(None)
    with pytest.raises(ValueError, match="Received: bn='eval'"):
        GradualUnfreezing(every=1, bn="eval")


@pytest.mark.parametrize("schedule,expected", [
    (Every(2), [0, 0, 1, 1, 2]),
    (Milestones([1, 4]), [0, 1, 1, 1, 2]),
])
def test_schedule_objects_drive_the_stages(schedule, expected):
    x, y = _data(8)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    callback = GradualUnfreezing(schedule=schedule, verbose=0)
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0,
                        callbacks=[callback])
    assert history.history["unfrozen_blocks"] == expected
    assert callback.schedule is schedule
    # Capped at the blocks below the head (stem, block1-3), or `max_blocks`.
    for max_blocks, cap in ((None, 4), (1, 1)):
        capped = GradualUnfreezing(schedule=Every(1), max_blocks=max_blocks,
                                   verbose=0)
        capped.set_model(model)
        assert capped.stage_at(100) == cap


class _FakeLoss(keras.callbacks.Callback):
    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["fake_loss"] = self.values[epoch]


def test_plateau_schedule_object_and_its_state():
    x, y = _data(8)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    schedule = Plateau("fake_loss", patience=2, mode="min")
    history = model.fit(x, y, epochs=6, batch_size=8, verbose=0, callbacks=[
        _FakeLoss([1.0, 0.5, 0.5, 0.5, 0.4, 0.4]),
        GradualUnfreezing(schedule=schedule, verbose=0)])
    assert history.history["unfrozen_blocks"] == [0, 0, 0, 0, 1, 1]
    assert schedule.state() == {"stage_epochs": [4], "wait": 1, "best": 0.4}
    # Restoring keeps the stages up to the epoch after the saved one.
    records = {"5": {"stage_epochs": [4, 7], "wait": 1, "best": 0.3}}
    fresh = Plateau("fake_loss", patience=2)
    fresh.restore(records, saved_epoch=5)
    assert fresh.state() == {"stage_epochs": [4], "wait": 1, "best": 0.3}
    # Without the saved epoch's record: the one before it, and a warning.
    fresh = Plateau("fake_loss", patience=2)
    with pytest.warns(UserWarning, match="no plateau record for epoch 7"):
        fresh.restore(records, saved_epoch=6)
    assert fresh.state() == {"stage_epochs": [4, 7], "wait": 1, "best": 0.3}


def test_plateau_state_survives_a_restart(tmp_path):
    # Best 0.5 at epoch 1; epochs 2-3 plateau -> stage 1 at epoch 4; best
    # 0.4 at 4; epochs 5-6 plateau -> stage 2 at 7. The run stops before
    # epoch 3, with one epoch of patience used: forgetting it would start
    # stage 1 at epoch 7 instead.
    values = [1.0, 0.5, 0.5, 0.5, 0.4, 0.4, 0.4, 0.3]
    x, y = _data(8)
    backup = str(tmp_path / "backup")

    def run(interrupt_at=None):
        model = _model()
        model.compile(keras.optimizers.Adam(1e-3), LOSS)
        unfreeze = GradualUnfreezing(
            schedule=Plateau("fake_loss", patience=2), backup_dir=backup,
            verbose=0)
        callbacks = [_FakeLoss(values), unfreeze,
                     keras.callbacks.BackupAndRestore(backup)]
        if interrupt_at is not None:
            callbacks.append(_Interrupt(interrupt_at))
        history = model.fit(x, y, epochs=8, batch_size=8, verbose=0,
                            callbacks=callbacks)
        return unfreeze.schedule, history.history["unfrozen_blocks"]

    with pytest.raises(KeyboardInterrupt):
        run(interrupt_at=3)
    schedule, stages = run()
    assert schedule.stage_epochs == [4, 7]
    assert stages == [0, 1, 1, 1, 2]  # epochs 3-7


SCRIPT = os.path.join(os.path.dirname(__file__), "resume_script.py")


def _run_script(workdir, **env):
    env = dict(os.environ, **{k: str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, SCRIPT, str(workdir)], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    straight = _run_script(workdir)
    assert straight.returncode == 0, straight.stderr[-3000:]
    return np.load(workdir / "final.npz")


def _assert_same_run(resumed_dir, uninterrupted):
    resumed = np.load(resumed_dir / "final.npz")
    assert sorted(resumed.files) == sorted(uninterrupted.files)
    for key in uninterrupted.files:
        np.testing.assert_allclose(resumed[key], uninterrupted[key],
                                   atol=1e-6, rtol=0, err_msg=key)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(tmp_path, uninterrupted):
    killed = _run_script(tmp_path, KFT_TEST_KILL_AT=3)  # SIGKILL in epoch 3
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / "final.npz").exists()
    resumed = _run_script(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at epoch 3 with 3 blocks unfrozen" in resumed.stdout
    _assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["unfreeze_first", "backup_first"])
def test_kill_between_the_two_epoch_end_writes(tmp_path, uninterrupted,
                                               order):
    # Epoch 2 is the first epoch of stage 2: one callback has recorded its
    # end, the other not, when the process dies.
    killed = _run_script(tmp_path, KFT_TEST_KILL_AT_END=2,
                         KFT_TEST_ORDER=order)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _run_script(tmp_path, KFT_TEST_ORDER=order)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Skipping variable loading for optimizer" not in resumed.stderr
    _assert_same_run(tmp_path, uninterrupted)


def test_one_trace_per_stage_not_per_epoch():
    x, y = _data(8)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    traces = []
    original = model.train_step

    def counting_train_step(state, data):
        traces.append(1)  # runs only while jax traces the step
        return original(state, data)

    model.train_step = counting_train_step
    model.fit(x, y, epochs=6, batch_size=4, verbose=0,
              callbacks=[GradualUnfreezing(every=2, verbose=0)])
    assert len(traces) == 3


def test_newly_unfrozen_block_trains_at_its_own_rate():
    """GradualUnfreezing + BlockwiseOptimizer(layerwise_lr): the block
    unfrozen at epoch 1 takes SGD steps at its layer-wise rate."""
    import jax

    x, y = _data(8)
    model = _model()
    rates = kft.layerwise_lr(model, 0.1, 0.5)
    assert rates["block3"] == pytest.approx(0.05)
    model.compile(kft.BlockwiseOptimizer(keras.optimizers.SGD(0.1), rates,
                                         model=model), LOSS)

    class Check(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            tv = [v.value for v in self.model.trainable_variables]
            ntv = [v.value for v in self.model.non_trainable_variables]

            def loss(tv):
                out, _ = self.model.stateless_call(tv, ntv, x, training=True)
                return LOSS(y, out)

            self.grads = dict(zip(
                [v.path for v in self.model.trainable_variables],
                jax.grad(loss)(tv)))
            self.before = {v.path: np.array(v.value)
                           for v in self.model.trainable_variables}

        def on_epoch_end(self, epoch, logs=None):
            if epoch != 1:
                return
            for v in self.model.trainable_variables:
                rate = rates["head"] if "head" in v.path else rates["block3"]
                np.testing.assert_allclose(
                    np.array(v.value) - self.before[v.path],
                    -rate * np.array(self.grads[v.path]), rtol=1e-4,
                    atol=1e-7)
            self.checked = True

    check = Check()
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0,
              callbacks=[GradualUnfreezing(every=1, verbose=0), check])
    assert check.checked


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt


def test_resume_with_another_schedule_raises_instead_of_fresh_slots(tmp_path):
    x, y = _data(16)
    backup = str(tmp_path / "backup")

    def run(every, interrupt_at=None):
        model = _model()
        model.compile(keras.optimizers.Adam(1e-3), LOSS)
        callbacks = [GradualUnfreezing(every=every, backup_dir=backup,
                                       verbose=0),
                     keras.callbacks.BackupAndRestore(backup)]
        if interrupt_at is not None:
            callbacks.append(_Interrupt(interrupt_at))
        model.fit(x, y, epochs=4, batch_size=8, verbose=0,
                  callbacks=callbacks)

    with pytest.raises(KeyboardInterrupt):
        run(every=1, interrupt_at=2)
    # The checkpoint's optimizer was built for stage 1; every=3 puts the
    # resumed run in stage 0 (after epoch 2 and within epoch 3), so Keras
    # would skip loading its slots.
    with pytest.raises(RuntimeError, match="optimizer state was not restored"):
        run(every=3)


def test_plateau_direction_from_the_metric_object():
    # "top2" is maximised: improving every epoch never plateaus.
    x, y = _data(16)
    model = _model()
    model.compile(keras.optimizers.SGD(0.0), LOSS, metrics=[
        keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")])
    callback = GradualUnfreezing(monitor="top2", patience=1, verbose=0)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    assert callback.schedule.direction == "max"
    with pytest.raises(ValueError, match="Received: mode='up'"):
        GradualUnfreezing(monitor="top2", mode="up")
    with pytest.raises(ValueError, match="Received: patience=0"):
        GradualUnfreezing(monitor="top2", patience=0)


def test_compile_notice_on_new_steps_only(capsys):
    # One batch per epoch: with after=0, a full last batch's notice (after
    # 3x the fastest step) could fire on a slow step under load.
    x, y = _data(8)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    notice = kft.callbacks.CompileNotice(after=0.0)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[
        GradualUnfreezing(milestones=[2], verbose=0), notice])
    out = capsys.readouterr().out
    # The first step, and the first step of stage 1 (epoch 3).
    assert out.count("kft: compiling the train step") == 2, out
    assert out.count("kft: compiled in") == 2, out
    with pytest.raises(ValueError, match="Received: after=-1"):
        kft.callbacks.CompileNotice(after=-1)


def test_plateau_on_validation_skips_epochs_without_it():
    # With validation_freq=2, epochs without val_loss raised "not in the
    # epoch logs"; Keras' EarlyStopping skips them.
    schedule = Plateau("val_loss", patience=1, mode="min")
    with pytest.warns(UserWarning, match="epochs without it do not count"):
        for epoch, logs in enumerate([{"loss": 1.0}, {"loss": 0.9,
                                                      "val_loss": 1.0},
                                      {"loss": 0.8}, {"loss": 0.7,
                                                      "val_loss": 1.1}]):
            schedule.on_epoch_end(epoch, logs, None, limit=3)
    assert schedule.stage_epochs == [4]
    with pytest.raises(ValueError, match="'val_loss', which is not in the "
                                         "epoch logs"):
        Plateau("val_loss", patience=1, mode="min").on_epoch_end(
            0, {"loss": 1.0, "val_acc": 0.5}, None, limit=3)


def test_plateau_compares_afresh_after_each_stage():
    # The loss usually jumps right after an unfreeze. The new stage's first
    # epoch sets the best afresh: kept from the stage before, every later
    # epoch would count as no improvement and unfreeze a block each epoch.
    schedule = Plateau("loss", patience=1, mode="min")
    for epoch, loss in enumerate([1.0, 0.5, 0.6, 0.9, 0.8, 0.7, 0.6]):
        schedule.on_epoch_end(epoch, {"loss": loss}, None, limit=5)
    assert schedule.stage_epochs == [3]
    assert schedule.state() == {"stage_epochs": [3], "wait": 0, "best": 0.6}


def test_plateau_restore_without_its_record_takes_the_latest_earlier():
    # The warning promises the plateau count "restarts from the epoch before
    # it": the latest earlier record (epoch 2, after stage 1 began), not
    # the oldest (epoch 0, which would lose that stage).
    records = {"0": {"stage_epochs": [], "wait": 0, "best": 1.0},
               "1": {"stage_epochs": [2], "wait": 1, "best": 0.4},
               "2": {"stage_epochs": [2], "wait": 0, "best": 0.3}}
    schedule = Plateau("loss", patience=2, mode="min")
    with pytest.warns(UserWarning, match="no plateau record for epoch 4"):
        schedule.restore(records, saved_epoch=3)
    assert schedule.state() == {"stage_epochs": [2], "wait": 0, "best": 0.3}
    assert schedule.stage_at(3) == 1


def test_max_blocks_above_the_body_keeps_every_block_trainable():
    # `max_blocks` has no upper bound: above the blocks below the head it
    # caps nothing. Past the last stage every block stays trainable; an
    # uncapped stage sliced the body from the end and re-froze blocks.
    model, patterns, x, y = _dense_blocks()
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[
        GradualUnfreezing(every=1, max_blocks=10, verbose=0,
                          patterns=patterns)])
    assert history.history["unfrozen_blocks"] == [0, 1, 2, 2, 2]
    assert history.history["trainable_params"] == [20, 40, 60, 60, 60]


def test_compile_notice_times_a_partial_last_batch():
    # 20 examples in batches of 8: the last batch of 4 compiles a program
    # of its own under the same train function; it was never timed.
    x, y = _data(20)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    notice = kft.callbacks.CompileNotice(after=0.0)
    started = []
    original = notice._notice

    def recording(message, running):
        started.append(notice._started)
        original(message, running)

    notice._notice = recording
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[notice])
    # The first step and the first partial last batch; not epoch 2's.
    assert len(started) == 2


def test_compile_notice_is_silent_once_the_step_has_ended(monkeypatch):
    # Its timer fires `after` seconds past a step's start unless the step
    # ends first: a step that compiled quickly must cancel it, or the
    # notice "compiling..." comes in the middle of training.
    import time

    from kft import _compat

    printed, ended = [], []
    monkeypatch.setattr(_compat, "print_msg", lambda message: printed.append(
        (time.perf_counter(), message)))
    x, y = _data(8)
    for warm in (True, False):  # the second step loads from the cache
        model = _model()
        model.compile(keras.optimizers.SGD(0.01), LOSS)
        marks = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda *_, **__: ended.append(
                time.perf_counter()),
            on_epoch_end=lambda *_, **__: time.sleep(1.0))
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[
            kft.callbacks.CompileNotice(after=0.5)]
            + ([] if warm else [marks]))
    # A slow compile may be noticed, while it runs; nothing after it.
    assert all(when < ended[0] for when, _ in printed), printed


def test_a_compile_notice_timer_firing_as_its_step_ends_prints_nothing(
        monkeypatch):
    # The timer's thread can pass its own "cancelled?" check just before
    # the step ends and print after it: "compiling..." with no "compiled
    # in" line. Here its call comes, as late as it can, after the end.
    from kft import _compat

    printed, timers = [], []
    monkeypatch.setattr(_compat, "print_msg", printed.append)
    notice = kft.callbacks.CompileNotice(after=3600)
    spy = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda *_, **__: timers.append(notice._timer))
    x, y = _data(8)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0,
              callbacks=[notice, spy])
    timer, = timers
    timer.function(*timer.args)
    assert printed == [] and not notice._noticed


def test_a_notice_printing_as_its_step_ends_comes_before_compiled_in(
        monkeypatch):
    # The timer's check and its print are one under a lock: a slow print
    # still running when the step ends finishes before "compiled in"
    # (without the lock, "compiled in" came first).
    import threading
    import time

    from kft import _compat

    printed, printing, ended = [], threading.Event(), threading.Event()

    def print_msg(message):
        if threading.current_thread() is not threading.main_thread():
            printing.set()
            ended.wait(30)
            time.sleep(0.2)  # a slow terminal
        printed.append(message.strip()[:14])

    def step_ends(*_, **__):  # ordered before the notice's batch end
        printing.wait(30)
        ended.set()

    monkeypatch.setattr(_compat, "print_msg", print_msg)
    x, y = _data(8)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[
        keras.callbacks.LambdaCallback(on_train_batch_end=step_ends),
        kft.callbacks.CompileNotice(after=0.0)])
    assert printed == ["kft: compiling", "kft: compiled "], printed


def test_a_compile_notice_copies_pickles_and_outlives_an_interrupted_fit(
        monkeypatch):
    # Keras Tuner deep-copies a search's callbacks for every trial (a lock
    # made in __init__ refused it). A fit interrupted in a timed step never
    # calls on_train_end: the next fit stops its timer, which would print
    # into it.
    import copy
    import pickle

    from kft import _compat

    printed = []
    monkeypatch.setattr(_compat, "print_msg", printed.append)
    x, y = _data(8)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    notice = kft.callbacks.CompileNotice(after=3600)

    def interrupt(*_, **__):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[
            notice, keras.callbacks.LambdaCallback(
                on_train_batch_begin=interrupt)])
    left, at_start = notice._timer, []
    assert left is not None and left.is_alive()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[
        notice, keras.callbacks.LambdaCallback(on_train_begin=lambda _: (
            at_start.append(notice._timer)))])
    left.join(5)
    assert at_start == [None] and not left.is_alive()
    fresh = kft.callbacks.CompileNotice(after=2.0)
    for again in (copy.deepcopy(fresh), pickle.loads(pickle.dumps(fresh))):
        assert again.after == 2.0
        model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[again])
    assert printed == []


def test_compile_notice_does_not_copy_the_models_state_every_batch(
        monkeypatch):
    # Keras' `callback.model` on JAX writes the running step's state back
    # at every read: the notice read it per batch, ~5 ms a step (10-30% of
    # a short one), in every fine_tune and kft train with verbose.
    x, y = _data(32)

    def syncs(callbacks):
        model = _model()
        model.compile(keras.optimizers.SGD(0.01), LOSS)
        calls = []
        sync = model.jax_state_sync
        monkeypatch.setattr(model, "jax_state_sync",
                            lambda: calls.append(1) or sync())
        model.fit(x, y, epochs=2, batch_size=4, verbose=0,
                  callbacks=callbacks)
        return len(calls)

    plain = syncs([])
    assert syncs([kft.callbacks.CompileNotice(after=60)]) == plain < 8


def test_compile_notice_times_each_new_program_once():
    # Which steps start a timer, and its delay (the timers are cancelled
    # unseen: after=3600). A partial last batch waits `after` plus three
    # of the steps before it; a one-batch epoch's step is the first and the
    # last at once (timed once, not again at epoch 3); a fit stopped inside
    # a timed step times the next fit's first step anew.
    class Stop(Exception):
        pass

    notice = kft.callbacks.CompileNotice(after=3600)
    delays = []
    spy = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda *_, **__: delays.append(
            notice._timer and notice._timer.interval))
    x, y = _data(20)
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0,
              callbacks=[notice, spy])
    assert delays[0] == 3600 and delays[1] is None
    assert delays[2] > 3600 and delays[3:] == [None] * 3
    delays.clear()
    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    model.fit(x[:8], y[:8], epochs=3, batch_size=8, verbose=0,
              callbacks=[notice, spy])
    assert delays == [3600, None, None]
    delays.clear()

    def stop(*_, **__):
        raise Stop

    model = _model()
    model.compile(keras.optimizers.SGD(0.01), LOSS)
    with pytest.raises(Stop):
        model.fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=0,
                  callbacks=[notice, keras.callbacks.LambdaCallback(
                      on_train_batch_begin=stop)])
    model.fit(x[:8], y[:8], epochs=1, batch_size=8, verbose=0,
              callbacks=[notice, spy])
    assert delays == [3600]
