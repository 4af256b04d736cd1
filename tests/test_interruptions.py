"""Run folders after an interruption, then edited or read back: what
`kft train --resume` and the loaders say about what they find there, and
what a failed command leaves behind (found by an audit of interruptions
and concurrency).
"""

import json
import os
import shutil

import pytest
from PIL import Image

import kft
from kft.runs import backup as backup_module
from kft.runs.config import TrainConfig


class _Interrupted(Exception):
    pass


def _write_classes(root, names, per_class=6):
    # One colour per class, a shade per image: the classes differ.
    for c, name in enumerate(names):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), (80 * c, 20 * i, 120)).save(
                os.path.join(root, name, f"{i}.png"))
    return str(root)


TINY = dict(backbone="simple_cnn", weights="none", image_size=16,
            batch_size=4, strategy="full", head_epochs=1, epochs=1,
            plots=False, verbose=0, print_fn=None)


def test_a_resume_refuses_data_whose_class_folders_changed(
        tmp_path, monkeypatch):
    # A user who renames or adds a class folder between Ctrl-C and
    # `--resume` must hear it: the checkpoint's head was trained on the
    # old label order (cat=0, dog=1).
    # DATA_DIR a link (to a scratch disk, say), pointed at a copy before
    # the resume that completes: the same data.
    real = _write_classes(tmp_path / "real", ["cat", "dog"])
    data = str(tmp_path / "data")
    os.symlink(real, data)
    out = str(tmp_path / "run")
    real_begin = backup_module.RunBackup.on_train_begin
    calls = []

    def interrupted_at_phase_2(self, logs=None):
        calls.append(1)
        if len(calls) == 2:  # phase 1 checkpointed
            raise _Interrupted
        real_begin(self, logs)

    monkeypatch.setattr(backup_module.RunBackup, "on_train_begin",
                        interrupted_at_phase_2)
    with pytest.raises(_Interrupted):
        kft.train_run(data_dir=data, out=out, **TINY)
    monkeypatch.setattr(backup_module.RunBackup, "on_train_begin", real_begin)
    with open(os.path.join(out, "run.json")) as f:
        assert json.load(f)["class_names"] == ["cat", "dog"]

    # Renamed: ["dog", "tabby"] now, label 0 is "dog" (trained as "cat").
    os.rename(os.path.join(data, "cat"), os.path.join(data, "tabby"))
    with pytest.raises(kft.runs.RunSetupError, match=r"'cat'.*'dog'"):
        kft.train_run(out=out, resume=True, verbose=0, print_fn=None)
    os.rename(os.path.join(data, "tabby"), os.path.join(data, "cat"))
    # Added: a 3-class head cannot take the 2-class checkpoint (Keras'
    # weight-shape error printed a whole kernel).
    _write_classes(data, ["bird"], per_class=4)
    with pytest.raises(kft.runs.RunSetupError, match=r"added: \[.bird.\]"):
        kft.train_run(out=out, resume=True, verbose=0, print_fn=None)
    for name in os.listdir(os.path.join(data, "bird")):
        os.remove(os.path.join(data, "bird", name))
    os.rmdir(os.path.join(data, "bird"))
    # An image added to a class: the validation split was drawn again.
    extra = os.path.join(data, "dog", "extra.png")
    Image.new("RGB", (16, 16), (9, 9, 9)).save(extra)
    with pytest.raises(kft.runs.RunSetupError,
                       match=r"other image files than the run started "
                       r"with \(10 training and 2 validation images then, "
                       r"11 training and 2 validation images now\)"):
        kft.train_run(out=out, resume=True, verbose=0, print_fn=None)
    os.remove(extra)
    # A file renamed: as many images, said so ("10 then, 10 now" was not).
    first = os.path.join(data, "dog", "0.png")
    os.rename(first, extra)
    with pytest.raises(kft.runs.RunSetupError,
                       match=r"\(as many, 10 training and 2 validation "
                       r"images, but other file names\)"):
        kft.train_run(out=out, resume=True, verbose=0, print_fn=None)
    os.rename(extra, first)
    # The data as they were, in a copy the link now points at: the run
    # resumes and completes.
    shutil.copytree(real, tmp_path / "copy")
    os.remove(data)
    os.symlink(tmp_path / "copy", data)
    result = kft.train_run(out=out, resume=True, verbose=0, print_fn=None)
    assert result.resumed and result.class_names == ["cat", "dog"]

    # A finished run whose run.json is gone (it records that the run
    # finished): a resume trained it again and replaced model.keras.
    model_path = os.path.join(out, "model.keras")
    before = os.stat(model_path).st_mtime_ns
    os.remove(os.path.join(out, "run.json"))
    with pytest.raises(kft.runs.RunSetupError,
                       match=r"holds a model.keras and no checkpoints.*"
                       r"restore run.json, or start a new run"):
        kft.train_run(out=out, resume=True, verbose=0, print_fn=None)
    # Cut off instead: the run finished, so "delete it to resume" would
    # lead to the refusal above.
    with open(os.path.join(out, "run.json"), "w") as f:
        f.write('{"status": "comp')
    with pytest.raises(kft.runs.RunSetupError,
                       match=r"run.json' is not a whole JSON file .*the run "
                       r"finished \(its model.keras is whole\): restore "
                       r"run.json to report it, or start a new run"):
        kft.train_run(out=out, resume=True, verbose=0, print_fn=None)
    assert os.stat(model_path).st_mtime_ns == before


def test_a_truncated_run_file_is_named_in_the_message(tmp_path):
    # A disk that filled up in another program, or a hand edit, leaves a
    # cut-off JSON file: the message must say which file to fix.
    run = tmp_path / "run"
    run.mkdir()
    model = kft.build_classifier("simple_cnn", num_classes=2, weights=None,
                                 input_shape=(16, 16, 3))
    model.save(str(run / "model.keras"))
    (run / "run.json").write_text('{"status": "complete", "class_names": [')
    with pytest.raises(ValueError, match="run.json"):  # kft eval / predict
        kft.runs.load_run(str(run))
    # Bytes that are not UTF-8 (another program's file copied over it):
    # named too, not a bare codec error.
    (run / "run.json").write_bytes(b'{"status": "compl\xe9te"}')
    with pytest.raises(ValueError, match=r"run.json' is not a whole JSON"):
        kft.runs.load_run(str(run))
    (run / "run.json").write_text('{"status": "complete", "class_names": [')

    data = _write_classes(tmp_path / "data", ["cat", "dog"], per_class=2)
    (run / "config.toml").write_text(
        TrainConfig(data_dir=data, out=str(run)).to_toml())
    with pytest.raises(kft.runs.RunSetupError, match="run.json"):
        kft.train_run(out=str(run), resume=True, print_fn=None)

    state = tmp_path / "checkpoints"
    state.mkdir()
    (state / backup_module.STATE_FILE).write_text('{"history": {"0": {')
    with pytest.raises(ValueError, match=backup_module.STATE_FILE):
        backup_module.RunBackup(str(state), model, print_fn=None)


def test_a_run_folder_without_config_toml_names_a_way_out(tmp_path):
    # config.toml deleted by hand (checkpoints/ and run.json kept): the two
    # messages sent the user back and forth.
    data = _write_classes(tmp_path / "data", ["cat", "dog"], per_class=2)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "run.json").write_text('{"status": "running"}')
    with pytest.raises(kft.runs.RunSetupError) as resumed:
        kft.train_run(out=str(out), resume=True, print_fn=None)
    with pytest.raises(kft.runs.RunSetupError) as started:
        kft.train_run(data_dir=data, out=str(out), print_fn=None, **{
            k: v for k, v in TINY.items() if k not in ("verbose",
                                                        "print_fn")})
    assert "--resume" in str(started.value)
    # The resume's message must not send the user back to a new run in
    # the same folder, which refuses it.
    assert "without --resume" not in str(resumed.value)
    assert "another --out" in str(resumed.value)
    # A finished run's folder that lost config.toml holds only model.keras
    # (and run.json, lost too here): a new run there is refused as well.
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "model.keras").write_bytes(b"")
    with pytest.raises(kft.runs.RunSetupError,
                       match=r"holds a run \(model.keras\) but no "
                       r"config.toml.*another --out"):
        kft.train_run(out=str(finished), resume=True, print_fn=None)


@pytest.mark.parametrize("command", ["lr-find", "export"])
def test_a_failed_command_removes_the_empty_folders_it_made(
        tmp_path, monkeypatch, capsys, command):
    # `--plot new/sub/lr.png` or `--out new/sub/m.keras` interrupted left
    # the empty folders `new/sub` behind (kft train and compare removed
    # theirs); a folder that was there stays.
    from kft import cli
    from kft.deploy import exporting
    from kft.runs import lr

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lr, "find_rate", interrupted)
    monkeypatch.setattr(exporting, "export", interrupted)
    data = _write_classes(tmp_path / "data", ["cat", "dog"], per_class=2)
    model = tmp_path / "m.keras"
    kft.build_classifier("simple_cnn", 2, weights=None,
                         input_shape=(16, 16, 3)).save(str(model))
    (tmp_path / "kept").mkdir()
    for parent in ("new/sub", "kept"):
        target = tmp_path / parent / "out.png"
        argv = (["lr-find", data, "--plot", str(target)]
                if command == "lr-find" else
                ["export", str(model), "--format", "keras", "--out",
                 str(target.with_suffix(".keras"))])
        assert cli.main(argv) == 1
        assert "interrupted." in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["data", "kept", "m.keras"]
    assert os.listdir(tmp_path / "kept") == []


def test_a_class_change_of_a_large_run_is_said_in_one_line():
    # 1,000 class names of 50 characters, listed whole twice, made the
    # refusal 112 KB, the change itself last.
    from types import SimpleNamespace

    from kft.runs.same_data import check_same_data

    then = [f"class {i:04d}" for i in range(1000)]
    now = [name.replace("class 0007", "renamed") for name in then]
    config = TrainConfig(data_dir="photos")
    with pytest.raises(ValueError) as info:
        check_same_data({"class_names": then}, config,
                        SimpleNamespace(class_names=sorted(now)), None)
    message = str(info.value)
    assert len(message) < 1000, len(message)
    assert message.index("added: ['renamed']; gone: ['class 0007']") < \
        message.index("'class 0000', 'class 0001'")
    assert "... and 980 more]" in message


def _interrupted_run(data, out, monkeypatch, **settings):
    # A run stopped at the start of phase 2 (phase 1 checkpointed).
    real_begin = backup_module.RunBackup.on_train_begin
    calls = []

    def interrupted_at_phase_2(self, logs=None):
        calls.append(1)
        if len(calls) == 2:
            raise _Interrupted
        real_begin(self, logs)

    monkeypatch.setattr(backup_module.RunBackup, "on_train_begin",
                        interrupted_at_phase_2)
    with pytest.raises(_Interrupted):
        kft.train_run(data_dir=data, out=out, **{**TINY, **settings})
    monkeypatch.setattr(backup_module.RunBackup, "on_train_begin", real_begin)


def test_a_resume_without_validation_still_checks_which_class_holds_a_file(
        tmp_path, monkeypatch):
    # val_split=None (train on every image): the run.json record has no
    # validation split, and the resume completes.
    data = str(tmp_path / "data")
    for name, prefix in (("cat", "c"), ("dog", "d")):
        os.makedirs(os.path.join(data, name))
        for i in range(5):
            Image.new("RGB", (16, 16), (90 * (prefix == "d"), 30 * i, 9)).save(
                os.path.join(data, name, f"{prefix}{i}.png"))
    out = str(tmp_path / "run")
    _interrupted_run(data, out, monkeypatch, val_split=None)
    run_json = os.path.join(out, "run.json")
    with open(run_json) as f:
        info = json.load(f)
    assert list(info["data"]) == ["train"]

    def move(name, source, target):
        os.rename(os.path.join(data, source, name),
                  os.path.join(data, target, name))

    # Two images relabelled (cat's c0 is a dog, dog's d0 a cat): as many
    # images of the same names, but their labels changed under the run.
    move("c0.png", "cat", "dog")
    move("d0.png", "dog", "cat")
    with pytest.raises(kft.runs.RunSetupError,
                       match=r"as many, 10 training images, but other file"):
        kft.train_run(out=out, resume=True, verbose=0, print_fn=None)
    move("c0.png", "dog", "cat")
    move("d0.png", "cat", "dog")
    # A run.json of an older kft (classes, no "data" record): a renamed
    # class folder is still refused.
    with open(run_json, "w") as f:
        json.dump({k: v for k, v in info.items() if k != "data"}, f)
    os.rename(os.path.join(data, "cat"), os.path.join(data, "tabby"))
    with pytest.raises(kft.runs.RunSetupError, match=r"gone: \W*cat"):
        kft.train_run(out=out, resume=True, verbose=0, print_fn=None)
    os.rename(os.path.join(data, "tabby"), os.path.join(data, "cat"))
    # run.json lost, its checkpoints kept (and a model.keras saved just
    # before a kill, the checkpoints not yet removed): not a finished run,
    # so the resume continues it.
    os.remove(run_json)
    open(os.path.join(out, "model.keras"), "w").close()
    result = kft.train_run(out=out, resume=True, verbose=0, print_fn=None)
    assert result.resumed and result.class_names == ["cat", "dog"]
    with open(run_json) as f:
        assert json.load(f)["status"] == "complete"


@pytest.mark.parametrize("checkpointed", [True, False])
def test_the_resume_hint_is_a_command_to_paste_once_there_is_a_checkpoint(
        tmp_path, capsys, monkeypatch, checkpointed):
    # The hint is a command to paste: `--out my runs/a` unquoted resumed
    # the folder "my" (and read "runs/a" as DATA_DIR). Stopped before the
    # first checkpoint there is nothing to resume: the run's folder is
    # removed, and a hint would lead to "Nothing to resume".
    import shlex

    from kft import cli

    real = backup_module.RunBackup.on_epoch_end

    def interrupt(self, epoch, logs=None):
        if checkpointed:
            real(self, epoch, logs)  # the epoch's checkpoint, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(backup_module.RunBackup, "on_epoch_end", interrupt)
    data = _write_classes(tmp_path / "data", ["cat", "dog"], per_class=4)
    out = str(tmp_path / "my runs" / "a")
    assert cli.main(["train", data, "--backbone", "simple_cnn", "--weights",
                     "none", "--image-size", "16", "--batch-size", "8",
                     "--head-epochs", "1", "--augment", "none",
                     "--no-plots", "--out", out, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "kft train: interrupted." in err
    hints = [line.split("continue the run with: ")[1]
             for line in err.splitlines() if "continue the run with: " in line]
    if checkpointed:
        assert [shlex.split(hint) for hint in hints] == [
            ["kft", "train", "--resume", "--out", out]]
    else:
        assert hints == [] and not os.path.exists(out)
