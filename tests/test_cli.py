import os
import subprocess
import sys

import pytest

import kft
from kft import cli
from kft.cli._checks import flag_names


def _exit_code(argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code


@pytest.mark.parametrize("argv,message", [
    (["demo", "--target-per-class", "0"],
     "argument --target-per-class: must be an integer >= 1. Received: '0'"),
    (["demo", "--image-size", "big"],
     "argument --image-size: must be an integer >= 8. Received: 'big'"),
    (["demo", "--workdir", "/nonexistent"],
     "argument --workdir: must be an existing directory. "
     "Received: '/nonexistent'"),
    (["demo", "--target-per-class", "200"],
     "argument --target-per-class: Digit 5 has"),
])
def test_demo_rejects_bad_arguments_before_training(argv, message, capsys,
                                                    monkeypatch):
    def no_training(**kwargs):
        raise AssertionError("the demo started")

    monkeypatch.setattr("kft.demo.run_demo", no_training)
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: kft demo") and message in err
    assert "Traceback" not in err


def test_backbones_without_a_match_fails_with_suggestions(capsys):
    # A pattern matching nothing is bad input: exit 2, as the README says
    # (it was 1, a failure while working).
    assert cli.main(["backbones", "nosuch*"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "no backbone matches 'nosuch*'" in err
    assert cli.main(["backbones", "resnt50"]) == 2
    assert "Did you mean: resnet50" in capsys.readouterr().err
    assert cli.main(["backbones", "xception"]) == 2
    assert ("keras.applications' Xception is not registered: some of its "
            "layers are named by Keras' global counter"
            in capsys.readouterr().err)
    # Patterns match as names do: "efficientnet_b*" found nothing.
    assert cli.main(["backbones", "efficientnet_b*"]) == 0
    assert capsys.readouterr().out.startswith("efficientnetb0 ")
    assert kft.list_backbones("efficientnet_b*")[:2] == [
        "efficientnetb0", "efficientnetb1"]


def test_backbones_lists_matches_and_spelt_names(capsys):
    assert cli.main(["backbones", "ResNet5*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["resnet50", "resnet50v2"]
    assert cli.main(["backbones", "EfficientNet_B0"]) == 0
    assert capsys.readouterr().out.startswith("efficientnetb0 ")


def test_backbones_params_counts_the_backbone_without_its_head(capsys):
    # `kft backbones --params`: the count of the backbone at its default
    # size, in the column between the size and the blocks.
    assert cli.main(["backbones", "simple_cnn", "--params"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    expected = kft.models.backbones.create_backbone(
        "simple_cnn", weights=None).count_params()
    assert line.split()[:3] == ["simple_cnn", "32px", f"{expected:,}"]
    assert line.endswith("stem > block1 > block2 > block3")


def _console_script():
    path = os.path.join(os.path.dirname(sys.executable), "kft")
    if not os.path.exists(path):
        pytest.skip("the `kft` console script is not installed")
    return path


def test_help_imports_neither_keras_nor_jax():
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    result = subprocess.run([_console_script(), "--help"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "demo" in result.stdout and "backbones" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip()
                for line in result.stderr.splitlines() if "|" in line}
    assert "kft" in imported
    assert not imported & {"keras", "jax", "numpy"}, sorted(
        imported & {"keras", "jax", "numpy"})


def test_warnings_print_as_the_commands_lines():
    # They printed a kft file and line (or the `kft` script's: "bin/kft:8")
    # and its source, e.g. "kft/runs/recipe.py:57: SkippedFilesWarning:".
    program = ("import warnings, kft.cli as cli\n"
               "cli.demo_command = lambda args, argv: warnings.warn('x') or 0"
               "\n"
               "print(cli.main(['demo']))\n"
               "warnings.warn('after')\n")
    result = subprocess.run([sys.executable, "-c", program],
                            capture_output=True, text=True, timeout=120)
    assert result.stdout == "0\n"
    lines = result.stderr.splitlines()
    assert lines[0] == "kft demo: UserWarning: x"
    assert "<string>:4: UserWarning: after" in lines[1]  # put back


@pytest.mark.parametrize("size", [10, 100_000])
def test_a_closed_pipe_ends_the_command_quietly(size):
    # `kft predict ... | head` ended with "kft predict: error:
    # BrokenPipeError" (or Python's "Exception ignored" at exit).
    program = ("import sys, kft.cli as cli\n"
               f"cli.demo_command = lambda args, argv: print('x' * {size})"
               " or 0\n"
               "sys.exit(cli.main(['demo']))\n")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    # Buffered, as in a user's shell: with PYTHONUNBUFFERED set (as some
    # environments do) `print` raised at once, so the flush at exit and
    # the quiet redirect after it went untested.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    try:
        result = subprocess.run([sys.executable, "-c", program],
                                stdout=write, stderr=subprocess.PIPE,
                                text=True, timeout=120, env=env)
    finally:
        os.close(write)
    assert result.stderr == ""
    assert result.returncode == 1


def test_a_broken_pipe_that_is_not_stdout_is_reported():
    # Every BrokenPipeError ended the command quietly, also one from a pipe
    # the command wrote to (a launched process, a FIFO output path).
    program = ("import kft.cli as cli\n"
               "def demo(args, argv):\n"
               "    print('started')\n"
               "    raise BrokenPipeError(32, 'Broken pipe')\n"
               "cli.demo_command = demo\n"
               "raise SystemExit(cli.main(['demo']))\n")
    result = subprocess.run([sys.executable, "-c", program],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout == "started\n"
    assert result.stderr == ("kft demo: error: BrokenPipeError: [Errno 32] "
                             "Broken pipe\n")


def test_import_kft_still_registers_its_keras_classes(tmp_path):
    """`import kft` loads every module (only the `kft` command defers), so a
    saved kft model loads right after it."""
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=(16, 16, 3))
    path = str(tmp_path / "model.keras")
    model.save(path)
    code = ("import kft, keras; "
            f"print(keras.models.load_model({path!r}).name)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "kft_simple_cnn"


def test_every_public_name_is_importable():
    for name in kft.__all__:
        assert getattr(kft, name) is not None, name
    assert set(kft.__all__) <= set(dir(kft))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        kft.nothing  # noqa: B018


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export",
                                     "lr-find", "compare", "demo",
                                     "backbones"])
def test_every_subcommand_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: kft {command}")
    assert f"example:\n  kft {command} " in out


def test_demo_passes_seeds_and_output_folder(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("kft.demo.run_demo",
                        lambda **kwargs: calls.append(kwargs))
    assert cli.main(["demo", "--seeds", "3", "--out", str(tmp_path),
                     "--no-plots", "--target-epochs", "4"]) == 0
    assert calls[0]["seeds"] == 3 and calls[0]["output_dir"] == str(tmp_path)
    assert calls[0]["plots"] is False and calls[0]["target_epochs"] == 4
    # --workdir: an existing folder one can write to reaches the demo.
    assert cli.main(["demo", "--workdir", str(tmp_path), "--no-plots"]) == 0
    assert calls[1]["workdir"] == str(tmp_path)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder as `kft train` leaves it: model.keras without class
    names, run.json with them; and a labelled folder of its classes."""
    import json

    from PIL import Image

    root = tmp_path_factory.mktemp("cli")
    run = root / "run"
    run.mkdir()
    kft.build_classifier("simple_cnn", 2, weights=None,
                         input_shape=(16, 16, 3)).save(run / "model.keras")
    (run / "run.json").write_text(json.dumps({"class_names": ["ant",
                                                             "bee"]}))
    for name in ("ant", "bee"):
        (root / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 18), (60 * i, 90, 200)).save(
                root / "data" / name / f"{i}.png")
    return run, root / "data"


def test_export_never_writes_over_the_model_or_an_existing_file(
        run_folder, tmp_path, capsys):
    import shutil

    run = shutil.copytree(run_folder[0], tmp_path / "run")
    model = run / "model.keras"
    before = model.read_bytes()
    for overwrite in ([], ["--overwrite"]):
        assert _exit_code(["export", str(run), "--format", "keras", "--out",
                           str(model), *overwrite]) == 2
        assert "is the model file being exported" in capsys.readouterr().err
        assert model.read_bytes() == before
    out = tmp_path / "m.keras"
    out.write_bytes(b"keep me")
    assert _exit_code(["export", str(run), "--format", "keras", "--out",
                       str(out)]) == 2
    assert (f"--out {str(out)!r} already exists; pass --overwrite"
            in capsys.readouterr().err)
    assert out.read_bytes() == b"keep me"
    assert cli.main(["export", str(run), "--format", "keras", "--out",
                     str(out), "--overwrite", "--quiet"]) == 0
    assert kft.deploy.read_metadata(out)["class_names"] == ["ant", "bee"]


def test_links_in_a_run_folder_from_elsewhere_do_not_take_the_report(
        run_folder, tmp_path, capsys):
    # A received run folder's links sent kft eval's report (and kft
    # export's model) wherever they pointed, creating files there.
    import shutil

    run, data = run_folder
    run = shutil.copytree(run, tmp_path / "run")
    victim = tmp_path / "victim"
    victim.mkdir()
    default = run / f"eval-{os.path.basename(data)}"
    os.symlink(victim, default)
    assert _exit_code(["eval", str(run), str(data), "--no-plots"]) == 2
    assert (f"the default --out {str(default)!r} (a link to {str(victim)!r}) "
            "is a link; pass --out" in capsys.readouterr().err)
    os.remove(default)
    default.mkdir()
    os.symlink(victim / "profile", default / "evaluation.json")
    argv = ["eval", str(run), str(data), "--no-plots", "--quiet"]
    assert _exit_code(argv) == 2
    assert (f"already holds a report (evaluation.json (a link to "
            f"{str(victim / 'profile')!r}))" in capsys.readouterr().err)
    # --overwrite replaces the report's files, a link itself included,
    # never what it points to; a plot name alone counts as a report too.
    (victim / "picture.png").write_bytes(b"mine")
    os.symlink(victim / "picture.png", default / "confusion_matrix.png")
    assert _exit_code(argv) == 2
    assert "confusion_matrix.png (a link to " in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite"]) == 0
    assert not (default / "evaluation.json").is_symlink()
    assert (victim / "picture.png").read_bytes() == b"mine"
    os.remove(victim / "picture.png")
    os.symlink(victim / "m.keras", run / "model_inference.keras")
    assert _exit_code(["export", str(run), "--format", "keras"]) == 2
    assert "(a link to " in capsys.readouterr().err
    assert os.listdir(victim) == []


def test_export_of_a_run_model_file_names_its_classes(run_folder, tmp_path):
    run, _ = run_folder
    out = tmp_path / "m.keras"
    assert cli.main(["export", str(run / "model.keras"), "--format",
                     "keras", "--out", str(out), "--quiet"]) == 0
    assert kft.deploy.read_metadata(out)["class_names"] == ["ant", "bee"]


def test_export_refuses_a_batch_for_keras_files(run_folder, tmp_path,
                                                capsys):
    run, _ = run_folder
    assert _exit_code(["export", str(run), "--format", "keras", "--batch",
                       "1", "--out", str(tmp_path / "m.keras")]) == 2
    assert ("--batch 1 applies to --format onnx only"
            in capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_eval_and_predict_read_images_at_the_models_height_and_width(
        run_folder, tmp_path, capsys):
    # The run's size was the input's height alone: a 24x40 model was fed
    # 24x24 images and `kft eval` crashed in Keras; a model of any size
    # raised a bare TypeError from int(None).
    import json

    _, data = run_folder
    wide = tmp_path / "wide.keras"
    kft.build_classifier("simple_cnn", 2, weights=None, input_shape=(24, 40, 3),
                         class_names=["ant", "bee"]).save(wide)
    assert kft.runs.load_run(wide).image_size == (24, 40)
    assert cli.main(["eval", str(wide), str(data), "--out",
                     str(tmp_path / "report"), "--no-plots", "--quiet",
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert sum(report["support"]) == 4
    assert cli.main(["predict", str(wide), str(data / "ant" / "0.png"),
                     "--json"]) == 0
    capsys.readouterr()
    free = tmp_path / "free.keras"
    kft.build_classifier("simple_cnn", 2, weights=None,
                         input_shape=(None, None, 3)).save(free)
    assert kft.runs.load_run(free).image_size is None
    assert _exit_code(["eval", str(free), str(data), "--out",
                       str(tmp_path / "free_report")]) == 2
    assert ("takes no images of a fixed size (input shape (None, None, "
            "None, 3)); reading images for it needs one"
            in capsys.readouterr().err)
    assert not (tmp_path / "free_report").exists()
    assert _exit_code(["predict", str(free),
                       str(data / "ant" / "0.png")]) == 2
    assert ("must be a model with a static input height and width"
            in capsys.readouterr().err)
    # A model of other inputs still exports (load_run read its "size").
    import keras

    inputs = keras.Input((6,))
    plain = tmp_path / "plain.keras"
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(plain)
    assert kft.runs.load_run(plain).image_size is None
    assert cli.main(["export", str(plain), "--format", "keras", "--out",
                     str(tmp_path / "out.keras"), "--quiet"]) == 0


def test_eval_keeps_an_existing_report_unless_told(run_folder, tmp_path,
                                                   capsys, monkeypatch):
    run, data = run_folder
    (tmp_path / "evaluation.json").write_text("{}")
    argv = ["eval", str(run), str(data), "--out", str(tmp_path),
            "--no-plots", "--quiet"]
    assert _exit_code(argv) == 2
    assert ("already holds a report (evaluation.json); pass --overwrite"
            in capsys.readouterr().err)
    assert (tmp_path / "evaluation.json").read_text() == "{}"
    # --overwrite --no-plots: the earlier report's plots go with it.
    (tmp_path / "confusion_matrix.png").write_bytes(b"old")
    assert cli.main(argv + ["--overwrite"]) == 0
    assert "accuracy" in (tmp_path / "evaluation.json").read_text()
    assert not (tmp_path / "confusion_matrix.png").exists()
    assert capsys.readouterr().err == ""  # --quiet: no progress bar
    # Without --quiet a progress bar over the batches, on stderr; the
    # report on stdout.
    assert cli.main(argv[:-1] + ["--overwrite"]) == 0
    printed = capsys.readouterr()
    assert "batch" in printed.err and "batch" not in printed.out
    assert "accuracy" in printed.out and "Per class:" in printed.out
    # Of many classes, those of lowest F1 (1,000 printed 1,039 lines);
    # the file keeps them all.
    from kft.cli import _deploy

    monkeypatch.setattr(_deploy, "CONSOLE_CLASSES", 1)
    assert cli.main(argv[:-1] + ["--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "The 1 classes of lowest F1 (of " in printed
    assert "Per class:" in (tmp_path / "evaluation.md").read_text()


def test_predict_loads_the_model_once(run_folder, capsys, monkeypatch):
    import keras

    run, data = run_folder
    loads = []
    load = keras.saving.load_model
    monkeypatch.setattr(keras.saving, "load_model",
                        lambda *a, **k: loads.append(a) or load(*a, **k))
    assert cli.main(["predict", str(run / "model.keras"),
                     str(data / "ant"), str(data / "bee" / "0.png")]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert len(loads) == 1 and len(lines) == 3
    # Progress goes to stderr: stdout keeps one line per image.
    assert "3/3" in printed.err and "3/3" not in printed.out
    # The class names of the run.json beside the file.
    assert all(line.split("\t")[1].split()[0] in ("ant", "bee")
               for line in lines)


def test_predict_prints_class_and_file_names_escaped(run_folder, capsys,
                                                    monkeypatch):
    # A model from someone else whose class names hold terminal escapes,
    # an image file name holding a tab: one line per image, nothing the
    # terminal would act on, the tab-separated columns intact.
    import types

    from kft.deploy import prediction

    run, data = run_folder
    monkeypatch.setattr(prediction, "predict", lambda *a, **k: [
        types.SimpleNamespace(source="a\tb.png",
                              labels=["\x1b[2J\x1b]0;pwned\x07", "bee"],
                              probabilities=[0.75, 0.25], indices=[1, 0])])
    assert cli.main(["predict", str(run), str(data / "ant")]) == 0
    line, = capsys.readouterr().out.splitlines()
    assert "\x1b" not in line and "\x07" not in line
    assert line.split("\t") == ["a\\tb.png",
                                "\\x1b[2J\\x1b]0;pwned\\x07 0.750, bee 0.250"]


def test_predict_of_a_bad_image_file_exits_2(run_folder, tmp_path, capsys):
    run, _ = run_folder
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    assert _exit_code(["predict", str(run), str(bad)]) == 2
    assert (f"Cannot read image file {str(bad)!r}: not an image"
            in capsys.readouterr().err)


def test_demo_help_says_where_the_plots_go(capsys):
    """Without --out the demo writes its plots to --workdir, else to a
    kft_demo_output_* folder (`kft.run_demo`'s `output_dir`)."""
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "none written" not in help_text
    assert ("folder for the plots (and comparison.json with --seeds; "
            "default: --workdir if given, else a new kft_demo_output_* "
            "folder in the system's temporary folder, kept; its path is "
            "printed)") in help_text
    from kft.demo import run_demo

    # What the library does:
    assert ("Defaults to `workdir` when given, else a new "
            "`kft_demo_output_*` directory in the system's temporary "
            "directory (kept; its path is printed)") in " ".join(
                run_demo.__doc__.split())


def test_flag_names_name_every_setting_by_its_train_flag():
    """Library messages name settings in backticks; the CLI shows the
    flag that sets each (a positional DATA_DIR for data_dir)."""
    import dataclasses

    train = cli.build_parser()[1]["train"]
    flags = set(train._option_string_actions)
    for field in dataclasses.fields(kft.runs.TrainConfig):
        shown = flag_names(f"Argument `{field.name}` must be ...")
        assert "`" not in shown, field.name
        flag = shown.split()[1]
        assert flag in flags or (field.name, flag) == ("data_dir",
                                                       "DATA_DIR"), shown
    assert flag_names("Argument `dropout` must be a finite number in "
                           "[0, 1).") == ("Argument --dropout must be a "
                                          "finite number in [0, 1).")
    # The names of kft.data.from_directory and kft.fine_tune too.
    assert flag_names("`augmentation`, `validation_split`, "
                           "`learning_rate`, `head_learning_rate`, "
                           "`early_stopping_patience`") == (
        "--augment, --val-split, --lr, --head-lr, --early-stopping")


def test_train_help_states_the_defaults_a_run_uses():
    # The help text writes its defaults out; TrainConfig holds them.
    import re

    train = cli.build_parser()[1]["train"]
    config = kft.runs.TrainConfig()
    stated = {}
    for action in train._actions:
        found = re.search(r"\(default ([^;:)\s]+)|(\w+) \(default\)",
                          action.help or "")
        if found and action.dest != "out":
            stated[action.dest] = found.group(1) or found.group(2)
    assert {"val_split", "head_lr", "lr", "epochs", "head_epochs",
            "backbone", "weights", "strategy", "monitor"} <= set(stated)
    for name, text in stated.items():
        default = getattr(config, name)
        assert (float(text) == default if isinstance(default, (int, float))
                else text == default), (name, text, default)


def test_lr_find_defaults_are_a_runs():
    # lr-find measures the run `kft train` starts: a --weight-decay
    # default of 1e-4 measured another optimizer than the run's 1e-2.
    import dataclasses

    finder = cli.build_parser()[1]["lr-find"]
    config = kft.runs.TrainConfig()
    fields = {f.name for f in dataclasses.fields(config)} - {"data_dir"}
    mirrored = {action.dest: action.default for action in finder._actions
                if action.dest in fields}
    assert {"weight_decay", "head_epochs", "batch_size", "augment", "seed",
            "backbone", "weights"} <= set(mirrored)
    # Its strategy is a set to measure, never auto (which picks by size).
    assert mirrored.pop("strategy") == "full"
    for name, default in mirrored.items():
        assert default == getattr(config, name), (name, default)


def test_train_recipe_defaults_are_fine_tunes():
    # `kft train` runs `kft.fine_tune`: the README's rates (3 head epochs
    # at 1e-3, then 10 at 1e-4) hold for both.
    import inspect

    config = kft.runs.TrainConfig()
    defaults = {name: p.default for name, p in inspect.signature(
        kft.fine_tune).parameters.items()}
    for setting, argument in (("head_lr", "head_learning_rate"),
                              ("lr", "learning_rate"),
                              ("head_epochs", "head_epochs"),
                              ("epochs", "epochs"), ("n_blocks", "n_blocks"),
                              ("schedule", "schedule"),
                              ("weight_decay", "weight_decay"),
                              ("layer_decay", "layer_decay"),
                              ("unfreeze_every", "unfreeze_every"),
                              ("bn", "bn"), ("batch_size", "batch_size")):
        assert getattr(config, setting) == defaults[argument], setting


def test_home_in_path_arguments_is_the_home_folder(monkeypatch, capsys):
    # Where the shell leaves "~" (`--out=~/x`, quotes), kft made a folder
    # named "~" or said a folder "~/photos" does not exist.
    from kft.cli._checks import expand_home
    from kft.cli._parser import build_parser

    monkeypatch.setenv("HOME", "/home/u")
    parser, _ = build_parser()
    cases = [
        (["eval", "~/run", "~/photos", "--out=~/report"],
         {"run": "/home/u/run", "data_dir": "/home/u/photos",
          "out": "/home/u/report"}),
        (["predict", "~/m.onnx", "~/a.jpg", "b.jpg"],
         {"run": "/home/u/m.onnx", "images": ["/home/u/a.jpg", "b.jpg"]}),
        (["export", "~/run", "--out=~/m.onnx"], {"out": "/home/u/m.onnx"}),
        (["lr-find", "~/photos", "--plot=~/lr.png", "--weights=~/w.h5"],
         {"data_dir": "/home/u/photos", "plot": "/home/u/lr.png",
          "weights": "/home/u/w.h5"}),
        (["compare", "~/photos", "--test-dir=~/test", "--out=~/c"],
         {"test_dir": "/home/u/test", "out": "/home/u/c",
          "weights": "imagenet"}),
        (["train", "~/photos", "--val-dir=~/val", "--config=~/c.toml"],
         {"data_dir": "/home/u/photos", "val_dir": "/home/u/val",
          "config": "/home/u/c.toml"}),
    ]
    for argv, expected in cases:
        args = expand_home(parser.parse_args(argv))
        assert {k: getattr(args, k) for k in expected} == expected, argv
    # ... and the command itself expands them before using them.
    with pytest.raises(SystemExit):
        cli.main(["eval", "~/missing_run", "photos"])
    assert "'/home/u/missing_run' does not exist" in capsys.readouterr().err


def test_under_the_launcher_kft_train_joins_the_job(monkeypatch, capsys):
    # Every process of `python -m kft.distributed --processes 2 kft train`
    # ran a one-process job of its own; they fought over the run folder.
    from kft.distributed import processes

    joined = []
    monkeypatch.setattr(processes, "initialize",
                        lambda: joined.append(True) or True)
    # JAX's own variable (a cluster's, set for every program) is no
    # launcher: the command runs as without it.
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", "/missing/run", "photos"])
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("KFT_COORDINATOR", "localhost:1234")
    for argv in (["eval", "run", "photos"], ["backbones", "resnet50"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        assert (f"kft {argv[0]} runs in one process: start it without "
                "python -m kft.distributed") in capsys.readouterr().err
    assert joined == []
    # train joins first, then reads its command line as usual.
    with pytest.raises(SystemExit):
        cli.main(["train", "/missing/photos"])
    assert joined == [True]
    assert "Data folder '/missing/photos' does not exist" in \
        capsys.readouterr().err
