"""`EvaluationReport` as text: `str(report)` and `report.to_markdown()`."""

import json
import re
import unicodedata
import uuid

import numpy as np

from kft._validation import check_int


def json_text(value, **kwargs):
    """`json.dumps(value, indent=1, **kwargs)` with each list of numbers on
    one line: a confusion matrix of 1,000 classes, a number per line,
    took 6 MB and a million lines.

    >>> print(json_text({"matrix": [[1, 0], [2, 3]], "names": ["a"]}))
    {
     "matrix": [
      [1, 0],
      [2, 3]
     ],
     "names": [
      "a"
     ]
    }
    """
    rows = []
    # Strings no value holds stand in for the rows while the rest is
    # indented, then each is written back compact.
    token = f"@kft-row-{uuid.uuid4().hex}:"

    def compact(item):
        if isinstance(item, dict):
            return {key: compact(v) for key, v in item.items()}
        if isinstance(item, (list, tuple)):
            if item and all(isinstance(v, (int, float)) for v in item):
                rows.append(json.dumps(list(item), **kwargs))
                return f"{token}{len(rows) - 1}"
            return [compact(v) for v in item]
        return item

    text = json.dumps(compact(value), indent=1, **kwargs)
    return re.sub(re.escape(json.dumps(token)[:-1]) + r'(\d+)"',
                  lambda match: rows[int(match.group(1))], text)


def markdown_cell(text):
    """`text` safe inside a Markdown table cell: a `|` would start a new
    cell and a line break (`\\n`, `\\r`, any of `str.splitlines`') end
    the row; other control characters are written escaped (a class name
    from a model of someone else's holding terminal escape sequences
    cleared the screen of `kft eval`).

    >>> markdown_cell("a|b\\nc\\x1b[2J")
    'a\\\\|b c\\\\x1b[2J'
    """
    return text_cell(text).replace("|", "\\|")


def text_cell(text):
    """`text` on one line, its control characters written escaped."""
    return "".join(
        repr(char)[1:-1] if unicodedata.category(char) == "Cc" else char
        for char in " ".join(str(text).splitlines()))


def every_class(k, num_classes):
    """What a top-k accuracy over every class is: 1 by definition."""
    return (f" (k covers all {num_classes} classes: 1 by definition)"
            if k >= num_classes else "")


def _summary_rows(report):
    return [
        ("examples", f"{report.num_examples}"),
        ("accuracy", f"{report.accuracy:.4f}"),
        ("balanced accuracy", f"{report.balanced_accuracy:.4f}"),
        (f"top-{report.top_k} accuracy", f"{report.top_k_accuracy:.4f}"
         + every_class(report.top_k, len(report.class_names))),
        ("macro precision / recall / F1",
         " / ".join(f"{report.macro[k]:.4f}"
                    for k in ("precision", "recall", "f1"))),
        ("weighted precision / recall / F1",
         " / ".join(f"{report.weighted[k]:.4f}"
                    for k in ("precision", "recall", "f1"))),
        (f"expected calibration error ({len(report.bin_count)} bins)",
         f"{report.expected_calibration_error:.4f}"),
    ]


def _class_order(report, max_classes):
    """All classes in index order, or the `max_classes` of lowest F1."""
    order = np.arange(report.num_classes)
    if max_classes is not None and max_classes < report.num_classes:
        order = np.argsort(report.f1, kind="stable")[:max_classes]
    return order


def _class_row(report, i, cell=text_cell):
    flag = " (low support)" if report.class_names[i] in \
        report.low_support else ""
    return (f"{cell(report.class_names[i])}{flag}",
            f"{report.precision[i]:.3f}",
            f"{report.recall[i]:.3f}", f"{report.f1[i]:.3f}",
            f"{int(report.support[i])}")


def markdown(report, max_classes=None):
    if max_classes is not None:
        max_classes = check_int("max_classes", max_classes, min_value=1)
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in
              _summary_rows(report)]
    order = _class_order(report, max_classes)
    lines += ["", ("Per class" if len(order) == report.num_classes else
                   f"The {len(order)} classes of lowest F1 (of "
                   f"{report.num_classes})") + ":", "",
              "| class | precision | recall | F1 | support |",
              "| --- | ---: | ---: | ---: | ---: |"]
    lines += ["| " + " | ".join(_class_row(report, i, markdown_cell)) + " |"
              for i in order]
    if report.mistakes:
        lines += ["", "Most confident mistakes:", "",
                  "| index | true | predicted | confidence |",
                  "| ---: | --- | --- | ---: |"]
        names = [markdown_cell(name) for name in report.class_names]
        lines += [f"| {m.index} | {names[m.true]} | "
                  f"{names[m.predicted]} | {m.confidence:.3f} |"
                  for m in report.mistakes]
    if report.notes:
        lines += [""] + [f"- {text_cell(note)}" for note in report.notes]
    return "\n".join(lines)


def text(report, max_classes=20):
    lines = [f"{name}: {value}" for name, value in _summary_rows(report)]
    order = _class_order(report, max_classes)
    width = max(12, *(len(_class_row(report, i)[0]) for i in order))
    header = ("per class" if len(order) == report.num_classes else
              f"the {len(order)} classes of lowest F1 (of "
              f"{report.num_classes})")
    lines.append(f"{header}: precision recall f1 support")
    for i in order:
        name, p, r, f, s = _class_row(report, i)
        lines.append(f"  {name:>{width}}  {p}  {r}  {f}  {s}")
    if report.mistakes:
        names = [text_cell(name) for name in report.class_names]
        shown = ", ".join(
            f"#{m.index} {names[m.true]}->{names[m.predicted]} "
            f"({m.confidence:.2f})" for m in report.mistakes[:5])
        lines.append(f"most confident mistakes: {shown}")
    lines += [f"note: {text_cell(note)}" for note in report.notes]
    return "\n".join(lines)
