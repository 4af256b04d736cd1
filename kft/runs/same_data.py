"""The data a run trains on, recorded in its run.json and checked when it
resumes: a resume continues the same run, so it must read the classes and
images the run began with. A class folder renamed between a Ctrl-C and the
resume had swapped the labels without a word (the kept weights score the
classes in the first order); an image added had redrawn the validation
split, and the best epoch was picked over two validation sets.
"""

import hashlib
import os

from kft._validation import listed


def data_record(train, val):
    """`{"train": ..., "val": ...}`: each split's image count and a hash of
    its files, each named by its class and file name: not by where the
    data lie (a folder moved, or a link pointed at a copy, is the same
    data; `kft.data` names files through links).

    Example:
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from kft.runs import TrainConfig, load_folder_data
    >>> root = tempfile.mkdtemp()
    >>> for name in ("cat", "dog"):
    ...     os.makedirs(os.path.join(root, name))
    ...     for i in range(3):
    ...         Image.new("RGB", (8, 8)).save(
    ...             os.path.join(root, name, f"{i}.png"))
    >>> config = TrainConfig(data_dir=root, image_size=8, val_split=0.3)
    >>> record = data_record(*load_folder_data(config))
    >>> record["train"]["images"], record["val"]["images"]
    (4, 2)
    """
    return {name: _split_record(data)
            for name, data in (("train", train), ("val", val))
            if data is not None}


def _split_record(data):
    paths = getattr(data, "paths", None) or ()
    labels = data.example_labels if paths else ()
    paths = sorted(f"{data.class_names[label]}/{os.path.basename(path)}"
                   for path, label in zip(paths, labels))
    # Names of another encoding arrive as surrogates: hashed as they are.
    digest = hashlib.sha256("\n".join(paths).encode(
        "utf-8", "surrogateescape")).hexdigest()
    return {"images": int(data.num_examples), "files_sha256": digest}


def check_same_data(info, config, train, val):
    """Raises `ValueError` when the data of a resumed run differ from those
    its run.json (`info`) recorded: other class folders, or other images
    (a run.json of an older kft records the classes only)."""
    then, now = info.get("class_names"), list(train.class_names)
    if then is not None and list(then) != now:
        added = [name for name in now if name not in then]
        gone = [name for name in then if name not in now]
        change = "; ".join(
            [f"added: {listed(added)}"] * bool(added)
            + [f"gone: {listed(gone)}"] * bool(gone))
        raise ValueError(
            f"Data folder {config.data_dir!r} holds other classes than the "
            f"run started with ({change}): {listed(then)} then, "
            f"{listed(now)} now. The "
            "run's weights score its classes in the first order, so the "
            "resumed run would train and label them wrongly: put the class "
            "folders back as they were, or start a new run with another "
            "--out.")
    recorded, now = info.get("data"), data_record(train, val)
    if recorded and recorded != now:
        then_counts, now_counts = _counts(recorded), _counts(now)
        change = (f"{then_counts} then, {now_counts} now"
                  if then_counts != now_counts else
                  f"as many, {now_counts}, but other file names")
        raise ValueError(
            "The data folders hold other image files than the run started "
            f"with ({change}): a resumed run reads the images it began "
            "with (its validation split and best epoch depend on them). "
            "Put them back as they were, or start a new run with another "
            "--out.")


def _counts(record):
    return " and ".join(f"{record[name]['images']} {what}"
                        for name, what in (("train", "training"),
                                           ("val", "validation"))
                        if name in record) + " images"
