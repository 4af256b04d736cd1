"""`StrategyComparison`: runs of `kft.compare_strategies`, and their stats.

Per strategy: mean, sample standard deviation and a t-distribution
confidence interval of the mean over seeds; against the best strategy, a
paired t-test over the seeds both ran with. Saved to JSON and loaded back
for new tables and charts without training again.
"""

import dataclasses
import json
import math

import numpy as np

from kft._plotting import finish
from kft._plotting import new_figure
from kft._plotting import wrap_title
from kft._validation import check_number
from kft._validation import fail_argument
from kft._writing import write_file
from kft.evaluation._format import json_text
from kft.evaluation._format import markdown_cell

_FORMAT = "kft.StrategyComparison/1"
# Metrics where lower is better; every other report metric is a score.
_LOWER_IS_BETTER = ("loss", "ece", "expected_calibration_error", "error")


def mean_interval(values, confidence=0.95):
    """`(mean, std, low, high)`: the sample std (n - 1) and the two-sided
    t interval of the mean; std and interval are `None` for one value.

    >>> mean, std, low, high = mean_interval([0.8, 0.9, 1.0])
    >>> round(mean, 3), round(std, 3), round(low, 3), round(high, 3)
    (0.9, 0.1, 0.652, 1.148)
    """
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if values.size < 2:
        return mean, None, None, None
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, values.size - 1)
                 * std / math.sqrt(values.size))
    return mean, std, mean - half, mean + half


def paired_t_test(a, b):
    """`(t, two-sided p)` of the paired t-test of `a - b`; `(None, None)`
    for fewer than two pairs or a value that is not finite.

    Equal differences give no variance: p is 1 (t 0) when they are all 0;
    equal differences other than 0 are not testable, `(None, None)`: the
    t statistic is infinite, and a p of 0 would call two seeds that moved
    one test image each a certain difference.

    >>> t, p = paired_t_test([0.9, 0.8, 0.85], [0.7, 0.75, 0.7])
    >>> round(t, 3), round(p, 4)
    (3.024, 0.0942)
    >>> paired_t_test([0.8, 0.9, 0.7], [0.7, 0.8, 0.6])  # +0.1 each time
    (None, None)
    """
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size < 2 or not np.isfinite(d).all():
        return None, None
    sd = float(d.std(ddof=1))
    # Equal up to rounding: 0.8 - 0.7 and 0.9 - 0.8 differ in the last bit,
    # which made t 2.7e15 and p 1e-31 for one test image on every seed.
    if sd <= 1e-9 * float(np.abs(d).max()):
        return (0.0, 1.0) if not d.any() else (None, None)
    t = float(d.mean() / (sd / math.sqrt(d.size)))
    return t, float(2.0 * stats.t.sf(abs(t), d.size - 1))


def finite_or_none(value):
    """`value` with every non-finite float as `None` (JSON has neither
    NaN nor infinity)."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _summary_of(runs, key, how):
    values = [r[key] for r in runs if r.get(key) is not None]
    return float(how(values)) if values else None


# How the table sums up each run's cost: the first run of a strategy pays
# for XLA compilation, so the median time is the typical one; memory is a
# peak, so the largest.
_COSTS = (("trainable_params", np.mean), ("train_time", np.median),
          ("peak_memory_mib", np.max))


@dataclasses.dataclass
class StrategyComparison:
    """What `kft.compare_strategies` measured, one record per run.

    Attributes:
        runs: One dict per strategy and seed: `strategy`, `seed`,
            `metrics` (test metrics from the report), `trainable_params`,
            `train_time` (seconds, XLA compilation included: every run
            builds a fresh model), `peak_memory_mib` (peak RSS growth
            while training, sampled; see `kft.compare_strategies`),
            `time_budget_spent`, `best_epoch`, `histories` (the
            `History.history` dict of each phase) and `report` (the
            `kft.EvaluationReport` on the test data, as a dict: `report`
            returns it as a report). A run that raised has `strategy`,
            `seed` and `error` (its type and message) instead:
            statistics leave it out, `failures` lists it.
        strategies: Strategy names, in the order given.
        seeds: The seeds, in run order.
        metric: The compared test metric.
        settings: The shared budget and `fine_tune` arguments; after a
            Ctrl-C, `interrupted` says after how many runs.

    Example:
    >>> from kft.evaluation.comparison import StrategyComparison
    >>> runs = [{"strategy": s, "seed": seed, "metrics": {"accuracy": a},
    ...          "trainable_params": 10, "train_time": 1.0}
    ...         for s, seed, a in [("full", 0, 0.9), ("full", 1, 0.8),
    ...                            ("partial", 0, 0.7), ("partial", 1, 0.6)]]
    >>> result = StrategyComparison(runs, ["full", "partial"], [0, 1],
    ...                             "accuracy")
    >>> result.best, result.values("partial").tolist()
    ('full', [0.7, 0.6])
    >>> round(result.table()[1]["difference"], 3)
    -0.2
    """

    runs: list
    strategies: list
    seeds: list
    metric: str
    settings: dict = dataclasses.field(default_factory=dict)

    @property
    def lower_is_better(self):
        return self.metric.lower() in _LOWER_IS_BETTER

    def _runs_of(self, strategy):
        if strategy not in self.strategies:
            fail_argument("strategy", f"one of {tuple(self.strategies)}",
                          strategy)
        by_seed = {r["seed"]: r for r in self.runs
                   if r["strategy"] == strategy and "error" not in r}
        return [by_seed[s] for s in self.seeds if s in by_seed]

    def failures(self):
        """The runs that raised: dicts of `strategy`, `seed`, `error`."""
        return [r for r in self.runs if "error" in r]

    def values(self, strategy, metric=None):
        """Per-seed test values of `strategy`, in `seeds` order.

        Raises:
            ValueError: `metric` was not recorded for every run of
                `strategy` (the recorded metrics are listed).
        """
        metric = metric or self.metric
        runs = self._runs_of(strategy)
        if any(metric not in r["metrics"] for r in runs):
            recorded = sorted({k for r in self.runs for k in r["metrics"]})
            fail_argument("metric", f"a metric recorded for every run of "
                          f"{strategy!r}; recorded: {recorded}", metric)
        return np.array([r["metrics"][metric] for r in runs], dtype=float)

    def report(self, strategy, seed):
        """The `kft.EvaluationReport` of one run on the test data."""
        from kft.evaluation.report import EvaluationReport

        runs = [r for r in self._runs_of(strategy) if r.get("report")]
        for run in runs:
            if run["seed"] == seed:
                return EvaluationReport.from_dict(run["report"])
        # The seeds with a report (a run recorded without one, by hand,
        # was listed while refused; a failed run has none).
        fail_argument("seed", f"a seed whose {strategy!r} run finished with "
                      f"a report, one of {[r['seed'] for r in runs]}", seed)

    @property
    def best(self):
        """The strategy with the best mean `metric` among those with the
        most finished runs (a strategy whose runs raised is not picked
        over one that finished on more seeds) and finite values, or `None`
        when none has one."""
        means, finished = {}, {}
        for strategy in self.strategies:
            values = self.values(strategy)
            if values.size and np.isfinite(values).all():
                means[strategy] = values.mean()
                finished[strategy] = values.size
        if not means:
            return None
        most = max(finished.values())
        means = {s: m for s, m in means.items() if finished[s] == most}
        pick = min if self.lower_is_better else max
        return pick(means, key=means.get)

    def table(self, confidence=0.95):
        """One dict per strategy: `n` (runs that finished), `failed` (runs
        that raised), `mean`, `std`, `ci_low`, `ci_high`,
        `difference` from the best (paired, same seeds), paired `t` and
        `p`, `p_holm` (Holm-adjusted over the strategies tested), the mean
        `trainable_params`, the median `train_time` (the first run of a
        strategy pays for compilation) and the largest `peak_memory_mib`.

        The interval is the t interval of the mean over seeds: it says how
        the mean would vary with other seeds on this data split, not with
        other data, and with few seeds it can pass 0 or 1. p-values are
        two-sided; `p_holm` corrects them for testing several strategies
        against the same best one."""
        confidence = check_number("confidence", confidence, low=0.0,
                                  high=1.0, low_open=True, high_open=True)
        best = self.best
        rows = []
        failed = [r["strategy"] for r in self.failures()]
        for strategy in self.strategies:
            runs = self._runs_of(strategy)
            values = self.values(strategy)
            mean, std, low, high = (mean_interval(values, confidence)
                                    if values.size else (None,) * 4)
            row = {"strategy": strategy, "n": len(values),
                   "failed": failed.count(strategy), "mean": mean,
                   "std": std, "ci_low": low, "ci_high": high,
                   "difference": 0.0 if strategy == best else None,
                   "t": None, "p": None, "p_holm": None}
            if best is not None and strategy != best and values.size:
                seeds = [r["seed"] for r in runs]
                ref = {r["seed"]: r["metrics"][self.metric]
                       for r in self._runs_of(best)}
                paired = [s for s in seeds if s in ref]
                if paired:  # seeds both finished
                    mine = values[[seeds.index(s) for s in paired]]
                    theirs = [ref[s] for s in paired]
                    row["difference"] = float(np.mean(mine - theirs))
                    row["t"], row["p"] = paired_t_test(mine, theirs)
            for key, how in _COSTS:
                row[key] = _summary_of(runs, key, how)
            rows.append(row)
        _holm(rows)
        return rows

    def to_markdown(self, confidence=0.95):
        """The table as markdown, best strategy marked."""
        level = f"{confidence:.0%}"
        lines = [
            f"| strategy | seeds | {self.metric} mean | std | {level} CI | "
            "vs best (paired) | p (t-test) | p (Holm) | trainable params | "
            "train time (s, median) | peak RSS growth (MiB, max) |",
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        best = self.best
        for r in self.table(confidence):
            name = markdown_cell(r["strategy"])
            if r["strategy"] == best:
                name = f"**{name}** (best)"
            ci = ("n/a" if r["ci_low"] is None
                  else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
            seeds = str(r["n"]) + (f" ({r['failed']} failed)"
                                   if r["failed"] else "")
            lines.append(
                f"| {name} | {seeds} | {_num(r['mean'])} | {_num(r['std'])} |"
                f" {ci} | {'' if r['strategy'] == best else _signed(r)} | "
                f"{_p(r['p'])} | {_p(r['p_holm'])} | "
                f"{_num(r['trainable_params'], ',.0f')} | "
                f"{_num(r['train_time'], '.1f')} | "
                f"{_num(r['peak_memory_mib'], '.0f')} |")
        failures = self.failures()
        if failures:
            lines += ["", f"{len(failures)} run(s) raised (left out of the "
                      "statistics):", ""]
            lines += [f"- {r['strategy']}, seed {r['seed']}: {r['error']}"
                      for r in failures]
        if (self.settings or {}).get("interrupted"):
            lines += ["", f"Interrupted {self.settings['interrupted']}: "
                      "the runs that finished."]
        return "\n".join(lines)

    def __str__(self):
        return self.to_markdown()

    def to_dict(self):
        """A JSON-ready dict; `from_dict` reads it back."""
        return finite_or_none({
            "format": _FORMAT, "metric": self.metric,
            "strategies": list(self.strategies), "seeds": list(self.seeds),
            "settings": self.settings, "runs": self.runs})

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            fail_argument("data", f"a dict saved by StrategyComparison "
                          f"(format {_FORMAT!r})",
                          data.get("format") if isinstance(data, dict)
                          else type(data).__name__)
        return cls(runs=data["runs"], strategies=data["strategies"],
                   seeds=data["seeds"], metric=data["metric"],
                   settings=data.get("settings", {}))

    def to_json(self, path=None):
        """The JSON text; also written to `path` when given."""
        text = json_text(self.to_dict(), allow_nan=False)
        if path is not None:
            write_file(path, text)
        return text

    def save(self, path):
        """Writes the JSON to `path` (its folder made if missing);
        `StrategyComparison.load` reads it. Returns nothing: a notebook
        cell ending in `save` echoed the whole text."""
        self.to_json(path)

    def __repr__(self):
        # The runs' histories and reports ran to megabytes.
        failed = len(self.failures())
        try:
            best = f", best={self.best!r}"
        except ValueError:  # a metric some run lacks: repr must not raise
            best = ""
        return (f"StrategyComparison(metric={self.metric!r}, strategies="
                f"{list(self.strategies)!r}, seeds={list(self.seeds)!r}, "
                f"runs={len(self.runs)}"
                + (f" ({failed} failed)" if failed else "") + best + ")")

    def _repr_markdown_(self):  # a notebook shows the table
        return self.to_markdown()

    @classmethod
    def load(cls, path):
        """Reads a comparison saved with `save` / `to_json(path)`."""
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def plot(self, path=None, *, confidence=0.95, metric=None):
        """Bars of the mean with confidence-interval error bars, and each
        seed's value as a point; the best strategy's bar is darker.

        Returns:
            The matplotlib Figure (saved to `path` when given).

        Raises:
            ValueError: `metric` was not recorded (see `values`).
        """
        metric = metric or self.metric
        view = dataclasses.replace(self, metric=metric)
        # Strategies whose every run raised have no bar.
        rows = [r for r in view.table(confidence) if r["mean"] is not None]
        fig, ax = new_figure(figsize=(1.3 * len(rows) + 2.5, 4.2))
        x = np.arange(len(rows))
        means = np.array([r["mean"] for r in rows])
        err = np.array([[0.0 if r["ci_low"] is None else r["mean"] - r[
            "ci_low"] for r in rows], [0.0 if r["ci_high"] is None else r[
                "ci_high"] - r["mean"] for r in rows]])
        best = view.best
        colors = ["tab:blue" if r["strategy"] == best else "lightsteelblue"
                  for r in rows]
        ax.bar(x, means, width=0.6, color=colors, yerr=err, capsize=5,
               ecolor="black", label=f"mean, {confidence:.0%} CI (t)")
        for i, r in enumerate(rows):
            values = view.values(r["strategy"])
            offsets = np.linspace(-0.15, 0.15, len(values)) if len(
                values) > 1 else np.zeros(1)
            ax.plot(x[i] + offsets, values, "o", color="black", ms=4,
                    label="one seed" if i == 0 else None)
            if r["p_holm"] is not None:
                # The table's Holm-adjusted p: several strategies are
                # tested against the same best one.
                top = max(values.max(), r["ci_high"] or r["mean"])
                p = ("p<0.001" if r["p_holm"] < 0.001
                     else f"p={r['p_holm']:.3f}")
                ax.annotate(f"{r['difference']:+.3f}\n{p}",
                            (x[i], top), xytext=(0, 4),
                            textcoords="offset points", ha="center",
                            va="bottom", fontsize=7)
        ax.set_xticks(x, [r["strategy"] for r in rows],
                      rotation=20 if len(rows) > 4 else 0, ha="right"
                      if len(rows) > 4 else "center")
        ax.set_ylabel(f"test {metric}")
        wrap_title(ax, f"{len(self.seeds)} seeds per strategy; dark: "
                   "best mean; above a bar: mean paired difference from "
                   "the best and its t-test p (Holm)", fontsize=9)
        ax.margins(y=0.12)
        ax.legend(loc="best", fontsize=8)
        return finish(fig, path)


def _holm(rows):
    """Holm-adjusted p-values over the rows that have one, in place."""
    tested = sorted((r for r in rows if r["p"] is not None),
                    key=lambda r: r["p"])
    running = 0.0
    for i, r in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - i) * r["p"]))
        r["p_holm"] = running


def _num(value, spec=".3f"):
    return "n/a" if value is None else format(value, spec)


def _p(value):
    return "n/a" if value is None else (
        "<0.001" if value < 0.001 else f"{value:.3f}")


def _signed(row):
    return ("n/a" if row["difference"] is None
            else f"{row['difference']:+.3f}")
