import os
"""User paths of evaluation and prediction that other tests leave out:
explicit `scores="probabilities"`, single-output binary models and
`class_names` given as one string."""

import keras
import numpy as np
import pytest

import kft
from kft.evaluation import metrics
from kft.evaluation import report_from_predictions


def test_scores_probabilities_refuses_logits_and_renormalizes_drift():
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]])
    # Normalized by their sums these gave "probabilities" outside [0, 1]
    # and an ECE above 1, silently.
    with pytest.raises(ValueError, match=r'scores="probabilities".*row 0'):
        report_from_predictions([0, 1], logits, scores="probabilities")
    with pytest.raises(ValueError, match="sum 1.1"):
        metrics.to_probabilities(np.array([[0.6, 0.5]]), "probabilities")
    drift = np.array([[0.704, 0.3], [0.2, 0.8]])  # float16-like drift
    probs, kind = metrics.to_probabilities(drift, "probabilities")
    assert kind == "probabilities"
    np.testing.assert_allclose(probs[0], drift[0] / 1.004)
    report = report_from_predictions([0, 0], drift, scores="probabilities")
    assert report.accuracy == 0.5
    assert 0 <= report.expected_calibration_error <= 1


def test_single_output_binary_models_are_refused_clearly(tmp_path):
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.GlobalAveragePooling2D()(inputs))
    binary = keras.Model(inputs, outputs)
    x, y = np.zeros((4, 16, 16, 3), np.float32), np.array([0, 1, 0, 1])
    message = r"one score per class, at least 2.*num_classes=2"
    with pytest.raises(ValueError, match=message):
        kft.evaluate(binary, (x, y))
    with pytest.raises(ValueError, match=message):
        kft.evaluate(binary, kft.data.from_arrays(x, y, batch_size=2))
    with pytest.raises(ValueError, match=message):
        kft.evaluate_classifier(binary, x, y)
    with pytest.raises(ValueError, match=message):
        report_from_predictions([0, 1], np.array([[0.2], [0.9]]))
    # Was: every image "class 0 with probability 1.0".
    with pytest.raises(ValueError, match=r"`model_or_path`.*at least 2"):
        kft.predict(binary, x[:1])


def test_predict_refuses_class_names_as_one_string():
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 3))
    image = np.zeros((16, 16, 3), np.uint8)
    # Was: labels 'x', 'y', 'z' (one class per character).
    with pytest.raises(TypeError, match=r"class_names.*sequence.*'xyz'"):
        kft.predict(model, image, class_names="xyz")
    assert kft.predict(model, image, top_k=1,
                       class_names=("x", "y", "z"))[0].label in "xyz"


@pytest.mark.parametrize("names, message", [
    (["dog", "fox", "wolf"], r"missing: \['cat'\]; not in the model: "
                             r"\['wolf'\]"),
    (["dog", "cat", "fox"], "the same classes in another order"),
])
def test_datasets_of_other_classes_than_the_models_are_refused(names,
                                                               message):
    # Only the number of classes was compared: labels of the dataset's
    # classes were scored against the model's columns (accuracy 0.0 for a
    # perfect model), silently.
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 3),
                                 class_names=["cat", "dog", "fox"])
    x, y = np.zeros((6, 16, 16, 3), np.float32), np.arange(6) % 3
    data = kft.data.from_arrays(x, y, batch_size=4, class_names=names)
    with pytest.raises(ValueError, match=message):
        kft.evaluate(model, data)
    with pytest.raises(ValueError, match=message):
        kft.evaluation.evaluate_classifier(model, data)
    same = kft.data.from_arrays(x, y, batch_size=4,
                                class_names=["cat", "dog", "fox"])
    assert kft.evaluate(model, same).class_names == ("cat", "dog", "fox")


def test_arrays_without_class_names_take_the_models():
    # from_arrays without class_names numbers the classes "0", "1", ...:
    # evaluating a named model on it was refused as other classes (and
    # compare_strategies lost every trained run at the test evaluation).
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 3),
                                 class_names=["cat", "dog", "fox"])
    x = np.random.default_rng(0).uniform(0, 255, (6, 16, 16, 3))
    y = np.arange(6) % 3
    data = kft.data.from_arrays(x, y, batch_size=4)
    assert data.numbered_classes and data.with_seed(1).numbered_classes
    report = kft.evaluate(model, data)
    assert report.class_names == ("cat", "dog", "fox")
    named = kft.data.from_arrays(x, y, batch_size=4,
                                 class_names=["cat", "dog", "fox"])
    assert not named.numbered_classes
    assert report.accuracy == kft.evaluate(model, named).accuracy
    assert kft.evaluation.evaluate_classifier(model, data).class_names == (
        "cat", "dog", "fox")
    # Named classes of its own are still compared with the model's.
    numbers = kft.data.from_arrays(x, y, batch_size=4,
                                   class_names=["0", "1", "2"])
    with pytest.raises(ValueError, match="not in the model"):
        kft.evaluate(model, numbers)


def test_mistake_indices_name_paths_when_a_file_fails_while_read(tmp_path):
    # check="header": a file whose pixel data is cut fails while read, is
    # left out of its batch, and every later row shifted (a mistake named
    # the file before the misclassified one).
    import warnings

    import keras
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "train" / name / "t.png")
    for i in range(6):
        value = 250 if i == 3 else 10  # a/img3 is bright: called "b"
        Image.new("RGB", (64, 64), (value,) * 3).save(
            tmp_path / "val" / "a" / f"img{i}.jpg", quality=95)
    for i in range(3):
        Image.new("RGB", (64, 64), (250,) * 3).save(
            tmp_path / "val" / "b" / f"img{i}.jpg", quality=95)
    noise = np.random.default_rng(0).integers(0, 20, (64, 64, 3), np.uint8)
    cut = tmp_path / "val" / "a" / "img1.jpg"
    Image.fromarray(noise).save(cut, quality=95)
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, val = kft.data.from_directory(tmp_path, 16, batch_size=4,
                                         check="header")
        inputs = keras.Input((16, 16, 3))
        mean = keras.layers.GlobalAveragePooling2D()(inputs)
        mean = keras.layers.Lambda(
            lambda t: keras.ops.mean(t, axis=-1, keepdims=True))(mean)
        outputs = keras.layers.Dense(
            2, kernel_initializer=keras.initializers.Constant([[-0.1, 0.1]]),
            bias_initializer=keras.initializers.Constant([12.8, -12.8]))(mean)
        report = kft.evaluate(keras.Model(inputs, outputs), val)
    assert report.num_examples == 8 and len(val.paths) == 9
    [mistake] = report.mistakes
    assert val.paths[mistake.index].endswith(os.path.join("a", "img3.jpg"))
    # The worst-mistakes plot shows that file (it showed the next one, and
    # raised for the last index).
    from kft.evaluation.plots import _images_at

    last = len(val.paths) - 1
    images = _images_at(val, [mistake.index, last])
    assert images[mistake.index].mean() > 200  # img3, the bright one
    np.testing.assert_array_equal(
        images[last], kft.data.load_image(val.paths[last], 16, "center_crop"))


def test_load_eval_folder_checks_class_names_as_the_others(tmp_path):
    # A NumPy array raised "truth value ... is ambiguous", a string was one
    # class per letter, [] said "no readable images".
    from PIL import Image

    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        Image.new("RGB", (8, 8), (90, 90, 90)).save(tmp_path / name / "0.png")
    data = kft.runs.load_eval_folder(str(tmp_path), np.array(["a", "b"]), 8)
    assert data.class_names == ("a", "b") or list(data.class_names) == [
        "a", "b"]
    for bad, error in (("ab", TypeError), ([0, 1], TypeError),
                       (["a", "a"], ValueError), ([], ValueError)):
        with pytest.raises(error, match=r"Argument `class_names` must be"):
            kft.runs.load_eval_folder(str(tmp_path), bad, 8)


def test_classification_report_reads_class_names_from_a_generator():
    report = kft.evaluation.classification_report(
        [0, 1, 1], [0, 1, 0], class_names=(name for name in ("x", "y")))
    assert report.class_names == ("x", "y")
