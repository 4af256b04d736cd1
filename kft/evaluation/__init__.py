"""Evaluating a classifier: reports, metrics and plots.

- `evaluate` / `EvaluationReport` (`report.py`, `build.py`): every metric
  on one labelled set, streamed from a model and data, or built from
  labels and scores with `report_from_predictions`.
- `metrics`: the metric functions on numpy arrays.
- `plots`: confusion matrix, learning curves, per-class F1, reliability
  diagram, worst mistakes (matplotlib, an optional extra).
- `classification_report` / `evaluate_classifier`: the short report
  (accuracy, macro P/R/F1, confusion matrix).
"""

from kft.evaluation import metrics
from kft.evaluation import plots
from kft.evaluation.build import evaluate
from kft.evaluation.build import report_from_predictions
from kft.evaluation.classification import ClassificationReport
from kft.evaluation.classification import classification_report
from kft.evaluation.classification import evaluate_classifier
from kft.evaluation.report import EvaluationReport
from kft.evaluation.report import Mistake

__all__ = [
    "ClassificationReport",
    "EvaluationReport",
    "Mistake",
    "classification_report",
    "evaluate",
    "evaluate_classifier",
    "metrics",
    "plots",
    "report_from_predictions",
]
from kft.evaluation.compare import ComparisonInterrupted, StrategyComparison, compare_strategies  # noqa: E402,F401
