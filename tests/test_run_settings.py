"""`kft train`'s settings against the strategy that runs: `--strategy
auto` keeps what the user set, a setting the strategy does not read is
refused (or, under auto, reset and said), and `fine_tune`'s own checks
are usage errors (exit 2) before the run folder is written."""

import os
import re
import tomllib

import numpy as np
import pytest
from PIL import Image

from kft import cli

TINY = ["--backbone", "simple_cnn", "--weights", "none", "--image-size",
        "16", "--batch-size", "8", "--head-epochs", "1", "--augment", "none",
        "--no-plots", "--epochs", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(3):
        os.makedirs(root / f"class{c}")
        for i in range(6):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return str(root)


def _config(out):
    with open(os.path.join(out, "config.toml"), "rb") as f:
        return tomllib.load(f)


def test_auto_keeps_what_the_user_set_and_resets_what_it_does_not_use(
        folder, tmp_path, capsys):
    # 18 images: auto picks feature extraction. --bn train was replaced by
    # the recommendation's "frozen"; --lr/--schedule/--layer-decay went
    # unused while config.toml recorded them.
    out = str(tmp_path / "auto")
    assert cli.main(["train", folder, *TINY, "--bn", "train", "--lr",
                     "1000", "--schedule", "one_cycle", "--layer-decay",
                     "0.1", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "strategy auto -> feature_extraction" in printed
    # The size rule assumes pretrained features: a random backbone is
    # named, with what to pass instead.
    assert ("starts from random weights (--weights none), so its frozen "
            "blocks hold random features: pass --strategy full --bn train"
            in printed)
    # Named as the flags (they read `lr`, the library's names).
    assert ("not used by feature_extraction: --lr 1000.0, --schedule "
            "'one_cycle', --layer-decay 0.1 (reset to the defaults)"
            in printed)
    config = _config(out)
    assert config["strategy"] == "feature_extraction"
    assert config["bn"] == "train"
    assert (config["lr"], config["schedule"]) == (1e-4, "cosine")
    assert "layer_decay" not in config or config["layer_decay"] is None


@pytest.mark.parametrize("flags, message", [
    # Dropped silently (only "partial" reads it).
    (["--strategy", "full", "--n-blocks", "2"],
     r"strategy 'full' does not read --n-blocks 2"),
    (["--strategy", "feature_extraction", "--lr", "0.5",
      "--unfreeze-every", "2"],
     r"does not read --lr 0.5, --unfreeze-every 2: drop them"),
    # fine_tune's own checks exited 1 ("error: ValueError ...").
    (["--strategy", "partial", "--n-blocks", "9"],
     r"--n-blocks must be an integer from 1 to 4"),
    (["--strategy", "full", "--schedule", "one_cycle", "--batch-size", "32"],
     r"'one_cycle' needs at least 4"),
])
def test_settings_a_run_cannot_use_exit_2_before_the_run_folder(
        folder, tmp_path, capsys, flags, message):
    out = str(tmp_path / "bad")
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", folder, *TINY, *flags, "--out", out, "--quiet"])
    assert stop.value.code == 2
    assert any(re.search(message, line)
               for line in capsys.readouterr().err.splitlines()), message
    assert not os.path.exists(out)


def test_the_run_folder_lists_the_images_it_skipped(folder, tmp_path):
    # Only the loader's warning said so: the run folder kept no trace.
    import json
    import shutil
    import warnings

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    (data / "class1" / "broken.png").write_bytes(b"not an image")
    out = str(tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["train", str(data), *TINY, "--strategy",
                         "feature_extraction", "--out", out,
                         "--quiet"]) == 0
    with open(os.path.join(out, "run.json")) as f:
        skipped = json.load(f)["skipped_files"]
    assert [os.path.basename(s["path"]) for s in skipped] == ["broken.png"]
    assert skipped[0]["reason"]
    with open(os.path.join(out, "summary.md")) as f:
        summary = f.read()
    assert "Skipped 1 image file(s)" in summary and "broken.png" in summary


def test_numpy_settings_are_written_as_toml_reads_them(tmp_path):
    # config.toml got "val_split = np.float64(0.25)", which load_config
    # refused, and np.int64 could not be written at all.
    import kft

    config = kft.runs.TrainConfig(
        data_dir=str(tmp_path), val_split=np.float64(0.25),
        lr=np.float32(0.5), head_lr=np.longdouble(0.25),
        batch_size=np.int64(4), seed=np.uint32(3),
        plots=np.bool_(False)).check()
    text = config.to_toml()
    assert "np." not in text
    again = kft.runs.TrainConfig.from_toml(text)
    assert again == config
    assert (again.val_split, again.lr, again.batch_size, again.seed,
            again.plots) == (0.25, 0.5, 4, 3, False)
    assert type(again.batch_size) is int and type(again.plots) is bool
