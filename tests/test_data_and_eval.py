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
    with pytest.raises(ValueError, match="one length"):
        kft.classification_report([0, 1], [0])


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    rows = run_demo(image_size=16, target_per_class=5, source_epochs=2,
                    target_epochs=2, workdir=str(tmp_path), print_fn=None)
    assert [r["strategy"] for r in rows] == ["scratch", "feature_extraction",
                                            "partial", "full"]
    assert (tmp_path / "simple_cnn_digits04.weights.h5").exists()
    by = {r["strategy"]: r for r in rows}
    assert by["feature_extraction"]["trainable"] < by["partial"]["trainable"]
    assert by["partial"]["trainable"] < by["full"]["trainable"]
    assert by["full"]["trainable"] == by["scratch"]["trainable"]
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0
