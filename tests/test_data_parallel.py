"""Data parallel over 8 simulated CPU devices equals one device.

This file is also the script the tests run: `python test_data_parallel.py
DEVICES OUT` runs every scenario in a fresh process whose `XLA_FLAGS`
(set by the parent, before JAX starts) give it DEVICES CPU devices; with 8
it trains under `kft.data_parallel()`, with 1 without a distribution. The
two processes run the same fine-tuning runs (same global batch, same
seeds) side by side and write the weights to OUT (npz) and what else they
saw to OUT.json; the tests compare them.

Tolerance: on 8 devices each device sums the gradient of its 2 examples
and an all-reduce adds the 8 partial sums; one device adds the 16 in
another order. Float addition is not associative, so gradients differ in
the last bits (~1e-7 relative) and Adam, which divides by the root of the
squared gradient, carries that into every step. `ATOL` allows for it and
is 100x below how far every run moves the weights.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

# Largest |weight on 8 devices - weight on 1 device| allowed after a run.
ATOL = 1e-4
# Smallest largest |final - initial weight| a compared run must reach.
MOVED = 100 * ATOL
BATCH = 16

# Two processes that compile every run's steps (about a minute of CPU each).
pytestmark = pytest.mark.slow


# -- the scenarios (run in the subprocesses) ---------------------------------


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (n, 16, 16, 3)).astype("float32")
    return x, (np.arange(n) % 3).astype("int32")


def _model(**kwargs):
    import keras
    import kft

    keras.utils.set_random_seed(0)
    return kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                input_shape=(16, 16, 3), **kwargs)


def _weights(model):
    return {v.path: np.asarray(v.value) for v in model.weights}


def _placements(model):
    """Distinct (sharding type, device count, replicated) of the model's
    weights and its optimizer's variables."""
    values = [v.value for v in model.weights + model.optimizer.variables]
    return sorted({(type(a.sharding).__name__, len(a.sharding.device_set),
                    bool(a.sharding.is_fully_replicated)) for a in values})


def _fit(model, epochs, callbacks=()):
    x, y = _data()
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False,
                     verbose=0, callbacks=list(callbacks))


def run_partial_l2sp(info):
    """Partial freezing with BatchNorm training, L2-SP bound after compile."""
    import keras
    import kft

    model = _model()
    kft.freeze(model, "partial", n_blocks=1, bn="train")
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kft.regularize(model, kft.L2SP(0.1, 0.01))
    start = _weights(model)
    _fit(model, 2)
    info["partial_l2sp_placements"] = _placements(model)
    return start, _weights(model)


def run_shuffled_dataset(info):
    """`model.fit` on a shuffling kft.data dataset: every epoch's order
    must be the same on 8 devices as on 1."""
    import keras
    import kft

    x, y = _data()
    model = _model()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = _weights(model)
    model.fit(kft.data.from_arrays(x, y, batch_size=BATCH, shuffle=True,
                                   seed=5), epochs=3, verbose=0)
    return start, _weights(model)


def _gradual_model():
    import keras
    import kft

    model = _model()
    model.compile(
        kft.BlockwiseOptimizer(keras.optimizers.Adam(1e-2),
                               kft.layerwise_lr(model, 1e-2, 0.5),
                               model=model),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def run_gradual(info):
    """GradualUnfreezing every epoch with per-block rates; counts traces."""
    import kft

    model = _gradual_model()
    start = _weights(model)
    traces, original = [], model.train_step

    def counting_train_step(state, data):
        traces.append(1)  # runs only while jax traces the step
        return original(state, data)

    model.train_step = counting_train_step
    history = _fit(model, 3, [kft.callbacks.GradualUnfreezing(every=1,
                                                             verbose=0)])
    info["gradual_traces"] = len(traces)
    info["gradual_stages"] = history.history["unfrozen_blocks"]
    info["gradual_placements"] = _placements(model)
    return start, _weights(model)


def run_gradual_resumed(info, directory):
    """The gradual run stopped after epoch 2 and resumed from its backup."""
    import keras
    import kft

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt  # a crash after the epoch's backup

    def callbacks():
        return [keras.callbacks.BackupAndRestore(directory),
                kft.callbacks.GradualUnfreezing(every=1, verbose=0,
                                                backup_dir=directory)]

    try:
        _fit(_gradual_model(), 3, [*callbacks(), Stop()])
    except KeyboardInterrupt:
        pass
    model = _gradual_model()
    history = _fit(model, 3, callbacks())
    info["resumed_epochs"] = len(history.history["loss"])
    return None, _weights(model)


def run_mixup(info):
    """MixUp inside the compiled step (a `BatchAugmentModel`)."""
    import keras
    import kft

    model = _model(batch_augment=kft.layers.MixUp(0.4, seed=1))
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.CategoricalCrossentropy(from_logits=True))
    start = _weights(model)
    _fit(model, 2)
    return start, _weights(model)


def mixed_batch():
    """One MixUpOrCutMix draw on the batch as `fit` places it, jitted."""
    import jax
    import keras
    import kft

    layer = kft.layers.MixUpOrCutMix(mixup_alpha=0.4, cutmix_alpha=1.0,
                                     label_smoothing=0.0, num_classes=3,
                                     seed=3)
    state = layer.seed_generator.state
    x, y = _data(BATCH)
    dist = keras.distribution.distribution()
    if dist is not None:  # Split over the devices as `fit` splits batches.
        x, y = (jax.device_put(a, dist.get_data_layout(a.shape).backend_layout)
                for a in (x, y))

    @jax.jit
    def mix(seed, images, labels):
        with keras.StatelessScope(state_mapping=[(state, seed)]):
            return layer((images, labels))

    images, targets = mix(state.value, x, y)
    return {"mixed_images": np.asarray(images),
            "mixed_targets": np.asarray(targets)}


def run_fine_tune(info):
    """`fine_tune` partial: cached head phase, then the top block."""
    import kft

    model = _model()
    start = _weights(model)
    result = kft.fine_tune(model, _data(), strategy="partial",
                           head_epochs=1, epochs=1, batch_size=BATCH,
                           head_learning_rate=1e-2, learning_rate=1e-2,
                           schedule="constant", cache_features=True,
                           verbose=0)
    info["fine_tune_best_epoch"] = result.best_epoch
    return start, _weights(model)


def cached_features():
    """Features of 20 images at batch 16: the last batch (4) is padded."""
    import kft

    model = _model()
    kft.freeze(model, "feature_extraction")
    x, y = _data(20)
    cache = kft.cache_features(model, (x, y), batch_size=BATCH, verbose=0)
    # kft.predict and kft.evaluate pad each batch to split over the
    # devices (evaluate refused 20 examples in batches of 8 on 8 devices).
    predictions = kft.predict(model, x[:5], batch_size=3, top_k=3)
    arrays = kft.evaluate(model, (x[:20], y[:20]), batch_size=BATCH)
    dataset = kft.evaluate(model, kft.data.from_arrays(
        x[:20], y[:20], batch_size=BATCH, shuffle=False))
    return {"features": np.asarray(cache.features),
            "predicted": np.array([p.probabilities for p in predictions]),
            "evaluated": np.array([arrays.expected_calibration_error,
                                   dataset.expected_calibration_error,
                                   arrays.num_examples,
                                   dataset.num_examples])}


def bad_batches(info):
    """The messages for batches that do not split over the devices."""
    import keras
    import kft

    x, y = _data()
    model = _model()
    attempts = {
        "batch_size": lambda: kft.fine_tune(model, (x, y), batch_size=12,
                                            verbose=0),
        "last_batch": lambda: kft.fine_tune(model, (x[:28], y[:28]),
                                            batch_size=BATCH, verbose=0),
        "dataset": lambda: kft.fine_tune(
            model, kft.data.from_arrays(x[:20], y[:20], batch_size=BATCH),
            verbose=0),
    }
    kft.freeze(model, "feature_extraction")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    cache = kft.FeatureCache(np.zeros((20, 64), "float32"), y[:20])
    attempts["fit_head"] = lambda: kft.fit_head(model, cache, batch_size=8)
    # The user's own fit / predict on a kft.data dataset.
    odd = kft.data.from_arrays(x[:20], y[:20], batch_size=BATCH)
    attempts["own_fit"] = lambda: model.fit(odd, epochs=1, verbose=0)
    attempts["own_predict"] = lambda: model.predict(odd, verbose=0)
    attempts["own_fit_batch"] = lambda: model.fit(
        kft.data.from_arrays(x, y, batch_size=12), epochs=1, verbose=0)
    # On arrays: JAX's IndivisibleError, naming no batch.
    attempts["own_predict_arrays"] = lambda: model.predict(
        x[:20], batch_size=BATCH, verbose=0)
    attempts["own_evaluate_arrays"] = lambda: model.evaluate(
        x[:20], y[:20], batch_size=BATCH, verbose=0)
    # A DomainAdaptationModel's own data: JAX's IndivisibleError in the
    # first step, naming no batch.
    adapted = kft.DomainAdaptationModel(_model(), hidden_units=(8,))
    adapted.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    attempts["dann_pairs"] = lambda: adapted.fit(
        kft.adaptation.domain_pairs((x, y), x, batch_size=12), verbose=0)
    attempts["dann_arrays"] = lambda: adapted.fit(
        {"source": x, "target": x}, y, batch_size=12, verbose=0)
    attempts["dann_evaluate"] = lambda: adapted.evaluate(
        x[:20], y[:20], batch_size=BATCH, verbose=0)
    # Built before the distribution was set (a notebook's cells re-run):
    # JAX's "incompatible devices" from inside the step, and the model's
    # head left without values.
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    early = _model()
    early.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    early_dann = kft.DomainAdaptationModel(_model(), hidden_units=(8,))
    early_dann.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    keras.distribution.set_distribution(distribution)
    attempts.update({
        "early_fine_tune": lambda: kft.fine_tune(early, (x, y),
                                                 batch_size=BATCH, verbose=0),
        "early_fit": lambda: early.fit(x, y, batch_size=BATCH, verbose=0),
        "early_lr_find": lambda: kft.lr_find(early, (x, y), batch_size=BATCH,
                                             verbose=0),
        "early_dann": lambda: early_dann.fit({"source": x, "target": x}, y,
                                             batch_size=BATCH, verbose=0),
        "early_evaluate": lambda: early.evaluate(x, y, batch_size=BATCH,
                                                 verbose=0),
        "early_predict": lambda: early.predict(x, batch_size=BATCH,
                                               verbose=0)})
    for name, attempt in attempts.items():
        try:
            attempt()
            info[f"error_{name}"] = None
        except ValueError as error:
            info[f"error_{name}"] = str(error)
    info["early_weights_kept"] = all(
        np.isfinite(np.asarray(v.value)).all() for v in early.weights)
    # kft's own evaluation runs it (batch by batch, on its devices).
    info["early_kft_evaluate"] = kft.evaluate(early, (x, y)).num_examples


def main(devices, out):
    import keras
    import kft

    info = {"devices": len(keras.distribution.list_devices())}
    if devices > 1:
        kft.data_parallel()
    info["distribution"] = repr(keras.distribution.distribution())
    arrays = {}
    runs = {"partial_l2sp": run_partial_l2sp, "gradual": run_gradual,
            "mixup": run_mixup, "fine_tune": run_fine_tune,
            "shuffled_dataset": run_shuffled_dataset}
    if devices > 1:
        runs["gradual_resumed"] = lambda info: run_gradual_resumed(
            info, out + ".backup")
    info["seconds"] = {}
    for name, run in runs.items():
        began = (time.perf_counter(), time.process_time())
        start, end = run(info)
        info["seconds"][name] = [time.perf_counter() - began[0],
                                 time.process_time() - began[1]]
        for path, value in end.items():
            arrays[f"{name}/end/{path}"] = value
        for path, value in (start or {}).items():
            arrays[f"{name}/start/{path}"] = value
        print(f"{devices} devices: {name} done", flush=True)
    arrays.update(mixed_batch())
    arrays.update(cached_features())
    if devices > 1:
        bad_batches(info)
    np.savez(out, **arrays)
    with open(out + ".json", "w") as file:
        json.dump(info, file)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])


# -- the tests ---------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{1: (arrays, info), 8: (arrays, info)}, from two processes run
    side by side."""
    folder = tmp_path_factory.mktemp("data_parallel")
    processes = {}
    for devices in (1, 8):
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env = dict(os.environ, XLA_FLAGS=" ".join(
            [*flags, f"--xla_force_host_platform_device_count={devices}"]))
        out = str(folder / f"devices{devices}.npz")
        processes[devices] = (out, subprocess.Popen(
            [sys.executable, __file__, str(devices), out], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = {}
    for devices, (out, process) in processes.items():
        log, _ = process.communicate(timeout=600)
        assert process.returncode == 0, log[-4000:]
        with open(out + ".json") as file:
            info = json.load(file)
        results[devices] = (dict(np.load(out)), info)
    return results


def _compare(runs, name, reference=None):
    """Largest 8-vs-1-device difference of run `name`'s final weights;
    checks they moved and are close."""
    one, eight = runs[1][0], runs[8][0]
    prefix = f"{reference or name}/end/"
    paths = [k[len(prefix):] for k in one if k.startswith(prefix)]
    assert paths
    diff = max(np.abs(eight[f"{name}/end/{p}"] - one[prefix + p]).max()
               for p in paths)
    moved = max(np.abs(one[prefix + p] - one[f"{reference or name}/start/{p}"]
                       ).max() for p in paths)
    print(f"{name}: max |8 - 1 device| = {diff:.2e}, moved {moved:.3f}")
    assert moved > MOVED
    assert diff <= ATOL
    return diff


def test_runs_used_the_devices(runs):
    for devices in (1, 8):
        print(devices, "devices, seconds (wall, cpu):",
              runs[devices][1]["seconds"])
    assert runs[1][1]["devices"] == 1
    assert runs[8][1]["devices"] == 8
    assert "DataParallel" in runs[8][1]["distribution"]
    # Weights and optimizer state (new blocks' slots too) replicated on the
    # 8-device mesh; on 1 device all on that device.
    for key in ("partial_l2sp_placements", "gradual_placements"):
        assert runs[8][1][key] == [["NamedSharding", 8, True]]
        assert runs[1][1][key] == [["SingleDeviceSharding", 1, True]]


@pytest.mark.parametrize("name", ["partial_l2sp", "gradual", "mixup",
                                  "fine_tune", "shuffled_dataset"])
def test_8_devices_train_like_1(runs, name):
    # Same initial weights: Keras draws them, then places them.
    one, eight = runs[1][0], runs[8][0]
    starts = [k for k in one if k.startswith(f"{name}/start/")]
    assert all(np.array_equal(one[k], eight[k]) for k in starts)
    _compare(runs, name)


def test_gradual_traces_each_stage_once_on_8_devices(runs):
    info = runs[8][1]
    assert info["gradual_stages"] == [0, 1, 2]
    assert info["gradual_traces"] == 3
    assert runs[1][1]["gradual_traces"] == 3


def test_resumed_gradual_run_matches(runs):
    assert runs[8][1]["resumed_epochs"] == 1
    _compare(runs, "gradual_resumed", reference="gradual")


def test_mixing_is_global_and_matches_one_device(runs):
    one, eight = runs[1][0], runs[8][0]
    # The same draws and pairs: elementwise ops only, equal up to how XLA
    # fuses `w * a + (1 - w) * b` in each program (last bits).
    np.testing.assert_allclose(eight["mixed_images"], one["mixed_images"],
                               rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(eight["mixed_targets"], one["mixed_targets"],
                               rtol=1e-6, atol=1e-7)
    # Global pairing: example 1 (class 1, on device 0) is mixed with
    # example 14 (class 2, on device 7), not with its shard neighbour 0.
    targets = eight["mixed_targets"]
    assert targets[1, 2] > 0 and targets[1, 0] == 0


def test_fine_tune_keeps_the_same_epoch(runs):
    assert (runs[1][1]["fine_tune_best_epoch"]
            == runs[8][1]["fine_tune_best_epoch"])


def test_cached_features_padded_batch_matches(runs):
    one, eight = runs[1][0]["features"], runs[8][0]["features"]
    assert one.shape == eight.shape == (20, 64)
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-4)
    one, eight = runs[1][0]["predicted"], runs[8][0]["predicted"]
    assert one.shape == eight.shape == (5, 3)
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-5)
    one, eight = runs[1][0]["evaluated"], runs[8][0]["evaluated"]
    assert list(eight[2:]) == [20, 20] and one[0] == one[1]
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, numbers", [
    ("batch_size", ("batch_size=12", "8 devices")),
    ("last_batch", ("28 examples", "holds 12", "8 devices")),
    ("dataset", ("20 examples", "holds 4", "8 devices")),
    ("fit_head", ("20 examples", "batch_size=8", "holds 4", "8 devices")),
    ("own_fit", ("20 examples", "holds 4", "8 devices")),
    ("own_predict", ("20 examples", "holds 4", "8 devices")),
    ("own_fit_batch", ("dataset.batch_size=12", "8 devices")),
    ("own_predict_arrays", ("20 examples", "holds 4", "8 devices",
                            "kft.predict pads")),
    ("own_evaluate_arrays", ("20 examples", "holds 4", "8 devices",
                             "kft.evaluate pads")),
    ("dann_pairs", ("domain_pairs.batch_size=12", "8 devices")),
    ("dann_arrays", ("batch_size=12", "8 devices")),
    ("dann_evaluate", ("20 examples", "holds 4", "8 devices")),
])
def test_batches_that_do_not_split_raise(runs, name, numbers):
    message = runs[8][1][f"error_{name}"]
    assert message is not None
    for number in numbers:
        assert number in message


@pytest.mark.parametrize("name", ["early_fine_tune", "early_fit",
                                  "early_lr_find", "early_dann",
                                  "early_evaluate", "early_predict"])
def test_a_model_built_before_the_distribution_is_refused(runs, name):
    message = runs[8][1][f"error_{name}"]
    assert message is not None and "was built on 1 device (cpu:0) but the " \
        "current distribution spans 8 devices (cpu:0, cpu:1, cpu:2, cpu:3, " \
        "...): build the model after kft.data_parallel" in message, message
    assert runs[8][1]["early_weights_kept"]
    assert runs[8][1]["early_kft_evaluate"] == 32


def test_device_errors():
    import keras
    import kft

    available = len(keras.distribution.list_devices())
    with pytest.raises(ValueError, match=f"asks for {available + 1} devices "
                       f"but only {available} are available"):
        kft.data_parallel(available + 1)
    with pytest.raises(ValueError, match="more than once"):
        kft.data_parallel(["cpu:0", "cpu:0"])
    with pytest.raises(ValueError, match=r"do not exist here: \['cpu:99'\]"):
        kft.data_parallel(["cpu:99"])
    with pytest.raises(ValueError, match="must be 1-D"):
        kft.data_parallel(device_mesh=keras.distribution.DeviceMesh(
            (1, 1), ["batch", "model"], devices=["cpu:0"]))
    with pytest.raises(ValueError, match=r"do not exist here: \['gpu:7'\]"):
        kft.data_parallel(device_mesh=keras.distribution.DeviceMesh(
            (1,), ["batch"], devices=["gpu:7"]))
    with pytest.raises(ValueError, match="not both"):
        kft.data_parallel(1, device_mesh=keras.distribution.DeviceMesh(
            (1,), ["batch"], devices=["cpu:0"]))
    # A device name alone, an empty list, a mesh of another kind.
    for devices in ("cpu:0", []):
        with pytest.raises(ValueError, match=r"`devices` must be None, a "
                           r"number of devices, or a non-empty list of "
                           r"devices such as \['cpu:0', 'cpu:1'\]\. "
                           r"Received: devices="):
            kft.data_parallel(devices)
    with pytest.raises(TypeError, match=r"`device_mesh` must be a "
                       r"keras.distribution.DeviceMesh\. Received: "
                       r"device_mesh=\(2,\)"):
        kft.data_parallel(device_mesh=(2,))
    # A device named by its kind alone ("CPU") is that kind's first device.
    dist = kft.data_parallel(["CPU"])
    keras.distribution.set_distribution(None)
    assert list(dist.device_mesh.devices.flat) == ["cpu:0"]
    assert keras.distribution.distribution() is None


def test_fit_data_is_checked_as_keras_splits_it(monkeypatch):
    # The checks only read `batch_shards()`: faked here, in this process,
    # without devices to simulate.
    import kft
    from kft.distributed import data_parallel

    monkeypatch.setattr(data_parallel, "batch_shards", lambda: 8)
    check = data_parallel.check_fit_data
    x, y = np.zeros((80, 2), "float32"), np.zeros(80, "int32")
    # Keras trains on floor(80 * 0.81) = 64 examples and validates on 16:
    # both split over 8 devices (65 and 15, rounded up, did not).
    check((x, y), {"batch_size": 8, "validation_split": 0.19})
    # Validation data with sample weights is checked as (x, y) is (JAX's
    # IndivisibleError after the first epoch named no batch).
    with pytest.raises(ValueError, match=r"`validation_data` \(20 examples "
                       r"at batch_size=8\) holds 4 examples"):
        check((x, y), {"batch_size": 8,
                       "validation_data": (x[:20], y[:20], y[:20])})
    # The validation arrays are read at `validation_batch_size` (12, on 6
    # devices), not at Keras' default batch size of 32.
    monkeypatch.setattr(data_parallel, "batch_shards", lambda: 6)
    images = np.zeros((24, 16, 16, 3), "float32")
    train = kft.data.from_arrays(images, y[:24], batch_size=12)
    check((train,), {"validation_data": (x[:24], y[:24]),
                     "validation_batch_size": 12})
