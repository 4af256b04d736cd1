"""`kft train` / `eval` / `predict` / `export` / `lr-find` / `compare` on a
tiny generated image folder.

Most commands run in-process (`kft.cli.main`); subprocesses only where
the process boundary is the point (SIGKILL and resume, the exit status of
the installed command).
"""

import errno
import json
import math
import os
import pathlib
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

import kft
from kft import cli
from kft.runs.config import TrainConfig
from kft.runs.resolve import monitor_change
from kft.runs.resolve import resolve_config

TINY = ["--backbone", "simple_cnn", "--weights", "none", "--image-size",
        "16", "--batch-size", "8", "--head-epochs", "1", "--augment", "none"]
# The report's plots cost seconds per run: only the `run` fixture makes them.
FAST = [*TINY, "--no-plots"]


def _write_folder(root, classes=3, per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = os.path.join(root, f"class{c}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            pixels = np.zeros((16, 16, 3), np.uint8)
            pixels[..., c % 3] = 150
            pixels += rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
    return str(root)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("images"))


# The files `run`'s `kft train` saved models to (names).
RUN_SAVES = []


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    import keras

    out = str(tmp_path_factory.mktemp("runs") / "partial")
    save = keras.Model.save

    def spy(model, filepath, *args, **kwargs):
        RUN_SAVES.append(os.path.basename(str(filepath)))
        return save(model, filepath, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.Model, "save", spy)
        code = cli.main(["train", folder, *TINY, "--strategy", "partial",
                         "--epochs", "1", "--out", out, "--quiet"])
    assert code == 0
    return out


def test_train_writes_the_run_folder(run, folder):
    names = set(os.listdir(run))
    assert {"config.toml", "environment.json", "run.json", "model.keras",
            "history.csv", "history.json", "evaluation.json",
            "evaluation.md", "summary.md", "learning_curves.png",
            "confusion_matrix.png"} <= names
    assert "checkpoints" not in names  # removed once complete
    # model.keras was saved beside, then moved over: a kill or a reader
    # during the save saw a truncated file (107 bytes, "corrupt").
    assert len(RUN_SAVES) == 1 and RUN_SAVES[0].startswith(".model.")
    assert RUN_SAVES[0].endswith(".tmp.keras")
    assert not [name for name in names if name.startswith(".")]
    with open(os.path.join(run, "config.toml"), "rb") as f:
        config = tomllib.load(f)
    assert config["backbone"] == "simple_cnn"
    assert config["image_size"] == 16 and config["strategy"] == "partial"
    assert config["val_split"] == 0.2  # resolved defaults are written
    with open(os.path.join(run, "run.json")) as f:
        info = json.load(f)
    assert info["status"] == "complete"
    assert info["class_names"] == ["class0", "class1", "class2"]
    with open(os.path.join(run, "history.json")) as f:
        history = json.load(f)
    assert [(row["epoch"], row["phase"]) for row in history] == [
        (1, 1), (2, 2)]
    with open(os.path.join(run, "environment.json")) as f:
        env = json.load(f)
    assert env["keras"] and env["jax"] and env["devices"]


def test_config_file_repeats_the_run_and_flags_override(run, folder,
                                                         tmp_path,
                                                         monkeypatch):
    # "~" in the file and in flags the shell leaves alone (`--out=~/x`)
    # is the home folder: a folder named "~" was made.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    os.symlink(folder, tmp_path / "photos")
    config = kft.runs.load_config(os.path.join(run, "config.toml"))
    assert config.data_dir == folder
    (tmp_path / "config.toml").write_text(
        config.replace(data_dir="~/photos").to_toml())
    code = cli.main(["train", "--config=~/config.toml",
                     "--strategy", "feature_extraction", "--out=~/again",
                     "--no-plots", "--json"])
    assert code == 0
    assert not os.path.exists("~")
    out = str(tmp_path / "again")
    assert kft.runs.load_config(os.path.join(out, "config.toml")
                                ).data_dir == str(tmp_path / "photos")
    config = kft.runs.load_config(os.path.join(out, "config.toml"))
    assert config.strategy == "feature_extraction"
    assert config.backbone == "simple_cnn" and config.image_size == 16
    with open(os.path.join(out, "history.json")) as f:
        # Feature extraction trains the head for head + fine-tuning epochs.
        assert [row["phase"] for row in json.load(f)] == [1, 1]


@pytest.mark.parametrize("strategy", ["gradual", "full", "auto"])
def test_each_strategy(strategy, folder, tmp_path, capsys, monkeypatch):
    # partial: the `run` fixture; feature_extraction: the --config test.
    from kft.training import fine_tune as module

    calls, models = [], []

    def recorded(*args, **kwargs):
        calls.append(kwargs)
        models.append(args[0])
        return real(*args, **kwargs)

    real = module.fine_tune
    monkeypatch.setattr(module, "fine_tune", recorded)
    out = str(tmp_path / strategy)
    extra = {"gradual": ["--epochs", "2", "--json"],
             # One-cycle needs a few steps: 2 epochs of 2 batches. MixUp
             # and CutMix (documented flags no run had used) train too.
             "full": ["--epochs", "2", "--schedule", "one_cycle", "--json",
                      "--mixup", "0.4", "--cutmix", "0.5",
                      "--label-smoothing", "0.1"],
             "auto": ["--epochs", "1", "--bn", "train", "--early-stopping",
                      "2", "--label-smoothing", "0.1"]}[strategy]
    assert cli.main(["train", folder, *FAST, "--strategy", strategy,
                     "--out", out, *extra]) == 0
    printed = capsys.readouterr().out
    with open(os.path.join(out, "history.json")) as f:
        history = json.load(f)
    if strategy == "auto":
        # 15 training images: the size rule says feature extraction, and
        # the run says why before training.
        assert ("strategy auto -> feature_extraction: 15 training images"
                in printed)
        assert f"Done: {out}" in printed and "best epoch" in printed
        assert calls[0]["strategy"] == "feature_extraction"
        # What the user set stays and reaches the run: auto's "frozen"
        # overwrote --bn train, --early-stopping was dropped, and so was
        # --label-smoothing without --mixup / --cutmix.
        assert calls[0]["bn"] == "train"
        assert calls[0]["early_stopping_patience"] == 2
        smoothed = models[0].batch_augment({
            "images": np.zeros((3, 16, 16, 3), "float32"),
            "labels": np.arange(3)})["labels"]
        np.testing.assert_allclose(smoothed, np.eye(3) * 0.9 + 0.1 / 3,
                                   rtol=1e-6)
        return
    summary = json.loads(printed.strip().splitlines()[-1])
    # From 0, as run.json (it counted from 1 under the same key).
    with open(os.path.join(out, "run.json")) as f:
        assert summary["best_epoch"] == json.load(f)["best_epoch"] >= 0
    assert summary["out"] == out
    assert summary["strategy"] == strategy == calls[0]["strategy"]
    if strategy == "gradual":
        assert [row.get("unfrozen_blocks") for row in history] == [
            None, 1, 2]
    else:
        assert calls[0]["schedule"] == "one_cycle"
        config = kft.runs.load_config(os.path.join(out, "config.toml"))
        assert config.schedule == "one_cycle"
        assert (config.mixup, config.cutmix) == (0.4, 0.5)
        mix = models[0].batch_augment.get_config()
        assert (mix["mixup_alpha"], mix["cutmix_alpha"],
                mix["label_smoothing"], mix["num_classes"]) == (
                    0.4, 0.5, 0.1, 3)


def test_strategy_auto_keeps_the_recipe_settings_given():
    # The recommendation fills in only what was left at its default: a
    # given --n-blocks (partial, 2,000 images) or --layer-decay (full,
    # 8,000) was overwritten by the recommended value.
    from types import SimpleNamespace

    from kft.runs.recipe import choose_strategy

    given = {"bn": "train", "n_blocks": 2, "layer_decay": 0.9}
    checked = set()
    for images in (2000, 8000):
        recommended = kft.recommend_strategy(
            num_images=images).fine_tune_kwargs()
        for field, value in given.items():
            if field not in recommended:
                continue
            assert recommended[field] != value  # or nothing is tested
            config, _ = choose_strategy(
                TrainConfig(strategy="auto", **{field: value}),
                SimpleNamespace(num_examples=images), lambda line: None)
            assert config.strategy == recommended["strategy"]
            assert getattr(config, field) == value, (images, field)
            checked.add(field)
    assert checked == set(given)


@pytest.mark.parametrize("lr, rates", [
    # `kft train --layer-decay`: the recipe line printed before training
    # lists each block's phase-2 rate (no run had printed it).
    (0.01, "at 0.01 (cosine), BatchNorm frozen; rate per block: stem "
           "0.000625, block1 0.00125, block2 0.0025, block3 0.005, head "
           "0.01; blocks: "),
    # The rate is found after this line is printed: the decay factors
    # were printed as rates ("head 1", while the head trained at 0.006).
    ("find", "at find (cosine), BatchNorm frozen; rate per block (x the "
             "found rate): stem 0.0625, block1 0.125, block2 0.25, block3 "
             "0.5, head 1; blocks: ")])
def test_the_recipe_line_gives_each_blocks_rate_under_layer_decay(lr,
                                                                   rates):
    from kft.runs.recipe import build_run_model
    from kft.runs.recipe import describe_recipe

    config = TrainConfig(backbone="simple_cnn", weights="none",
                         image_size=16, strategy="full", lr=lr,
                         layer_decay=0.5, epochs=2, head_epochs=1)
    text = describe_recipe(config, build_run_model(config, 3))
    assert f"then full (every block) 2 epoch(s) {rates}" in text


def test_every_recipe_setting_reaches_fine_tune():
    # `kft train` runs `kft.fine_tune(**fine_tune_kwargs(config))`: a
    # setting left out there was ignored (--early-stopping 2 trained every
    # epoch). fine_tune's arguments that a setting gives are found as the
    # CLI's messages name them (`early_stopping_patience`: --early-stopping).
    import dataclasses
    import inspect

    from kft.cli._checks import flag_names
    from kft.runs.config import STRATEGIES
    from kft.runs.recipe import fine_tune_kwargs

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    takes = {}
    for argument in inspect.signature(kft.fine_tune).parameters:
        flag = flag_names(f"`{argument}`")
        if flag.startswith("--") and flag[2:].replace("-", "_") in fields:
            takes[flag[2:].replace("-", "_")] = argument
    assert takes["early_stopping"] == "early_stopping_patience"
    # Each other than its default; a new setting fine_tune takes fails
    # here until it has a value.
    given = dict(n_blocks=2, head_epochs=4, epochs=7, head_lr=3e-3,
                 lr=3e-5, schedule="one_cycle", weight_decay=0.05,
                 layer_decay=0.8, unfreeze_every=2, bn="train",
                 monitor="val_accuracy", early_stopping=2, batch_size=5)
    assert set(takes) == {"strategy", *given}
    defaults = TrainConfig()
    assert all(value != getattr(defaults, field)
               for field, value in given.items())
    reached = set()
    for strategy in STRATEGIES:
        if strategy == "auto":  # a choice made before: no recipe of its own
            continue
        config = TrainConfig(strategy=strategy, **given)
        kwargs = fine_tune_kwargs(config)
        for field, argument in takes.items():
            if argument not in kwargs:  # phase 2's, which it does not read
                continue
            expected = getattr(config, field)
            if field == "head_epochs" and strategy == "feature_extraction":
                expected += config.epochs  # it has the head phase alone
            assert kwargs[argument] == expected, (strategy, field)
            reached.add(field)
    assert reached == set(takes)


def test_eval_matches_the_library(run, folder, capsys):
    assert cli.main(["eval", run, folder, "--no-plots", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    loaded = kft.load_run(run)
    data = kft.runs.load_eval_folder(folder, loaded.class_names,
                                     loaded.image_size)
    report = kft.evaluate(loaded.model, data,
                          class_names=loaded.class_names)
    assert printed["report"]["accuracy"] == pytest.approx(report.accuracy)
    assert printed["report"]["num_examples"] == 18
    # The default K is at most the classes: 5 on 3 classes added a note
    # that top-5 accuracy is 1, unasked.
    assert printed["report"]["top_k"] == len(loaded.class_names) == 3
    assert not [n for n in printed["report"]["notes"] if "top_k" in n]
    # --overwrite replaces the whole report: --no-plots left the earlier
    # report's plots beside the new one's numbers.
    out = printed["out"]
    for name in ("confusion_matrix.png", "reliability.png"):
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"old")
    assert cli.main(["eval", run, folder, "--no-plots", "--json",
                     "--overwrite"]) == 0
    assert not [n for n in os.listdir(out) if n.endswith(".png")]
    assert os.path.isfile(os.path.join(printed["out"], "evaluation.json"))


def test_eval_on_a_folder_without_some_classes(run, folder, tmp_path,
                                              capsys):
    # A test folder lacking class1 was refused as "not the model's
    # classes"; with class1 left empty, as "no readable images ... remove
    # the folders", which the first refusal then answered.
    import shutil

    part = tmp_path / "part"
    shutil.copytree(os.path.join(folder, "class2"), part / "class2")
    loaded = kft.load_run(run)
    expected = kft.evaluate(
        loaded.model, kft.runs.load_eval_folder(folder, loaded.class_names,
                                                loaded.image_size))
    for empty in (False, True):
        if empty:
            (part / "class1").mkdir()
        out = str(tmp_path / f"eval{int(empty)}")
        assert cli.main(["eval", run, str(part), "--no-plots", "--json",
                         "--out", out]) == 0
        report = json.loads(capsys.readouterr().out)["report"]
        assert report["num_examples"] == 6
        assert dict(zip(report["class_names"], report["support"])) == {
            "class0": 0, "class1": 0, "class2": 6}
    # Labelled in the model's order: class2's predictions are those of
    # class2's images in the whole folder.
    data = kft.runs.load_eval_folder(str(part), loaded.class_names,
                                     loaded.image_size)
    assert data.class_names == list(loaded.class_names)
    assert set(data.example_labels.tolist()) == {2}
    whole = expected.confusion_matrix[2]
    assert kft.evaluate(loaded.model, data).confusion_matrix[2].tolist() == (
        whole.tolist())
    (part / "dogs").mkdir()
    Image.new("RGB", (16, 16)).save(part / "dogs" / "a.png")
    code, err = _usage_error(["eval", run, str(part)], capsys)
    assert code == 2 and "['dogs']" in err


def _top1(results):
    return [(r["source"], r["indices"][0]) for r in results]


def test_predict_matches_the_library(run, folder, capsys):
    assert cli.main(["predict", run, folder, "--top-k", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    library = kft.predict(os.path.join(run, "model.keras"), folder, top_k=2)
    assert len(printed) == 18
    assert _top1(printed) == [(r.source, r.indices[0]) for r in library]
    assert {r["labels"][0] for r in printed} <= {"class0", "class1",
                                                 "class2"}
    # --top-k 2: two indices per image, naming its two labels.
    names = kft.load_run(run).class_names
    for r in printed:
        assert len(r["indices"]) == 2
        assert [names[i] for i in r["indices"]] == r["labels"]
    image = os.path.join(folder, "class1", "0.png")
    assert cli.main(["predict", run, image]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(image + "\t" + printed[6]["labels"][0] + " ")


def test_export_onnx_and_predict_from_it(run, folder, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    out = str(tmp_path / "model.onnx")
    assert cli.main(["export", run, "--format", "onnx", "--out", out,
                     "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == out
    assert printed["bytes"] == os.path.getsize(out) > 0
    assert cli.main(["predict", out, folder, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert _top1(printed) == [(r.source, r.indices[0])
                              for r in kft.predict(out, folder)]
    # The class names travel in the file's metadata.
    assert {r["labels"][0] for r in printed} <= {"class0", "class1",
                                                 "class2"}
    # ... and through a second export from an exported .keras file.
    keras_file = str(tmp_path / "inference.keras")
    assert cli.main(["export", run, "--format", "keras", "--out",
                     keras_file, "--json"]) == 0
    # (--batch 1: a static first dimension, in the graph and the
    # metadata.)
    again = str(tmp_path / "again.onnx")
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert cli.main(["export", keras_file, "--out", again, "--batch",
                         "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == (
        os.path.getsize(again))
    meta = kft.deploy.read_metadata(again)
    assert meta["class_names"] == ["class0", "class1", "class2"]
    assert meta["batch"] == 1
    import onnx

    graph = onnx.load(again).graph
    initialisers = {i.name for i in graph.initializer}
    (first,) = [i for i in graph.input if i.name not in initialisers]
    assert first.type.tensor_type.shape.dim[0].dim_value == 1
    # A file exported with probabilities has no logits to give: said by
    # the flag (it read "Argument `output`").
    probabilities = str(tmp_path / "probabilities.keras")
    assert cli.main(["export", run, "--format", "keras", "--output",
                     "probabilities", "--out", probabilities]) == 0
    code, err = _usage_error(["export", probabilities, "--output", "logits",
                              "--out", str(tmp_path / "l.onnx")], capsys)
    assert code == 2
    assert ("--output logits: " + repr(probabilities) + " ends in a softmax"
            ", so its logits cannot be recovered; pass --output "
            "probabilities") in err


def test_lr_find_suggests_rates_and_plots(folder, tmp_path, capsys,
                                         monkeypatch):
    plot = tmp_path / "lr.png"
    from kft.runs import lr

    found, find_rate = [], lr.find_rate

    def spy(*args, **kwargs):
        found.append(find_rate(*args, **kwargs))
        return found[-1]

    monkeypatch.setattr("kft.runs.lr.find_rate", spy)
    assert cli.main(["lr-find", folder, "--backbone", "simple_cnn",
                     "--weights", "none", "--image-size", "16",
                     "--batch-size", "8", "--augment", "none", "--steps",
                     "12", "--start", "1e-5", "--end", "1", "--plot",
                     str(plot), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["suggestions"] and 0 < printed["steps"] <= 12
    # The steps run and the plot written, as given.
    (_, result), = found
    assert printed["steps"] == len(result.learning_rates)
    if result.stop_reason is None:
        assert printed["steps"] == 12
    assert printed["plot"] == str(plot)
    # "minimum" is a tenth of a rate on the ramp: it may be below --start.
    assert all(0 < rate <= 1 for rate in printed["suggestions"].values())
    assert plot.stat().st_size > 0
    # The strategy refused was lr-find's default, which the user never
    # gave: the message says so.
    argv = ["lr-find", folder, "--backbone", "simple_cnn", "--weights",
            "none", "--n-blocks", "2"]
    code, err = _usage_error(argv, capsys)
    assert code == 2 and "full is kft lr-find's default --strategy" in err
    code, err = _usage_error(argv + ["--strategy", "full"], capsys)
    assert code == 2 and "default" not in err


def test_lr_find_after_the_head_phase_measures_a_fresh_optimizer(
        folder, capsys, recwarn, monkeypatch):
    # The head phase's stepped AdamW was re-targeted to the strategy's
    # set, with a warning about its step counter that did not apply.
    from kft.training import lr_find as module

    measured = []

    def spy(model, data, **kwargs):
        measured.append((model, data.num_examples,
                         [v.path for v in model.trainable_weights]))
        return real(model, data, **kwargs)

    real = module.lr_find
    monkeypatch.setattr(module, "lr_find", spy)
    assert cli.main(["lr-find", folder, "--backbone", "simple_cnn",
                     "--weights", "none", "--image-size", "16",
                     "--batch-size", "8", "--augment", "none", "--steps",
                     "10", "--phase", "fine_tune", "--strategy", "gradual",
                     "--head-epochs", "1", "--json"]) == 0
    assert not [w for w in recwarn if "step counter" in str(w.message)]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])[
        "suggestions"]
    # Gradual's first stage (the head and the top block), on every image:
    # no validation split is held out of a range test.
    (model, images, trainable), = measured
    assert images == 18
    kft.freeze(model, "partial", n_blocks=1)
    assert trainable == [v.path for v in model.trainable_weights]
    # --strategy partial: its --n-blocks top blocks and the head (no test
    # had measured partial's or full's set).
    assert cli.main(["lr-find", folder, "--backbone", "simple_cnn",
                     "--weights", "none", "--image-size", "16",
                     "--batch-size", "8", "--augment", "none", "--steps",
                     "10", "--phase", "fine_tune", "--strategy", "partial",
                     "--n-blocks", "2", "--head-epochs", "1", "--json"]) == 0
    (model, _, trainable) = measured[1]
    kft.freeze(model, "partial", n_blocks=2)
    assert trainable == [v.path for v in model.trainable_weights]
    kft.freeze(model, "partial", n_blocks=1)
    assert trainable != [v.path for v in model.trainable_weights]


def test_compare_two_strategies_two_seeds(folder, tmp_path, capsys,
                                         recwarn):
    out = str(tmp_path / "compare")
    code = cli.main(["compare", folder, "--strategies", "feature_extraction",
                     "partial", "--seeds", "2", "--backbone", "simple_cnn",
                     "--weights", "none", "--image-size", "16",
                     "--batch-size", "8", "--epochs", "2", "--head-epochs",
                     "1", "--augment", "none", "--bn", "train", "--out",
                     out, "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(row["strategy"] for row in printed["table"]) == [
        "feature_extraction", "partial"]
    # --bn reaches every run: random-init BatchNorm statistics are learned,
    # so the warning that advises `--bn train` is not given.
    assert not [w for w in recwarn if "random-init" in str(w.message)]
    assert os.path.isfile(os.path.join(out, "comparison.json"))


def test_compare_interrupted_keeps_the_finished_runs(folder, tmp_path,
                                                     capsys, monkeypatch):
    # Ctrl-C lost every finished run and left an empty --out folder.
    from kft.evaluation import compare as compare_module

    real, calls = compare_module._one_run, []

    def stop_at(n):
        def one_run(*args):
            calls.append(args)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args)

        return one_run

    argv = ["compare", folder, *TINY, "--strategies", "feature_extraction",
            "--seeds", "2", "--epochs", "2"]
    out = tmp_path / "cmp"
    monkeypatch.setattr(compare_module, "_one_run", stop_at(2))
    assert cli.main([*argv, "--out", str(out), "--json"]) == 1
    printed, err = capsys.readouterr()
    assert f"interrupted after 1 of 2 runs; the finished runs are in {out}" \
        in err, err
    assert json.loads(printed.splitlines()[-1])["interrupted"] == \
        "after 1 of 2 runs"
    saved = kft.StrategyComparison.load(out / "comparison.json")
    assert [(r["strategy"], r["seed"]) for r in saved.runs] == [
        ("feature_extraction", 0)]
    assert "Interrupted after 1 of 2 runs" in (out / "comparison.md"
                                               ).read_text()
    calls.clear()
    monkeypatch.setattr(compare_module, "_one_run", stop_at(1))
    assert cli.main([*argv, "--out", str(tmp_path / "none")]) == 1
    assert not (tmp_path / "none").exists()
    # Before the first run (the strategies' check builds a model).
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_module, "_check_runs", interrupted)
    assert cli.main([*argv, "--out", str(tmp_path / "early")]) == 1
    assert not (tmp_path / "early").exists()


def test_compare_says_how_many_runs_raised(folder, tmp_path, capsys,
                                          monkeypatch):
    # A run that raises is recorded and the others go on: the command
    # says so (exit 0 while a run scored), the error is in comparison.md.
    from kft.evaluation import compare as compare_module

    real, calls = compare_module._one_run, []

    def one_run(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(*args)

    monkeypatch.setattr(compare_module, "_one_run", one_run)
    out = tmp_path / "cmp"
    assert cli.main(["compare", folder, *TINY, "--strategies",
                     "feature_extraction", "--seeds", "2", "--epochs", "2",
                     "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert ("kft compare: 1 of 2 runs raised (listed in comparison.md)."
            in err), err
    assert "RuntimeError: out of memory" in (out / "comparison.md"
                                             ).read_text()


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return info.value.code, err


def test_bad_invocations_exit_2_and_say_what_to_fix(folder, run, tmp_path,
                                                    capsys, monkeypatch):
    before = sorted(os.listdir(folder))
    single = tmp_path / "single" / "only"
    single.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(single / "a.png")
    config = tmp_path / "bad.toml"
    config.write_text('epochs = "two"\nhead_epochs = 1\n')
    unset = tmp_path / "unset.toml"
    unset.write_text('unset = ["weights"]\n')
    link = tmp_path / "photos"
    os.symlink(folder, link)
    broken = tmp_path / "broken.toml"
    broken.write_text("epochs = \n")
    nested = tmp_path / "nested.toml"
    nested.write_text("[train]\nepochs = 2\n")
    rate = tmp_path / "rate.toml"
    rate.write_text('lr = "fast"\n')
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        # A config file that is missing, not TOML, or not one flat table
        # names the file (a misread file trained on defaults before).
        (["train", folder, "--config", str(tmp_path / "missing.toml")],
         f"Config file {str(tmp_path / 'missing.toml')!r} does not exist."),
        (["train", folder, "--config", str(broken)],
         f"Config file {str(broken)!r}: Invalid value (at line 1"),
        (["train", folder, "--config", str(nested)],
         f"Config file {str(nested)!r}: A kft config is one flat table; "
         "found table(s) train"),
        # A text rate other than "find" (the flag's parser refuses it; the
        # file's value reaches the config's own check).
        (["train", folder, "--config", str(rate)],
         "Argument --lr must be a positive number or \"find\". Received: "
         f"lr='fast' (set in config file {str(rate)!r})"),
        (["train", folder, "--backbone", "simple_cnn", "--weights",
          str(tmp_path / "w.weights.h5")],
         f"Weights {str(tmp_path / 'w.weights.h5')!r}: not 'imagenet', "
         "'none' or an existing weights file."),
        (["train", "--resume", "--out", str(empty)],
         f"Nothing to resume in {str(empty)!r}: no config.toml there. "
         "Start the run without --resume."),
        (["lr-find", folder, "--start", "1", "--end", "0.1"],
         "--end (0.1) must be above --start (1)"),
        (["compare", str(tmp_path / "missing")],
         f"DATA_DIR {str(tmp_path / 'missing')!r} does not exist"),
        (["compare", folder, "--test-dir", str(tmp_path / "missing")],
         f"--test-dir {str(tmp_path / 'missing')!r} does not exist"),
        # No validation split, no val/ or test/: nothing to score on.
        (["compare", folder, *TINY, "--val-split", "0", "--out",
          str(tmp_path / "cmp")],
         "compare needs held-out data: a validation split (--val-split > "
         "0), val/ or test/"),
        (["eval", str(notes), folder],
         f"{str(notes)!r} is neither a kft run folder nor a .keras model "
         "file."),
        (["export", str(onnx)],
         f"RUN_OR_MODEL {str(onnx)!r} is already an ONNX file"),
        (["export", str(notes)],
         f"RUN_OR_MODEL {str(notes)!r} is neither a run folder nor a "
         ".keras / .onnx file"),
        # A folder to write that cannot be made (a file on its path).
        (["lr-find", folder, "--plot", str(notes / "sub" / "lr.png")],
         f"the folder of --plot {str(notes / 'sub')!r}: cannot create the "
         "folder (Not a directory)"),
        (["train", folder, "--config", str(unset)],
         f"Received: weights=None (set in config file {str(unset)!r})"),
        # A bad value from the config file: the message named a flag the
        # user never gave, not the file.
        (["train", folder, "--config", str(config)],
         f"Received: epochs='two' (set in config file {str(config)!r})"),
        (["train", folder, "--config", str(config), "--epochs", "x"],
         "argument --epochs: must be an integer"),
        (["train", str(tmp_path / "missing"), *TINY],
         f"Data folder '{tmp_path / 'missing'}' does not exist"),
        (["train", str(tmp_path / "single"), *TINY, "--out",
          str(tmp_path / "r1")], "a classifier needs at least 2 classes"),
        (["train", folder, "--backbone", "resnt50"],
         "Did you mean 'resnet50'"),
        (["train", folder, "--backbone", "resnet50", "--weights", "none",
          "--image-size", "8", "--out", str(tmp_path / "r2")],
         "Backbone 'resnet50' cannot take 8x8 images"),
        (["train", folder, *TINY, "--out", run],
         "exists and is not empty (it holds config.toml, "),
        (["train", "--resume"], "--resume needs --out"),
        (["train", "--resume", "--out", run, "--epochs", "3"],
         "drop --epochs"),
        # DATA_DIR is no flag: "drop --data-dir".
        (["train", folder, "--resume", "--out", run, "--no-plots"],
         "drop DATA_DIR, --no-plots ("),
        (["train", folder, "--val-split", "1.5"],
         "argument --val-split: must be in [0, 1)"),
        (["train", folder, "--lr", "fast"],
         "argument --lr: must be a finite number > 0.0"),
        # "inf" failed later, naming `end` or blaming --start for --end.
        (["lr-find", folder, "--end", "inf"],
         "argument --end: must be a finite number > 0.0. Received: 'inf'"),
        (["lr-find", folder, "--start", "inf"],
         "argument --start: must be a finite number > 0.0"),
        (["train"], "required: DATA_DIR"),
        (["eval", run, str(tmp_path / "missing")], "does not exist"),
        (["eval", str(tmp_path), folder],
         "holds no model.keras"),
        (["train", folder, *TINY, "--schedule", "step"],
         "argument --schedule: invalid choice: 'step'"),
        (["predict", run, str(tmp_path / "missing.jpg")],
         "IMAGES_OR_DIR"),
        (["predict", str(tmp_path / "none.keras"), folder],
         "does not exist"),
        (["export", str(tmp_path), "--format", "onnx"],
         "holds no model.keras"),
        (["lr-find", str(tmp_path / "missing")], "does not exist"),
        # A file where a folder goes exists: "does not exist" was untrue.
        (["train", str(notes), *TINY],
         f"Data folder {str(notes)!r} is a file, not a folder."),
        (["lr-find", str(notes)],
         f"DATA_DIR {str(notes)!r} is a file, not a folder"),
        (["compare", str(notes)],
         f"DATA_DIR {str(notes)!r} is a file, not a folder"),
        (["compare", folder, "--test-dir", str(notes)],
         f"--test-dir {str(notes)!r} is a file, not a folder"),
        (["eval", run, str(notes)],
         f"Data folder {str(notes)!r} is a file, not a folder."),
        # Its `next:` line was a `kft train` command that train refused.
        (["lr-find", folder, *TINY, "--strategy", "full", "--n-blocks",
          "2"], "strategy 'full' does not read --n-blocks 2"),
        # A run folder in the images: `runs` was read as a class ("no
        # readable images") and stayed, breaking every later run.
        (["train", folder, *TINY, "--out", os.path.join(folder, "runs",
                                                        "r")],
         "is inside DATA_DIR"),
        (["train", folder, *TINY, "--val-dir", folder, "--out",
          os.path.join(folder, "r")], "is inside DATA_DIR"),
        # Reached through a link to the image folder.
        (["train", folder, *TINY, "--out", str(link / "r")],
         "is inside DATA_DIR"),
        # Checked after the whole range test, exit 1, naming `path`.
        (["lr-find", folder, *TINY, "--plot", str(tmp_path / "lr.txt")],
         "--plot must end in one of ["),
    ]
    for argv, message in cases:
        code, err = _usage_error(argv, capsys)
        assert code == 2 and message in err, (argv, err)
        assert err.startswith(f"usage: kft {argv[0]}"), err
    assert not os.path.exists(tmp_path / "r2" / "config.toml")
    assert not os.path.exists(tmp_path / "cmp") and not os.listdir(empty)
    assert sorted(os.listdir(folder)) == before
    # Started inside the image folder, the default --out lands there.
    monkeypatch.chdir(folder)
    code, err = _usage_error(["train", ".", *TINY], capsys)
    assert code == 2 and "is inside DATA_DIR" in err, err
    assert sorted(os.listdir(folder)) == before


def test_resolve_config_names_a_file_given_as_a_folder(tmp_path):
    # The library's own check (kft.runs.resolve_config, and a resumed
    # run's saved config) as the CLI's: a file where a folder goes is no
    # missing folder, and is refused before anything loads.
    notes = tmp_path / "notes.txt"
    notes.write_text("not images")
    for config, name in ((TrainConfig(data_dir=str(notes)), "Data"),
                         (TrainConfig(data_dir=str(tmp_path),
                                      val_dir=str(notes)), "Val")):
        with pytest.raises(ValueError, match=f"^{name} folder "
                           f"{re.escape(repr(str(notes)))} is a file, not "
                           "a folder.$"):
            kft.runs.resolve_config(config)


def test_a_checkpoint_cut_short_falls_back_to_the_previous(tmp_path,
                                                           monkeypatch):
    import h5py

    from kft.distributed import processes
    from kft.runs.backup import recover_checkpoint

    assert recover_checkpoint(tmp_path) is None
    with h5py.File(tmp_path / "latest.weights.h5.bkp", "w") as f:
        f["x"] = [1.0]
    (tmp_path / "training_metadata.json.bkp").write_text(
        '{"epoch": 2, "batch": 0}')
    # What a kill in `save_weights` left: an HDF5 header, then nothing.
    (tmp_path / "latest.weights.h5").write_bytes(
        b"\x89HDF\r\n\x1a\n" + bytes(88))
    (tmp_path / "training_metadata.json").write_text(
        '{"epoch": 3, "batch": 0}')
    # Several processes resuming: process 0 repairs, the others leave the
    # folder alone (all of them repairing it raced: FileNotFoundError).
    with monkeypatch.context() as other:
        other.setattr(processes, "process_index", lambda: 1)
        assert recover_checkpoint(tmp_path) is None
    assert json.loads((tmp_path / "training_metadata.json").read_text(
    ))["epoch"] == 3
    assert "previous checkpoint" in recover_checkpoint(tmp_path)
    assert json.loads((tmp_path / "training_metadata.json").read_text(
    ))["epoch"] == 2
    assert recover_checkpoint(tmp_path) is None  # now readable
    for path in tmp_path.glob("*.bkp"):
        path.unlink()
    (tmp_path / "training_metadata.json").write_text('{"epoch": ')
    assert "starts again" in recover_checkpoint(tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_kill_between_a_saves_two_files_falls_back_to_the_previous(
        tmp_path):
    # Keras writes the weights, then the metadata: a kill between the two
    # left epoch e's weights (and optimizer state) named epoch e - 1, both
    # readable; a resume trained epoch e again from them, or failed on
    # another stage's optimizer state.
    import h5py

    from kft.distributed import BackupAndRestore
    from kft.runs.backup import recover_checkpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((4, 2)), np.ones(4)
    model.fit(x, y, epochs=2, verbose=0,
              callbacks=[BackupAndRestore(str(tmp_path),
                                          delete_checkpoint=False)])
    weights = tmp_path / "latest.weights.h5"
    with h5py.File(weights, "r") as f:  # the metadata's (epoch, batch)
        assert list(f.attrs["kft_checkpoint_position"]) == [2, 0]
    assert recover_checkpoint(tmp_path) is None
    saved = np.array(model.weights[0].value)
    model.fit(x, y, epochs=1, verbose=0)
    # The next save as Keras makes it, killed after its weights: the pair
    # kept as the previous one, the new weights, no new metadata.
    for name in ("latest.weights.h5", "training_metadata.json"):
        shutil.copyfile(tmp_path / name, tmp_path / (name + ".bkp"))
    model.save_weights(weights)
    assert not np.array_equal(model.weights[0].value, saved)
    assert "previous checkpoint" in recover_checkpoint(tmp_path)
    assert json.loads((tmp_path / "training_metadata.json").read_text(
    )) == {"epoch": 2, "batch": 0}
    model.load_weights(weights)
    np.testing.assert_array_equal(model.weights[0].value, saved)
    assert recover_checkpoint(tmp_path) is None


def test_a_kill_while_the_checkpoints_go_leaves_a_complete_run(
        folder, tmp_path, monkeypatch):
    # The checkpoints went before run.json said "complete": a kill between
    # the two resumed a finished run from nothing (or failed on what was
    # left) and trained it again.
    from kft.runs import train as train_module

    removed, rmtree = [], shutil.rmtree

    def killed_part_way(path, *args, **kwargs):
        if os.path.basename(path) != "checkpoints":
            return rmtree(path, *args, **kwargs)
        # As os.scandir ordered them here: phase0/, then the run state.
        rmtree(os.path.join(path, "phase0"))
        os.remove(os.path.join(path, "run_state.json"))
        removed.append(path)
        raise _Interrupted

    out = str(tmp_path / "run")
    settings = dict(data_dir=folder, backbone="simple_cnn", weights="none",
                    image_size=16, strategy="feature_extraction",
                    head_epochs=1, batch_size=4, plots=False, out=out,
                    verbose=0, print_fn=None)
    monkeypatch.setattr(train_module.shutil, "rmtree", killed_part_way)
    with pytest.raises(_Interrupted):
        kft.train_run(**settings)
    assert removed
    with open(os.path.join(out, "run.json")) as f:
        assert json.load(f)["status"] == "complete"
    monkeypatch.undo()
    said = []
    result = kft.train_run(out=out, resume=True, verbose=0,
                           print_fn=said.append)
    assert result.resumed and result.train_time == 0.0
    assert any("is complete" in line for line in said)
    assert not os.path.exists(os.path.join(out, "checkpoints"))


def test_path_objects_give_a_run_of_text_paths(folder, tmp_path):
    # `out=Path(...)` stayed a Path in the result: to_dict() was not
    # JSON, and the config read back from config.toml differed.
    import pathlib

    out = tmp_path / "run"
    result = kft.train_run(data_dir=pathlib.Path(folder), out=out,
                           backbone="simple_cnn", weights="none",
                           image_size=16, strategy="gradual", epochs=1,
                           head_epochs=1, batch_size=4, plots=False,
                           verbose="auto", print_fn=None)
    # "auto" (Keras' value) reached GradualUnfreezing, which takes ints,
    # and failed after the head phase.
    assert result.out == str(out) and result.config.data_dir == str(folder)
    json.dumps(result.to_dict())
    assert kft.runs.load_config(out / "config.toml") == result.config
    with pytest.raises(kft.runs.RunSetupError, match=r"`verbose` must be "
                       r"0, 1, 2 or 'auto'.*Received: verbose=5"):
        kft.train_run(data_dir=folder, out=tmp_path / "run5", verbose=5)
    assert not (tmp_path / "run5").exists()
    with pytest.raises(kft.runs.RunSetupError, match=r"^resume needs the "
                       r"run folder: pass out=\.$"):
        kft.train_run(resume=True, print_fn=None)


def test_the_default_run_folder_is_numbered_past_those_that_exist(
        tmp_path, monkeypatch):
    # A third run without --out was given the second's folder, which
    # exists, instead of runs/photos-simple_cnn-3.
    monkeypatch.chdir(tmp_path)
    os.makedirs("photos/cat")
    config = TrainConfig(data_dir="photos", backbone="simple_cnn",
                         weights="none")
    base = os.path.join("runs", "photos-simple_cnn")
    for out in (base, base + "-2", base + "-3"):
        assert resolve_config(config).out == out
        os.makedirs(os.path.join(out, "checkpoints"))


def _console_script():
    path = os.path.join(os.path.dirname(sys.executable), "kft")
    if not os.path.exists(path):
        pytest.skip("the `kft` console script is not installed")
    return path


def _history_len(out):
    path = os.path.join(out, "checkpoints", "run_state.json")
    try:
        with open(path) as f:
            return len(json.load(f)["history"])
    except (OSError, ValueError):
        return 0


def test_resume_after_sigkill_continues_the_same_run(folder, tmp_path,
                                                     capsys):
    """kill -9 in the fine-tuning phase, then `--resume`: the run ends with
    every epoch logged once, the head epoch's log from before the kill."""
    out = str(tmp_path / "killed")
    # Gradual's first stage (head + top block) for the whole phase: the
    # resume has to restore that trainable set; one compile per phase.
    argv = [_console_script(), "train", folder, *FAST, "--strategy",
            "gradual", "--unfreeze-every", "50", "--epochs", "12", "--out",
            out, "--quiet"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    # Two phase-2 epochs logged: the kill often lands while the second
    # one's checkpoint is written (the logs go first), which the resume
    # must survive (`recover_checkpoint`).
    while _history_len(out) < 3 and process.poll() is None:
        assert time.time() < deadline, "no epoch finished in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (
        "the run finished before it was killed: "
        + process.stderr.read()[-2000:])
    with open(os.path.join(out, "checkpoints", "run_state.json")) as f:
        before = json.load(f)["history"]
    resumed = subprocess.run(argv[:2] + ["--resume", "--out", out],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "RunBackup: resumed phase 2 from its checkpoint after epoch" in (
        resumed.stdout)
    # Its time is this attempt's (the killed one's is not known).
    assert "s (this attempt)" in resumed.stdout
    with open(os.path.join(out, "history.json")) as f:
        history = json.load(f)
    assert [row["epoch"] for row in history] == list(range(1, 14))
    assert history[0]["loss"] == pytest.approx(before["0"]["loss"])
    assert [row.get("unfrozen_blocks") for row in history][1:] == [1] * 12
    with open(os.path.join(out, "run.json")) as f:
        info = json.load(f)
    assert info["status"] == "complete" and info["resumed"] is True
    # Resuming a completed run trains nothing and exits 0.
    assert cli.main(["train", "--resume", "--out", out]) == 0
    assert "is complete" in capsys.readouterr().out


def test_installed_command_exit_status(run, folder, tmp_path, capsys,
                                      monkeypatch):
    result = subprocess.run(
        [_console_script(), "train", str(tmp_path / "none"), "--backbone",
         "simple_cnn"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and not result.stdout
    # `python -m kft`, where the script is not on PATH, is the same command
    # (run as `-m` runs it, in this process: a new one costs 4 s).
    monkeypatch.setattr(sys, "argv", ["kft", "train", str(tmp_path / "no")])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("kft", run_name="__main__", alter_sys=True)
    assert info.value.code == 2
    printed = capsys.readouterr()
    assert "usage: kft train" in printed.err and not printed.out
    assert "does not exist" in printed.err
    # `python -m kft.cli` is the same command too.
    with pytest.raises(SystemExit) as info:
        runpy.run_module("kft.cli", run_name="__main__", alter_sys=True)
    assert info.value.code == 2
    printed = capsys.readouterr()
    assert "usage: kft train" in printed.err and not printed.out
    assert "does not exist" in printed.err
    # The command imports kft's modules lazily: loading a saved model
    # needs its Keras classes registered all the same.
    result = subprocess.run(
        [_console_script(), "eval", run, folder, "--no-plots", "--json",
         "--out", str(tmp_path / "eval")], capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["report"]["num_examples"] == 18


def test_config_keeps_settings_that_are_none():
    """TOML has no null: `None` settings are listed in `unset`, so a run
    that trained on every image (`--val-split 0`) or on a `val/` folder
    repeats and resumes without the 0.2 default split."""
    config = kft.runs.TrainConfig(data_dir="photos", val_split=None,
                                  early_stopping=3)
    text = config.to_toml()
    assert tomllib.loads(text)["unset"] == [
        "val_dir", "val_split", "layer_decay", "image_size", "out"]
    assert kft.runs.TrainConfig.from_toml(text) == config
    # `val_split = 0` means no split, as `--val-split 0` (it was refused).
    assert kft.runs.TrainConfig.from_toml("val_split = 0").val_split is None
    # A hand-written file without `unset` takes the defaults.
    assert kft.runs.TrainConfig.from_toml("epochs = 2").val_split == 0.2
    with pytest.raises(ValueError, match="both given and listed"):
        kft.runs.TrainConfig.from_toml('val_split = 0.3\nunset = ["val_split"]')
    with pytest.raises(ValueError, match="Unknown setting.*bogus"):
        kft.runs.TrainConfig.from_toml('unset = ["bogus"]')
    with pytest.raises(ValueError, match="list of setting names"):
        kft.runs.TrainConfig.from_toml('unset = "val_split"')
    # Strings and the plots switch are checked too: `out = 5` failed in
    # os.path without naming the key, `plots = "no"` wrote the plots.
    for text, message in (("out = 5", "`out` must be a string"),
                          ('plots = "no"', "`plots` must be true or false"),
                          ("backbone = 50", "`backbone` must be a string")):
        with pytest.raises(ValueError, match=message):
            kft.runs.TrainConfig.from_toml(text).check()


def test_config_round_trips_any_text_and_checks_what_the_run_reads(
        tmp_path):
    # An emoji was written as a JSON surrogate pair, which TOML refuses:
    # the run's config.toml could be neither repeated nor resumed.
    odd = "/data/\U0001F4F7 photos \u00e9 \"q\" \\ \t\x7f end"
    config = kft.runs.TrainConfig(data_dir=odd, out=pathlib.Path("runs/r"))
    text = config.to_toml()
    back = kft.runs.TrainConfig.from_toml(text)
    assert back.data_dir == odd and back.out == "runs/r"
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    assert kft.runs.load_config(path).data_dir == odd
    # Refused by name before the run (they failed inside it: os.path on
    # None, NumPy's seed range, kft.data naming `augmentation`).
    for changes, message in (
            ({"weights": None}, r"`weights` must be a string \('imagenet', "
                                r"'none' or a weights file\)"),
            ({"seed": 2**32}, r"`seed` must be an integer in "),
            ({"augment": "strong!"}, r"`augment` must be one of \('none', "
                                     r"'light', 'standard', 'strong'\)"),
            # Bytes that are not UTF-8 in a folder name (os.fsdecode's
            # surrogates): a bare UnicodeEncodeError writing config.toml.
            ({"data_dir": os.fsdecode(b"/d/caf\xe9")},
             r"`data_dir` must be text a config file can hold")):
        with pytest.raises(ValueError, match=message):
            kft.runs.TrainConfig(**changes).check()
    assert kft.runs.config.AUGMENTS == kft.augmentation.PRESETS
    # In the settings' spelling ('none'): `kft train` said "--weights must
    # be None", SimpleCNN's.
    from kft.runs.recipe import build_run_model

    with pytest.raises(ValueError, match=r"`weights` must be 'none' or a "
                       r"weights file for backbone 'simple_cnn' \(it has no "
                       r"published ImageNet weights\)\. Received: "
                       r"weights='imagenet'"):
        build_run_model(kft.runs.TrainConfig(backbone="simple_cnn",
                                             image_size=16), 2)


class _Interrupted(Exception):
    pass

def test_a_resume_before_the_first_checkpoint_starts_from_epoch_one(
        folder, tmp_path, monkeypatch):
    # Killed (SIGKILL: no clean-up of the unstarted run) before any epoch
    # was checkpointed, during the first epoch's compile, say: the resume
    # says it starts over, and trains the run.
    from kft.runs import train as train_module
    from kft.training import fine_tune as fine_tune_module

    real = fine_tune_module.fine_tune

    def killed(*args, **kwargs):
        raise _Interrupted

    monkeypatch.setattr(fine_tune_module, "fine_tune", killed)
    monkeypatch.setattr(train_module, "_discard_unstarted",
                        lambda *args: None)
    out = str(tmp_path / "run")
    with pytest.raises(_Interrupted):
        kft.train_run(data_dir=folder, backbone="simple_cnn",
                      weights="none", image_size=16, strategy="full",
                      epochs=2, head_epochs=1, batch_size=8, plots=False,
                      out=out, verbose=0, print_fn=None)
    monkeypatch.setattr(fine_tune_module, "fine_tune", real)
    said = []
    result = kft.train_run(out=out, resume=True, verbose=0,
                           print_fn=said.append)
    assert ("no checkpoint yet: starting the run from its first epoch."
            in said)
    assert result.resumed
    assert [row["phase"] for row in result.history] == [1, 2, 2]



def test_resume_of_a_find_run_on_a_val_folder(tmp_path, monkeypatch):
    """A run on `train/` + `val/` with `lr="find"` stopped in phase 2:
    the resume reads `val_split` back as `None` and trains on at the rate
    found before the stop, without a second range test."""
    from kft.runs import backup as backup_module
    from kft.training import fine_tune_phases

    data = tmp_path / "data"
    _write_folder(data / "train", classes=2, per_class=6)
    _write_folder(data / "val", classes=2, per_class=2, seed=1)
    out = str(tmp_path / "run")
    finds = []
    real_find = fine_tune_phases.find_rate
    monkeypatch.setattr(fine_tune_phases, "find_rate",
                        lambda *a: finds.append(1) or real_find(*a))
    real_end = backup_module.RunBackup.on_epoch_end

    def stop_in_phase_2(self, epoch, logs=None):
        real_end(self, epoch, logs)
        if epoch == 1:  # phase 2's first epoch, checkpointed
            raise _Interrupted

    monkeypatch.setattr(backup_module.RunBackup, "on_epoch_end",
                        stop_in_phase_2)
    settings = dict(data_dir=str(data), backbone="simple_cnn",
                    weights="none", image_size=16, strategy="full",
                    epochs=3, head_epochs=1, batch_size=4, lr="find",
                    plots=False, out=out, verbose=0, print_fn=None)
    with pytest.raises(_Interrupted):
        kft.train_run(**settings)
    assert len(finds) == 1
    assert kft.runs.load_config(os.path.join(out, "config.toml")).val_split \
        is None
    with open(os.path.join(out, "checkpoints", "run_state.json")) as f:
        found = json.load(f)["values"]["fine_tune_found_learning_rate"]
    monkeypatch.setattr(backup_module.RunBackup, "on_epoch_end", real_end)
    result = kft.train_run(out=out, resume=True, verbose=0, print_fn=None)
    assert result.resumed and len(finds) == 1  # no second range test
    assert result.config.lr == pytest.approx(found)
    assert result.metrics["num_examples"] == 4  # the val/ folder
    rates = [row["learning_rate"] for row in result.history[1:]]
    # One cosine from the found rate over phase 2's 3 epochs (3 steps).
    assert rates[0] == pytest.approx(found, rel=1e-5)
    assert rates[1:] == pytest.approx(
        [found * (1 + math.cos(math.pi * k / 3)) / 2 for k in (1, 2)],
        rel=1e-4)


def _refuse(what):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} ran before the usage error")

    return refuse


def test_compare_checks_each_strategy_before_the_first_trains(
        folder, tmp_path, capsys, monkeypatch):
    # `partial:9` failed (exit 1) after feature extraction had trained.
    monkeypatch.setattr("kft.evaluation.compare.fine_tune",
                        _refuse("fine_tune"))
    out = tmp_path / "cmp"
    code, err = _usage_error(
        ["compare", folder, "--backbone", "simple_cnn", "--weights", "none",
         "--image-size", "16", "--epochs", "2", "--head-epochs", "1",
         "--seeds", "2", "--strategies", "feature_extraction", "partial:9",
         "--out", str(out)], capsys)
    assert code == 2 and ("argument --strategies: Strategy 'partial:9': "
                          "Argument `n_blocks` must be an integer from 1 "
                          "to 4") in err, err
    assert not out.exists()


def test_out_and_compare_options_are_usage_errors_before_training(
        folder, run, tmp_path, capsys, monkeypatch):
    """A file as --out, a bad --strategies, --head-epochs >= --epochs:
    exit 2 naming the flag, before anything trains (or is written)."""
    monkeypatch.setattr("kft.training.fine_tune.fine_tune",
                        _refuse("fine_tune"))
    monkeypatch.setattr("kft.evaluation.compare.compare_strategies",
                        _refuse("compare_strategies"))
    monkeypatch.setattr("kft.runs.report.write_evaluation",
                        _refuse("the evaluation"))
    monkeypatch.setattr("kft.demo.run_demo", _refuse("the demo"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    is_file = f"--out '{afile}' is a file, not a folder"
    compare = ["compare", folder, "--backbone", "simple_cnn", "--weights",
               "none", "--image-size", "16", "--epochs", "2",
               "--head-epochs", "1", "--seeds", "2"]
    cases = [
        (["train", folder, *FAST, "--out", str(afile)], is_file),
        (["eval", run, folder, "--out", str(afile)], is_file),
        (["demo", "--out", str(afile)], is_file),
        ([*compare, "--strategies", "full", "--out", str(afile)], is_file),
        ([*compare, "--strategies", "partial", "fulll"],
         "argument --strategies: invalid strategy 'fulll'; choose from "
         "feature_extraction, partial, gradual, full, discriminative"),
        ([*compare, "--strategies", "partial:0"],
         "invalid strategy 'partial:0'"),
        ([*compare, "--strategies", "full", "full"],
         "argument --strategies: 'full' is given 2 times"),
        ([*compare, "--strategies", "full", "--head-epochs", "2"],
         "--head-epochs (2) must be less than --epochs (2, head phase "
         "included) for the two-phase strategies (full)"),
        (["export", run, "--out", str(tmp_path)], "is a folder; pass the "
         "file to write"),
        (["export", run, "--format", "keras", "--out",
          str(tmp_path / "m.onnx")], "writes a file whose name ends in "
         ".keras"),
        # Said by kft.export after loading, naming `path` and format="onnx".
        (["export", run, "--out", str(tmp_path / "m.bin")], "--out "
         f"{str(tmp_path / 'm.bin')!r}: --format onnx writes a file whose "
         "name ends in .onnx (for a .keras file pass --format keras)"),
    ]
    for argv, message in cases:
        code, err = _usage_error(argv, capsys)
        assert code == 2 and message in err, (argv, err)
        assert err.startswith(f"usage: kft {argv[0]}"), err
        assert "strategies[" not in err and "`head_epochs`" not in err
    assert afile.read_text() == "x"
    assert not os.path.exists(os.path.join("runs", "compare-" +
                                           os.path.basename(folder)))
    # The library says the same for a run folder that is a file or lies
    # under one (not an OS error).
    settings = dict(data_dir=folder, backbone="simple_cnn", weights="none",
                    image_size=16, verbose=0, print_fn=None)
    for out, message in ((afile, "is a file"),
                         (afile / "run", "cannot be created")):
        with pytest.raises(kft.runs.RunSetupError, match=message):
            kft.train_run(out=str(out), **settings)
    # export creates the folder its file goes in, as eval and compare do.
    target = tmp_path / "new" / "folder" / "m.keras"
    assert cli.main(["export", run, "--format", "keras", "--out",
                     str(target), "--quiet"]) == 0
    assert target.stat().st_size > 0


def test_unwritable_or_busy_out_folders_are_refused_before_the_work(
        folder, run, tmp_path, capsys, monkeypatch):
    """A folder no file can be made in (read-only: permission bits do not
    stop root, so the probe is what is faked) failed with a bare
    PermissionError once every compare run had trained, or the evaluation
    and conversion had run; two runs started on one folder both found it
    empty and wrote into each other's files."""
    import tempfile

    from kft.runs.claim import lock_folder
    from kft.runs.claim import unlock_folder

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    mkstemp = tempfile.mkstemp

    def probe(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(read_only)):
            raise PermissionError(13, "Permission denied")
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", probe)
    for target, what in (("kft.training.fine_tune.fine_tune", "fine_tune"),
                         ("kft.evaluation.compare.compare_strategies",
                          "compare_strategies"),
                         ("kft.runs.report.write_evaluation",
                          "the evaluation"),
                         ("kft.deploy.exporting.export", "the export"),
                         ("kft.demo.run_demo", "the demo"),
                         ("kft.runs.lr.find_rate", "the range test")):
        monkeypatch.setattr(target, _refuse(what))
    denied = f"{str(read_only)!r}: cannot write into the folder " \
             "(Permission denied)"
    cases = [
        (["eval", run, folder, "--out", str(read_only)], denied),
        (["compare", folder, *TINY, "--epochs", "2", "--seeds", "2",
          "--strategies", "full", "--out", str(read_only)], denied),
        (["export", run, "--out", str(read_only / "m.onnx")],
         f"the folder of --out {denied}"),
        (["train", folder, *FAST, "--out", str(read_only)],
         f"Run folder {str(read_only)!r} is not writable (Permission "
         "denied)"),
        # A folder the run would create is not left behind.
        (["train", folder, *FAST, "--out", str(read_only / "new")],
         "is not writable"),
        (["demo", "--out", str(read_only)], denied),
        (["lr-find", folder, "--plot", str(read_only / "lr.png")],
         f"the folder of --plot {denied}"),
        (["demo", "--workdir", str(read_only)], "argument --workdir: must "
         "be a directory you can write to"),
    ]
    for argv, message in cases:
        code, err = _usage_error(argv, capsys)
        assert code == 2 and message in err, (argv, err)
    assert os.listdir(read_only) == []

    busy = tmp_path / "busy"
    busy.mkdir()
    lock = lock_folder(str(busy))  # as a run in another process holds it
    try:
        settings = dict(data_dir=folder, backbone="simple_cnn",
                        weights="none", image_size=16, verbose=0,
                        print_fn=None)
        with pytest.raises(kft.runs.RunSetupError,
                           match="is being written by another process"):
            kft.train_run(out=str(busy), **settings)
        shutil.copy(os.path.join(run, "config.toml"), busy)
        with pytest.raises(kft.runs.RunSetupError,
                           match="is being written by another process"):
            kft.train_run(out=str(busy), resume=True, print_fn=None)
        # Several processes resume one run: only process 0 locks (the
        # others failed on its lock).
        from kft.runs import train as train_module

        monkeypatch.setattr(train_module, "is_primary", lambda: False)
        config = kft.runs.load_config(busy / "config.toml")
        *_, other = train_module._prepare_out(config.replace(out=str(busy)),
                                              True, None)
        assert other is None
    finally:
        unlock_folder(lock)
    assert os.listdir(busy) == ["config.toml"]
    # A complete run is read, not written: resuming it where nothing can
    # be written reports it (it was refused as not writable).
    (read_only / "done").mkdir()
    for name in ("config.toml", "run.json"):
        shutil.copy(os.path.join(run, name), read_only / "done")
    monkeypatch.setattr(tempfile, "mkstemp", probe)
    result = kft.train_run(out=str(read_only / "done"), resume=True,
                           print_fn=None)
    assert result.resumed and result.best_epoch is not None


def test_monitor_never_logged_is_a_usage_error_and_leaves_no_run(
        folder, tmp_path, capsys, monkeypatch):
    """--monitor is checked against what each epoch logs before the run
    folder is written; a run that fails before its first epoch ends
    removes what it wrote, so the same --out takes the corrected run."""
    from kft.training import fine_tune as fine_tune_module

    calls = []
    real_fine_tune = fine_tune_module.fine_tune
    monkeypatch.setattr(fine_tune_module, "fine_tune",
                        lambda *a, **k: calls.append(k) or real_fine_tune(
                            *a, **k))
    out = tmp_path / "run"
    argv = ["train", folder, *FAST, "--strategy", "feature_extraction",
            "--epochs", "0", "--out", str(out)]
    code, err = _usage_error([*argv, "--monitor", "val_acc"], capsys)
    assert code == 2 and "usage: kft train" in err
    assert ("Argument --monitor must be a quantity each epoch logs, one of "
            "('loss', 'accuracy', 'val_loss', 'val_accuracy'). Received: "
            "monitor='val_acc'") in err
    # Without validation data a val_ name monitors the training value.
    code, err = _usage_error([*argv, "--val-split", "0", "--monitor",
                              "val_top5"], capsys)
    assert code == 2 and "one of ('loss', 'accuracy')" in err
    assert not calls and not out.exists()

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    for existed in (False, True):
        if existed:
            out.mkdir()
        monkeypatch.setattr(fine_tune_module, "fine_tune", broken)
        assert cli.main([*argv, "--quiet"]) == 1
        assert "RuntimeError: out of memory" in capsys.readouterr().err
        # Nothing trained: nothing to resume, and an empty folder stays.
        assert os.listdir(out) == [] if existed else not out.exists()
    monkeypatch.setattr(fine_tune_module, "fine_tune", real_fine_tune)
    assert cli.main([*argv, "--monitor", "val_accuracy", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["monitor"] == "val_accuracy"
    # A val_ monitor given without validation data is said to change (it
    # became `accuracy` silently); the default `val_loss` changes quietly.
    argv[-1] = str(tmp_path / "no val")
    assert cli.main([*argv, "--val-split", "0", "--monitor",
                     "val_accuracy"]) == 0
    printed = capsys.readouterr().out
    assert ("--monitor 'val_accuracy': no validation data (no val folder "
            "and no --val-split); the run monitors 'accuracy'.") in printed
    # The next command copies as one (quoted) folder argument.
    assert f"next: kft eval '{tmp_path / 'no val'}' DATA_DIR" in printed
    # Through the Python API too.
    given = TrainConfig(data_dir=folder, backbone="simple_cnn",
                        val_split=None, monitor="val_accuracy")
    resolved = resolve_config(given)
    assert "the run monitors 'accuracy'" in monitor_change(given, resolved)
    assert monitor_change(given.replace(monitor="val_loss"), resolve_config(
        given.replace(monitor="val_loss"))) is None


def test_a_test_folder_beside_the_classes_is_not_a_class(tmp_path,
                                                         capsys,
                                                         monkeypatch):
    """`<class>/` + `test/`: kft train and kft compare train on the class
    folders; compare scores on test/."""
    data = _write_folder(tmp_path / "data", classes=2, per_class=5)
    _write_folder(tmp_path / "data" / "test", classes=2, per_class=2, seed=1)
    config = kft.runs.resolve_config(kft.runs.TrainConfig(
        data_dir=data, backbone="simple_cnn", image_size=16, batch_size=4,
        out=str(tmp_path / "run")))
    train, val = kft.runs.load_folder_data(config)
    assert train.class_names == ["class0", "class1"]
    assert train.num_examples + val.num_examples == 10
    val_dir = _write_folder(tmp_path / "val", classes=2, per_class=1)
    train, val = kft.runs.load_folder_data(config.replace(
        val_dir=val_dir, val_split=None))
    assert train.class_names == ["class0", "class1"]
    assert (train.num_examples, val.num_examples) == (10, 2)
    seen = {}

    def record(build, train, val, test, **kwargs):
        seen.update(classes=train.class_names, test=test.num_examples,
                    strategies=kwargs["strategies"],
                    # The results' folder exists before anything trains.
                    out_made=os.path.isdir(tmp_path / "compare"))
        raise _Interrupted

    monkeypatch.setattr("kft.evaluation.compare.compare_strategies", record)
    assert cli.main(["compare", data, "--strategies", "full", "--seeds",
                     "2", "--epochs", "2", "--head-epochs", "1",
                     "--backbone", "simple_cnn", "--weights", "none",
                     "--image-size", "16", "--quiet",
                     "--out", str(tmp_path / "compare")]) == 1
    assert seen == {"classes": ["class0", "class1"], "test": 4,
                    "strategies": ["full"], "out_made": True}
    # Made for the command, and empty when it failed: removed.
    assert not os.path.exists(tmp_path / "compare")
    # Errors name the user's folder, not the links read in its place.
    os.makedirs(tmp_path / "data" / "class2")
    with pytest.raises(ValueError, match=f"in '{data}' have no readable"):
        kft.runs.load_folder_data(config)


def test_layouts_of_links_name_the_users_folders(tmp_path, capsys,
                                                 monkeypatch):
    """`<class>/` + `test/` and `--val-dir` are read through temporary
    folders of links: messages, skipped files and the datasets' paths name
    the user's files, and a DATA_DIR that has its own val/ refuses
    --val-dir (its train/ and val/ would be read as two classes)."""
    data = _write_folder(tmp_path / "data", classes=2, per_class=4)
    _write_folder(tmp_path / "data" / "test", classes=2, per_class=1, seed=1)
    bad = os.path.realpath(os.path.join(data, "class0", "bad.png"))
    with open(bad, "w") as f:
        f.write("garbage")
    val_dir = _write_folder(tmp_path / "val", classes=2, per_class=1, seed=2)
    config = kft.runs.resolve_config(kft.runs.TrainConfig(
        data_dir=data, backbone="simple_cnn", image_size=16, batch_size=4,
        out=str(tmp_path / "run")))
    for settings, total, where in (
            ({}, 9, os.path.realpath(data)),
            ({"val_dir": val_dir, "val_split": None}, 11,
             f"{os.path.realpath(data)} and {os.path.realpath(val_dir)}")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train, val = kft.runs.load_folder_data(config.replace(
                **settings))
        messages = [str(w.message) for w in caught if issubclass(
            w.category, kft.data.SkippedFilesWarning)]
        assert len(messages) == 1, messages
        assert messages[0].startswith(f"Skipped 1 of {total} image files in "
                                      f"{where}:\n  {bad}: not an image")
        assert [s.path for s in train.skipped] == [bad]
        assert not any("kft_layout_" in path
                       for path in train.paths + val.paths)
    os.makedirs(os.path.join(val_dir, "class9"))
    Image.new("RGB", (16, 16)).save(os.path.join(val_dir, "class9", "0.png"))
    with pytest.raises(ValueError) as info:
        kft.runs.load_folder_data(config.replace(val_dir=val_dir,
                                                 val_split=None))
    assert str(info.value).startswith(
        f"Class folders ['class9'] are in {os.path.realpath(val_dir)!r} but "
        f"not in {data!r}; train classes: ['class0', 'class1']")
    layout = tmp_path / "layout"
    _write_folder(layout / "train", classes=2, per_class=2)
    _write_folder(layout / "val", classes=2, per_class=1)
    monkeypatch.setattr("kft.training.fine_tune.fine_tune",
                        _refuse("fine_tune"))
    code, err = _usage_error(["train", str(layout), *FAST, "--val-dir",
                              data, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.startswith("usage: kft train")
    assert (f"Data folder {str(layout)!r} already has a val folder "
            f"({str(layout / 'val')!r}): drop --val-dir ({data!r}), or pass "
            f"{str(layout / 'train')!r} as the data folder to validate on "
            "--val-dir instead.") in err
    # train/ alone, or <class>/ + val/: never read as classes either.
    os.rename(layout / "val", tmp_path / "v")
    code, err = _usage_error(["train", str(layout), *FAST, "--val-dir",
                              data, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and (f"Data folder {str(layout)!r} has a train/ "
                          f"folder: pass {str(layout / 'train')!r} as the "
                          "data folder to validate on --val-dir.") in err
    os.rename(tmp_path / "v", os.path.join(data, "val"))
    code, err = _usage_error(["train", data, *FAST, "--val-dir", val_dir,
                              "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert (f"Data folder {data!r} already has a val folder "
            f"({os.path.join(data, 'val')!r}): drop --val-dir "
            f"({val_dir!r}).") in err
    assert not os.path.exists(tmp_path / "r")


def test_a_run_resumes_and_repeats_from_another_folder(tmp_path, capsys,
                                                       monkeypatch):
    """config.toml names the data folder and a weights file by absolute
    paths: `--resume` and `--config` work from any folder, the resumed run
    stays in --out, and a data folder gone since is a usage error."""
    from kft.runs import backup as backup_module

    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    _write_folder(start / "data", classes=2, per_class=4)
    elsewhere.mkdir()
    (start / "backbone.weights.h5").write_bytes(b"")
    monkeypatch.chdir(start)
    config = kft.runs.resolve_config(kft.runs.TrainConfig(
        data_dir="data", val_dir="data", weights="backbone.weights.h5",
        backbone="simple_cnn"))
    assert (config.data_dir, config.val_dir, config.weights) == (
        str(start / "data"), str(start / "data"),
        str(start / "backbone.weights.h5"))
    real_end = backup_module.RunBackup.on_epoch_end

    def stop_after_the_head_phase(self, epoch, logs=None):
        real_end(self, epoch, logs)
        raise _Interrupted

    monkeypatch.setattr(backup_module.RunBackup, "on_epoch_end",
                        stop_after_the_head_phase)
    assert cli.main(["train", "data", *FAST, "--strategy", "partial",
                     "--epochs", "1", "--out", "runs/r", "--quiet"]) == 1
    out = start / "runs" / "r"
    saved = kft.runs.load_config(out / "config.toml")
    assert saved.data_dir == str(start / "data") and saved.out == "runs/r"
    monkeypatch.setattr(backup_module.RunBackup, "on_epoch_end", real_end)
    # A run started long before its resumes (the first attempt's time in
    # seconds could equal a resume's): the resumes keep it.
    started = "2001-02-03T04:05:06"
    with open(out / "run.json") as f:
        info = json.load(f)
    assert info["started"] and "resume_commands" not in info
    with open(out / "run.json", "w") as f:
        json.dump({**info, "started": started}, f)
    monkeypatch.chdir(elsewhere)
    os.rename(start / "data", start / "moved")
    code, err = _usage_error(["train", "--resume", "--out", str(out)],
                             capsys)
    assert code == 2 and (
        f"Data folder {str(start / 'data')!r} does not exist (named in "
        f"{str(out / 'config.toml')!r})") in err
    os.rename(start / "moved", start / "data")
    # A first resume interrupted too (before any epoch): the next resume
    # lists both.
    real_begin = backup_module.RunBackup.on_train_begin

    def interrupt(self, logs=None):
        raise _Interrupted

    monkeypatch.setattr(backup_module.RunBackup, "on_train_begin", interrupt)
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet"]) == 1
    monkeypatch.setattr(backup_module.RunBackup, "on_train_begin",
                        real_begin)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["resumed"] and printed["out"] == str(out)
    # run.json keeps the command that started the run (the resume had
    # replaced it), its start time, and lists every resume's command (a
    # second resume had dropped the first's).
    with open(out / "run.json") as f:
        info = json.load(f)
    assert info["command"][:3] == ["kft", "train", "data"]
    assert info["started"] == started
    assert info["resume_commands"] == [
        ["kft", "train", "--resume", "--out", str(out), "--quiet"],
        ["kft", "train", "--resume", "--out", str(out), "--json"]]
    with open(out / "history.json") as f:
        history = json.load(f)
    assert [row["phase"] for row in history] == [1, 2]
    # summary.md counts the kept epoch from 1, as history.json's `epoch`
    # (run.json's `best_epoch` is 0-based).
    kept = history[info["best_epoch"]]
    assert kept["epoch"] == info["best_epoch"] + 1
    assert kept[info["monitor"]] == pytest.approx(info["best_value"])
    summary = (out / "summary.md").read_text()
    assert f"Kept epoch {kept['epoch']} of 2 ({info['monitor']} = " in summary
    assert os.listdir(elsewhere) == []  # nothing written here
    assert cli.main(["train", "--config", str(out / "config.toml"),
                     "--strategy", "feature_extraction", "--epochs", "0",
                     "--out", "again", "--quiet"]) == 0
    assert os.listdir(elsewhere / "again")


def test_compare_keeps_an_earlier_comparison_unless_told(
        folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kft.evaluation.compare.compare_strategies",
                        _refuse("compare_strategies"))
    out = tmp_path / "compare"
    out.mkdir()
    (out / "comparison.json").write_text("{}")
    compare = ["compare", folder, "--strategies", "full", "--seeds", "2",
               "--epochs", "2", "--head-epochs", "1", "--backbone",
               "simple_cnn", "--weights", "none", "--image-size", "16",
               "--quiet"]
    code, err = _usage_error([*compare, "--out", str(out)], capsys)
    assert code == 2 and err.startswith("usage: kft compare")
    assert (f"--out {str(out)!r} already holds a comparison "
            "(comparison.json); pass --overwrite to replace it, or another "
            "--out") in err
    monkeypatch.chdir(tmp_path)
    default = os.path.join("runs", "compare-" + os.path.basename(folder))
    os.makedirs(default)
    for name in ("comparison.md", "comparison.png"):
        with open(os.path.join(default, name), "w") as f:
            f.write("x")
    code, err = _usage_error(compare, capsys)
    assert code == 2 and (f"the default --out {default!r} already holds a "
                          "comparison (comparison.md, comparison.png)") in err
    seen = []

    def record(*args, **kwargs):
        seen.append(1)
        raise _Interrupted

    monkeypatch.setattr("kft.evaluation.compare.compare_strategies", record)
    assert cli.main([*compare, "--out", str(out), "--overwrite"]) == 1
    assert seen == [1]
    # Replaced, an earlier comparison's chart went only when a new one was
    # drawn: a comparison without one (no run finished) was shown beside it.
    (out / "comparison.png").write_text("x")
    monkeypatch.setattr(
        "kft.evaluation.compare.compare_strategies",
        lambda *args, **kwargs: kft.StrategyComparison(
            runs=[], strategies=["full"], seeds=[0], metric="accuracy"))
    assert cli.main([*compare, "--out", str(out), "--overwrite"]) == 1
    assert sorted(os.listdir(out)) == ["comparison.json", "comparison.md"]


def test_eval_and_compare_refuse_an_out_inside_the_image_folder(
        folder, run, tmp_path, capsys, monkeypatch):
    # The report's folder was read as one more class by the next load.
    monkeypatch.setattr("kft.evaluation.compare.compare_strategies",
                        _refuse("compare_strategies"))
    inner = os.path.join(folder, "report")
    for argv in (["eval", run, folder, "--out", inner],
                 ["compare", folder, "--out", inner, "--backbone",
                  "simple_cnn"],
                 ["compare", str(tmp_path), "--test-dir", folder, "--out",
                  os.path.join(folder, "class0", "x")],
                 # The loss plot was trained on as one more image.
                 ["lr-find", folder, "--plot",
                  os.path.join(folder, "class0", "lr.png")]):
        code, err = _usage_error(argv, capsys)
        assert code == 2 and "would be read as a class folder" in err, err
        assert not os.path.exists(inner)
        assert sorted(os.listdir(os.path.join(folder, "class0"))) == [
            f"{i}.png" for i in range(6)]
    # At DATA_DIR's top a plot is not read: accepted.
    monkeypatch.setattr("kft.runs.lr.find_rate", _refuse("find_rate"))
    assert cli.main(["lr-find", folder, "--plot",
                     os.path.join(folder, "lr.png")]) == 1
    assert "find_rate ran" in capsys.readouterr().err


def test_lr_find_next_command_repeats_what_was_measured(tmp_path, capsys,
                                                        monkeypatch):
    """The `kft train` line lr-find prints: every flag given that kft train
    takes, the strategy measured (given, or the fine-tuning phase's),
    --head-lr where the head's rate was measured; paths quoted."""
    import shlex
    import types

    def find_rate(config, **kwargs):
        return config, types.SimpleNamespace(
            suggestions={"valley": types.SimpleNamespace(
                learning_rate=3.1e-4)}, learning_rates=[0.0] * 12,
            stop_reason="end", plot=lambda path: None)

    monkeypatch.setattr("kft.runs.lr.find_rate", find_rate)
    data = str(tmp_path / "my photos")
    os.makedirs(data)
    measured = ["--strategy", "partial", "--n-blocks", "2", "--backbone",
                "simple_cnn", "--weights", "w file.h5", "--image-size", "16",
                "--batch-size", "8", "--augment", "none", "--head-epochs",
                "1", "--weight-decay", "0.001", "--seed", "3"]
    quoted = shlex.quote(data)
    for argv, expected in (
            ([*measured, "--phase", "fine_tune", "--steps", "12", "--start",
              "1e-5", "--plot", str(tmp_path / "lr.png")],
             f"kft train {quoted} {' '.join(map(shlex.quote, measured))} "
             "--lr 0.00031"),
            (["--phase", "fine_tune", "--strategy", "feature_extraction"],
             f"kft train {quoted} --strategy feature_extraction --head-lr "
             "0.00031"),
            # The head's rate, whatever the strategy: kft train keeps its
            # own default (auto; lr-find's full was pinned on it).
            ([], f"kft train {quoted} --head-lr 0.00031"),
            (["--phase", "fine_tune"],
             f"kft train {quoted} --strategy full --lr 0.00031")):
        assert cli.main(["lr-find", data, *argv]) == 0
        lines = capsys.readouterr().out.splitlines()
        line = next(x for x in lines if x.startswith("next: "))
        assert line == "next: " + expected, line
        # It is a kft train command line, with the values measured.
        words = shlex.split(line[len("next: "):])
        train = cli.build_parser()[0].parse_args(words[1:])
        assert train.data_dir == data
        if "--n-blocks" in argv:
            assert (train.n_blocks, train.weights, train.weight_decay) == (
                2, "w file.h5", 0.001)
        # kft.lr_find printed the suggestions (it is given print_fn): not
        # again as a table.
        assert "valley   0.00031" not in lines
    assert cli.main(["lr-find", data, "--quiet"]) == 0
    assert "valley   0.00031" in capsys.readouterr().out.splitlines()


def test_val_split_beside_val_folders_and_dropout_are_usage_errors(
        folder, tmp_path, capsys, monkeypatch):
    """A --val-split that a val folder would replace, --val-dir beside the
    data folder's val/, --dropout out of range: exit 2 naming the flags,
    before anything trains or is written."""
    monkeypatch.setattr("kft.training.fine_tune.fine_tune",
                        _refuse("fine_tune"))
    monkeypatch.setattr("kft.evaluation.compare.compare_strategies",
                        _refuse("compare_strategies"))
    layout = tmp_path / "layout"
    _write_folder(layout / "train", classes=2, per_class=2)
    _write_folder(layout / "val", classes=2, per_class=1)
    val_dir = _write_folder(tmp_path / "val", classes=3, per_class=1)
    out = str(tmp_path / "out")
    layout_split = (f"--val-split (0.3) holds out training images, but "
                    f"{str(layout)!r} has a val folder "
                    f"({str(layout / 'val')!r}) that gives the validation "
                    "images; drop --val-split")
    cases = [
        (["train", str(layout), *FAST, "--val-split", "0.3", "--out", out],
         layout_split),
        (["train", folder, *FAST, "--val-dir", val_dir, "--val-split", "0.3",
          "--out", out], f"Both --val-split (0.3) and --val-dir "
         f"({val_dir!r}) give validation images; pass one of them"),
        (["compare", str(layout), "--strategies", "full", "--seeds", "2",
          "--epochs", "2", "--head-epochs", "1", "--backbone", "simple_cnn",
          "--weights", "none", "--image-size", "16", "--val-split", "0.3",
          "--out", out], layout_split),
        (["train", folder, *FAST, "--dropout", "1", "--out", out],
         "Argument --dropout must be a finite number in [0, 1)"),
    ]
    for argv, message in cases:
        code, err = _usage_error(argv, capsys)
        assert code == 2 and message in err, (argv, err)
        assert err.startswith(f"usage: kft {argv[0]}"), err
    assert not os.path.exists(out)
    # The default split is the one val/ replaces quietly.
    config = kft.runs.resolve_config(kft.runs.TrainConfig(
        data_dir=str(layout), backbone="simple_cnn"))
    assert config.val_split is None


@pytest.mark.parametrize("stop", ["ctrl_c", "disk_full"])
def test_an_interrupted_run_says_how_to_continue(folder, tmp_path, capsys,
                                                 monkeypatch, stop):
    from kft.runs import backup as backup_module

    real = backup_module.RunBackup.on_epoch_end

    def interrupt(self, epoch, logs=None):
        real(self, epoch, logs)  # the epoch's checkpoint, then the stop
        if stop == "ctrl_c":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(backup_module.RunBackup, "on_epoch_end", interrupt)
    out = tmp_path / "run"
    assert cli.main(["train", folder, *FAST, "--out", str(out),
                     "--quiet"]) == 1
    err = capsys.readouterr().err
    hint = f"kft train: continue the run with: kft train --resume --out {out}"
    if stop == "ctrl_c":
        assert hint in err and "kft train: interrupted." in err
    else:
        # A full disk ends a run as resumable as Ctrl-C does: the hint was
        # printed for Ctrl-C only (after the bare OSError).
        assert err.endswith("kft train: error: OSError: [Errno 28] No "
                            f"space left on device\n{hint}\n"), err


def test_a_run_folder_holding_only_os_files_counts_as_empty(folder,
                                                            tmp_path):
    # Finder's .DS_Store or Jupyter's checkpoints in a folder the user saw
    # as empty: "not empty: --resume", then "nothing to resume".
    from kft.runs import train as train_module
    from kft.runs.claim import unlock_folder

    out = tmp_path / "out"
    (out / ".ipynb_checkpoints").mkdir(parents=True)
    for name in (".DS_Store", "Thumbs.db"):
        (out / name).write_bytes(b"x")
    config = kft.runs.resolve_config(kft.runs.TrainConfig(
        data_dir=folder, backbone="simple_cnn", out=str(out)))
    *_, created, lock = train_module._prepare_out(config, False, None)
    unlock_folder(lock)
    assert not created
    (out / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"is not empty \(it holds "
                       r"notes.txt\): continue it with --resume"):
        train_module._prepare_out(config, False, None)



def test_a_skipped_file_named_in_another_encoding_is_reported(tmp_path,
                                                               capsys):
    # Listed in summary.md, its name failed UTF-8 after training (on
    # every resume too), the run left "running".
    data = _write_folder(tmp_path / "data", classes=2, per_class=4)
    bad = os.path.join(os.fsencode(data), b"class0", b"bad\xe9.png")
    # With 11 more, summary.md lists the first 10, run.json all.
    junk = [os.path.join(data, "class1", f"junk{i:02d}.png")
            for i in range(11)]
    for path in [bad, *junk]:
        with open(path, "wb") as f:
            f.write(b"not an image")
    out = str(tmp_path / "run")
    assert cli.main(["train", data, *FAST, "--epochs", "2", "--out", out,
                     "--quiet"]) == 0
    with open(os.path.join(out, "summary.md"), encoding="utf-8") as f:
        summary = f.read()
    assert "bad\\udce9.png" in summary
    assert ("Skipped 12 image file(s) the loader could not use (all listed "
            "in `run.json`, `skipped_files`)") in summary
    assert "junk08.png`" in summary and "junk09.png" not in summary
    assert "- ... and 2 more\n" in summary
    with open(os.path.join(out, "run.json")) as f:
        info = json.load(f)
    assert info["status"] == "complete"
    assert [os.path.basename(s["path"]) for s in info["skipped_files"]][
        1:] == [os.path.basename(p) for p in junk]
