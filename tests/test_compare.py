"""`kft.compare_strategies` and `kft.StrategyComparison`."""

import dataclasses
import json
import math
from unittest import mock

import keras
import numpy as np
import pytest
from scipy import stats

import kft
from kft.evaluation.comparison import mean_interval
from kft.evaluation.comparison import paired_t_test

SEEDS = [3, 7]
STRATEGIES = ["feature_extraction", "partial:2"]
CALLS = []


def untrained(model, train, val, seed):
    """A training function that records its call and trains nothing."""
    CALLS.append((len(train[1]), seed))


@pytest.fixture(scope="module")
def data():
    return kft.datasets.digits(image_size=16, target_per_class=2,
                               val_per_class=2, test_fraction=0.2)


def _build():
    return kft.build_classifier("simple_cnn", 5, weights=None,
                                input_shape=(16, 16, 3))


@pytest.fixture(scope="module")
def comparison(data):
    """2 strategies x 2 seeds, with `cache_features` counted per run, and
    a training function as a third strategy."""
    import kft.training.fine_tune_phases as fine_tune_module

    lines = []
    real = fine_tune_module.cache_features
    with mock.patch.object(fine_tune_module, "cache_features",
                           wraps=real) as spy:
        result = kft.compare_strategies(
            lambda seed: _build(), data.target_train, data.target_val,
            data.target_test, strategies=[*STRATEGIES, untrained],
            seeds=SEEDS, epochs=2, head_epochs=1,
            print_fn=lambda line: lines.append((line, spy.call_count)))
    return result, lines


@pytest.mark.slow
def test_runs_are_recorded_per_strategy_and_seed(comparison, data):
    result, lines = comparison
    assert [(r["strategy"], r["seed"]) for r in result.runs] == [
        (s, seed) for seed in SEEDS for s in [*STRATEGIES, "untrained"]]
    assert CALLS == [(10, 3), (10, 7)]
    assert result.runs[2]["histories"] == []
    # Feature extraction trained the head on cached features: its run
    # cached the train and the validation data.
    assert lines[0][0].startswith("[1/6] feature_extraction seed 3: "
                                  "accuracy ")
    assert lines[0][1] == 2
    by = {(r["strategy"], r["seed"]): r for r in result.runs}
    head = by["feature_extraction", 3]["trainable_params"]
    assert head == 64 * 5 + 5  # pooled features -> 5 logits
    assert by["partial:2", 3]["trainable_params"] > head
    for run in result.runs:
        assert run["train_time"] > 0
        assert run["peak_memory_mib"] is not None
        report = result.report(run["strategy"], run["seed"])
        assert report.accuracy == run["metrics"]["accuracy"]
        assert report.num_examples == len(data.target_test[1])
    # Epoch budget: 2 head epochs for feature extraction, 1 + 1 else.
    assert [len(h["loss"]) for h in by["feature_extraction", 7][
        "histories"]] == [2]
    assert [len(h["loss"]) for h in by["partial:2", 7]["histories"]] == [
        1, 1]


@pytest.mark.slow
def test_table_numbers_are_recomputed_from_the_runs(comparison):
    result, _ = comparison
    table = {row["strategy"]: row for row in result.table()}
    names = [*STRATEGIES, "untrained"]
    values = {s: [r["metrics"]["accuracy"] for seed in SEEDS
                  for r in result.runs if r["strategy"] == s
                  and r["seed"] == seed] for s in names}
    best = max(names, key=lambda s: np.mean(values[s]))
    assert result.best == best
    for s in names:
        row, v = table[s], np.array(values[s])
        assert row["n"] == 2
        assert row["mean"] == pytest.approx(v.mean())
        assert row["std"] == pytest.approx(v.std(ddof=1))
        half = stats.t.ppf(0.975, 1) * v.std(ddof=1) / math.sqrt(2)
        assert row["ci_low"] == pytest.approx(v.mean() - half)
        assert row["ci_high"] == pytest.approx(v.mean() + half)
        assert row["trainable_params"] == pytest.approx(np.mean(
            [r["trainable_params"] for r in result.runs
             if r["strategy"] == s]))
    assert table[best]["p"] is None and table[best]["difference"] == 0.0
    others = [s for s in names if s != best]
    for other in others:
        diff = np.array(values[other]) - np.array(values[best])
        assert table[other]["difference"] == pytest.approx(diff.mean())
        assert table[other]["p"] == pytest.approx(
            paired_t_test(values[other], values[best])[1])
    # Holm: the smaller p times 2, the larger times 1, kept monotone.
    ps = sorted((table[o]["p"], o) for o in others)
    assert table[ps[0][1]]["p_holm"] == pytest.approx(min(1, 2 * ps[0][0]))
    assert table[ps[1][1]]["p_holm"] == pytest.approx(
        max(table[ps[0][1]]["p_holm"], ps[1][0]))
    other = others[0]
    markdown = result.to_markdown()
    assert f"**{best}** (best)" in markdown and str(result) == markdown
    assert f"{table[other]['mean']:.3f}" in markdown


@pytest.mark.slow
def test_json_round_trip_then_replot(comparison, tmp_path):
    result, _ = comparison
    path = tmp_path / "runs" / "comparison.json"
    result.save(path)
    loaded = kft.StrategyComparison.load(path)
    assert loaded.to_dict() == json.loads(result.to_json())
    assert loaded.table() == result.table()
    fig = loaded.plot(path=tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 0
    from matplotlib.container import BarContainer

    ax = fig.axes[0]
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 3
    heights = [b.get_height() for b in bars]
    np.testing.assert_allclose(heights, [r["mean"] for r in result.table()])
    # Error bars span the confidence interval.
    (segments,) = bars.errorbar.lines[2]
    spans = [tuple(seg[:, 1]) for seg in segments.get_segments()]
    np.testing.assert_allclose(spans, [(r["ci_low"], r["ci_high"])
                                       for r in result.table()])
    points = [line for line in ax.lines if line.get_marker() == "o"]
    assert sum(len(line.get_ydata()) for line in points) == 6
    assert ax.get_ylabel() == "test accuracy"
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        *STRATEGIES, "untrained"]
    with pytest.raises(ValueError, match="format"):
        kft.StrategyComparison.from_dict({"runs": []})


def test_paired_test_and_interval_against_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.05, 6), rng.normal(0.75, 0.05, 6)
    t, p = paired_t_test(a, b)
    expected = stats.ttest_rel(a, b)
    assert (t, p) == pytest.approx((expected.statistic, expected.pvalue))
    assert paired_t_test([0.5, 0.6], [0.5, 0.6]) == (0.0, 1.0)
    # Equal differences other than 0: not testable (p was 0, "<0.001", and
    # t infinite, written as -Infinity in JSON).
    assert paired_t_test([0.6, 0.7], [0.5, 0.6]) == (None, None)
    # One test image of 10 ahead on every seed: the differences agree up
    # to rounding (0.1 + 1e-16, 0.1 - 1e-17), which gave t 2.7e15 and p
    # 1e-31 ("<0.001"); small real differences stay testable.
    assert paired_t_test([0.8, 0.9, 0.7], [0.7, 0.8, 0.6]) == (None, None)
    t, p = paired_t_test([1e-12, 2e-12, 3e-12], [0.0, 0.0, 0.0])
    assert (t, p) == pytest.approx(tuple(stats.ttest_rel(
        [1e-12, 2e-12, 3e-12], [0.0, 0.0, 0.0])))
    assert paired_t_test([0.6], [0.5]) == (None, None)
    low, high = stats.t.interval(0.9, 5, loc=a.mean(),
                                 scale=stats.sem(a))
    assert mean_interval(a, 0.9)[2:] == pytest.approx((low, high))
    assert mean_interval([0.5]) == (0.5, None, None, None)


def test_one_seed_has_no_interval_nor_test():
    runs = [{"strategy": s, "seed": 0, "metrics": {"accuracy": a}}
            for s, a in [("full", 0.8), ("partial", 0.7)]]
    result = kft.StrategyComparison(runs, ["full", "partial"], [0],
                                    "accuracy")
    rows = result.table()
    assert [r["std"] for r in rows] == [None, None]
    assert rows[1]["p"] is None and rows[1]["difference"] == pytest.approx(
        -0.1)
    assert "| n/a |" in result.to_markdown()
    with pytest.raises(ValueError, match=r"`strategy` must be one of "
                       r"\('full', 'partial'\)\. Received: strategy='x'"):
        result.values("x")


def _never(*args):
    raise AssertionError("a model was built before the arguments were "
                         "checked")


BAD_ARGUMENTS = [
    ({"strategies": ["full", "fulll"]}, ValueError,
     r"`strategies\[1\]` must be one of \('feature_extraction', 'partial', "
     r"'gradual', 'full', 'discriminative'\).*Received: "
     r"strategies\[1\]='fulll'"),
    ({"strategies": ["partial:x"]}, ValueError,
     r"\(blocks: an integer >= 1\)\. Received: "
     r"strategies\[0\]='partial:x'"),
    ({"strategies": ["discriminative:2"]}, ValueError,
     r"decay: a number in \(0, 1\]"),
    ({"strategies": [{"strategy": "full", "epochs": 3}]}, ValueError,
     r"the budget is shared"),
    ({"strategies": [lambda m, t, v, s: None]}, ValueError,
     r"with a name.*Received: strategies\[0\]=<function"),
    ({"strategies": ["full", {"name": "full", "strategy": "partial"}]},
     ValueError, r"'full' appears 2 times"),
    ({"strategies": []}, ValueError, r"`strategies` must be a non-empty"),
    ({"seeds": []}, ValueError,
     r"`seeds` must be a non-empty list of distinct integer seeds\. "
     r"Received: seeds=\[\]"),
    ({"seeds": [1, 3, 3]}, ValueError,
     r"distinct seeds \(runs are paired by seed\); 3 appears 2 times\. "
     r"Received: seeds=\[1, 3, 3\]"),
    ({"seeds": [0, -1]}, ValueError, r"seeds\[1\]=-1"),
    ({"metric": "acc"}, ValueError, r"`metric` must be one of \('accuracy',"),
    ({"head_epochs": 3, "epochs": 3}, ValueError,
     r"less than epochs=3.*Received: head_epochs=3"),
    ({"strategy": "full"}, ValueError,
     r"`strategy` must be left out.*Received: strategy='full'"),
    ({"time_budget": 0}, ValueError, r"time_budget=0"),
    ({"build_model": None}, TypeError, r"`build_model` must be a function"),
    # A function returning something else was only found by the first run.
    ({"build_model": lambda: None}, TypeError,
     r"`build_model` must be a function returning a keras\.Model\. "
     r"Received: build_model='<function .*> returning NoneType'"),
    ({"strategies": ["full", 42]}, ValueError, r"strategies\[1\]=42"),
    ({"strategies": ["discriminative:fast"]}, ValueError,
     r"decay: a number in \(0, 1\].*strategies\[0\]='discriminative:fast'"),
    ({"strategies": [{"name": "own", "train": untrained, "epochs": 2}]},
     ValueError, r"a 'train' dict holds just 'name' and the function"),
    # An unnamed dict is labelled by its settings: two alike collide.
    ({"strategies": [{"strategy": "partial", "n_blocks": 2}] * 2},
     ValueError, r"'partial,n_blocks=2' appears 2 times"),
    # Training and test data are required (val is not).
    ({"train": None}, ValueError, r"`train` must be labelled data: an "
     r"\(x, y\) pair or a dataset\. Received: train=None"),
    ({"test": None}, ValueError, r"Received: test=None"),
]


def test_bad_arguments_fail_before_training(data):
    # One test for all: each case costs no training, but a test item's
    # fresh Keras session does.
    for kwargs, error, match in BAD_ARGUMENTS:
        kwargs = {"build_model": _never, "train": data.target_train,
                  "test": data.target_test, **kwargs}
        with pytest.raises(error, match=match):
            kft.compare_strategies(val=data.target_val, print_fn=None,
                                   **kwargs)


def test_without_validation_data_each_run_trains_without_it(data):
    # val is optional: a training function is handed None, and the run
    # is tested on the test data as any other.
    seen = []

    def record(model, train, val, seed):
        seen.append(val)

    result = kft.compare_strategies(
        lambda seed: _build(), data.target_train, None, data.target_test,
        strategies=[record], seeds=[0], print_fn=None)
    assert seen == [None]
    assert result.runs[0]["metrics"]["accuracy"] == result.report(
        "record", 0).accuracy


def test_a_built_model_is_refused_as_build_model(data):
    # A model is callable too (the `callable` check passed and inspect
    # failed on its signature); each run needs a fresh one.
    with pytest.raises(TypeError, match=r"`build_model` must be a function "
                       r"returning a fresh model .*not a model\. Received: "
                       r"build_model=\"the Classifier 'kft_simple_cnn"):
        kft.compare_strategies(_build(), data.target_train, data.target_val,
                               data.target_test, print_fn=None)


@pytest.mark.parametrize("reset", [False, True])
def test_build_model_returning_one_model_again_is_refused(data, reset):
    # Each run started from the weights the run before it trained (reset
    # or not: also its trainable flags and dropout's generator state),
    # and the paired statistics compared nothing. Refused before any run
    # trains, also for a training function's strategy.
    model = _build()
    first = model.get_weights()
    trained = []

    def build(seed):
        if reset:
            model.set_weights(first)
        return model

    def train(model, train, val, seed):
        trained.append(seed)

    for strategies in (["feature_extraction", "full"],
                       [{"name": "own", "train": train}]):
        with pytest.raises(ValueError, match=r"`build_model` must return a "
                           r"new model at every call: .* returned the model "
                           r"'kft_simple_cnn' again, which carries the last "
                           r"run's trainable flags") as info:
            kft.compare_strategies(build, data.target_train,
                                   data.target_val, data.target_test,
                                   strategies=strategies, seeds=[0, 1],
                                   epochs=2, head_epochs=1, print_fn=None)
        assert type(info.value) is ValueError
    assert trained == []


def test_markdown_tables_escape_a_bar_in_names():
    # A lone "\r" (CommonMark: a line ending) split the row too.
    names = ["dog|wolf\r\nhowl\rgrr", "cat"]
    report = kft.report_from_predictions([0, 1, 0], np.eye(2)[[0, 1, 1]],
                                         class_names=names, min_support=0)
    rows = [line for line in report.to_markdown().splitlines()
            if "wolf" in line]
    assert len(rows) == 2  # the per-class table and a mistake
    for row in rows:  # as many cells as its table's header
        cells = row.replace("\\|", "").count("|")
        assert cells in (6, 5), row
    assert r"| dog\|wolf howl grr | 1.000 | 0.500 |" in report.to_markdown()
    runs = [{"strategy": s, "seed": i, "metrics": {"accuracy": a}}
            for s, a in (("a|b", 0.5), ("c", 0.6)) for i in range(2)]
    markdown = kft.StrategyComparison(runs, ["a|b", "c"], [0, 1],
                                      "accuracy").to_markdown()
    (row,) = [line for line in markdown.splitlines() if "a\\|b" in line]
    assert row.replace("\\|", "").count("|") == 12


def test_empty_data_is_named(data):
    x, y = data.target_train
    with pytest.raises(ValueError, match=r"`train` must hold at least one "
                       r"example.*Received: train with 0 images"):
        kft.compare_strategies(_never, (x[:0], y[:0]), data.target_val,
                               data.target_test)
    with pytest.raises(ValueError, match=r"`test` must hold.*3 images and "
                       r"2 labels"):
        kft.compare_strategies(_never, data.target_train, None,
                               (x[:3], y[:2]))
    # One example, and this process' slice of it is empty.
    empty = kft.data.from_arrays(x[:1], y[:1], batch_size=4).with_shard(
        (1, 2))
    with pytest.raises(ValueError, match=r"`test` must hold at least one "
                       r"batch"):
        kft.compare_strategies(_never, data.target_train, None, empty)


def test_demo_with_seeds_writes_the_comparison_and_plots(tmp_path,
                                                         monkeypatch):
    """The wiring of `run_demo(seeds=...)`, with the training faked."""
    import kft.demo

    rng = np.random.default_rng(1)
    labels = np.arange(20) % 5
    report = kft.evaluation.report_from_predictions(
        labels, rng.normal(size=(20, 5))).to_dict()
    history = [{"loss": [1.0, 0.8], "val_loss": [1.1, 0.9]}]
    asked = {}

    def fake_compare(build, train, val, test, **kwargs):
        asked.update(kwargs)
        runs = [{"strategy": s, "seed": seed, "metrics": {
            "accuracy": acc}, "trainable_params": 10, "train_time": 1.0,
            "report": report, "histories": history}
            for seed, accs in zip(kwargs["seeds"], [(0.5, 0.7), (0.6, 0.8)])
            for s, acc in zip(["feature_extraction", "full"], accs)]
        return kft.StrategyComparison(runs, ["feature_extraction", "full"],
                                      kwargs["seeds"], "accuracy")

    monkeypatch.setattr(kft.demo, "_pretrain", lambda *args: None)
    monkeypatch.setattr(kft.demo, "compare_strategies", fake_compare)
    printed = []
    result = kft.demo.run_demo(image_size=8, target_per_class=2, seed=4,
                               seeds=2, output_dir=str(tmp_path / "out"),
                               print_fn=printed.append)
    assert asked["seeds"] == [4, 5] and len(asked["strategies"]) == 6
    assert result.best == "full"
    out = tmp_path / "out"
    assert kft.StrategyComparison.load(out / "comparison.json").to_dict() \
        == result.to_dict()
    assert (out / "strategies.png").exists()
    assert (out / "full" / "confusion_matrix.png").exists()
    assert (out / "full" / "learning_curves.png").exists()
    assert result.to_markdown() in printed
    assert any(line.startswith(f"Plots written to {out}") for line in printed)
    with pytest.raises(ValueError, match=r"seeds.*>= 2.*Received: seeds=1"):
        kft.demo.run_demo(seeds=1, print_fn=None)


def test_time_budget_stops_training_after_the_batch_past_it():
    import time

    import keras

    from kft.evaluation.compare import _TimeBudget

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    budget = _TimeBudget(1e-9, time.perf_counter())
    seen = []
    history = model.fit(
        np.ones((64, 2)), np.ones(64), batch_size=8, epochs=3, verbose=0,
        callbacks=[budget, keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: seen.append(batch))])
    assert budget.spent and seen == [0]
    assert len(history.history["loss"]) == 1


def test_runs_of_a_seed_read_the_same_dataset_batches(data):
    # A shuffled, augmenting kft.data dataset was read on from where the
    # previous run left it: the same strategy and seed scored differently
    # with other strategies before it, and "paired by seed" paired nothing.
    x, y = data.target_train
    train = kft.data.from_arrays(x, y, batch_size=4, augmentation="light",
                                 seed=0)

    def compare(strategies, seeds):
        result = kft.compare_strategies(
            _build, train, data.target_val, data.target_test,
            strategies=strategies, seeds=seeds, epochs=2, head_epochs=1,
            batch_size=4, print_fn=None, cache_features=False)
        return {(r["strategy"], r["seed"]): r["histories"][0]["loss"]
                for r in result.runs}

    losses = compare(["partial", "full"], [1])
    # The head phase is the same code for both.
    np.testing.assert_allclose(losses["partial", 1], losses["full", 1],
                               rtol=1e-6)
    alone = compare(["full"], [1])
    np.testing.assert_allclose(alone["full", 1], losses["full", 1],
                               rtol=1e-6)


def test_a_run_that_raises_is_recorded_and_the_others_count(data, tmp_path):
    # One failing run raised out of compare_strategies: every finished
    # run was lost (and `kft compare` wrote nothing).
    def steady(model, train, val, seed):
        pass  # trains nothing: the runs are about the bookkeeping

    def flaky(model, train, val, seed):
        if seed == 1:
            raise RuntimeError("out of memory")

    result = kft.compare_strategies(
        lambda: _build(), data.target_train, data.target_val,
        data.target_test, strategies=[steady, flaky], seeds=[0, 1],
        epochs=1, print_fn=None)
    assert [(r["strategy"], r["seed"]) for r in result.failures()] == [
        ("flaky", 1)]
    assert result.failures()[0]["error"] == "RuntimeError: out of memory"
    rows = {r["strategy"]: r for r in result.table()}
    assert (rows["flaky"]["n"], rows["flaky"]["failed"]) == (1, 1)
    assert (rows["steady"]["n"], rows["steady"]["failed"]) == (2, 0)
    np.testing.assert_array_equal(result.values("flaky"),
                                  [result.runs[1]["metrics"]["accuracy"]])
    assert "flaky, seed 1: RuntimeError: out of memory" in (
        result.to_markdown())
    result.save(tmp_path / "c.json")
    loaded = kft.StrategyComparison.load(tmp_path / "c.json")
    assert loaded.failures() == result.failures()


def test_a_training_function_returning_a_history_records_its_curves(data):
    # Documented: a function's `History` records its learning curves (only
    # a FineTuneResult's were run); values that are not numbers are left
    # out of the (JSON) record.
    def fit_twice(model, train, val, seed):
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        history = model.fit(*train, epochs=2, verbose=0)
        history.history["note"] = ["first", "second"]
        return history

    result = kft.compare_strategies(
        lambda: _build(), data.target_train, data.target_val,
        data.target_test, strategies=[fit_twice], seeds=[0], epochs=1,
        print_fn=None)
    (histories,) = [run["histories"] for run in result.runs]
    assert len(histories) == 1 and list(histories[0]) == ["loss"]
    assert len(histories[0]["loss"]) == 2
    assert all(isinstance(v, float) and math.isfinite(v)
               for v in histories[0]["loss"])


def test_ctrl_c_keeps_the_runs_that_finished(data, tmp_path):
    # A Ctrl-C lost every finished run (hours of them).
    def steady(model, train, val, seed):
        pass

    def stopped(model, train, val, seed):
        if seed == 1:
            raise KeyboardInterrupt

    with pytest.raises(kft.ComparisonInterrupted) as info:
        kft.compare_strategies(
            lambda: _build(), data.target_train, data.target_val,
            data.target_test, strategies=[steady, stopped], seeds=[0, 1],
            epochs=1, print_fn=None)
    assert isinstance(info.value, KeyboardInterrupt)
    partial = info.value.comparison
    assert [(r["strategy"], r["seed"]) for r in partial.runs] == [
        ("steady", 0), ("stopped", 0), ("steady", 1)]
    assert partial.failures() == []
    assert partial.settings["interrupted"] == "after 3 of 4 runs"
    assert partial.to_markdown().endswith(
        "Interrupted after 3 of 4 runs: the runs that finished.")
    partial.save(tmp_path / "c.json")
    assert kft.StrategyComparison.load(tmp_path / "c.json").runs == \
        partial.runs


def test_comparison_json_is_strict_and_untestable_pairs_say_so(tmp_path):
    # Two seeds, each one test image apart: p was 0 ("<0.001") and the
    # JSON held -Infinity, which strict parsers reject.
    runs = [{"strategy": s, "seed": seed, "metrics": {"accuracy": a,
                                                      "ece": math.nan}}
            for s, seed, a in [("full", 0, 10 / 12), ("full", 1, 9 / 12),
                               ("partial", 0, 9 / 12),
                               ("partial", 1, 8 / 12)]]
    result = kft.StrategyComparison(runs, ["full", "partial"], [0, 1],
                                    "accuracy")
    row = result.table()[1]
    assert row["p"] is None and row["t"] is None
    assert "| n/a | n/a |" in result.to_markdown()

    def refuse(constant):
        raise AssertionError(f"{constant} in JSON")

    saved = json.loads(result.to_json(), parse_constant=refuse)
    assert saved["runs"][0]["metrics"]["ece"] is None
    # A NaN metric is not the best.
    assert dataclasses.replace(result, metric="ece").best is None


def test_strategy_arguments_are_checked_before_any_run(data):
    calls = []

    def first(model, train, val, seed):
        calls.append(seed)

    for strategies, error, match in [
            (["partial:9"], ValueError,
             r"Strategy 'partial:9': Argument `n_blocks` must be an "
             r"integer from 1 to 4"),
            ([{"name": "typo", "strategy": "partial", "n_block": 2}],
             TypeError, r"Strategy 'typo':.*n_block"),
            ([{"name": "fe_rate", "strategy": "feature_extraction",
               "learning_rate": 1e-2}], ValueError,
             r"Strategy 'fe_rate':.*learning_rate")]:
        with pytest.raises(error, match=match):
            kft.compare_strategies(
                lambda: _build(), data.target_train, data.target_val,
                data.target_test, strategies=[first, *strategies],
                seeds=[0, 1], epochs=2, head_epochs=1, print_fn=None)
    assert calls == []  # nothing trained


def test_a_penalty_is_bound_to_each_run_in_turn(data):
    # The one L2SP object stayed bound to the first run's model: every
    # later run failed ("bound to a model already") and a best was named
    # from one run.
    result = kft.compare_strategies(
        lambda: _build(), data.target_train, data.target_val,
        data.target_test, strategies=["feature_extraction"], seeds=[0, 1],
        epochs=1, print_fn=None, regularizer=kft.L2SP(alpha=0.01))
    assert result.failures() == [] and result.table()[0]["n"] == 2


def test_failed_runs_do_not_make_a_strategy_best_nor_skew_holm():
    def run(strategy, seed, value=None, ece=0.1):
        if value is None:
            return {"strategy": strategy, "seed": seed, "error": "E: x"}
        return {"strategy": strategy, "seed": seed,
                "metrics": {"accuracy": value,
                            "expected_calibration_error": ece}}

    # a: one finished run (0.95), two failed; b: three runs of 0.90.
    runs = [run("a", 0, 0.95), run("a", 1), run("a", 2),
            *(run("b", s, 0.9) for s in range(3))]
    result = kft.StrategyComparison(runs, ["a", "b"], [0, 1, 2], "accuracy")
    assert result.best == "b"
    # NaN values: not testable, and no effect on the others' Holm p.
    runs = [run(s, seed, 0.9, ece) for s, vals in (
        ("a", [0.10, 0.11, 0.12]), ("b", [math.nan, 0.2, 0.3]),
        ("c", [0.30, 0.32, 0.35])) for seed, ece in enumerate(vals)]
    holm = {}
    for order in (["a", "b", "c"], ["a", "c", "b"]):
        rows = kft.StrategyComparison(
            runs, order, [0, 1, 2], "expected_calibration_error").table()
        holm[tuple(order)] = {r["strategy"]: r["p_holm"] for r in rows}
    assert holm[("a", "b", "c")] == holm[("a", "c", "b")]
    assert holm[("a", "b", "c")]["b"] is None


def test_each_run_measures_its_peak_from_a_trimmed_heap(data, monkeypatch):
    # Memory an earlier run freed stayed in the process (kft keeps it for
    # reuse) and went uncounted when a later run reused it: a strategy's
    # peak depended on the order of `strategies`, by up to 100x.
    from kft.evaluation import compare

    events = []
    real_enter = compare._PeakMemory.__enter__

    def enter(self):
        events.append("measure")
        return real_enter(self)

    monkeypatch.setattr(compare._PeakMemory, "__enter__", enter)
    monkeypatch.setattr(compare._compat, "malloc_trim_function",
                        lambda: lambda pad: events.append("trim"))
    kft.compare_strategies(
        lambda seed: _build(), data.target_train, data.target_val,
        data.target_test, strategies=[untrained], seeds=[0, 1], epochs=2,
        head_epochs=1)
    assert events == ["trim", "measure"] * 2


def _record(strategy, seed, value=None, **extra):
    """A hand-made run record (`error` when `value` is None)."""
    if value is None:
        return {"strategy": strategy, "seed": seed, "error": "E: diverged"}
    return {"strategy": strategy, "seed": seed,
            "metrics": {"accuracy": 0.9, **value}, **extra}


def test_expected_calibration_error_is_lower_is_better():
    # ECE is one of the report's metrics: the best strategy is the best
    # calibrated one (smallest ECE), and the others are compared with it.
    ece = "expected_calibration_error"
    runs = [_record("a", i, {ece: e}) for i, e in enumerate([0.02, 0.03,
                                                             0.025])]
    runs += [_record("b", i, {ece: e}) for i, e in enumerate([0.20, 0.25,
                                                             0.22])]
    result = kft.StrategyComparison(runs, ["b", "a"], [0, 1, 2], ece)
    assert result.lower_is_better and result.best == "a"
    row = {r["strategy"]: r for r in result.table()}["b"]
    # b minus the best, seed by seed: positive (b is worse calibrated).
    assert row["difference"] == pytest.approx(
        np.mean([0.20, 0.25, 0.22]) - np.mean([0.02, 0.03, 0.025]))
    assert "**a** (best)" in result.to_markdown()


def test_holm_p_values_keep_the_order_of_the_raw_p_values():
    # b's raw p < c's raw p < 2 * b's: Holm multiplies b's by 2 and c's
    # by 1, then keeps them monotone, so c's adjusted p is 2 * p_b, not its
    # raw p_c (which would make c "significant" while b is not).
    a = [0.914, 0.877, 0.854, 0.852]
    b = [0.885, 0.863, 0.806, 0.797]
    c = [0.898, 0.845, 0.827, 0.796]
    runs = [_record(s, i, {"accuracy": v})
            for s, values in (("a", a), ("b", b), ("c", c))
            for i, v in enumerate(values)]
    rows = {r["strategy"]: r for r in kft.StrategyComparison(
        runs, ["a", "b", "c"], [0, 1, 2, 3], "accuracy").table()}
    p_b, p_c = stats.ttest_rel(b, a).pvalue, stats.ttest_rel(c, a).pvalue
    assert p_b < p_c < 2 * p_b  # the case the monotone step is for
    assert rows["b"]["p"] == pytest.approx(p_b)
    assert rows["c"]["p"] == pytest.approx(p_c)
    assert rows["b"]["p_holm"] == pytest.approx(2 * p_b)
    assert rows["c"]["p_holm"] == pytest.approx(max(2 * p_b, p_c))
    assert rows["c"]["p_holm"] >= rows["b"]["p_holm"]
    assert rows["a"]["p_holm"] is None


def test_a_failed_run_pairs_the_others_by_seed():
    # a failed on seed 0, b on seed 2: the only seed both finished is 1,
    # so b's difference is 0.89 - 0.90, not b's seed-0 value against a's
    # seed-1 value.
    runs = [_record("a", 0), _record("a", 1, {"accuracy": 0.90}),
            _record("a", 2, {"accuracy": 0.95}),
            _record("b", 0, {"accuracy": 0.50}),
            _record("b", 1, {"accuracy": 0.89}), _record("b", 2)]
    result = kft.StrategyComparison(runs, ["a", "b"], [0, 1, 2], "accuracy")
    assert result.best == "a"
    row = {r["strategy"]: r for r in result.table()}["b"]
    assert row["difference"] == pytest.approx(-0.01)
    assert row["n"] == 2 and row["failed"] == 1
    assert row["p"] is None  # one pair: not testable


def test_costs_are_the_median_time_the_largest_memory_the_mean_params():
    # `table` documents the median `train_time` (the first run pays for
    # XLA compilation), the largest `peak_memory_mib` and the mean
    # `trainable_params`; the numbers are chosen so that mean, median and
    # max all differ.
    runs = [_record("a", i, {"accuracy": v}, train_time=t,
                    peak_memory_mib=m, trainable_params=p)
            for i, (v, t, m, p) in enumerate([(0.9, 10.0, 100.0, 10),
                                              (0.8, 1.0, 300.0, 10),
                                              (0.7, 2.0, 200.0, 40)])]
    row = kft.StrategyComparison(runs, ["a"], [0, 1, 2],
                                 "accuracy").table()[0]
    assert row["train_time"] == pytest.approx(2.0)
    assert row["peak_memory_mib"] == pytest.approx(300.0)
    assert row["trainable_params"] == pytest.approx(20.0)


def test_report_of_a_seed_that_did_not_finish_names_the_seeds_that_did():
    # Seed 0 failed and seed 5 never ran: both are refused, naming the
    # seeds with a report (a failed run has none to give; seed 1's stands
    # in for one, never read here).
    runs = [_record("a", 0), _record("a", 1, {"accuracy": 0.9},
                                     report={"accuracy": 0.9})]
    result = kft.StrategyComparison(runs, ["a"], [0, 1], "accuracy")
    for seed in (0, 5):
        with pytest.raises(ValueError, match=rf"Argument `seed` must be a "
                           rf"seed whose 'a' run finished with a report, "
                           rf"one of \[1\]\. Received: seed={seed}"):
            result.report("a", seed)


def test_report_of_a_run_without_a_report_lists_no_seed():
    # A run recorded by hand without a report: its seed was listed as one
    # to choose while refused.
    runs = [_record("a", 0, {"accuracy": 0.9})]
    result = kft.StrategyComparison(runs, ["a"], [0], "accuracy")
    with pytest.raises(ValueError, match=r"one of \[\]\. Received: seed=0"):
        result.report("a", 0)
