"""What a notebook shows of kft's results (the repr of a cell's value,
or its Markdown): short, and saying what it is, at 300 classes or 50
epochs."""

import numpy as np

import kft
from kft.adaptation.diagnostic import DomainShiftReport
from kft.training.lr_find import LRFinderResult
from kft.training.lr_find import Suggestion

CLASSES = 300


def _labels():
    rng = np.random.default_rng(0)
    y_true = np.arange(3 * CLASSES) % CLASSES
    return y_true, rng.dirichlet(np.ones(CLASSES), 3 * CLASSES)


def test_classification_reports_of_many_classes_stay_short():
    y_true, probabilities = _labels()
    report = kft.classification_report(y_true, probabilities.argmax(1))
    # The default repr: 23 KB of every class and the whole matrix.
    assert repr(report).startswith("ClassificationReport(300 classes, "
                                   "accuracy=")
    assert len(repr(report)) < 200
    printed = str(report).splitlines()  # 301 lines
    assert len(printed) == 22
    assert "the 20 classes of lowest F1 (of 300" in printed[1]
    # Classes without examples (F1 0) go last: they crowded out the weak
    # classes the macro F1 counts.
    y_pred = y_true.copy()
    y_pred[:20] = (y_pred[:20] + 1) % CLASSES  # 20 weak classes
    weak = kft.classification_report(y_true, y_pred,
                                     num_classes=CLASSES + 30)
    shown = [line.split(":")[0].strip() for line in str(weak).splitlines()[2:]]
    assert len(shown) == 20
    # The weak ones: 0-19 miss an example, 1-20 take a false one (shown
    # the other way round, it listed classes of F1 1).
    assert set(shown) <= {str(c) for c in range(21)}
    evaluation = kft.report_from_predictions(y_true, probabilities)
    # A notebook's Markdown: every class (335 lines), not print's 20.
    table = evaluation._repr_markdown_()
    assert "The 20 classes of lowest F1 (of 300):" in table
    assert len(table.splitlines()) < 70


def test_results_of_training_show_their_numbers_not_their_arrays():
    steps = np.geomspace(1e-7, 10, 100)
    found = LRFinderResult(steps, np.ones(100), np.ones(100), {
        "valley": Suggestion(3e-3, 1.0, "valley rule")}, "diverged")
    assert repr(found) == ("LRFinderResult(100 steps, valley=0.003, "
                           "stop_reason='diverged')")
    history = {"loss": [1.0] * 25, "val_loss": [0.5] * 25}
    result = kft.FineTuneResult([history, history], best_epoch=10,
                                best_value=0.5, monitor="val_loss",
                                learning_rate=1e-4, lr_find=found)
    assert repr(result) == (
        "FineTuneResult(phases=2, epochs=50, best_epoch=10, val_loss=0.5 "
        "(min), learning_rate=0.0001, lr_find=" + repr(found) + ")")
    shift = DomainShiftReport(blocks={"stem": 0.1, "block1": 0.5},
                              layers={f"bn{i}": 0.1 for i in range(50)},
                              block_of_layer={}, num_images=4, mmd=0.25)
    assert repr(shift) == ("DomainShiftReport(2 blocks, 4 images, "
                           "most_shifted_block='block1', mmd=0.2500)")


def test_datasets_and_schedules_say_what_they_are():
    x = np.zeros((2 * CLASSES, 4, 4, 3), "uint8")
    data = kft.data.from_arrays(x, np.arange(2 * CLASSES) % CLASSES,
                                batch_size=8)
    assert repr(data) == str(data)  # not "<... object at 0x...>"
    assert repr(data).startswith("ImageDataset(600 examples, 300 classes "
                                 "(0: 2, 1: 2,")
    assert len(repr(data)) < 200
    cycle = kft.OneCycle(1e-3, 100)
    assert repr(cycle).startswith("OneCycle(total_steps=100, pct_start=0.3")
    assert "max_learning_rate=0.001" in repr(cycle)
    assert repr(kft.Warmup(cycle, 10)) == (
        f"Warmup({cycle!r}, warmup_steps=10, initial_value=0.0)")
