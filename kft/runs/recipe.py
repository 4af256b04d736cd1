"""A run's data, model and recipe from its resolved `TrainConfig`: the
image folders read, the classifier built, the strategy chosen
(`"auto"`), and the `kft.fine_tune` arguments."""

import os

from kft._validation import fail_argument
from kft.data._files import TEST_FOLDER
from kft.data._files import holds_folders
from kft.data._files import list_images
from kft.data._files import split_folder
from kft.data._files import train_folder
from kft.runs.config import TrainConfig
from kft.runs.resolve import METRICS


def held_out_folder(data_dir):
    """The `test/` folder (any case) of `data_dir` when it holds class
    folders (held-out images), else `None`.

    Raises `ValueError` for a `test/` of images without class folders
    beside class folders (in a `train/` layout it is unlabelled data, no
    class: `None`): a class named "test", or unlabelled test images? `kft
    train` took it for held-out data and trained without that class (said
    on a line `--quiet` hid); read as a class, unlabelled images would
    train as one. The message names both readings and what to do for
    each.
    """
    test = split_folder(data_dir, (TEST_FOLDER,))
    if test is None or holds_folders(test):
        return test
    if train_folder(data_dir) is None and list_images(test):
        # Beside class folders (a train/ split makes it no class).
        raise ValueError(
            f"{test!r} holds images but no class folders: a class named "
            f"{os.path.basename(test)!r}, or unlabelled test images? To "
            "train on it as a class, rename it (a test/ split holds "
            "<class>/ folders); for test images, sort them into <class>/ "
            f"folders there or move them out of {data_dir!r}.")
    return None  # unlabelled or empty: neither a class nor held-out data


def test_beside_classes(data_dir) -> bool:
    """Whether `data_dir` holds `<class>/` folders and a `test/` folder,
    which `load_folder_data` leaves out: held-out data, or empty (one of
    images alone raises, see `held_out_folder`)."""
    if train_folder(data_dir) is not None or split_folder(
            data_dir, (TEST_FOLDER,)) is None:
        return False
    held_out_folder(data_dir)
    return True


def _classes_without_test(data_dir):
    """`data_dir`, or for `<class>/` folders next to a `test/` folder a
    temporary folder linking the class folders alone
    (`kft.runs.folder.linked_dir`)."""
    from kft.runs.folder import linked_dir

    if not test_beside_classes(data_dir):
        return data_dir
    return linked_dir({entry.name: entry.path
                       for entry in os.scandir(data_dir)
                       if entry.is_dir()
                       and entry.name.lower() != TEST_FOLDER})


def load_folder_data(config: TrainConfig):
    """`(train, val)` `kft.data` datasets of a resolved config.

    A `test/` folder next to the class folders is not a class: it holds
    held-out images (`kft compare` scores on it, `kft eval` takes it).
    With `val_dir`, the two folders are read as one `train/` + `val/`
    layout (`kft.runs.folder.layout_dir`), so val images get the eval
    transform and the class order of the train folder. `kft.data` reads a
    linked folder through its target: messages, skipped files and the
    datasets' paths name the user's files, not the links.

    Example:
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from kft.runs import TrainConfig, load_folder_data
    >>> root = tempfile.mkdtemp()
    >>> for name, value in (("cat", 40), ("dog", 200), ("test/cat", 40)):
    ...     os.makedirs(os.path.join(root, name))
    ...     for i in range(3):
    ...         Image.new("RGB", (10, 12), (value,) * 3).save(
    ...             os.path.join(root, name, f"{i}.png"))
    >>> config = TrainConfig(data_dir=root, image_size=8, batch_size=2,
    ...                      val_split=0.3, augment="none")
    >>> train, val = load_folder_data(config)
    >>> train.class_names, train.num_examples, val.num_examples
    (['cat', 'dog'], 4, 2)
    """
    from kft import data as kft_data

    kwargs = dict(image_size=config.image_size, batch_size=config.batch_size,
                  augmentation=config.augment, seed=config.seed)
    classes = _classes_without_test(config.data_dir)
    try:
        if config.val_dir is None:
            return kft_data.from_directory(
                classes, validation_split=config.val_split, **kwargs)
        from kft.runs.folder import layout_dir

        return kft_data.from_directory(layout_dir(classes, config.val_dir),
                                       **kwargs)
    except ValueError as error:
        if classes == config.data_dir:
            raise
        # Messages name the user's folder, not the links.
        raise ValueError(str(error).replace(
            classes, config.data_dir)) from error


def _batch_augment(config, num_classes):
    from kft.augmentation.mixing import MixUpOrCutMix

    if config.mixup or config.cutmix:
        return MixUpOrCutMix(mixup_alpha=config.mixup,
                             cutmix_alpha=config.cutmix,
                             label_smoothing=config.label_smoothing,
                             num_classes=num_classes, seed=config.seed)
    if config.label_smoothing:
        return MixUpOrCutMix(prob=0.0, label_smoothing=config.label_smoothing,
                             num_classes=num_classes, seed=config.seed)
    return None


def build_run_model(config: TrainConfig, num_classes: int,
                    class_names=None):
    """The classifier a resolved config describes (carrying `class_names`,
    which `kft.export` and `kft.predict` then use).

    Raises:
        ValueError: the backbone cannot take `config.image_size` (the
            message names the size and the backbone's default), or
            `weights="imagenet"` for `simple_cnn`.
    """
    from kft.models import registry
    from kft.models.classifier import build_classifier

    spec = registry.get_backbone(config.backbone)
    if config.weights == "imagenet" and spec.name == "simple_cnn":
        # kft's own small CNN, the backbone without them; said in the
        # settings' spelling ('none'), not SimpleCNN's (None).
        fail_argument("weights", "'none' or a weights file for backbone "
                      "'simple_cnn' (it has no published ImageNet weights)",
                      config.weights)
    weights = None if config.weights == "none" else config.weights
    size = config.image_size
    try:
        return build_classifier(
            config.backbone, num_classes, weights=weights,
            input_shape=(size, size, 3), dropout=config.dropout,
            batch_augment=_batch_augment(config, num_classes),
            class_names=class_names)
    except ValueError as error:
        if "size" not in str(error).lower() and "shape" not in str(
                error).lower():
            raise
        raise ValueError(
            f"Backbone {spec.name!r} cannot take {size}x{size} images "
            f"({error}). Choose another image size; its default is "
            f"{spec.default_size}.") from error


# `TrainConfig` fields that only phase 2 reads, as `fine_tune` names them
# (feature extraction's `epochs` go to its head phase).
_PHASE2_FIELDS = {"n_blocks": "n_blocks", "lr": "learning_rate",
                  "schedule": "schedule", "layer_decay": "layer_decay",
                  "unfreeze_every": "unfreeze_every"}


def _unused_settings(config):
    """Fields set to other than their defaults that `config.strategy`
    does not read."""
    from kft.training.fine_tune_checks import PHASE2_ARGUMENTS

    defaults = TrainConfig()
    return [field for field, name in _PHASE2_FIELDS.items()
            if config.strategy not in PHASE2_ARGUMENTS[name]
            and getattr(config, field) != getattr(defaults, field)]


def _setting_list(config, fields):
    return ", ".join(f"`{field}` {getattr(config, field)!r}"
                     for field in fields)


def check_strategy_settings(config):
    """Refuses settings a chosen strategy would not read (`kft train`,
    and `kft lr-find`, whose `next:` line repeats them)."""
    unused = [] if config.strategy == "auto" else _unused_settings(config)
    if unused:
        raise ValueError(
            f"strategy {config.strategy!r} does not read "
            f"{_setting_list(config, unused)}: drop "
            f"{'it' if len(unused) == 1 else 'them'}, or choose a "
            "strategy that uses "
            f"{'it' if len(unused) == 1 else 'them'}.")


def choose_strategy(config, train, say):
    if config.strategy != "auto":
        check_strategy_settings(config)
        return config, []
    from kft.adaptation.recommend import recommend_strategy

    rec = recommend_strategy(num_images=int(train.num_examples))
    kwargs = rec.fine_tune_kwargs()
    # The recommendation fills in what the settings leave at its default;
    # what the user set stays.
    defaults = TrainConfig()
    changes = {"strategy": kwargs["strategy"]}
    for field in ("bn", "n_blocks", "layer_decay"):
        if field in kwargs and getattr(config, field) == getattr(
                defaults, field):
            changes[field] = kwargs[field]
    reasons = list(rec.reasons)
    if config.weights == "none" and changes["strategy"] != "full":
        # The rule assumes pretrained features; random ones are not worth
        # keeping frozen.
        reasons.append(
            "The backbone starts from random weights (--weights none), so "
            "its frozen blocks hold random features: pass --strategy full "
            "--bn train to train them.")
    say(f"strategy auto -> {changes['strategy']}: " + " ".join(reasons))
    config = config.replace(**changes)
    unused = _unused_settings(config)
    if unused:
        # The config written records what ran.
        say(f"not used by {config.strategy}: "
            f"{_setting_list(config, unused)} (reset to the defaults).")
        config = config.replace(**{field: getattr(defaults, field)
                                   for field in unused})
    return config, reasons


def fine_tune_kwargs(config):
    from kft.training.fine_tune_checks import phase2_arguments

    # A config holds every setting; `fine_tune` refuses those the strategy
    # does not read (phase 2's for feature extraction).
    return phase2_arguments(config.strategy, dict(
        strategy=config.strategy, n_blocks=config.n_blocks,
        # Feature extraction is the head phase alone: it gets every epoch.
        head_epochs=config.head_epochs + (
            config.epochs if config.strategy == "feature_extraction" else 0),
        epochs=config.epochs,
        head_learning_rate=config.head_lr, learning_rate=config.lr,
        weight_decay=config.weight_decay, layer_decay=config.layer_decay,
        unfreeze_every=config.unfreeze_every, bn=config.bn,
        metrics=METRICS, monitor=config.monitor,
        early_stopping_patience=config.early_stopping,
        batch_size=config.batch_size, schedule=config.schedule))


def describe_recipe(config, model):
    from kft.models.blocks import get_blocks

    phase2 = {"feature_extraction": None,
              "partial": f"partial (top {config.n_blocks} block(s) + head)",
              "gradual": f"gradual (one more block every "
                         f"{config.unfreeze_every} epoch(s))",
              "full": "full (every block)"}[config.strategy]
    head = config.head_epochs + (
        config.epochs if config.strategy == "feature_extraction" else 0)
    text = (f"recipe: head {head} epoch(s) at "
            f"{config.head_lr:g}")
    if phase2 and config.epochs:
        text += (f", then {phase2} {config.epochs} epoch(s) at "
                 f"{config.lr if isinstance(config.lr, str) else f'{config.lr:g}'}"
                 f" ({config.schedule}), BatchNorm {config.bn}")
        if config.layer_decay is not None:
            from kft.optimizers import layerwise_lr

            # With `--lr find` the rate is not known yet: each block's
            # factor of it.
            found = config.lr == "find"
            rates = layerwise_lr(model, 1.0 if found else config.lr,
                                 config.layer_decay)
            text += ("; rate per block (x the found rate): " if found
                     else "; rate per block: ") + ", ".join(
                f"{k} {v:.3g}" for k, v in rates.items())
    blocks = list(get_blocks(model))
    return text + f"; blocks: {' > '.join(blocks)}"
