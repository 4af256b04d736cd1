"""The README's API as it is: every `kft.` name it mentions exists, every
call in its Python blocks binds to the function's signature, and every
`kft` command line in it parses (documented choice values included).

The blocks are fragments of a user's script (no data, downloads), so they
are checked against the signatures rather than run; the docstring examples
of `kft/` run in the suite (`--doctest-modules`).
"""

import argparse
import ast
import importlib
import inspect
import pathlib
import re
import shlex

import pytest

import kft
from kft import cli

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()


def _blocks(language):
    return [(TEXT[:match.start()].count("\n") + 2, match.group(1))
            for match in re.finditer(rf"^```{language}\n(.*?)^```", TEXT,
                                     re.M | re.S)]


def _resolve(dotted):
    """The object a dotted `kft.` name names, importing submodules."""
    parts = dotted.split(".")
    obj = kft
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:i + 1]))
    return obj


def _dotted(node):
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id] + names[::-1])
    return None


def test_every_kft_name_in_the_readme_exists():
    names = sorted({name.rstrip(".") for name in
                    re.findall(r"\bkft\.[A-Za-z_][A-Za-z_0-9.]*", TEXT)})
    assert len(names) > 50
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (AttributeError, ImportError):
            missing.append(name)
    assert not missing, f"README names that kft does not have: {missing}"


# Class names the README quotes from PyTorch, torchvision, ONNX and Keras'
# progress bar, not objects of kft or Keras.
FOREIGN_NAMES = {"ColorJitter", "Conv", "MaxPool", "OneCycleLR", "Unknown"}


def test_every_class_name_in_the_readme_exists():
    # Quoted without `kft.` (`TrainRunResult.best_epoch`): a rename left
    # the README naming a class that no longer existed.
    names = set(re.findall(
        r"`([A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*)(?:[.(][^`]*)?`", TEXT))
    assert len(names) > 30
    import builtins
    import pkgutil

    import keras

    spaces = [builtins, keras.layers, keras.callbacks, keras.optimizers,
              keras.optimizers.schedules, keras.distribution,
              keras.mixed_precision]
    spaces += [importlib.import_module(m.name) for m in
               pkgutil.walk_packages(kft.__path__, "kft.")
               if not m.name.endswith("__main__")]
    missing = sorted(name for name in names - FOREIGN_NAMES
                     if not any(hasattr(space, name) for space in spaces))
    assert not missing, f"README names no module here has: {missing}"


PYTHON_BLOCKS = _blocks("python")


@pytest.mark.parametrize("line, code", PYTHON_BLOCKS,
                         ids=[f"line{line}" for line, _ in PYTHON_BLOCKS])
def test_readme_calls_bind_to_kft_signatures(line, code):
    tree = ast.parse(code)
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None or not name.startswith("kft."):
            continue
        target = _resolve(name)
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords):
            continue
        signature = inspect.signature(target)
        try:
            signature.bind(*[None] * len(node.args),
                           **{k.arg: None for k in node.keywords})
        except TypeError as error:
            # Required arguments the fragment leaves out are not its
            # point; unknown keywords and too many positionals are.
            if "missing" not in str(error):
                raise AssertionError(
                    f"README line {line + node.lineno - 1}: {name}: "
                    f"{error}") from None
        checked += 1
    assert checked, f"README block at line {line} calls nothing of kft"


def _command_lines():
    lines = []
    for line, code in _blocks("bash"):
        for offset, text in enumerate(code.replace("\\\n", " ").splitlines()):
            text = text.split("#")[0].strip()
            for part in text.split("&&"):
                words = shlex.split(part)
                if words and words[0].split("/")[-1] == "kft":
                    lines.append((line + offset, words[1:]))
    return lines


COMMANDS = _command_lines()


def _subparsers():
    parser, _ = cli.build_parser()
    action = next(a for a in parser._actions
                  if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def test_every_kft_command_line_in_the_readme_parses():
    assert len(COMMANDS) >= 10
    parser, subparsers = _subparsers()
    for line, words in COMMANDS:
        if any("[" in w or "|" in w for w in words):
            _check_synopsis(line, words, subparsers)
            continue
        try:
            parser.parse_args(words)
        except SystemExit:
            raise AssertionError(
                f"README line {line}: `kft {shlex.join(words)}` does not "
                "parse") from None


def _check_synopsis(line, words, subparsers):
    """A synopsis line, `kft train DIR [--flag A|B] ...`: its flags exist
    and its listed values are the flag's choices (or values it takes)."""
    command = subparsers[words[0]]
    options = {s: a for a in command._actions for s in a.option_strings}
    words = [w.strip("[]") for w in words[1:]]
    for i, word in enumerate(words):
        for flag in word.split("|"):
            if not flag.startswith("--"):
                continue
            assert flag in options, (f"README line {line}: {command.prog}"
                                     f" has no {flag}")
            value = words[i + 1] if i + 1 < len(words) else ""
            action = options[flag]
            if "|" not in value or not action.option_strings:
                continue
            for choice in value.split("|"):
                if choice.isupper() or "/" in choice:
                    continue   # a placeholder (FILE, RATE, N)
                if action.choices is not None:
                    assert choice in action.choices, (
                        f"README line {line}: {flag} {choice!r} is not one of "
                        f"{sorted(action.choices)}")
                elif action.type is not None:
                    action.type(choice)


def test_the_readme_lists_every_kft_command():
    _, subparsers = _subparsers()
    documented = {words[0] for _, words in COMMANDS if words}
    assert set(subparsers) <= documented, set(subparsers) - documented
