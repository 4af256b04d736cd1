"""Result files written beside their path and moved over it
(`kft._writing`)."""

import errno
import os
import stat

import pytest

from kft._writing import write_file
from kft._writing import written_beside


def test_a_name_of_the_longest_length_is_written(tmp_path):
    # The temporary name beside it was 12 bytes longer: "File name too
    # long" for valid names of 244-255 bytes (80 CJK characters: 240).
    # A long suffix is no format's: the name is cut whole.
    names = ["a" * 249 + ".keras", "图" * 83 + ".md", "r." + "x" * 248]
    for name in names:
        assert len(os.fsencode(name)) in (255, 252, 250)
        write_file(tmp_path / name, "done")
        assert (tmp_path / name).read_text() == "done"
    assert sorted(os.listdir(tmp_path)) == sorted(names)


def test_a_file_is_written_where_os_has_no_pathconf(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "pathconf")  # as on Windows
    write_file(tmp_path / "m.md", "done")
    assert (tmp_path / "m.md").read_text() == "done"


def test_an_error_names_the_path_given_not_the_temporary_file(tmp_path):
    path = str(tmp_path / "m.keras")
    with pytest.raises(OSError, match="Read-only") as info:
        with written_beside(path) as target:
            raise OSError(errno.EROFS, "Read-only file system", target)
    assert info.value.filename == path
    assert os.listdir(tmp_path) == []
    # A write cut off by a full disk names no file ("[Errno 28] No space
    # left on device" said nothing of what was being written).
    with pytest.raises(OSError,
                       match=r"No space left on device: '.*m\.keras'"):
        with written_beside(path):
            raise OSError(errno.ENOSPC, "No space left on device")
    # One with a message only keeps it ("[Errno None] None: ...").
    with pytest.raises(OSError, match=r"^file write failed$"):
        with written_beside(path):
            raise OSError("file write failed")


def test_links_planted_in_a_folder_from_elsewhere_write_nothing_there(
        tmp_path):
    # A received run folder's links redirected kft's writes: one to a
    # file that does not exist created it wherever it pointed, and one at
    # a temporary name (`run.json.tmp`) was written through.
    from kft.runs.report import write_history
    from kft.runs.report import write_json

    folder, victim = tmp_path / "run", tmp_path / "victim"
    folder.mkdir()
    victim.mkdir()
    os.symlink(victim / "profile", folder / "evaluation.json")
    with pytest.raises(FileExistsError, match=r"evaluation.json' is a "
                       r"symbolic link to '.*profile', which does not "
                       r"exist: kft does not create a file through a link"):
        write_file(folder / "evaluation.json", "{}")
    os.symlink(victim / "a", folder / "run.json.tmp")
    os.symlink(victim / "b", folder / f".run.{os.getpid()}.tmp.json")
    write_json(str(folder / "run.json"), {"status": "complete"})
    assert os.listdir(victim) == []
    assert (folder / "run.json").is_file()
    assert not (folder / "run.json").is_symlink()
    # A link to an existing file is still written through, as documented,
    # except for the files kft owns (a run folder's): the link is
    # replaced, as is a hard link (a `cp -al` snapshot of the run).
    (victim / "kept.md").write_text("old")
    os.symlink(victim / "kept.md", folder / "summary.md")
    write_file(folder / "summary.md", "new")
    assert (victim / "kept.md").read_text() == "new"
    (victim / "profile").write_text("mine")
    os.remove(folder / "evaluation.json")
    os.symlink(victim / "profile", folder / "history.json")
    os.link(folder / "run.json", victim / "snapshot.json")
    write_json(str(folder / "history.json"), [])
    write_json(str(folder / "run.json"), {"status": "resumed"})
    assert (victim / "profile").read_text() == "mine"
    assert '"complete"' in (victim / "snapshot.json").read_text()
    assert not (folder / "history.json").is_symlink()
    assert (folder / "history.json").read_text() == "[]\n"
    # history.csv is written apart from the JSON files: replaced too.
    os.symlink(victim / "profile", folder / "history.csv")
    write_history(str(folder), [{"epoch": 1, "loss": 0.5}])
    assert (victim / "profile").read_text() == "mine"
    assert not (folder / "history.csv").is_symlink()
    assert (folder / "history.csv").read_text().splitlines() == [
        "epoch,loss", "1,0.5"]
    # A link to nothing, where kft owns the file: replaced, not refused.
    os.symlink(victim / "nothing", folder / "summary2.md")
    write_file(folder / "summary2.md", "x", replace_links=True)
    assert sorted(os.listdir(victim)) == ["kept.md", "profile",
                                          "snapshot.json"]


def test_a_run_report_replaces_a_link_at_its_learning_curves(tmp_path):
    # kft train's report (history given) draws learning_curves.png too: a
    # link there in a run folder from elsewhere must be replaced like the
    # report's other files, not written through to the file it names.
    pytest.importorskip("matplotlib")
    import numpy as np

    import kft
    from kft.runs.report import write_evaluation

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "mine.png").write_bytes(b"mine")
    os.symlink(victim / "mine.png", tmp_path / "learning_curves.png")
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(8, 8, 3))
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3))
    history = [{"epoch": 1, "phase": 1, "loss": 0.9, "val_loss": 1.0},
               {"epoch": 2, "phase": 1, "loss": 0.7, "val_loss": 0.8}]
    _, files = write_evaluation(model, (x, np.array([0, 1, 0, 1])),
                                ["a", "b"], str(tmp_path), history=history)
    assert "learning_curves.png" in files
    assert (victim / "mine.png").read_bytes() == b"mine"
    assert not (tmp_path / "learning_curves.png").is_symlink()
    assert (tmp_path / "learning_curves.png").read_bytes()[:4] == \
        b"\x89PNG"


def test_a_rewritten_file_keeps_its_mode_and_its_other_names(tmp_path):
    # Written beside and moved over, a 0600 report came back 0644
    # (readable by all); a file with another hard link is written in
    # place, so both names see the new content and stay one file.
    private = tmp_path / "report.json"
    for mode in (0o600, 0o640):  # one of them is not what a umask gives
        private.write_text("old")
        os.chmod(private, mode)
        write_file(private, "new")
        assert private.read_text() == "new"
        assert stat.S_IMODE(os.stat(private).st_mode) == mode
    linked, other = tmp_path / "a.json", tmp_path / "b.json"
    linked.write_text("old")
    os.link(linked, other)
    write_file(linked, "new")
    assert other.read_text() == "new" and os.path.samefile(linked, other)
