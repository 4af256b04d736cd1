"""`TrainConfig`: every setting of a `kft.train_run`, and its TOML file.

A run folder's `config.toml` holds the config with every default
resolved (backbone's image size, the strategy `"auto"` chose, the rate
the finder found) and its folders and weights file as absolute paths, so
`kft train --config runs/x/config.toml` repeats the run from any folder.
Only flat tables of strings, numbers and booleans are written, so the
writer here is a few lines (reading uses the standard `tomllib`). TOML
has no null: settings that are `None` are listed in `unset = [...]` and
read back as `None` (a setting missing from the file takes its default).
"""

import dataclasses
import json
import os
import tomllib

from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import check_seed
from kft._validation import fail_argument
from kft._validation import plain_scalar
from kft._writing import output_path

STRATEGIES = ("feature_extraction", "partial", "gradual", "full", "auto")
BN_POLICIES = ("frozen", "train")
SCHEDULES = ("cosine", "constant", "one_cycle")
# `kft.augmentation.PRESETS`, here without importing Keras (the CLI checks
# a config before Keras loads).
AUGMENTS = ("none", "light", "standard", "strong")
# The key listing the settings that are `None`.
UNSET = "unset"


@dataclasses.dataclass
class TrainConfig:
    """Settings of one `kft.train_run`; `None` means "resolve a default".

    Attributes:
        data_dir: Image folder: `<class>/*.jpg` (a `test/` folder beside
            them is held out, not a class), or `train/` + `val/`.
        val_dir: A separate validation folder (`<class>/*.jpg`).
        val_split: Fraction of each class held out for validation when
            there is no validation folder. Defaults to `0.2`.
        backbone: Registry name (`kft backbones`). Defaults to
            `"resnet50"`.
        weights: `"imagenet"`, `"none"` (random) or a weights file.
        strategy: `"feature_extraction"`, `"partial"`, `"gradual"`,
            `"full"` or `"auto"` (`kft.recommend_strategy` by data size).
        n_blocks: Blocks below the head trained by `"partial"`.
        layer_decay: Per-block rate factor (`None`: one rate).
        bn: BatchNorm policy, `"frozen"` or `"train"`.
        image_size: Side in pixels (`None`: the backbone's default).
        batch_size, epochs, head_epochs: As in `kft.fine_tune` (`epochs`
            counts the fine-tuning phase after the head phase).
        head_lr: Head-phase rate.
        lr: Fine-tuning rate, or `"find"` (`kft.lr_find`).
        schedule: Fine-tuning phase schedule, as
            `kft.fine_tune(schedule=...)`: `"cosine"` (default),
            `"one_cycle"` or `"constant"`.
        weight_decay: AdamW weight decay.
        unfreeze_every: Epochs per stage of `"gradual"`.
        augment: `kft.augmentation` preset of the training images.
        mixup, cutmix: Alphas of Mixup / CutMix in the train step (`0`:
            off).
        label_smoothing: Label smoothing (`0`: off).
        dropout: Dropout before the classifier layer.
        monitor: The quantity that picks the kept epoch: `"loss"`,
            `"accuracy"`, or either with `val_` (validation data).
        early_stopping: Patience in epochs (`None`: off).
        seed: Seeds Keras, NumPy, the split and augmentation.
        plots: Write the report's plots (with matplotlib installed).
        out: The run folder.

    Example:
    >>> config = TrainConfig(data_dir="photos", backbone="simple_cnn")
    >>> text = config.to_toml()
    >>> TrainConfig.from_toml(text) == config
    True
    >>> no_split = config.replace(val_split=None)  # train on every image
    >>> TrainConfig.from_toml(no_split.to_toml()).val_split is None
    True
    """

    data_dir: str | None = None
    val_dir: str | None = None
    val_split: float | None = 0.2
    backbone: str = "resnet50"
    weights: str = "imagenet"
    strategy: str = "auto"
    n_blocks: int = 1
    layer_decay: float | None = None
    bn: str = "frozen"
    image_size: int | None = None
    batch_size: int = 32
    epochs: int = 10
    head_epochs: int = 3
    head_lr: float = 1e-3
    lr: float | str = 1e-4
    schedule: str = "cosine"
    weight_decay: float = 1e-2
    unfreeze_every: int = 1
    augment: str = "standard"
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    dropout: float = 0.0
    monitor: str = "val_loss"
    early_stopping: int | None = None
    seed: int = 0
    plots: bool = True
    out: str | None = None

    def __post_init__(self):
        # NumPy scalars (a rate from np.logspace) as Python's: config.toml
        # got "val_split = np.float64(0.25)", which its reader refused, or
        # could not take an np.int64 at all.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            plain = plain_scalar(value)
            if plain is not value:
                setattr(self, field.name, plain)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with `changes`; an unknown name raises `ValueError`."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"Unknown setting(s) {', '.join(unknown)}. Known settings: "
                f"{', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)

    def check(self) -> "TrainConfig":
        """Checks every value (not the file system); returns `self`."""
        for name in ("data_dir", "val_dir", "backbone", "weights",
                     "augment", "monitor", "out"):
            value = getattr(self, name)
            optional = name in ("data_dir", "val_dir", "out")
            if (value is not None or not optional) and not isinstance(
                    value, (str, os.PathLike)):
                # `weights=None` failed in os.path.isfile.
                fail_argument(name, "a string" + (
                    " ('imagenet', 'none' or a weights file)"
                    if name == "weights" else ""), value)
            if value is not None and not _utf8(os.fspath(value)):
                # A file name of bytes that are not UTF-8 (os.fsdecode's
                # surrogates): config.toml, UTF-8 text, cannot hold it.
                fail_argument(name, "text a config file can hold (its "
                              "name has bytes that are not UTF-8: rename "
                              "it)", value)
        if self.out is not None:
            output_path(self.out, "out")  # kft train expands it first
        # Checked by kft.data at the run's start, as `augmentation`.
        check_choice("augment", self.augment, AUGMENTS)
        if not isinstance(self.plots, bool):
            fail_argument("plots", "true or false", self.plots)
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("bn", self.bn, BN_POLICIES)
        check_choice("schedule", self.schedule, SCHEDULES)
        for name, minimum in (("n_blocks", 1), ("batch_size", 1),
                              ("epochs", 0), ("head_epochs", 1),
                              ("unfreeze_every", 1)):
            check_int(name, getattr(self, name), min_value=minimum)
        check_seed(self.seed)  # NumPy's range, [0, 2**32 - 1]
        if self.image_size is not None:
            check_int("image_size", self.image_size, min_value=1)
        if self.early_stopping is not None:
            check_int("early_stopping", self.early_stopping, min_value=0)
        if self.val_split is not None:
            check_number("val_split", self.val_split, low=0, high=1,
                         low_open=True, high_open=True)
        if not (isinstance(self.lr, str) and self.lr == "find"):
            if isinstance(self.lr, str):
                fail_argument("lr", 'a positive number or "find"', self.lr)
            check_number("lr", self.lr, low=0, low_open=True)
        check_number("head_lr", self.head_lr, low=0, low_open=True)
        check_number("weight_decay", self.weight_decay, low=0)
        if self.layer_decay is not None:
            check_number("layer_decay", self.layer_decay, low=0, high=1,
                         low_open=True)
        for name in ("mixup", "cutmix"):
            check_number(name, getattr(self, name), low=0)
        check_number("label_smoothing", self.label_smoothing, low=0,
                     high=1, high_open=True)
        check_number("dropout", self.dropout, low=0, high=1, high_open=True)
        return self

    def to_dict(self) -> dict:
        """Plain values, `None` included."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The config as a TOML document (`None` values named in
        `unset`)."""
        lines = ["# kft train: the settings of this run, every default "
                 "resolved.", "# Repeat it: kft train --config config.toml "
                 "--out runs/NEW", ""]
        unset = []
        for name, value in self.to_dict().items():
            if value is None:
                unset.append(name)
            else:
                lines.append(f"{name} = {_toml_value(value)}")
        if unset:
            lines.append("# settings that are None (TOML has no null)")
            lines.append(f"{UNSET} = {_toml_value(unset)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> "TrainConfig":
        """Reads `to_toml`'s format (unknown keys raise `ValueError`)."""
        values = tomllib.loads(text)
        nested = [k for k, v in values.items() if isinstance(v, dict)]
        if nested:
            raise ValueError(
                f"A kft config is one flat table; found table(s) "
                f"{', '.join(nested)}")
        unset = values.pop(UNSET, [])
        if not (isinstance(unset, list)
                and all(isinstance(name, str) for name in unset)):
            raise ValueError(
                f"{UNSET} must be a list of setting names; received "
                f"{unset!r}")
        both = sorted(set(unset) & set(values))
        if both:
            raise ValueError(
                f"Setting(s) {', '.join(both)} both given and listed in "
                f"{UNSET}")
        if values.get("val_split") == 0:
            values["val_split"] = None  # as `--val-split 0`: no split
        return cls().replace(**values, **dict.fromkeys(unset))


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Reads a `config.toml` written by `kft train` (or by hand).

    Raises:
        ValueError: a missing file, invalid TOML or an unknown setting,
            the message naming the file.

    Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "config.toml")
    >>> with open(path, "w") as f:
    ...     _ = f.write('backbone = "simple_cnn"\\nepochs = 2\\n')
    >>> load_config(path).epochs
    2
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Config file {path!r} does not exist.")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return TrainConfig.from_toml(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as error:
        raise ValueError(f"Config file {path!r}: {error}") from error


def _utf8(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes, but not
        # its surrogate pairs (an emoji in a path made the file
        # unreadable): other characters are written as they are, DEL
        # escaped as TOML requires.
        return json.dumps(value, ensure_ascii=False).replace("\x7f",
                                                             "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    raise TypeError(f"Cannot write {value!r} to TOML")
