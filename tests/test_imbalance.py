import os

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight

import kft
from kft.training.class_weights import balanced_class_weight
from kft.training.class_weights import count_labels
from kft.training.class_weights import resolve_class_weight

LABELS = np.array([0] * 6 + [1] * 3 + [3])  # class 2 absent


def test_balanced_weights_match_scikit_learn():
    weights = balanced_class_weight(LABELS, 4)
    present = np.unique(LABELS)
    expected = compute_class_weight("balanced", classes=present, y=LABELS)
    np.testing.assert_allclose([weights[c] for c in present], expected)
    assert weights[2] == 1.0  # absent: documented neutral weight
    np.testing.assert_allclose(
        list(balanced_class_weight(np.eye(4)[LABELS], 4).values()),
        list(weights.values()))
    with pytest.raises(ValueError, match=r"`labels` holds labels outside "
                       r"\[0, 4\).*: 5"):
        balanced_class_weight([0, 5], 4)
    with pytest.raises(ValueError, match=r"at least one label"):
        balanced_class_weight([], 4)


def test_resolve_class_weight_for_every_data_form():
    x = np.zeros((10, 4, 4, 3), "float32")
    expected = balanced_class_weight(LABELS, 4)
    dataset = kft.data.from_arrays(x, LABELS, batch_size=3, num_classes=4)
    batches = [(x[:5], LABELS[:5]), (x[5:], np.eye(4)[LABELS[5:]])]
    for data in ((x, LABELS), dataset, batches):
        assert resolve_class_weight("balanced", data, 4) == expected
    assert count_labels(iter(batches), 4).tolist() == [6, 3, 0, 1]
    # A dataset of fewer classes than the model (its highest class has no
    # example here): the missing classes count 0 and weigh 1.
    fewer = kft.data.from_arrays(x[:4], np.array([0, 0, 1, 2]), batch_size=2)
    assert len(fewer.class_counts) == 3
    assert resolve_class_weight("balanced", fewer, 4) == \
        balanced_class_weight([0, 0, 1, 2], 4)
    assert resolve_class_weight(None, None, 4) is None
    assert resolve_class_weight({np.int64(1): 2}, None, 4) == {1: 2.0}


@pytest.mark.parametrize("class_weight,match", [
    ("auto", r"`class_weight` must be 'balanced'.*Received: "
     r"class_weight='auto'"),
    ({4: 1.0}, r"class indices in \[0, 4\).*Received: class_weight=\{4: "),
    ({-1: 1.0}, r"class indices in \[0, 4\)"),
    # A bool is an int to Python: True read as class 1.
    ({True: 1.0}, r"class indices in \[0, 4\).*\{True: 1.0\}"),
    ({1: -0.5}, r"`class_weight\[1\]` must be a finite number >= 0.*"
     r"Received: class_weight\[1\]=-0.5"),
    ({1: float("nan")}, r"`class_weight\[1\]`"),
    ([1.0, 2.0], r"`class_weight` must be"),
])
def test_bad_class_weights_are_named(class_weight, match):
    error = TypeError if isinstance(class_weight, list) else ValueError
    with pytest.raises(error, match=match):
        resolve_class_weight(class_weight, (np.zeros((1, 1)), [0]), 4)
    with pytest.raises(ValueError, match=r"`train_data\[1\]` holds labels "
                       r"outside \[0, 2\)"):
        resolve_class_weight("balanced", (np.zeros((2, 1)), [0, 2]), 2)


def _labels_of(dataset):
    return np.concatenate([labels for _, labels in dataset])


def test_balanced_sampling_draws_classes_evenly_and_reproducibly():
    y = np.array([0] * 90 + [1] * 10)
    x = np.arange(100, dtype="float32")[:, None, None, None] * np.ones(
        (1, 2, 2, 3), "float32")
    dataset = kft.data.from_arrays(x, y, batch_size=32, seed=5,
                                   sampling="balanced")
    assert len(dataset) == 4 and dataset.class_counts == {"0": 90, "1": 10}
    epochs = [_labels_of(dataset) for _ in range(20)]
    assert all(len(labels) == 100 for labels in epochs)
    share = np.mean(np.concatenate(epochs))
    # 2000 draws of a fair coin: the share of class 1 is 0.5 +- 0.034
    # (3 standard deviations); unbalanced it would be 0.1.
    assert abs(share - 0.5) < 0.034
    again = kft.data.from_arrays(x, y, batch_size=32, seed=5,
                                 sampling="balanced")
    np.testing.assert_array_equal(_labels_of(again), epochs[0])
    assert not np.array_equal(epochs[0], epochs[1])
    # Images follow their labels: pixel value = example index.
    images, labels = next(iter(again))
    np.testing.assert_array_equal(y[images[:, 0, 0, 0].astype(int)], labels)
    np.testing.assert_array_equal(_labels_of(dataset.in_order()), y)
    with pytest.raises(ValueError, match=r"`sampling` must be one of "
                       r"\('all', 'balanced'\).*Received: sampling='even'"):
        kft.data.from_arrays(x, y, sampling="even")


def test_balanced_sampling_from_a_folder_applies_to_train_only(tmp_path):
    for name, count in (("a", 6), ("b", 2)):
        os.makedirs(tmp_path / name)
        for i in range(count):
            Image.new("RGB", (4, 4), (i * 10,) * 3).save(
                tmp_path / name / f"{i}.png")
    train, val = kft.data.from_directory(
        tmp_path, 4, batch_size=4, validation_split=0.25,
        augmentation="none", num_workers=0, sampling="balanced")
    assert train.sampling == "balanced" and val.sampling == "all"
    assert train.example_labels.tolist() == [0] * 4 + [1]
    drawn = np.concatenate([_labels_of(train) for _ in range(40)])
    assert len(drawn) == 200 and abs(drawn.mean() - 0.5) < 0.11


def test_class_weight_in_batches_trains_like_keras_class_weight():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 2, 2, 3)).astype("float32")
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    weights = resolve_class_weight("balanced", (x, y), 2)

    def trained(data, **kwargs):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((2, 2, 3)),
                                  keras.layers.Flatten(),
                                  keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        model.fit(data, epochs=1, verbose=0, shuffle=False, **kwargs)
        return [np.array(v.value) for v in model.weights]

    dataset = kft.data.from_arrays(x, y, batch_size=4, shuffle=False)
    weighted = trained(dataset.with_class_weight(weights))
    reference = trained(x, y=y, batch_size=4, class_weight=weights)
    plain = trained(dataset)
    for a, b in zip(weighted, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(weighted[0], plain[0])
    assert dataset.class_weight is None
    # 0 leaves a class out, as Keras' class_weight does (it was refused).
    zero = {0: 0.0}
    for a, b in zip(trained(dataset.with_class_weight(zero)),
                    trained(x, y=y, batch_size=4, class_weight=zero)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_kft_model_fit_applies_class_weight_to_a_dataset():
    # Keras ignores `fit(dataset, class_weight=...)` for a data adapter:
    # a kft model's run was silently unweighted (loss 0.8397 either way).
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    weights = {0: 0.5, 1: 3.0}
    dataset = kft.data.from_arrays(x, y, batch_size=4, shuffle=False)

    def trained(data, **kwargs):
        keras.utils.set_random_seed(0)
        model = kft.build_classifier("simple_cnn", 2, weights=None,
                                     input_shape=(16, 16, 3))
        model.compile(keras.optimizers.SGD(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        model.fit(data, epochs=1, verbose=0, **kwargs)
        return model, [np.array(v.value) for v in model.weights]

    model, given = trained(dataset, class_weight=weights)
    _, own = trained(dataset.with_class_weight(weights))
    _, plain = trained(dataset)
    for a, b in zip(given, own):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(given[0], plain[0])
    with pytest.raises(ValueError, match=r"`sample_weight` does not apply "
                       r"to a kft\.data dataset .* Received: sample_weight "
                       r"of type ndarray"):
        model.fit(dataset, sample_weight=np.ones(8), verbose=0)
    with pytest.raises(TypeError, match=r"^fit\(\) got an unexpected "
                       r"keyword argument 'foo'"):
        model.fit(dataset, foo=1)
    with pytest.raises(ValueError, match=r"None for a dataset whose batches "
                       r"carry class weights already"):
        model.fit(dataset.with_class_weight(weights), class_weight=weights,
                  verbose=0)


def test_kft_model_fit_checks_class_weight_for_arrays_and_iterables():
    # On arrays Keras failed inside its adapter on "balanced" ('str'
    # object has no attribute 'get') and took weights for classes the
    # model lacks, or negative ones, without a word.
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    y = np.array([0, 0, 0, 0, 0, 1, 1, 2])

    def trained(*data, loss=keras.losses.SparseCategoricalCrossentropy,
                **kwargs):
        keras.utils.set_random_seed(0)
        model = kft.build_classifier("simple_cnn", 3, weights=None,
                                     input_shape=(16, 16, 3))
        model.compile(keras.optimizers.SGD(1e-2), loss(from_logits=True))
        model.fit(*data, batch_size=8, epochs=1, verbose=0, shuffle=False,
                  **kwargs)
        return model, [np.array(v.value) for v in model.weights]

    model, balanced = trained(x, y, class_weight="balanced")
    _, given = trained(x, y, class_weight=balanced_class_weight(y, 3))
    _, one_hot = trained(x, np.eye(3)[y], class_weight="balanced",
                         loss=keras.losses.CategoricalCrossentropy)
    for a, b, c in zip(balanced, given, one_hot):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, atol=1e-6)
    for bad, match in (({0: 1.0, 7: 2.0}, r"keyed by class indices in "
                        r"\[0, 3\)"),
                       ({0: -1.0}, r"class_weight\[0\]` must be a finite "
                        r"number >= 0"),
                       ("balance", r"'balanced', a dict")):
        with pytest.raises(ValueError, match=match):
            model.fit(x, y, class_weight=bad, verbose=0)
    # "balanced" counted from a PyDataset's batches, as from arrays.
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return x, y

    keras.utils.set_random_seed(0)
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 3))
    model.compile(keras.optimizers.SGD(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(Batches(), class_weight="balanced", verbose=0, shuffle=False)
    for a, b in zip(model.weights, balanced):
        np.testing.assert_allclose(np.array(a.value), b, atol=1e-6)
    with pytest.raises(ValueError, match=r"keyed by class indices"):
        model.fit(Batches(), class_weight={5: 1.0}, verbose=0)

    # A PyDataset of no known end: counting its labels never finished.
    class Endless(Batches):
        @property
        def num_batches(self):
            return None

    with pytest.raises(ValueError, match=r"not known to end"):
        model.fit(Endless(), class_weight="balanced", steps_per_epoch=1,
                  verbose=0)
    # "balanced" counts the labels Keras trains on, not the held-out tail
    # of validation_split (class 2 is only there).
    _, split = trained(x, y, class_weight="balanced", validation_split=0.25)
    _, first = trained(x[:6], y[:6], class_weight=balanced_class_weight(
        y[:6], 3))
    for a, b in zip(split, first):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("as_dataset", [False, True])
def test_fine_tune_weights_the_loss_in_both_phases(as_dataset):
    # Every class weighted 3: AdamW's steps barely change (it normalises
    # the gradient's scale), so each logged training loss is ~3 times the
    # unweighted run's, in the cached head phase and in phase 2; without
    # the weights reaching `fit` the ratio would be 1.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (12, 16, 16, 3)).astype("float32")
    y = np.arange(12) % 2

    def run(class_weight):
        keras.utils.set_random_seed(0)
        model = kft.build_classifier("simple_cnn", num_classes=2,
                                     weights=None, input_shape=(16, 16, 3))
        data = (kft.data.from_arrays(x, y, batch_size=6, shuffle=False)
                if as_dataset else (x, y))
        result = kft.fine_tune(model, data, strategy="partial",
                               head_epochs=1, epochs=1, batch_size=6,
                               schedule="constant",
                               class_weight=class_weight, verbose=0)
        return [h["loss"][0] for h in result.histories]

    plain = run(None)
    weighted = run({0: 3.0, 1: 3.0})
    np.testing.assert_allclose(np.array(weighted) / plain, 3.0, rtol=0.02)


def test_two_dimensional_labels_must_be_one_hot_rows_of_the_classes():
    # Flattened, one-hot rows of width 3 for 5 classes were 0/1 labels:
    # silently wrong weights and counts (18 labels for 6 examples).
    one_hot = np.eye(3)[[0, 0, 0, 1, 2, 2]]
    with pytest.raises(ValueError, match=r"Argument `labels` must be "
                       r"integer labels.*one-hot rows of width 5.*Received: "
                       r"labels of shape "):
        balanced_class_weight(one_hot, 5)
    with pytest.raises(ValueError, match=r"Argument `labels` must be "
                       r"integer labels or one-hot rows.*Received: rows "
                       r"\[0, 1\] of labels are not one-hot, e.g. "
                       r"\[0, 0, 2\]"):
        balanced_class_weight(np.array([[0, 0, 2], [1, 2, 2]]), 3)
    with pytest.raises(ValueError, match=r"`train_data\[1\]` must be .*"
                       r"width 5.*shape \(6, 3\)"):
        count_labels((np.zeros((6, 2)), one_hot), 5)
    with pytest.raises(ValueError, match=r"`train_data labels` must be"):
        count_labels([(np.zeros((6, 2)), one_hot)], 5)
    assert balanced_class_weight(one_hot, 3) == {0: 2 / 3, 1: 2.0, 2: 1.0}
    assert balanced_class_weight([[0], [0], [1]], 2) == {0: 0.75, 1: 1.5}


def test_with_class_weight_checks_weights_and_counts_passes_on():
    x = np.arange(8, dtype="float32")[:, None, None, None] * np.ones(
        (1, 1, 1, 3), "float32")
    y = np.arange(8) % 2

    def order(dataset):
        return np.concatenate([b[0][:, 0, 0, 0] for b in dataset]).tolist()

    reference = kft.data.from_arrays(x, y, batch_size=3, seed=4)
    expected = [order(reference) for _ in range(3)]
    dataset = kft.data.from_arrays(x, y, batch_size=3, seed=4)
    # One view per fine_tune phase: phase 2 must not replay phase 1.
    assert order(dataset.with_class_weight({1: 2.0})) == expected[0]
    assert order(dataset.with_class_weight({1: 2.0})) == expected[1]
    assert order(dataset) == expected[2]
    # A class the model has but the data lacks weighs no example.
    weights = next(iter(dataset.with_class_weight({1: 2, 5: 1})))[2]
    assert sorted(set(weights.tolist())) == [1.0, 2.0]
    for bad, error, match in [
            ({0: -1.0}, ValueError, r"`class_weight\[0\]` must be a finite "
             r"number >= 0. Received: class_weight\[0\]=-1.0"),
            ({0: float("nan")}, ValueError, r"class_weight\[0\]=nan"),
            ({-1: 1.0}, ValueError, r"class index >= 0.*\{-1: 1.0\}"),
            ({"0": 1.0}, ValueError, r"class index >= 0"),
            ("balanced", TypeError, r"`class_weight` must be a dict.*"
             r"kft.balanced_class_weight.*Received: class_weight='balanced'")]:
        with pytest.raises(error, match=match):
            dataset.with_class_weight(bad)


def test_weights_for_a_dataset_that_balances_already_are_refused():
    # Accepted silently: balanced sampling then weights counted rare
    # classes about 4x; a with_class_weight dataset's weights were replaced.
    x, y = np.zeros((14, 4, 4, 3), "float32"), np.array([0] * 2 + [1] * 12)
    balanced = kft.data.from_arrays(x, y, batch_size=4, sampling="balanced")
    with pytest.raises(ValueError, match="sampling='balanced'.*twice"):
        resolve_class_weight("balanced", balanced, 2)
    weighted = kft.data.from_arrays(x, y, batch_size=4).with_class_weight(
        {0: 100.0})
    with pytest.raises(ValueError, match=r"carry class weights already.*"
                       r"\{0: 100.0\}.*Received: class_weight='balanced'"):
        resolve_class_weight("balanced", weighted, 2)
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(4, 4, 3))
    with pytest.raises(ValueError, match="sampling='balanced'"):
        kft.fine_tune(model, balanced, class_weight={0: 2.0}, verbose=0)
    assert resolve_class_weight(None, balanced, 2) is None


def test_balanced_sampling_draws_every_example_of_a_large_class():
    # Balancing chooses the class first, then any of its examples: a large
    # class must not be cut to the first min(class size) of its examples
    # (class balance alone would look perfect then, but 80% of class 1
    # would never be trained on).  Pixel value = example index.
    y = np.array([0] * 2 + [1] * 10)
    x = np.arange(12, dtype="float32")[:, None, None, None] * np.ones(
        (1, 2, 2, 3), "float32")
    dataset = kft.data.from_arrays(x, y, batch_size=4, seed=0,
                                   augmentation="none", sampling="balanced")
    drawn = np.concatenate([
        np.asarray(images)[:, 0, 0, 0].astype(int)
        for _ in range(40) for images, _ in dataset])
    counts = np.bincount(drawn, minlength=12)
    assert len(drawn) == 480 and counts.sum() == 480
    # ~240 draws per class; within class 1 each of the 10 examples is
    # drawn ~24 times (binomial sd ~4.7), within class 0 each ~120.
    assert np.all(counts[2:] >= 8), counts.tolist()
    assert np.all(counts[2:] <= 45), counts.tolist()
    assert np.all(abs(counts[:2] - 120) < 40), counts.tolist()


def test_balanced_weights_name_data_they_cannot_count():
    x = np.zeros((10, 4, 4, 3), "float32")
    y = np.arange(10) % 5
    # A dataset of more classes than the model's (5 for 3): counted into
    # a 3-entry array, its extra classes would have been dropped.
    dataset = kft.data.from_arrays(x, y, batch_size=4, num_classes=5)
    with pytest.raises(ValueError, match=r"`train_data` must be a dataset of "
                       r"at most 3 classes\. Received: train_data='a dataset "
                       r"of 5 classes'"):
        resolve_class_weight("balanced", dataset, 3)
    # Batches of images alone: no labels to count.
    with pytest.raises(ValueError, match=r"`train_data` must be \(x, y\) "
                       r"pairs or a dataset of \(x, y\) batches\. Received: "
                       r"train_data='a batch of type ndarray'"):
        resolve_class_weight("balanced", iter([x[:4], x[4:]]), 5)
    # Labels of 3 dimensions were flattened into 10 labels per image.
    with pytest.raises(ValueError, match=r"`train_data\[1\]` must be integer "
                       r"labels.*Received: train_data\[1\] of shape "
                       r"\(10, 1, 1\)"):
        resolve_class_weight("balanced", (x, y.reshape(10, 1, 1)), 5)
    with pytest.raises(ValueError, match=r"`train_data` must be data with at "
                       r"least one label\. Received: train_data='no labels'"):
        resolve_class_weight("balanced", (x[:0], y[:0]), 5)
