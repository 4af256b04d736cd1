"""`kft train` / `eval` / `predict` / `export` / `lr-find` / `compare` on a
tiny generated image folder.

Most commands run in-process (`kft.cli.main`); subprocesses only where
the process boundary is the point (SIGKILL and resume, the exit status of
the installed command).
"""

import json
import os
import signal
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest
from PIL import Image

import kft
from kft import cli

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


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "partial")
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


def test_config_file_repeats_the_run_and_flags_override(run, tmp_path):
    out = str(tmp_path / "again")
    code = cli.main(["train", "--config", os.path.join(run, "config.toml"),
                     "--strategy", "feature_extraction", "--out", out,
                     "--no-plots", "--json"])
    assert code == 0
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

    calls = []

    def recorded(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    real = module.fine_tune
    monkeypatch.setattr(module, "fine_tune", recorded)
    out = str(tmp_path / strategy)
    extra = {"gradual": ["--epochs", "2", "--json"],
             # One-cycle needs a few steps: 2 epochs of 2 batches.
             "full": ["--epochs", "2", "--schedule", "one_cycle", "--json"],
             "auto": ["--epochs", "1"]}[strategy]
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
        return
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["out"] == out and summary["best_epoch"] >= 1
    assert summary["strategy"] == strategy == calls[0]["strategy"]
    if strategy == "gradual":
        assert [row.get("unfrozen_blocks") for row in history] == [
            None, 1, 2]
    else:
        assert calls[0]["schedule"] == "one_cycle"
        assert kft.runs.load_config(os.path.join(
            out, "config.toml")).schedule == "one_cycle"


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
    assert os.path.isfile(os.path.join(printed["out"], "evaluation.json"))


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
    assert json.loads(capsys.readouterr().out)["out"] == out
    assert cli.main(["predict", out, folder, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert _top1(printed) == [(r.source, r.indices[0])
                              for r in kft.predict(out, folder)]
    # The class names travel in the file's metadata.
    assert {r["labels"][0] for r in printed} <= {"class0", "class1",
                                                 "class2"}


def test_lr_find_suggests_rates_and_plots(folder, tmp_path, capsys):
    plot = tmp_path / "lr.png"
    assert cli.main(["lr-find", folder, "--backbone", "simple_cnn",
                     "--weights", "none", "--image-size", "16",
                     "--batch-size", "8", "--augment", "none", "--steps",
                     "12", "--start", "1e-5", "--end", "1", "--plot",
                     str(plot), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["suggestions"] and 0 < printed["steps"] <= 12
    # "minimum" is a tenth of a rate on the ramp: it may be below --start.
    assert all(0 < rate <= 1 for rate in printed["suggestions"].values())
    assert plot.stat().st_size > 0


def test_compare_two_strategies_two_seeds(folder, tmp_path, capsys):
    out = str(tmp_path / "compare")
    code = cli.main(["compare", folder, "--strategies", "feature_extraction",
                     "partial", "--seeds", "2", "--backbone", "simple_cnn",
                     "--weights", "none", "--image-size", "16",
                     "--batch-size", "8", "--epochs", "2", "--head-epochs",
                     "1", "--augment", "none", "--out", out, "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(row["strategy"] for row in printed["table"]) == [
        "feature_extraction", "partial"]
    assert os.path.isfile(os.path.join(out, "comparison.json"))


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return info.value.code, err


def test_bad_invocations_exit_2_and_say_what_to_fix(folder, run, tmp_path,
                                                    capsys):
    single = tmp_path / "single" / "only"
    single.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(single / "a.png")
    cases = [
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
         "exists and is not empty: continue it with --resume"),
        (["train", "--resume"], "--resume needs --out"),
        (["train", "--resume", "--out", run, "--epochs", "3"],
         "drop --epochs"),
        (["train", folder, "--val-split", "1.5"],
         "argument --val-split: must be in [0, 1)"),
        (["train", folder, "--lr", "fast"],
         "argument --lr: must be a number > 0.0"),
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
    ]
    for argv, message in cases:
        code, err = _usage_error(argv, capsys)
        assert code == 2 and message in err, (argv, err)
        assert err.startswith(f"usage: kft {argv[0]}"), err
    assert not os.path.exists(tmp_path / "r2" / "config.toml")


def test_a_checkpoint_cut_short_falls_back_to_the_previous(tmp_path):
    import h5py

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
    assert "previous checkpoint" in recover_checkpoint(tmp_path)
    assert json.loads((tmp_path / "training_metadata.json").read_text(
    ))["epoch"] == 2
    assert recover_checkpoint(tmp_path) is None  # now readable
    for path in tmp_path.glob("*.bkp"):
        path.unlink()
    (tmp_path / "training_metadata.json").write_text('{"epoch": ')
    assert "starts again" in recover_checkpoint(tmp_path)
    assert not list(tmp_path.iterdir())


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


def test_installed_command_exit_status(run, folder, tmp_path):
    result = subprocess.run(
        [_console_script(), "train", str(tmp_path / "none"), "--backbone",
         "simple_cnn"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and not result.stdout
    # The command imports kft's modules lazily: loading a saved model
    # needs its Keras classes registered all the same.
    result = subprocess.run(
        [_console_script(), "eval", run, folder, "--no-plots", "--json",
         "--out", str(tmp_path / "eval")], capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["report"]["num_examples"] == 18
