"""The class-folder layout: its folders, classes and image files.

`split_folders` and `class_folders` find the train and val folders and
the classes, `scan_splits` lists and checks their images, and
`stratified_split` holds out val without a val folder. `FileLoader`
decodes one `(path, label)` record for the pipeline, reporting a file that
fails instead of raising.
"""

import collections
import concurrent.futures
import os
import threading
import warnings

import numpy as np

from kft._validation import fail_argument
from kft._validation import listed
from kft._validation import unicode_form_note
from kft._validation import user_stacklevel
from kft.data import _images

# Folders of operating-system metadata, never classes or images (names
# compared in lower case): macOS zip archives add `__MACOSX/` (full of
# `._*` AppleDouble files); a Synology NAS puts `@eaDir/` (thumbnails of
# each photo: trained on as more images of the class, a class of its own
# at the top) and `#recycle/` in shared folders; Windows drives and Linux
# file systems hold a recycle bin, `System Volume Information/` and
# `lost+found/`.
METADATA_FOLDERS = ("__macosx", "@eadir", "#recycle", "$recycle.bin",
                    "system volume information", "lost+found")
# Windows' folder metadata: not hidden by name, never an image.
SYSTEM_FILES = ("thumbs.db", "desktop.ini")
VAL_FOLDERS = ("val", "validation", "valid")
# Held-out images: never a class (`kft.runs` leaves it out of training).
TEST_FOLDER = "test"


class FileLoader:
    """Loads `(path, label)` records; a failure is reported, not raised.

    A file that failed is reported once (`on_failure(path, label,
    reason)`) and not decoded again in later passes.
    """

    def __init__(self, size, geometry, crop_fraction, max_pixels,
                 exif_transpose):
        self.size = size
        self.geometry = geometry
        self.crop_fraction = crop_fraction
        self.max_pixels = max_pixels
        self.exif_transpose = exif_transpose
        self.on_failure = None
        self._failed = set()
        self._lock = threading.Lock()

    def __call__(self, record):
        path, label = record
        if path in self._failed:
            return None
        try:
            with _images.open_image(path, self.max_pixels) as image:
                pixels = _images.resize_image(
                    image, self.size, self.geometry, self.crop_fraction,
                    self.exif_transpose)
        except Exception as error:  # noqa: BLE001: reported, never raised.
            reason = (str(error) if isinstance(error, ValueError)
                      else _images.describe_error(error))
            with self._lock:
                first = path not in self._failed
                self._failed.add(path)
            if first and self.on_failure is not None:
                self.on_failure(path, label, reason)
            return None
        return pixels, label


def _hidden(name):
    """Whether a file or folder name is never an image or a class."""
    # Dot-files include macOS' `._*` AppleDouble twins of real images and
    # `.DS_Store`; Windows' `Thumbs.db` has no image extension.
    return name.startswith(".") or name.lower() in METADATA_FOLDERS


def _list_classes(folder):
    """The sorted names of the class folders in `folder`."""
    return sorted(
        entry.name for entry in os.scandir(folder)
        if entry.is_dir() and not _hidden(entry.name)
    )


def list_images(folder, others=None, given=None):
    """Image files under `folder`, sorted; symbolic links followed once,
    hidden files and folders left out (`kft.predict` lists folders so too).
    The other files (not named as images; Windows' folder metadata
    aside) are appended to the list `others` when one is given. `given`:
    the path `folder` was reached by (a link), whose holders a link inside
    must not lead back to either.
    """
    found = []
    seen = set()
    top = os.path.realpath(folder)
    holders = _holders(folder) | (_holders(given) if given else set())
    # Every folder that is or holds a holder: one set lookup per folder
    # walked (a commonpath per holder took 130 us a folder, 8 s for a tree
    # of 60,000 folders).
    blocked = set()
    for holder in holders:
        while holder not in blocked:
            blocked.add(holder)
            holder = os.path.dirname(holder)
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        # A symbolic link back to a folder already walked, or up to one
        # holding `folder` (its parent: every other class's images too).
        if real in seen or (real != top and real in blocked):
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            if _hidden(name):
                continue
            if name.lower().endswith(_images.IMAGE_EXTENSIONS):
                found.append(os.path.join(root, name))
            elif others is not None and name.lower() not in SYSTEM_FILES:
                others.append(os.path.join(root, name))
    return found


def _holds(folder, path):
    """Whether `folder` is `path` or holds it (real paths)."""
    try:
        return os.path.commonpath([folder, path]) == folder
    except ValueError:  # on two Windows drives
        return False


def _holders(folder):
    """The real paths of `folder` and of the folders holding it, at every
    hop of the links that lead to it: a class folder that is a link (to
    `store/dog`) is held by the data folder the user named, which a link
    inside it may point back to, also when reached through the folder of
    links `kft.runs` builds (`<class>/` beside `test/`)."""
    paths = set()
    path = os.path.abspath(folder)
    for _ in range(40):  # the OS's own limit on a chain of links
        paths.add(os.path.realpath(path))
        parent = path
        while os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
            paths.add(os.path.realpath(parent))
        if not os.path.islink(path):
            break
        path = os.path.abspath(os.path.join(os.path.dirname(path),
                                            os.readlink(path)))
    return paths


def warn_unread(others, where="the class folders", use="train on them"):
    """Warns of files in `where` that were not read, not being named as
    images (no silent loss of, e.g., `.heic` photos)."""
    if not others:
        return
    counts = collections.Counter(
        os.path.splitext(path)[1].lower() or "no extension"
        for path in others)
    kinds = ", ".join(f"{kind}: {count}"
                      for kind, count in counts.most_common())
    warnings.warn(
        f"Left out {len(others)} files of {where} not named as "
        f"images ({kinds}; e.g. {others[0]}). kft reads "
        f"{' '.join(_images.IMAGE_EXTENSIONS)} (any case): convert images "
        f"in other formats to one of them to {use}.",
        UserWarning, stacklevel=user_stacklevel())


def scan_folder(folder, class_names, others, *, check, max_pixels,
                num_workers):
    """Lists `(path, label)` records of good files and the skipped ones,
    each class read from its `class_folder`; files not named as images
    are appended to `others`."""
    candidates = [
        (path, label) for label, name in enumerate(class_names)
        for path in list_images(class_folder(folder, name), others,
                                given=os.path.join(folder, name))
    ]
    full = check == "full"
    with concurrent.futures.ThreadPoolExecutor(max(num_workers, 1)) as pool:
        reasons = list(pool.map(
            lambda record: _images.check_file(record[0], max_pixels, full),
            candidates,
        ))
    records = [rec for rec, why in zip(candidates, reasons) if why is None]
    skipped = [_images.SkippedFile(rec[0], why)
               for rec, why in zip(candidates, reasons) if why is not None]
    return records, skipped, len(candidates)


def split_folder(path, names):
    """The folder in `path` named one of `names` in any case (`Train/`,
    `Val/`: a case-sensitive match read them as two classes), or `None`."""
    for name in names:
        for entry in sorted(os.listdir(path)):
            if entry.lower() == name and os.path.isdir(
                    os.path.join(path, entry)):
                return os.path.join(path, entry)
    return None


def holds_folders(path):
    """Whether `path` holds a sub-folder (hidden ones such as
    `.ipynb_checkpoints` aside)."""
    with os.scandir(path) as entries:
        return any(entry.is_dir() and not _hidden(entry.name)
                   for entry in entries)


def train_folder(path):
    """The split folder `train/` of `path` (any case), or `None`.

    A split folder holds class folders. A `train` folder of images alone
    is a class (CIFAR-100 has one) when other class folders sit beside it;
    beside split folders only (`train/` + `val/` of images) it is the
    split layout without its class folders, which loading then names.
    """
    train = split_folder(path, ("train",))
    if train is None or holds_folders(train):
        return train
    splits = {"train", *VAL_FOLDERS, TEST_FOLDER}
    with os.scandir(path) as entries:
        classes = any(entry.is_dir() and not _hidden(entry.name)
                      and entry.name.lower() not in splits
                      for entry in entries)
    return None if classes else train


def split_folders(path, validation_split):
    """`(train folder, val folder or None)` of the layout under `path`."""
    if not isinstance(path, (str, os.PathLike)):
        # os.stat's "path should be string, bytes, os.PathLike or integer".
        fail_argument("path", "a folder path (str or os.PathLike)", path,
                      TypeError)
    if not os.path.isdir(path):
        raise ValueError(f"Argument `path` must be an existing folder. "
                         f"Received: path={path!r}")
    path = os.fspath(path)
    train_dir, val_dir = path, None
    train = train_folder(path)
    if train is None:
        # `path/<class>/` next to `path/val/<class>/`: the split folder
        # would be read as one more class holding every class's images.
        for name in (*VAL_FOLDERS, TEST_FOLDER):
            split = split_folder(path, (name,))
            if split is not None and holds_folders(split):
                name = os.path.basename(split)
                raise ValueError(
                    f"Found the split folder {shown(split)!r} (it holds "
                    f"class folders) beside the class folders of "
                    f"{shown(path)!r}, where it would be read as a class. "
                    f"Move the training class folders into "
                    f"{os.path.join(shown(path), 'train')!r} (layout "
                    f"train/<class>/ + {name}/<class>/), or move {name}/ "
                    "out of the folder.")
    if train is not None:
        train_dir = train
        val_dir = split_folder(path, VAL_FOLDERS)
    if val_dir is not None and validation_split is not None:
        raise ValueError(
            f"Found a val folder {shown(val_dir)!r}, so `validation_split` "
            f"must be None. Received: validation_split={validation_split!r}"
        )
    return train_dir, val_dir


def class_folders(train_dir, val_dir, minimum=2):
    """The train class folders; at least `minimum` (a classifier trains on
    two or more), and val has no others."""
    class_names = _list_classes(train_dir)
    root = shown(train_dir)
    for folder, names in ((train_dir, class_names),
                          (val_dir, _list_classes(val_dir) if val_dir
                           else ())):
        _check_text_names(folder, names)
    if not class_names:
        raise ValueError(f"No class folders in {root!r}: expected "
                         f"{root}/<class name>/<image files>.")
    if len(class_names) < minimum:
        raise ValueError(
            f"Found one class folder, {class_names[0]!r}, in {root!r}; "
            "a classifier needs at least 2 classes. Put each class's images "
            f"in its own folder: {root}/<class name>/<image files>."
        )
    if val_dir is not None:
        only_val = sorted(set(_list_classes(val_dir)) - set(class_names))
        if only_val:
            raise ValueError(
                f"Class folders {listed(only_val)} are in "
                f"{shown(val_dir)!r} but not in {root!r}; train classes: "
                f"{listed(class_names)}."
                + (unicode_form_note(only_val, class_names)
                   or " Add train images for them or remove them from val.")
            )
    return class_names


def _check_text_names(folder, names):
    """Refuses class folder names that are not text: bytes of another
    encoding (an old zip's Latin-1 "caf\xe9"), which Python keeps as lone
    surrogates. The run trained, then its reports (UTF-8 text) could not
    be written, on every resume too."""
    bad = [os.fsencode(name) for name in names if not _is_text(name)]
    if bad:
        raise ValueError(
            f"Class folders {bad} in {shown(folder)!r} have names that are "
            "not UTF-8 text (bytes of another encoding, e.g. from an old "
            "zip archive): rename them (class names are written to the "
            "model and its reports).")


def _is_text(name):
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(folder):
    """`folder` as errors name it: a symbolic link's target (the layouts
    `kft.runs` builds are folders of links to the user's folders)."""
    return os.path.realpath(folder) if os.path.islink(folder) else folder


def class_folder(folder, name):
    """The class folder `name` of `folder`, read through symbolic links
    (a linked train or val folder, a linked class folder), so that the
    records, the skipped files and the messages name the user's files, not
    the links of a layout `kft.runs` builds in a temporary folder."""
    return shown(os.path.join(shown(folder), name))


def shown_root(path, train_dir, val_dir, class_names):
    """`path` as messages name it: the folders the class folders were read
    from (`class_folder`) when links led elsewhere."""
    read, linked = [], False
    for folder in (train_dir, val_dir):
        if folder is None:
            continue
        for name in class_names:
            parent = os.path.dirname(class_folder(folder, name))
            if parent not in read:
                read.append(parent)
            linked |= parent != os.path.dirname(os.path.join(folder, name))
    return " and ".join(read) if linked else os.fspath(path)


def scan_splits(train_dir, val_dir, class_names, *, check, max_pixels,
                num_workers, on_bad_file, empty_classes=False):
    """Good `(path, label)` records of train and val, skipped files, total.

    Raises `ValueError` for bad files with `on_bad_file="raise"`, for a
    train class left without a readable image (unless `empty_classes`:
    data to evaluate a model on need not hold every class; its folders
    are read by name, a missing one as empty), and for no readable image
    at all.
    """
    options = dict(check=check, max_pixels=max_pixels,
                   num_workers=num_workers)
    others = []
    records, skipped, total = scan_folder(train_dir, class_names, others,
                                          **options)
    val_records, val_skipped, val_total = [], [], 0
    if val_dir is not None:
        val_records, val_skipped, val_total = scan_folder(
            val_dir, class_names, others, **options)
    warn_unread(others)
    unread = (f"; {len(others)} files not named as images" if others
              else "")
    all_skipped = skipped + val_skipped
    if all_skipped and on_bad_file == "raise":
        more = len(all_skipped) - 50
        lines = [f"  {s.path}: {s.reason}" for s in all_skipped[:50]] + [
            f"  ... and {more} more"] * (more > 0)
        raise ValueError(
            f"Found {len(all_skipped)} bad image files (pass "
            "on_bad_file='skip' to leave them out):\n" + "\n".join(lines)
        )
    counts = class_counts(records, class_names)
    empty = [name for name, count in counts.items() if count == 0]
    if empty_classes and not records:
        raise ValueError(
            f"{shown(train_dir)!r} has no readable images (searched its "
            f"class folders; {len(skipped)} files skipped{unread}).")
    if empty and not empty_classes:
        raise ValueError(
            f"Class folders {listed(empty)} in {shown(train_dir)!r} have no "
            f"readable images ({_held(train_dir, empty, skipped, others)}). "
            "Add images or remove the folders."
        )
    # An empty val would only fail later, at the first evaluation.
    if val_dir is not None and not val_records:
        raise ValueError(
            f"The val folder {shown(val_dir)!r} has no readable images "
            f"(searched its folders {listed(class_names)}; "
            f"{len(val_skipped)} files "
            f"skipped{unread}). Add images to it, or remove it (and pass "
            "`validation_split` to hold out train images instead)."
        )
    return (records, skipped), (val_records, val_skipped), total + val_total


def _held(folder, names, skipped, others):
    """What the class folders `names` of `folder` hold that was not read:
    the counts of the message naming them (not those of every folder)."""
    real = [os.path.realpath(class_folder(folder, name)) for name in names]

    def count(paths):
        return sum(any(_holds(r, os.path.realpath(p)) for r in real)
                   for p in paths)

    bad, unnamed = count(s.path for s in skipped), count(others)
    if not bad and not unnamed:
        return "no files in them"
    return f"{bad} files skipped" + (
        f"; {unnamed} files not named as images" if unnamed else "")


def stratified_split(records, fraction, seed):
    """Holds out `fraction` of each class for val: rounded, at least one
    image and at most all but one, so every class keeps a train image. A
    class of one image has none to spare: it stays in train only."""
    rng = np.random.default_rng(seed)
    labels = np.array([label for _, label in records])
    val_index = []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        held = min(max(1, round(fraction * len(index))), len(index) - 1)
        val_index.extend(index[:held])
    val_set = set(int(i) for i in val_index)
    train = [r for i, r in enumerate(records) if i not in val_set]
    val = [r for i, r in enumerate(records) if i in val_set]
    return train, val


def class_counts(records, class_names):
    """`{class name: number of records}`, every class listed."""
    counts = np.bincount([label for _, label in records],
                         minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, counts)}
