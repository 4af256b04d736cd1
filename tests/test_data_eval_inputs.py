"""Inputs of kft.data and kft.evaluation that used to give silent wrong
results or misleading errors: small classes under `validation_split`, an
empty val folder, float TIFFs, digits' class arguments, one-hot and
probability labels, unrecorded metrics and report options."""

import os
import re
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

import kft
from kft.evaluation import metrics
from kft.evaluation.comparison import StrategyComparison


def _folder(root, counts):
    """`root/<class>/<i>.png`, tiny solid images, `counts` per class."""
    for name, count in counts.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            Image.new("RGB", (4, 4), (i * 20,) * 3).save(
                os.path.join(root, name, f"{i}.png"))
    return str(root)


def _load(root, **kwargs):
    return kft.data.from_directory(root, 4, batch_size=4, num_workers=0,
                                   augmentation="none", **kwargs)


def test_validation_split_leaves_every_class_a_train_image(tmp_path):
    root = _folder(tmp_path / "one", {"a": 5, "b": 1})
    with pytest.warns(UserWarning, match=r"validation_split=0.2 left "
                      r"classes \['b'\] without val images"):
        train, val = _load(root, validation_split=0.2)
    assert train.class_counts == {"a": 4, "b": 1}
    assert val.class_counts == {"a": 1, "b": 0}
    # A large fraction holds out at most all but one image of a class.
    root = _folder(tmp_path / "two", {"a": 10, "b": 2})
    train, val = _load(root, validation_split=0.9)
    assert train.class_counts == {"a": 1, "b": 1}
    assert val.class_counts == {"a": 9, "b": 1}
    assert not set(train.paths) & set(val.paths)


def test_a_val_folder_missing_classes_is_warned(tmp_path):
    # kft train --val-dir with one class of three trained, kept an epoch
    # by that class's val loss, and said so only in evaluation.json.
    _folder(tmp_path / "data" / "train", {"a": 2, "b": 2, "c": 2})
    _folder(tmp_path / "data" / "val", {"a": 2})
    os.makedirs(tmp_path / "data" / "val" / "b")  # a folder, no image
    with pytest.warns(UserWarning, match=r"The val folder '.*val' holds no "
                      r"readable image of 2 of the 3 classes \(\['b', 'c'\]\)"
                      r": val metrics, and an epoch kept by them, do not"):
        _, val = _load(str(tmp_path / "data"))
    assert val.class_counts == {"a": 2, "b": 0, "c": 0}
    import warnings

    _folder(tmp_path / "data" / "val", {"b": 1, "c": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _load(str(tmp_path / "data"))


def test_a_val_or_test_folder_without_images_is_named(tmp_path):
    root = _folder(tmp_path / "data" / "train", {"a": 2, "b": 2})
    os.makedirs(tmp_path / "data" / "val" / "a")
    os.makedirs(tmp_path / "data" / "val" / "b")
    val_dir = os.path.join(tmp_path, "data", "val")
    with pytest.raises(ValueError, match=rf"val folder '{val_dir}' has no "
                       r"readable images.*0 files skipped"):
        _load(os.path.dirname(root))
    open(os.path.join(val_dir, "a", "empty.png"), "wb").close()
    with pytest.raises(ValueError, match=r"no readable images.*1 files "
                       r"skipped"):
        _load(os.path.dirname(root), on_bad_file="skip")
    # A test folder is read as the val half of a linked layout: the error
    # names the user's folder, not the link.
    test_dir = os.path.realpath(tmp_path / "test")
    os.makedirs(os.path.join(test_dir, "a"))
    os.makedirs(os.path.join(test_dir, "b"))
    with pytest.raises(ValueError, match=rf"'{test_dir}' has no "
                       r"readable images"):
        kft.runs.load_eval_folder(test_dir, ["a", "b"], 4)


def test_float_tiffs_are_scaled_to_8_bits(tmp_path):
    def loaded(values):
        path = os.path.join(tmp_path, f"{len(os.listdir(tmp_path))}.tif")
        Image.fromarray(np.asarray(values, np.float32)).save(path)
        assert Image.open(path).mode == "F"
        return kft.data.load_image(path, 8)[..., 0]

    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    unit = loaded(ramp)  # [0, 1]: scaled by 255, not left nearly black
    assert unit.min() == 0 and unit.max() == 255
    np.testing.assert_allclose(unit, np.round(ramp * 255), atol=1)
    counts = loaded(ramp * 4000)  # beyond 255: stretched, not saturated
    assert counts.min() == 0 and counts.max() == 255
    assert (counts == 255).sum() == 1
    assert np.all(np.diff(counts.reshape(-1).astype(int)) >= 0)
    assert np.all(loaded(np.full((8, 8), 80.0)) == 80)  # [0, 255]: kept
    signed = loaded(ramp * 2 - 1)  # negative: stretched from the minimum
    assert signed.min() == 0 and signed.max() == 255


def test_digits_class_arguments_are_checked():
    cases = [
        (dict(target_classes=[]), r"`target_classes` must be at least 2"),
        (dict(target_classes=[5]), r"`target_classes` must be at least 2"),
        (dict(source_classes=[0, 0, 1]), r"`source_classes` must be a "
         r"sequence of distinct digits 0-9\. Received: "
         r"source_classes=\(0, 0, 1\)"),
        (dict(target_classes=[5, 10]), r"`target_classes`.*distinct digits"),
        (dict(target_classes=[5, 6.0]), r"`target_classes`.*distinct"),
        (dict(source_classes=[0, 5]), r"disjoint; both hold \[5\]"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            kft.datasets.digits(image_size=8, **kwargs)
        with pytest.raises(ValueError, match=match):
            kft.datasets.digits_m(image_size=8, **kwargs)
    with pytest.raises(TypeError, match=r"`source_classes`.*Received: "
                       r"source_classes=3"):
        kft.datasets.digits(image_size=8, source_classes=3)
    # No source task is allowed (the headline benchmark uses one).
    data = kft.datasets.digits(image_size=8, source_classes=(),
                               target_classes=(3, 1), target_per_class=2,
                               val_per_class=1)
    assert data.source[0].shape == (0, 8, 8, 3)
    assert data.target_classes == (1, 3)
    assert sorted(data.target_train[1].tolist()) == [0, 0, 1, 1]


def test_classification_report_reads_one_hot_and_score_rows():
    y_true, y_pred = np.array([0, 1, 2, 2]), np.array([0, 2, 1, 2])
    expected = kft.classification_report(y_true, y_pred)
    probs = np.array([[.8, .1, .1], [.1, .2, .7], [.1, .6, .3],
                      [.2, .2, .6]])
    for true, pred in [(np.eye(3)[y_true], np.eye(3)[y_pred]),
                       (y_true, probs), (np.eye(3)[y_true], probs),
                       (y_true[:, None], y_pred)]:
        report = kft.classification_report(true, pred)
        assert report.accuracy == 0.5
        assert report.class_names == ("0", "1", "2")
        np.testing.assert_array_equal(report.confusion_matrix,
                                      expected.confusion_matrix)
    # The width of the rows is the class count, even for unseen classes.
    wide = kft.classification_report([0, 1], np.eye(4)[[0, 1]])
    assert wide.confusion_matrix.shape == (4, 4)
    with pytest.raises(ValueError, match=r"rows of one width.*y_true of "
                       r"shape \(4, 3\), y_pred of shape \(4, 4\)"):
        kft.classification_report(np.eye(3)[y_true], np.eye(4)[y_pred])
    with pytest.raises(ValueError, match=r"`num_classes` must be 3, the "
                       r"width of the rows.*Received: num_classes=4"):
        kft.classification_report(y_true, probs, num_classes=4)
    with pytest.raises(ValueError, match=r"`y_pred` must be integer labels "
                       r"of shape \(n,\).*shape \(4, 3, 1\)"):
        kft.classification_report(y_true, probs[..., None])
    # Soft, smoothed or all-zero label rows were argmaxed into labels
    # (accuracy 0.75 from rows like [0.5, 0.5]), NaN score rows counted as
    # class 0 (a diverged model "predicted class 0").
    soft = np.array([[.5, .5, 0], [0, 0, 0], [.9, .05, .05], [0, 0, 1]])
    for call in (lambda: kft.classification_report(soft, probs),
                 lambda: kft.evaluation.report_from_predictions(soft, probs)):
        with pytest.raises(ValueError, match=r"rows \[0, 1, 2\] of y_true "
                           r"are not one-hot, e.g. \[0.5, 0.5, 0.0\]"):
            call()
    nan = probs.copy()
    nan[[1, 3]] = np.nan
    for value in (np.nan, np.inf):
        bad = probs.copy()
        bad[[1, 3], 1] = value
        bad[[1, 3], 2] = value  # one +inf is a winner; two are a tie
        bad[2] = -np.inf  # -inf everywhere: nothing to rank
        with pytest.raises(ValueError, match=r"`y_pred` must hold scores "
                           r"to rank.*rows \[1, 2, 3\]"):
            kft.classification_report(y_true, bad)
    # -inf is a score (a log of 0); bool one-hot rows and bfloat16 scores
    # are rows like the others.
    import ml_dtypes

    logs = np.where(probs > 0.5, -np.inf, np.log(probs))
    logs[0, 0] = np.inf  # one overflowed logit: still the winner
    assert kft.classification_report(y_true, logs).confusion_matrix.tolist(
        ) == kft.classification_report(y_true, np.argmax(
            logs, 1)).confusion_matrix.tolist()
    same = kft.classification_report(np.eye(3, dtype=bool)[y_true],
                                     probs.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(same.confusion_matrix,
                                  expected.confusion_matrix)


def test_confusion_matrix_checks_its_labels():
    assert metrics.confusion_matrix([0., 2.], [1, 2], 3).tolist() == [
        [0, 1, 0], [0, 0, 0], [0, 0, 1]]
    cases = [
        (([0, 1], [3, 1]), r"`y_pred` holds labels outside \[0, 3\).*: 3"),
        (([0, -1], [0, 1]), r"`y_true` holds labels outside.*: -1"),
        # The value, not the dtype, is wrong (floats like 1.0 pass).
        (([0.0, 1.5], [0, 1]), r"`y_true` must hold integer class labels "
                               r"in \[0, 3\)\. Received: y_true holding "
                               r"non-integer values 1\.5$"),
        (([0, 1], [0]), r"one length.*shape \(2,\).*shape \(1,\)"),
        (([[0, 1]], [[0, 1]]), r"1-D integer labels"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            metrics.confusion_matrix(*args, 3)


@pytest.fixture(scope="module")
def model3():
    return kft.build_classifier("simple_cnn", 3, weights=None,
                                input_shape=(16, 16, 3))


def test_none_for_data_is_named(model3):
    # Python's "'NoneType' object is not iterable" / os.stat's error.
    with pytest.raises(TypeError, match=r"`data` must be .*Received: "
                       r"data=None"):
        kft.evaluate(model3, None)
    with pytest.raises(TypeError, match=r"`x` must be .*Received: x=None"):
        kft.evaluate_classifier(model3, None)
    with pytest.raises(TypeError, match=r"`path` must be a folder path"):
        kft.data.from_directory(None, 8)
    # A one-class report said scikit-learn's "use the 'labels' parameter",
    # which the user cannot pass.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = kft.classification_report([0, 0], [0, 0])
    assert report.confusion_matrix.tolist() == [[2]] and report.f1 == 1.0


def test_a_model_returning_nan_is_not_read_as_predicting_class_0():
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 3))
    kernel = model.get_layer("head_dense").kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    with pytest.raises(ValueError, match=r"returned NaN or infinite scores "
                       r"for examples \[0, 1, 2, 3\]"):
        kft.evaluate_classifier(model, np.zeros((4, 16, 16, 3)),
                                np.array([0, 0, 1, 2]))
    # A model ending in bfloat16 outputs is evaluated (its scores were
    # refused as rows of dtype bfloat16).
    bf16 = keras.Sequential([keras.Input((4,)),
                             keras.layers.Dense(3, dtype="bfloat16")])
    report = kft.evaluate_classifier(bf16, np.ones((6, 4)),
                                     np.array([0, 1, 2, 0, 1, 2]))
    assert report.confusion_matrix.sum() == 6


def test_labels_of_the_wrong_width_or_classes_are_named(model3):
    x, y2 = np.zeros((4, 16, 16, 3)), np.eye(2)[[0, 1, 0, 1]]
    rows = r"one-hot rows of width 3.*shape \(4, 2\).*model with 3 classes"
    with pytest.raises(ValueError, match=r"`data\[1\]` must .*" + rows):
        kft.evaluate(model3, (x, y2))
    with pytest.raises(ValueError, match=r"`labels` must .*" + rows):
        kft.evaluate(model3, [(x, y2)])
    with pytest.raises(ValueError, match=r"`y` must .*" + rows):
        kft.evaluate_classifier(model3, [(x, y2)])
    with pytest.raises(ValueError, match=r"`y` must .*" + rows):
        kft.evaluate_classifier(model3, x, y2)
    data = kft.data.from_arrays(x, [0, 1, 0, 1], class_names=["cat", "dog"],
                                batch_size=2)
    with pytest.raises(ValueError, match=r"`data` has 2 classes but the "
                       r"model has 3.*kft.runs.load_eval_folder\(path, "
                       r"class_names, image_size\) labels it in the model's "
                       r"order.*\['cat', 'dog'\]"):
        kft.evaluate(model3, data)
    with pytest.raises(ValueError, match=r"`x` has 2 classes but the "
                       r"model has 3"):
        kft.evaluate_classifier(model3, data)


def _comparison():
    runs = [{"strategy": s, "seed": seed, "metrics": {"accuracy": a},
             "trainable_params": 1, "train_time": 1.0}
            for s, seed, a in [("full", 0, .9), ("full", 1, .8),
                               ("partial", 0, .7), ("partial", 1, .6)]]
    return StrategyComparison(runs, ["full", "partial"], [0, 1], "accuracy")


def test_an_unrecorded_metric_is_named():
    comparison = _comparison()
    match = (r"`metric` must be a metric recorded for every run of 'full'; "
             r"recorded: \['accuracy'\]\. Received: metric='{}'")
    with pytest.raises(ValueError, match=match.format("acc")):
        comparison.values("full", metric="acc")
    with pytest.raises(ValueError, match=match.format("macro_f1")):
        comparison.plot(metric="macro_f1")
    assert comparison.values("partial", "accuracy").tolist() == [.7, .6]


def test_report_options_are_checked(tmp_path):
    report = kft.report_from_predictions(
        [0, 1, 2, 0], np.eye(3)[[0, 1, 1, 0]], class_names=["a", "b", "c"])
    for bad in (-1, 0, True, 1.5):
        with pytest.raises(ValueError, match=r"`max_classes` must be an "
                           r"integer >= 1"):
            report.to_markdown(max_classes=bad)
    table = report.to_markdown(max_classes=1)
    assert "| c (low support) | 0.000" in table and "| a " not in table
    for bad in ((), "xyz", ("png", "p")):
        with pytest.raises(ValueError, match=r"`formats` must be a file "
                           r"suffix"):
            report.save_plots(tmp_path / "bad", formats=bad)
    written = report.save_plots(tmp_path, formats=".PDF")
    assert [os.path.basename(p) for p in written] == [
        "confusion_matrix.pdf", "confusion_matrix_normalized.pdf",
        "per_class_f1.pdf", "reliability.pdf"]
    assert all(os.path.getsize(p) > 0 for p in written)


def test_top_k_and_calibration_check_their_labels():
    from kft.evaluation import metrics

    scores = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    assert metrics.top_k_accuracy([0, 2], scores, 1) == 0.5
    # Confidences 0.6 and 0.5: bins (0, 0.5] and (0.5, 1].
    assert metrics.calibration_bins([0, 1], scores, 2)["count"].tolist() == [
        1, 1]
    for call in (lambda y: metrics.top_k_accuracy(y, scores, 2),
                 lambda y: metrics.calibration_bins(y, scores)):
        with pytest.raises(ValueError, match=r"outside \[0, 3\).*: 3"):
            call([0, 3])
        with pytest.raises(ValueError, match="must hold integer"):
            call([0, 1.5])
        with pytest.raises(ValueError, match="one integer label per row"):
            call([0, 1, 2])
    with pytest.raises(ValueError, match="2-D"):
        metrics.top_k_accuracy([0], scores[0], 1)


def test_a_split_folder_beside_class_folders_is_not_a_class(tmp_path):
    """`<class>/` next to `val/<class>/` (no `train/`): `val` would be one
    more class holding every class's images."""
    root = _folder(tmp_path / "mixed", {"a": 2, "b": 2})
    _folder(tmp_path / "mixed" / "val", {"a": 1, "b": 1})
    with pytest.raises(ValueError, match=r"split folder .*val.* beside the "
                       r"class folders.*train/<class>/ \+ val/<class>/"):
        _load(root)
    # A class that happens to be named "test" (images, no subfolders) is
    # still a class.
    root = _folder(tmp_path / "named", {"a": 2, "test": 2})
    assert _load(root, validation_split=None).train.class_names == [
        "a", "test"]


def test_a_test_folder_of_images_alone_is_refused_by_a_run(tmp_path):
    # `kft train` left `test/` (images, no class folders) out as held-out
    # data: a class "test" gone, said only on a line --quiet hid; `kft
    # compare` failed on it ("No class folders in .../test"). Unlabelled
    # test images would train as a class if it were read as one.
    from kft.cli._explore import compare_command
    from kft.runs.recipe import held_out_folder
    from kft.runs.recipe import load_folder_data
    from kft.runs.recipe import test_beside_classes

    root = _folder(tmp_path / "flat", {"dev": 2, "prod": 2, "Test": 2})
    config = kft.runs.TrainConfig(data_dir=root, image_size=4,
                                  val_split=None, augment="none")
    message = (r"Test' holds images but no class folders: a class named "
               r"'Test', or unlabelled test images\? To train on it as a "
               r"class, rename it")
    for call in (held_out_folder, test_beside_classes,
                 lambda root: load_folder_data(config)):
        with pytest.raises(ValueError, match=message):
            call(root)
    from kft.cli._checks import Usage

    with pytest.raises(Usage, match=message):
        compare_command(kft.cli._parser.build_parser()[0].parse_args(
            ["compare", root, "--out", str(tmp_path / "flat_out")]), [])
    # In a train/ layout a test/ of images is unlabelled data, no class:
    # neither refused nor held out (kft compare scores on val/).
    split = _folder(tmp_path / "kaggle" / "train", {"dev": 2, "prod": 2})
    _folder(tmp_path / "kaggle" / "val", {"dev": 1, "prod": 1})
    _folder(tmp_path / "kaggle", {"test": 2})
    root_split = os.path.dirname(split)
    assert held_out_folder(root_split) is None
    assert not test_beside_classes(root_split)
    # An empty test/ is no class either: left out.
    empty = _folder(tmp_path / "empty", {"dev": 2, "prod": 2})
    os.makedirs(os.path.join(empty, "test", ".ipynb_checkpoints"))
    assert held_out_folder(empty) is None and test_beside_classes(empty)
    assert load_folder_data(config.replace(data_dir=empty))[0] \
        .class_names == ["dev", "prod"]
    # A test/ (any case) of class folders is held out, by both commands.
    _folder(tmp_path / "split" / "TEST", {"dev": 1, "prod": 1})
    root = _folder(tmp_path / "split", {"dev": 2, "prod": 2})
    assert held_out_folder(root) == os.path.join(root, "TEST")
    assert load_folder_data(config.replace(data_dir=root))[0].class_names \
        == ["dev", "prod"]
    seen = {}

    def stop(path, *args, **kwargs):
        seen["test"] = path
        raise KeyboardInterrupt

    import kft.runs.folder as folder
    from unittest import mock

    with mock.patch.object(folder, "load_eval_folder", stop), \
            pytest.raises(KeyboardInterrupt):
        compare_command(kft.cli._parser.build_parser()[0].parse_args(
            ["compare", root, "--image-size", "4", "--out",
             str(tmp_path / "out")]), [])
    assert seen["test"] == os.path.join(root, "TEST")


def test_a_class_named_train_in_a_flat_layout_is_a_class(tmp_path):
    """CIFAR-100 has a class "train": `bus/ car/ train/` of images was read
    as a split layout whose train folder held no class folders."""
    for name in ("train", "Train"):
        root = _folder(tmp_path / name, {"bus": 2, "car": 2, name: 2})
        splits = _load(root, validation_split=0.5)
        assert splits.train.class_names == sorted(["bus", "car", name])
        assert splits.train.num_examples == splits.val.num_examples == 3
    # ... with a hidden folder (a notebook's checkpoints) in it, and with
    # a test/ folder beside the classes, which `kft train` leaves out.
    os.makedirs(tmp_path / "train" / "train" / ".ipynb_checkpoints")
    _folder(tmp_path / "train" / "test", {"bus": 1, "car": 1})
    from kft.runs.recipe import test_beside_classes

    assert test_beside_classes(str(tmp_path / "train"))
    with pytest.raises(ValueError, match="split folder .*test"):
        _load(str(tmp_path / "train"))
    # train/ holding class folders is still the split layout.
    root = _folder(tmp_path / "split" / "train", {"a": 2, "b": 2})
    _folder(tmp_path / "split" / "val", {"a": 1, "b": 1})
    splits = _load(str(tmp_path / "split"))
    assert splits.train.class_names == ["a", "b"]
    assert splits.val.num_examples == 2
    # train/ and val/ of images without class folders: not two classes
    # "train" and "val".
    _folder(tmp_path / "flat", {"train": 2, "val": 2})
    with pytest.raises(ValueError, match=r"No class folders in .*train'"):
        _load(str(tmp_path / "flat"))
    # Beside other classes they are classes too ...
    root = _folder(tmp_path / "four", {"a": 2, "b": 2, "train": 2, "val": 2})
    assert _load(root).train.class_names == ["a", "b", "train", "val"]
    # ... and a val/ of class folders beside them is named as misplaced.
    root = _folder(tmp_path / "cifar", {"a": 2, "b": 2, "train": 2})
    _folder(tmp_path / "cifar" / "val", {"a": 1, "b": 1, "train": 1})
    with pytest.raises(ValueError, match=r"split folder .*val.* beside the "
                       r"class folders"):
        _load(root)


def test_a_validation_split_with_nothing_to_hold_out_is_refused(tmp_path):
    # One image per class: val came back empty and fine_tune / kft train
    # failed after training on the head, with "no val_loss to monitor".
    root = _folder(tmp_path / "ones", {"a": 1, "b": 1, "c": 1})
    with pytest.raises(ValueError, match=r"`validation_split` \(0.2\) leaves "
                       r"no val images: each of the 3 classes in '.*ones' has a "
                       r"single readable image"):
        _load(root, validation_split=0.2)


def test_names_that_differ_only_in_unicode_form_are_named(tmp_path):
    """An archive made on macOS names 'café' with a combining accent: the
    messages listed two classes that print the same."""
    from kft.runs.folder import load_eval_folder

    composed, decomposed = "caf\u00e9", "cafe\u0301"
    root = tmp_path / "data"
    _folder(root / "train", {composed: 2, "tea": 2})
    _folder(root / "val", {decomposed: 1, "tea": 1})
    note = r"differ only in Unicode form \('cafe\\u0301' vs 'caf\\xe9'\)"
    with pytest.raises(ValueError, match=note):
        _load(str(root))
    with pytest.raises(ValueError, match=note):
        load_eval_folder(str(root / "val"), [composed, "tea"], 4)
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(16, 16, 3),
                                 class_names=[composed, "tea"])
    data = kft.data.from_arrays(np.zeros((2, 16, 16, 3)), [0, 1],
                                class_names=[decomposed, "tea"])
    with pytest.raises(ValueError, match=note):
        kft.evaluate(model, data)


def test_evaluate_classifier_reads_a_dataset_as_stored():
    # A training dataset (balanced sampling, host augmentation) handed to
    # the report: it counts each stored example once, unaugmented, not the
    # resampled, augmented stream `fit` reads.
    x = np.random.default_rng(0).uniform(0, 255, (12, 16, 16, 3))
    x = x.astype("float32")
    y = np.array([0] * 10 + [1] * 2)
    data = kft.data.from_arrays(x, y, batch_size=4, sampling="balanced",
                                augmentation="light")
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(16, 16, 3))
    report = kft.evaluation.evaluate_classifier(model, data)
    assert [report.per_class[c]["support"] for c in "01"] == [10, 2]
    predicted = np.argmax(model.predict(x, verbose=0), -1)
    assert report.accuracy == pytest.approx(np.mean(predicted == y))



def test_from_arrays_checks_object_bool_and_text_pixels():
    # Arrays neither integer nor float skipped every pixel check: NaN in
    # an object array trained on NaN, a bool mask trained on 0/1 pixels,
    # strings failed at the first batch with numpy's words.
    x = np.full((4, 8, 8, 3), 100.0)
    with_nan = x.astype(object)
    with_nan[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        kft.data.from_arrays(with_nan, [0, 1, 0, 1])
    for bad in (x > 50, x.astype(str)):
        with pytest.raises(ValueError, match=r"^Argument `x` must be images "
                           r"of integer or float pixels in \[0, 255\]\. "
                           + re.escape(f"Received: x.dtype={bad.dtype}")
                           + "$"):
            kft.data.from_arrays(bad, [0, 1, 0, 1])
    # Numbers in an object array are pixels: read as float32.
    images, _ = next(iter(kft.data.from_arrays(
        x.astype(object), [0, 1, 0, 1], batch_size=4, shuffle=False)))
    np.testing.assert_array_equal(images, np.full((4, 8, 8, 3), 100.0))
    # Arrays given to fine_tune or evaluate directly: a bool mask trained
    # and was scored as 0/1 pixels, an object array failed inside JAX.
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(8, 8, 3))
    y = np.array([0, 1, 0, 1])
    for bad, hint in ((x > 50, ""), (x.astype(object), r" \(an object "
                      r"array: convert the images with np\.asarray\(images, "
                      r"'float32'\)\)")):
        def message(name):
            return (rf"`{name}` must hold integer or float pixels{hint}\. "
                    rf"Received: {name}\.dtype={bad.dtype}")

        with pytest.raises(ValueError, match=message("x")):
            kft.evaluate_classifier(model, bad, y)
        with pytest.raises(ValueError, match=message("train_data")):
            kft.fine_tune(model, (bad, y), epochs=1, verbose=0)


def test_evaluating_batches_without_labels_names_what_they_are():
    # A generator of bare image batches (as predict takes) has nothing to
    # score against: named with the batch's type, not unpacked as a pair.
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(8, 8, 3))
    x = np.zeros((4, 8, 8, 3), "float32")
    with pytest.raises(ValueError, match=r"`x` must yield \(images, labels\) "
                       r"batches when `y` is left out\. Received: a batch of "
                       r"type ndarray$"):
        kft.evaluate_classifier(model, iter([x]))
    with pytest.raises(ValueError, match=r"`data` must yield \(images, "
                       r"labels\) batches\. Received: a batch of type tuple "
                       r"and length 1$"):
        kft.evaluate(model, iter([(x,)]))
