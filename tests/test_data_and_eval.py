import numpy as np
import pytest

import kft
from kft.demo import run_demo


def test_digits_transfer_splits():
    data = kft.datasets.digits(image_size=16, target_per_class=5,
                               val_per_class=3, seed=1)
    x, y = data.target_train
    assert x.shape == (25, 16, 16, 3) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [5] * 5
    assert 0.0 <= x.min() and x.max() <= 255.0 and x.max() > 100
    assert np.array_equal(x[..., 0], x[..., 2])  # gray in 3 channels
    assert data.source[0].shape[0] == int(np.sum(np.isin(
        __import__("sklearn.datasets").datasets.load_digits().target,
        range(5))))
    # Train, val and test images are distinct scans.
    flat = lambda a: {a[i].tobytes() for i in range(len(a))}  # noqa: E731
    train, val = flat(data.target_train[0]), flat(data.target_val[0])
    test = flat(data.target_test[0])
    assert not (train & test) and not (val & test) and not (train & val)
    same = kft.datasets.digits(image_size=16, target_per_class=5,
                               val_per_class=3, seed=1)
    np.testing.assert_array_equal(same.target_train[0], x)


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="disjoint"):
        kft.datasets.digits(source_classes=(0, 1), target_classes=(1, 2))
    with pytest.raises(ValueError, match="image_size.*Received: image_size=4"):
        kft.datasets.digits(image_size=4)
    with pytest.raises(ValueError, match="too many"):
        kft.datasets.digits(target_per_class=200)
    # An empty test split failed later, in kft.data.
    with pytest.raises(ValueError, match=r"`test_fraction` must leave at "
                       r"least one test image per class.*0\.001"):
        kft.datasets.digits(image_size=8, test_fraction=0.001)
    # The same classes in another order drew other splits.
    a = kft.datasets.digits(image_size=8, target_classes=(9, 5))
    b = kft.datasets.digits(image_size=8, target_classes=(5, 9))
    for x, y in zip(a.target_train + a.target_test,
                    b.target_train + b.target_test):
        np.testing.assert_array_equal(x, y)
    # Listed in kft's docstring as kft.demo, but not an attribute.
    with pytest.raises(TypeError, match=r"`print_fn` must be a function.*"
                       r"print_fn='quiet'"):
        kft.demo.run_demo(print_fn="quiet")


def test_classification_report_matches_hand_computation():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 0, 0]
    r = kft.classification_report(y_true, y_pred, num_classes=3)
    assert r.accuracy == pytest.approx(3 / 6)
    # precision: c0 1/3, c1 2/3, c2 0 (never predicted: counted as 0)
    assert r.precision == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert r.recall == pytest.approx((1 / 2 + 1 + 0) / 3)
    f1 = [2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2), 2 * (2 / 3) / (2 / 3 + 1), 0]
    assert r.f1 == pytest.approx(np.mean(f1))
    assert r.confusion_matrix.tolist() == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]
    # Without num_classes, a class only predicted counts too.
    r = kft.classification_report([0, 0, 1], [0, 2, 1])
    assert r.class_names == ("0", "1", "2")
    assert r.confusion_matrix.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="one length"):
        kft.classification_report([0, 1], [0])


def test_labels_outside_the_classes_are_named():
    with pytest.raises(ValueError, match=r"`y_true` holds labels outside "
                       r"\[0, 3\).*: 5, 7"):
        kft.classification_report([0, 5, 7, 1], [0, 1, 1, 1], num_classes=3)
    with pytest.raises(ValueError, match=r"`y_pred`.*outside \[0, 2\).*: 2"):
        kft.classification_report([0, 1, 1], [0, 2, 1],
                                  class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"`y_true`.*outside.*: -1"):
        kft.classification_report([0, -1, 1], [0, 1, 1])
    with pytest.raises(ValueError, match=r"outside \[0, 2\) for 2 classes "
                       r"\(the largest label \+ 1\): -1"):
        kft.classification_report([0, -1, 1], [0, 1, 1])
    # Without a class count, a bad value is named in the array holding it:
    # a NaN prediction was reported as a bad `y_true` label 1 "for a model
    # with 1 classes".
    with pytest.raises(ValueError, match=r"`y_pred` must hold integer class "
                       r"labels, or rows of class scores.*non-integer values "
                       r"nan"):
        kft.classification_report([0, 1], [0, np.nan])
    with pytest.raises(ValueError, match=r"`y_true` must hold integer class "
                       r"labels, or rows.*Received: y_true of dtype bool"):
        kft.classification_report([True, False], [1, 1])
    model = _model(classes=2)
    with pytest.raises(ValueError, match=r"`y`.*outside \[0, 2\).*: 4"):
        kft.evaluate_classifier(model, np.zeros((3, 16, 16, 3)), [0, 4, 1])


def test_report_from_predictions_reads_one_hot_labels():
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    one_hot = kft.report_from_predictions(np.eye(3)[[0, 1, 2]], scores,
                                          min_support=0)
    plain = kft.report_from_predictions([0, 1, 2], scores, min_support=0)
    np.testing.assert_array_equal(one_hot.confusion_matrix,
                                  plain.confusion_matrix)
    column = kft.report_from_predictions([[0], [1], [2]], scores,
                                         min_support=0)
    assert column.accuracy == plain.accuracy == 2 / 3
    with pytest.raises(ValueError, match=r"one label per row of scores\. "
                       r"Received: y_true of shape \(3, 2\)"):
        kft.report_from_predictions(np.eye(2)[[0, 1, 1]], scores)


def test_sample_weights_in_batches_are_said_to_be_ignored():
    # (images, labels, weights) batches were scored unweighted without a
    # word; Keras' evaluate weights them.
    model = _model(classes=2)
    x = np.zeros((4, 16, 16, 3), "float32")
    batches = [(x[:2], np.array([0, 1]), np.array([1.0, 0.0])),
               (x[2:], np.array([1, 1]), np.array([0.0, 1.0]))]
    for evaluate in (kft.evaluate, kft.evaluate_classifier):
        with pytest.warns(UserWarning, match=r"carry sample weights \(a "
                          r"third element\); kft's reports count every "
                          r"example once"):
            report = evaluate(model, batches)
        assert np.sum(report.confusion_matrix) == 4
    with pytest.raises(ValueError, match=r"`data` must be an \(images, "
                       r"labels\) pair: a report counts every example once, "
                       r"so sample weights \(the third array\) are not used"):
        kft.evaluate(model, (x, np.array([0, 1, 1, 1]), np.ones(4)))
    # A kft dataset's class weights are for training: no warning.
    weighted = kft.data.from_arrays(x, [0, 1, 1, 1], batch_size=2,
                                    shuffle=False).with_class_weight(
                                        {0: 2.0, 1: 1.0})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert kft.evaluate(model, weighted).num_examples == 4


def test_class_names_must_match_the_classes():
    model = _model(classes=2)
    with pytest.raises(ValueError, match=r"`class_names` must be one name "
                       r"per class \(2 names for 2 classes\)\. Received: "
                       r"class_names=\['a', 'b', 'c'\]"):
        kft.evaluate_classifier(model, np.zeros((2, 16, 16, 3)), [0, 1],
                                class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\(3 names for 3 classes\)\. "
                       r"Received: class_names=\['a', 'b'\]"):
        kft.classification_report([0, 1], [0, 1], num_classes=np.int64(3),
                                  class_names=["a", "b"])
    with pytest.raises(TypeError, match=r"Argument `class_names` must be a "
                       r"sequence of strings\. Received: "
                       r"class_names='ab'"):
        kft.classification_report([0, 1], [0, 1], class_names="ab")
    with pytest.raises(ValueError, match=r"Arguments `y_true` and `y_pred` "
                       r"must be non-empty and of one length\. Received: "
                       r"y_true of length 0, y_pred of length 0"):
        kft.classification_report([], [])


def _model(classes=3):
    return kft.build_classifier("simple_cnn", num_classes=classes,
                                weights=None, input_shape=(16, 16, 3))


def test_numbered_dataset_missing_the_last_classes_evaluates_as_arrays():
    # A small test split without class 2: from_arrays counts 2 classes
    # from its labels; evaluate_classifier refused it though it took the
    # same arrays.
    model = _model(classes=3)
    x = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 3))
    y = np.array([0, 1, 0, 1])
    expected = kft.evaluate_classifier(model, x, y)
    got = kft.evaluate_classifier(model, kft.data.from_arrays(x, y))
    assert got.class_names == expected.class_names
    assert got.confusion_matrix.shape == (3, 3)
    np.testing.assert_array_equal(got.confusion_matrix,
                                  expected.confusion_matrix)
    report = kft.evaluate(model, kft.data.from_arrays(x, y))
    np.testing.assert_array_equal(report.confusion_matrix,
                                  expected.confusion_matrix)


def test_evaluate_classifier_streams_a_labelled_dataset():
    model = _model()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (10, 16, 16, 3)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    expected = kft.evaluate_classifier(model, x, y, batch_size=np.int64(4))
    # A list pair, as kft.evaluate takes it (it was read as a dataset).
    np.testing.assert_array_equal(
        kft.evaluate_classifier(model, [x, y]).confusion_matrix,
        expected.confusion_matrix)
    dataset = kft.data.from_arrays(x, y, batch_size=3,
                                   class_names=["a", "b", "c"], seed=1)
    report = kft.evaluate_classifier(model, dataset)
    assert report.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(report.confusion_matrix,
                                  expected.confusion_matrix)
    # A balanced-sampling (or augmenting) dataset is read as stored, as
    # kft.evaluate reads it: supports were the resampled draw's.
    balanced = kft.data.from_arrays(x, y, batch_size=3, seed=1,
                                    sampling="balanced")
    np.testing.assert_array_equal(
        kft.evaluate_classifier(model, balanced).confusion_matrix,
        expected.confusion_matrix)
    one_hot = np.eye(3)[y]
    batches = [(x[:6], one_hot[:6]), (x[6:], one_hot[6:])]
    for data in (batches, iter(batches), (x, y)):
        report = kft.evaluate_classifier(model, data)
        assert report.accuracy == expected.accuracy
        np.testing.assert_array_equal(report.confusion_matrix,
                                      expected.confusion_matrix)
    with pytest.raises(ValueError, match="`y` .*required when `x` holds "
                       "images"):
        kft.evaluate_classifier(model, x)
    with pytest.raises(ValueError, match="`y` must be left out"):
        kft.evaluate_classifier(model, dataset, y)
    with pytest.raises(ValueError, match=r"`y`.*outside \[0, 3\).*: 3"):
        kft.evaluate_classifier(model, [(x, y + 1)])


@pytest.mark.parametrize("kwargs,match", [
    ({"workdir": "/nonexistent/kft"}, r"workdir.*Received: "
     r"workdir='/nonexistent/kft'"),
    ({"target_per_class": 0}, r"target_per_class.*>= 1.*Received: "
     r"target_per_class=0"),
    ({"target_epochs": 1}, r"target_epochs.*>= 2"),
])
def test_demo_checks_arguments_before_training(kwargs, match, monkeypatch):
    def no_training(*args, **kw):
        raise AssertionError("the demo started before checking")

    monkeypatch.setattr("kft.demo.digits", no_training)
    with pytest.raises(ValueError, match=match):
        run_demo(print_fn=None, **kwargs)


@pytest.mark.slow
def test_demo_end_to_end_through_fine_tune_and_kft_data(tmp_path,
                                                        monkeypatch):
    # One demo run (it is slow) checked for what it trains, the data it
    # goes through, its table, its plots and its clean-up.
    import tempfile

    import kft.demo

    strategies, datasets, printed = [], [], []
    from_arrays = kft.data.from_arrays

    def spy_fine_tune(model, train, val, **kwargs):
        strategies.append((kwargs["strategy"], kwargs["bn"]))
        return kft.fine_tune(model, train, val, **kwargs)

    def spy_from_arrays(x, y, **kwargs):
        datasets.append(len(y))
        return from_arrays(x, y, **kwargs)

    monkeypatch.setattr(kft.demo, "fine_tune", spy_fine_tune)
    monkeypatch.setattr(kft.demo.kft_data, "from_arrays", spy_from_arrays)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rows = run_demo(image_size=8, target_per_class=2, source_epochs=1,
                    target_epochs=2, print_fn=printed.append)
    # Scratch trains its BatchNorm (frozen init statistics normalise
    # nothing); the pretrained backbones keep kft's default.
    assert strategies == [("full", "train"), ("feature_extraction", "frozen"),
                          ("partial", "frozen"), ("full", "frozen")]
    assert [r["strategy"] for r in rows] == ["scratch", "feature_extraction",
                                            "partial", "full"]
    splits = kft.datasets.digits(image_size=8, target_per_class=2)
    # Source training, source evaluation and the test set.
    assert sorted(datasets) == sorted([len(splits.source[1])] * 2
                                      + [len(splits.target_test[1])])
    assert [r["epochs"] for r in rows] == [2] * 4
    by = {r["strategy"]: r for r in rows}
    assert by["feature_extraction"]["trainable"] < by["partial"]["trainable"]
    assert by["partial"]["trainable"] < by["full"]["trainable"]
    # ... and so its BatchNorm scales and offsets train too.
    scales = sum(2 * layer.moving_mean.shape[0] for layer in
                 kft.training.freezing.batch_norm_layers(kft.build_classifier(
                     "simple_cnn", 5, weights=None, input_shape=(8, 8, 3))))
    assert by["scratch"]["trainable"] == by["full"]["trainable"] + scales
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0
    # The temporary workdir (pretrained weights) is gone; the plots stay in
    # the output folder the demo names last.
    (output,) = list(tmp_path.iterdir())
    assert output.name.startswith("kft_demo_output_")
    best = max(rows, key=lambda r: r["accuracy"])["strategy"]
    assert (output / "strategies.png").exists()
    assert (output / best / "learning_curves.png").exists()
    assert printed[-1].startswith(f"Plots written to {output}: ")
