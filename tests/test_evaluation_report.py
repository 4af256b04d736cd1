import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as sk

import kft
from kft.evaluation import report_from_predictions

# 4 classes: class 2 is never predicted, class 3 is absent from y_true but
# predicted once.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2, 0, 1])
PROBS = np.array([
    [0.70, 0.10, 0.10, 0.10],
    [0.40, 0.30, 0.20, 0.10],
    [0.20, 0.50, 0.20, 0.10],   # 0 -> 1
    [0.10, 0.80, 0.05, 0.05],
    [0.30, 0.30, 0.20, 0.20],   # tie 0/1: argmax 0, mistake
    [0.60, 0.10, 0.25, 0.05],   # 2 -> 0
    [0.05, 0.55, 0.35, 0.05],   # 2 -> 1
    [0.08, 0.07, 0.33, 0.52],   # 2 -> 3
    [0.90, 0.05, 0.03, 0.02],
    [0.20, 0.60, 0.10, 0.10],
])
Y_PRED = PROBS.argmax(axis=1)
LABELS = list(range(4))


@pytest.fixture(scope="module")
def report():
    return report_from_predictions(Y_TRUE, PROBS, top_k=2, min_support=4,
                                   class_names=["a", "b", "c", "d"])


def test_every_metric_matches_scikit_learn(report):
    assert report.accuracy == pytest.approx(sk.accuracy_score(Y_TRUE, Y_PRED))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns of the absent class
        balanced = sk.balanced_accuracy_score(Y_TRUE, Y_PRED)
    assert report.balanced_accuracy == pytest.approx(balanced)
    p, r, f, s = sk.precision_recall_fscore_support(
        Y_TRUE, Y_PRED, labels=LABELS, zero_division=0)
    np.testing.assert_allclose(report.precision, p)
    np.testing.assert_allclose(report.recall, r)
    np.testing.assert_allclose(report.f1, f)
    np.testing.assert_array_equal(report.support, s)
    assert report.precision[2] == 0 and report.recall[3] == 0
    for average in ("macro", "weighted"):
        p, r, f, _ = sk.precision_recall_fscore_support(
            Y_TRUE, Y_PRED, average=average, zero_division=0)
        got = getattr(report, average)
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx(
            (p, r, f))
    np.testing.assert_array_equal(
        report.confusion_matrix,
        sk.confusion_matrix(Y_TRUE, Y_PRED, labels=LABELS))
    np.testing.assert_allclose(
        report.normalized_confusion_matrix,
        sk.confusion_matrix(Y_TRUE, Y_PRED, labels=LABELS, normalize="true"))
    assert report.top_k == 2
    # Row 2 ties classes 0 and 2 for second place: kft ranks the lower
    # index first, scikit-learn the higher; on reversed classes they agree.
    assert report.top_k_accuracy == pytest.approx(sk.top_k_accuracy_score(
        3 - Y_TRUE, PROBS[:, ::-1], k=2, labels=LABELS)) == 1.0
    assert sk.top_k_accuracy_score(Y_TRUE, PROBS, k=2, labels=LABELS) == 0.9
    assert "NaN" not in json.dumps(report.to_dict())


def test_a_class_in_neither_labels_nor_predictions_is_left_out_of_means():
    y, probs = np.array([0, 1, 1]), np.eye(3)[[0, 1, 0]]
    report = report_from_predictions(y, probs, min_support=0)
    p, r, f, _ = sk.precision_recall_fscore_support(y, probs.argmax(1),
                                                    average="macro",
                                                    zero_division=0)
    assert (report.macro["precision"], report.macro["recall"],
            report.macro["f1"]) == pytest.approx((p, r, f))
    assert any("neither in the labels nor predicted" in n and n.endswith(
        "2.") for n in report.notes)


def test_top_k_ties_go_to_the_lower_class_index():
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [0.1, 0.3, 0.3, 0.3],
                      [0.5, 0.2, 0.2, 0.1], [0.4, 0.4, 0.1, 0.1]])
    y = np.array([2, 3, 2, 1])
    # Ranks with ties toward the lower index: row 0 -> 0,1,2,3 (y=2 is
    # third); row 1 -> 1,2,3,0 (third); row 2 -> 0,1,2 (third); row 3 -> 0,1.
    for k, expected in ((1, 0.0), (2, 0.25), (3, 1.0)):
        report = report_from_predictions(y, probs, top_k=k, min_support=0)
        assert report.top_k_accuracy == expected
        # scikit-learn breaks ties toward the higher index: on reversed
        # classes it must agree.
        assert expected == pytest.approx(sk.top_k_accuracy_score(
            3 - y, probs[:, ::-1], k=k, labels=LABELS))
    one = report_from_predictions(y, probs, top_k=1, min_support=0)
    assert one.top_k_accuracy == one.accuracy
    big = report_from_predictions(y, probs, top_k=9, min_support=0)
    assert big.top_k == 4 and big.top_k_accuracy == 1.0
    assert any("top_k=9" in note for note in big.notes)
    # The default K is 5, or the classes when fewer, without a note (kft
    # train, kft eval and compare_strategies noted "top_k=5 is more than
    # the 4 classes" unasked).
    default = report_from_predictions(y, probs, min_support=0)
    assert default.top_k == 4 and not [n for n in default.notes
                                       if "top_k" in n]
    six = np.eye(6)[[0, 1, 2, 3, 4, 5, 0]]
    assert report_from_predictions(np.arange(7) % 6, six).top_k == 5
    # Over several blocks of rows (counted 4,096 at a time), float16
    # logits ranked as they are.
    rng = np.random.default_rng(1)
    y, logits = rng.integers(0, 7, 9000), rng.normal(size=(9000, 7))
    for scores in (logits, logits.astype("float16")):
        report = report_from_predictions(y, scores, top_k=3)
        ranked = scores.astype("float64") + np.arange(7) * -1e-9  # ties
        assert report.top_k_accuracy == pytest.approx(
            sk.top_k_accuracy_score(y, ranked, k=3, labels=range(7)))
        assert report.accuracy == np.mean(ranked.argmax(1) == y)


def test_expected_calibration_error_by_hand():
    # 4 bins of width 0.25. Confidences 0.9, 0.8 (bin 3), 0.6 (bin 2),
    # 0.4 (bin 1); correct: yes, no, yes, no.
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.2, 0.6, 0.2],
                      [0.4, 0.3, 0.3]])
    y = np.array([0, 1, 1, 1])
    report = report_from_predictions(y, probs, num_bins=4, min_support=0)
    assert report.bin_count.tolist() == [0, 1, 1, 2]
    np.testing.assert_allclose(report.bin_confidence, [0, 0.4, 0.6, 0.85])
    np.testing.assert_allclose(report.bin_accuracy, [0, 0, 1, 0.5])
    expected = (1 * 0.4 + 1 * 0.4 + 2 * 0.35) / 4
    assert report.expected_calibration_error == pytest.approx(expected)


def test_logits_are_detected_and_softmaxed(report):
    logits = np.log(PROBS) + 3.0
    from_logits = report_from_predictions(Y_TRUE, logits, top_k=2,
                                          min_support=4)
    assert report.scores == "probabilities"
    assert from_logits.scores == "logits"
    assert from_logits.expected_calibration_error == pytest.approx(
        report.expected_calibration_error)
    assert [m[:3] for m in from_logits.mistakes] == [
        m[:3] for m in report.mistakes]
    np.testing.assert_allclose([m.confidence for m in from_logits.mistakes],
                               [m.confidence for m in report.mistakes])
    forced = report_from_predictions(Y_TRUE, PROBS, scores="logits")
    assert forced.scores == "logits" and forced.bin_confidence.max() < 0.5


def test_mistakes_notes_and_flags(report):
    assert [m.index for m in report.mistakes] == [5, 6, 7, 2, 4]
    assert report.mistakes[0] == (5, 2, 0, pytest.approx(0.6))
    assert report.mistakes[1] == (6, 2, 1, pytest.approx(0.55))
    assert report.low_support == ("b", "c", "d")
    text = " ".join(report.notes)
    assert "absent from the labels" in text and ": d." in text
    assert "never predicted (precision set to 0): c." in text
    assert "fewer than 4 examples" in text


def test_class_names_reach_a_terminal_escaped():
    # A model of someone else's named a class with terminal escape
    # sequences: kft eval's printed table cleared the screen.
    names = ["ok", "\x1b[2J\x1b]0;pwned\x07", "a\tb"]
    report = report_from_predictions([0, 1, 2], np.eye(3),
                                     class_names=names)
    for text in (report.to_markdown(), str(report)):
        assert "\x1b" not in text and "\x07" not in text and "\t" not in text
        assert "\\x1b[2J\\x1b]0;pwned\\x07" in text and "a\\tb" in text
    assert report.class_names[1] == names[1]  # kept as given
    text = str(kft.evaluation.classification_report(
        [0, 1, 2], [0, 1, 1], class_names=names))
    assert "\x1b" not in text and "\\x1b[2J" in text


def test_round_trip_markdown_and_text(report, tmp_path):
    path = tmp_path / "report.json"
    report.to_json(path)
    again = kft.EvaluationReport.load(path)
    assert again.to_dict() == report.to_dict()
    # Counts come back as integers (as floats, equal in to_dict, a
    # reloaded report wrote bin counts as 0.0).
    from kft.evaluation.report import _ARRAYS
    for name in _ARRAYS:
        assert np.asarray(getattr(again, name)).dtype == np.asarray(
            getattr(report, name)).dtype, name
    assert again.bin_count.dtype.kind == "i"
    assert again.mistakes[0].predicted == 0
    assert kft.EvaluationReport.from_json(report.to_json()).class_names == (
        "a", "b", "c", "d")
    # Lines grow with the classes, not their square: a number per line
    # made evaluation.json 6 MB and a million lines at 1,000 classes.
    rng = np.random.default_rng(0)
    large = kft.evaluation.report_from_predictions(
        rng.integers(0, 300, 2000), rng.normal(size=(2000, 300)))
    text = large.to_json()
    assert text.count("\n") < 40 * 300
    assert kft.EvaluationReport.from_json(text).to_dict() == large.to_dict()
    markdown = report.to_markdown()
    assert "| c (low support) | 0.000 | 0.000 | 0.000 | 3 |" in markdown
    assert "| accuracy | 0.5000 |" in markdown
    assert markdown.count("\n| ") >= 4 + 5 + 8
    assert "The 2 classes of lowest F1" in report.to_markdown(max_classes=2)
    # Recall of a, b, c: 3/4, 2/3, 0 (d is absent).
    assert "balanced accuracy: 0.4722" in str(report)
    assert "top-2 accuracy: 1.0000" in str(report)
    # Top-k over every class is 1 by definition, and says so ("top-5
    # accuracy 1.0000" on 5 classes read as a result).
    every = report_from_predictions(Y_TRUE, PROBS, min_support=4)
    assert every.top_k == 4
    said = "top-4 accuracy: 1.0000 (k covers all 4 classes: 1 by definition)"
    assert said in str(every)
    with pytest.raises(ValueError, match=r"missing: \['num_examples', 'accuracy'"):
        kft.EvaluationReport.from_dict({"class_names": ["a"]})


@pytest.mark.parametrize("y,probs,match", [
    ([], np.zeros((0, 3)), r"non-empty.*y_true of shape \(0,\)"),
    ([0, 1], np.zeros((2,)), r"shape \(n, num_classes\).*shape \(2,\)"),
    ([0, 1], np.zeros((3, 2)), r"one label per row.*\(2,\).*\(3, 2\)"),
    ([0, 4], np.eye(3)[[0, 1]], r"`y_true` holds labels outside \[0, 3\)"
     r".*: 4"),
    ([0, 1], np.array([[np.nan, 1], [0, 1]]), r"finite.*rows \[0\]"),
])
def test_bad_predictions_are_named(y, probs, match):
    with pytest.raises(ValueError, match=match):
        report_from_predictions(y, probs)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"`scores`.*Received: scores='p'"):
        report_from_predictions([0], np.eye(2)[[0]], scores="p")
    with pytest.raises(ValueError, match=r"`top_k`.*Received: top_k=0"):
        report_from_predictions([0], np.eye(2)[[0]], top_k=0)
    with pytest.raises(ValueError, match=r"one name per class"):
        report_from_predictions([0], np.eye(2)[[0]], class_names=["a"])


@pytest.fixture(scope="module")
def model():
    return kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                input_shape=(16, 16, 3))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (14, 16, 16, 3)).astype("float32")
    return x, np.array([0, 1, 2] * 4 + [2, 2])


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_evaluate_casts_other_floats_a_batch_at_a_time(model, dtype):
    # Keras cast the whole array to float32, twice at once in predict:
    # 1x a float64 array's memory, 4x a float16 one's (x / 255.0 is
    # float64).
    import tracemalloc

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (600, 16, 16, 3)).astype(dtype)
    y = np.arange(600) % 3
    want = kft.evaluate(model, (x.astype("float32"), y), batch_size=50)
    kft.evaluate(model, (x[:100], y[:100]), batch_size=50)  # compiled
    tracemalloc.start()
    report = kft.evaluate(model, (x, y), batch_size=50)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.size * 4 / 2, peak  # half a float32 copy
    np.testing.assert_array_equal(report.confusion_matrix,
                                  want.confusion_matrix)
    assert report.accuracy == want.accuracy


def test_evaluate_arrays_and_datasets_agree(model, images):
    x, y = images
    logits = model.predict(x, batch_size=7, verbose=0)
    expected = report_from_predictions(y, logits, min_support=5)
    report = kft.evaluate(model, (x, y), batch_size=7, min_support=5)
    assert report.scores == "logits"
    np.testing.assert_array_equal(report.confusion_matrix,
                                  expected.confusion_matrix)
    assert [m[:3] for m in report.mistakes] == [
        m[:3] for m in expected.mistakes]
    for name in ("accuracy", "balanced_accuracy", "top_k_accuracy",
                 "expected_calibration_error"):
        assert getattr(report, name) == pytest.approx(
            getattr(expected, name), abs=1e-6)
    # A shuffled, balanced-sampling dataset is read in stored order.
    dataset = kft.data.from_arrays(x, y, batch_size=7, seed=3,
                                   class_names=["x", "y", "z"],
                                   sampling="balanced")
    streamed = kft.evaluate(model, dataset, min_support=5, verbose=1)
    assert streamed.class_names == ("x", "y", "z")
    np.testing.assert_array_equal(streamed.confusion_matrix,
                                  report.confusion_matrix)
    assert [m.index for m in streamed.mistakes] == [
        m.index for m in report.mistakes]
    assert streamed.expected_calibration_error == pytest.approx(
        report.expected_calibration_error, abs=1e-6)
    batches = [(x[:7], np.eye(3)[y[:7]]), (x[7:], np.eye(3)[y[7:]])]
    assert kft.evaluate(model, batches).accuracy == report.accuracy


def test_evaluate_bad_data_is_named(model, images):
    x, y = images
    with pytest.raises(ValueError, match=r"`data` must hold at least one "
                       r"image.*Received: 0 images and 0 labels"):
        kft.evaluate(model, (x[:0], y[:0]))
    with pytest.raises(ValueError, match=r"`data` must yield at least one"):
        kft.evaluate(model, [])
    with pytest.raises(ValueError, match=r"`data\[1\]` holds labels outside "
                       r"\[0, 3\).*: 7"):
        kft.evaluate(model, (x[:2], np.array([0, 7])))
    with pytest.raises(ValueError, match=r"`labels` holds labels outside "
                       r"\[0, 3\).*: 3"):
        kft.evaluate(model, [(x[:7], np.array([3, 0, 0, 1, 1, 2, 2]))])
    with pytest.raises(ValueError, match=r"labels are missing.*shape "
                       r"\(14, 16, 16, 3\)"):
        kft.evaluate(model, x)
    with pytest.raises(ValueError, match=r"one label per image.*14 images "
                       r"and 3 labels"):
        kft.evaluate(model, (x, y[:3]))


def test_16_bit_scores_are_read_with_a_16_bit_tolerance():
    # bfloat16 rows were refused as "not numeric" (kft.evaluate of a
    # mixed_bfloat16 model failed); cast, a bf16 softmax (rows 5e-3 off 1)
    # was taken for logits and softmaxed again.
    import ml_dtypes

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (200, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    bf16 = probs.astype(ml_dtypes.bfloat16)
    assert np.abs(bf16.astype(np.float64).sum(1) - 1).max() > 1e-3
    y = rng.integers(0, 3, 200)
    report = kft.report_from_predictions(y, bf16, min_support=0)
    exact = kft.report_from_predictions(y, probs, min_support=0)
    assert report.scores == "probabilities"
    assert report.accuracy == exact.accuracy
    assert abs(report.expected_calibration_error
               - exact.expected_calibration_error) < 0.01
    # float32 rows keep the tight tolerance: 5e-3 off is not a softmax.
    off = np.array([[0.5, 0.505], [0.2, 0.805]], "float32")
    assert kft.report_from_predictions([0, 1], off).scores == "logits"


def test_evaluate_a_mixed_bfloat16_model(dtype_policy):
    with dtype_policy("mixed_bfloat16"):
        model = kft.build_classifier("simple_cnn", 3, weights=None,
                                     input_shape=(16, 16, 3))
    x = np.random.default_rng(0).random((6, 16, 16, 3)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2])
    report = kft.evaluate(model, (x, y), top_k=2)
    short = kft.evaluate_classifier(model, x, y)
    assert report.accuracy == short.accuracy
    assert report.scores == "logits"


def test_short_report_macro_averages_the_classes_that_occur():
    # A 4-class model on data of classes 0 and 1: the short report
    # averaged in classes 2 and 3 at 0 (macro F1 0.41 vs 0.83).
    from sklearn.metrics import precision_recall_fscore_support

    y_true = np.array([0, 0, 1, 1, 1, 0])
    y_pred = np.array([0, 0, 1, 1, 0, 0])
    scores = np.eye(4)[y_pred] * 0.9 + 0.025
    short = kft.classification_report(y_true, scores)
    full = kft.report_from_predictions(y_true, scores, min_support=0)
    want = precision_recall_fscore_support(y_true, y_pred, average="macro",
                                           zero_division=0)[:3]
    np.testing.assert_allclose(
        [short.precision, short.recall, short.f1], want)
    np.testing.assert_allclose(
        [full.macro[k] for k in ("precision", "recall", "f1")], want)
    # A class in the labels but never predicted still counts (P = 0).
    never = kft.classification_report([0, 1, 2], [0, 1, 1], num_classes=4)
    assert never.precision == pytest.approx((1 + 0.5 + 0) / 3)


def test_short_report_matches_scikit_learn_on_random_labels():
    # classification_report computes with kft's metrics (scikit-learn's
    # own warned of "a single label" on one-class reports).
    rng = np.random.default_rng(0)
    for _ in range(100):
        k = int(rng.integers(1, 6))
        y_true, y_pred = rng.integers(0, k, (2, int(rng.integers(1, 30))))
        report = kft.classification_report(y_true, y_pred, num_classes=k)
        p, r, f, s = sk.precision_recall_fscore_support(
            y_true, y_pred, labels=list(range(k)), zero_division=0)
        used = np.isin(range(k), np.concatenate([y_true, y_pred]))
        assert (report.precision, report.recall, report.f1) == (
            pytest.approx((p[used].mean(), r[used].mean(), f[used].mean())))
        assert [report.per_class[str(i)]["f1"] for i in range(k)] == (
            pytest.approx(f.tolist()))
        assert [report.per_class[str(i)]["support"] for i in range(k)] == (
            s.tolist())
        np.testing.assert_array_equal(
            report.confusion_matrix,
            sk.confusion_matrix(y_true, y_pred, labels=list(range(k))))


def test_reports_on_arrays_name_the_models_classes():
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 3),
                                 class_names=["five", "six", "seven"])
    x, y = np.zeros((3, 16, 16, 3)), np.array([0, 1, 2])
    assert kft.evaluate(model, (x, y)).class_names == (
        "five", "six", "seven")
    assert kft.evaluate_classifier(model, x, y).class_names == (
        "five", "six", "seven")
    assert kft.evaluate(model, (x, y), class_names=list("abc")
                        ).class_names == ("a", "b", "c")


def test_repeated_class_names_are_refused():
    # Reports key classes by name: class 0 was overwritten by class 2.
    with pytest.raises(ValueError, match=r"distinct names \(repeated: "
                       r"\['cat'\]\)"):
        kft.classification_report([0, 1, 2], [0, 1, 2],
                                  class_names=["cat", "dog", "cat"])
    with pytest.raises(ValueError, match="distinct names"):
        kft.report_from_predictions([0, 1, 2], np.eye(3),
                                    class_names=["cat", "dog", "cat"])


def test_top_k_ranks_logits_a_softmax_would_round_to_a_tie():
    # Logits [0, -900, -800]: both small ones are probability 0 in
    # float64, and the tie went to the lower index (class 1 ranked 2nd).
    logits = np.array([[0.0, -900.0, -800.0]] * 2)
    report = kft.report_from_predictions([2, 2], logits, top_k=2,
                                         min_support=0)
    assert report.top_k_accuracy == 1.0
    assert kft.report_from_predictions([1, 1], logits, top_k=2,
                                       min_support=0).top_k_accuracy == 0.0
    assert report.scores == "logits"


def test_top_1_accuracy_is_the_accuracy_where_a_softmax_ties():
    # Logits [0, 1e-17]: softmax gives [0.5, 0.5] and the argmax class 0,
    # while top-1 ranked the logits (class 1): accuracy 0, top-1 1.
    report = kft.report_from_predictions([1], np.array([[0.0, 1e-17]]),
                                         top_k=1, min_support=0)
    assert report.accuracy == report.top_k_accuracy == 1.0


def test_class_names_and_indices_are_checked():
    # Integer names crashed joining the low-support note ("sequence item
    # 0: expected str instance"); a short `indices` raised a bare
    # IndexError only when a mistake fell past its end, a long one passed.
    probs = np.eye(2)[[0, 1, 1]]
    with pytest.raises(TypeError, match=r"`class_names` must be a sequence "
                       r"of strings.*\[3, 4\]"):
        kft.report_from_predictions([0, 1, 0], probs, class_names=[3, 4])
    with pytest.raises(TypeError, match="`class_names` must be a sequence "
                       "of strings"):
        kft.classification_report([0, 1], [0, 1], class_names=[0, 1])
    # A dataset's names are checked where they are given (kft.evaluate
    # named a `class_names` argument the user never passed).
    with pytest.raises(TypeError, match="`class_names` must be a sequence "
                       "of strings"):
        kft.data.from_arrays(np.zeros((2, 4, 4, 3)), [0, 1],
                             class_names=[0, 1])
    for indices in ([7, 8], [7, 8, 9, 10]):
        with pytest.raises(ValueError, match=r"`indices` must be one index "
                           r"per example \(3\)"):
            kft.report_from_predictions([0, 1, 0], probs, indices=indices)
    report = kft.report_from_predictions([0, 1, 0], probs,
                                         indices=[7, 8, 9],
                                         class_names=np.array(["a", "b"]))
    assert [m.index for m in report.mistakes] == [9]
    assert report.class_names == ("a", "b")


def test_text_report_columns_line_up_with_low_support_rows():
    report = kft.report_from_predictions(
        [0, 0, 1], np.eye(2)[[0, 0, 1]], min_support=2)
    rows = [line for line in str(report).splitlines()
            if line.strip().startswith(("0", "1"))]
    assert len(rows) == 2 and "(low support)" in rows[1]
    assert len({row.index("1.000") for row in rows}) == 1


def test_curves_place_validation_logged_every_kth_epoch():
    # fit(validation_freq=2) logs val_loss after epochs 2 and 4: it was
    # drawn at epochs 1 and 2.
    from kft.evaluation._history import merge

    with pytest.warns(UserWarning, match=r"'val_loss' was logged in 2 of 4 "
                      r"epochs: plotted after every 2 epochs"):
        curves, _ = merge({"loss": [4, 3, 2, 1], "val_loss": [3.5, 1.5]})
    np.testing.assert_array_equal(curves["val_loss"],
                                  [np.nan, 3.5, np.nan, 1.5])
    # 1 of 5 epochs: validation_freq 3, 4 or 5; the epoch is unknown.
    with pytest.warns(UserWarning, match="not plotted"):
        curves, _ = merge({"loss": [5, 4, 3, 2, 1], "val_loss": [2.5]})
    assert np.isnan(curves["val_loss"]).all()
    # A phase that did not log a key at all stays NaN without a word.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curves, _ = merge([{"loss": [2, 1]}, {"loss": [1], "lr": [0.1]}])
    assert np.isnan(curves["lr"][:2]).all()


def test_reliability_bars_span_their_confidence_bins():
    # Equal-width bins of the top probability (`EvaluationReport`): bin i
    # holds confidences in [i/bins, (i+1)/bins], so its accuracy bar must
    # cover exactly that range; bars half a bin to the left drew every
    # accuracy against the wrong confidence.  Confidences 0.95 (bin 4,
    # right) and 0.7 (bin 3, wrong), 5 bins.
    import matplotlib.pyplot as plt

    from kft.evaluation.plots import plot_reliability

    report = report_from_predictions(
        [0, 1], np.array([[0.95, 0.05], [0.7, 0.3]]), num_bins=5)
    assert report.bin_count.tolist() == [0, 0, 0, 1, 1]
    fig = plot_reliability(report)
    top, bottom = fig.axes[:2]
    spans = [(p.get_x(), p.get_x() + p.get_width(), p.get_height())
             for p in top.patches]
    np.testing.assert_allclose(spans, [(0.6, 0.8, 0.0), (0.8, 1.0, 1.0)],
                               atol=1e-9)
    # The count bars below: one per bin, on the same edges.
    np.testing.assert_allclose(
        [(p.get_x(), p.get_x() + p.get_width()) for p in bottom.patches],
        [(i / 5, (i + 1) / 5) for i in range(5)], atol=1e-9)
    # Each bin's mean confidence is drawn at its bar's centre.
    points = [line for line in top.lines if line.get_marker() == "o"][0]
    np.testing.assert_allclose(points.get_xdata(), [0.7, 0.9])
    np.testing.assert_allclose(points.get_ydata(), [0.7, 0.95])
    plt.close(fig)
