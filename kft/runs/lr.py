"""`find_rate`: `kft.lr_find` on an image folder (what `kft lr-find` runs)."""

import os

from kft.runs.config import TrainConfig

PHASES = ("head", "fine_tune")


def find_rate(config: TrainConfig, *, phase: str = "head", steps: int = 100,
              start: float = 1e-7, end: float = 10.0, verbose: int = 1,
              print_fn=print):
    """The learning-rate range test (`kft.lr_find`) for a `kft train` run.

    Builds the model a `TrainConfig` describes (`kft.runs.build_run_model`
    on `kft.runs.load_folder_data`'s training data), compiles it as
    `kft.fine_tune` does (AdamW with `config.weight_decay`, cross-entropy
    on logits) and runs the test on one trainable set:

    - `phase="head"`: the head alone (the rate `--head-lr` sets);
    - `phase="fine_tune"`: the head is first trained for
      `config.head_epochs` epochs (`kft.fine_tune` with
      `strategy="feature_extraction"`), then the test runs on the first
      trainable set of `config.strategy` (`"gradual"`: head + top block;
      `"feature_extraction"` / `"auto"`: the head), the rate `--lr` sets.
      A `config.layer_decay` is not applied here (the rate found is the
      top block's).

    Args:
        config: A `TrainConfig` (resolved here with
            `kft.runs.resolve_config`).
        phase: `"head"` or `"fine_tune"`. Defaults to `"head"`.
        steps, start, end: As in `kft.lr_find`.
        verbose: Keras / finder output. Defaults to `1`.
        print_fn: Where kft's own lines go (`None`: nowhere).

    Returns:
        `(config, result)`: the resolved config and the `LRFinderResult`.

    Raises:
        ValueError: as `kft.runs.resolve_config`, a bad `phase`, or
            settings `config.strategy` does not read (as `kft train`).

    Example (trains; see tests/test_cli_train.py):
    >>> config, result = find_rate(TrainConfig(data_dir="photos",
    ...     backbone="simple_cnn", weights="none"))  # doctest: +SKIP
    >>> result.suggestions["valley"].learning_rate  # doctest: +SKIP
    0.0028...
    """
    import keras

    from kft._validation import check_choice
    from kft._validation import check_verbose
    from kft.models.batch_augment import BatchAugmentModel
    from kft.runs.recipe import build_run_model
    from kft.runs.recipe import check_strategy_settings
    from kft.runs.recipe import load_folder_data
    from kft.runs.resolve import resolve_config
    from kft.training.fine_tune import fine_tune
    from kft.training.freezing import freeze
    from kft.training.lr_find import lr_find

    check_choice("phase", phase, PHASES)
    verbose = check_verbose(verbose)
    say = print_fn or (lambda *a, **k: None)
    # The run folder is not written: `out` only needs a value.
    config = resolve_config(config.replace(out=config.out or os.devnull))
    check_strategy_settings(config)
    keras.utils.set_random_seed(config.seed)
    train, _ = load_folder_data(config.replace(val_split=None))
    model = build_run_model(config, len(train.class_names),
                            class_names=list(train.class_names))
    say(f"data: {train.num_examples} training images in "
        f"{len(train.class_names)} classes ({config.data_dir}); image size "
        f"{config.image_size}")
    strategy = config.strategy
    if phase == "fine_tune":
        say(f"training the head for {config.head_epochs} epoch(s) first")
        fine_tune(model, train, None, strategy="feature_extraction",
                  head_epochs=config.head_epochs, epochs=0,
                  head_learning_rate=config.head_lr, monitor="loss",
                  batch_size=config.batch_size, verbose=verbose)
    # Mixup / CutMix models train on soft labels, as in `kft.fine_tune`.
    loss = (keras.losses.CategoricalCrossentropy(from_logits=True)
            if isinstance(model, BatchAugmentModel)
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # A new optimizer before the trainable set changes (as `fine_tune`
    # does): the change builds it, instead of re-targeting the head
    # phase's, stepped optimizer.
    model.compile(
        optimizer=keras.optimizers.AdamW(1.0,
                                         weight_decay=config.weight_decay),
        loss=loss, metrics=["accuracy"])
    if phase == "head" or strategy in ("feature_extraction", "auto"):
        freeze(model, "feature_extraction", bn=config.bn)
        trains = "the head"
    elif strategy == "gradual":
        freeze(model, "partial", n_blocks=1, bn=config.bn)
        trains = "the head and the top block (gradual's first stage)"
    else:
        freeze(model, strategy, bn=config.bn, n_blocks=config.n_blocks
               if strategy == "partial" else None)
        trains = f"the {strategy} set"
    say(f"range test on {trains}: {steps} steps from {start:g} to {end:g}")
    result = lr_find(model, train, start=start, end=end, steps=steps,
                     batch_size=config.batch_size, seed=config.seed,
                     verbose=verbose)
    return config, result
