"""Unsupervised domain adaptation inside one `model.fit`: DANN (gradient
reversal, Ganin et al., 2016), MMD (DAN, Long et al., 2015) and CORAL
(Sun and Saenko, 2016) on a kft classifier.

`DomainAdaptationModel` is the classifier's own functional graph (so
`kft.get_blocks`, `kft.freeze`, `kft.callbacks.GradualUnfreezing`,
`kft.BlockwiseOptimizer` and `predict` / `evaluate` see the classifier)
plus a domain discriminator behind a `GradientReversal` layer, held as
attributes: their variables train with the model (at the optimizer's base
rate under a `BlockwiseOptimizer`: they are in no block) and no freezing
strategy touches them. Its JAX train step takes `({"source": images,
"target": images}, source_labels)` batches, which `domain_pairs` makes.
"""

import jax
import keras
import numpy as np
from keras import ops

from kft import _compat
from kft._evaluation_step import EvaluatesWithoutPenalty
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import check_seed
from kft._validation import offset_seed
from kft._validation import fail_argument
from kft.adaptation._data import _describe
from kft.adaptation._data import check_same_images
from kft.adaptation._data import dataset_arrays
from kft.adaptation._data import image_array
from kft.adaptation.losses import coral
from kft.adaptation.losses import mmd
from kft.models.classifier import carry_over
from kft.models.classifier_model import Classifier
from kft.adaptation.reversal import GradientReversal
from kft.adaptation.reversal import reversal_lambda
from kft.distributed.data_parallel import ChecksEvalBatches
from kft.distributed.data_parallel import check_data_batches
from kft.distributed.data_parallel import check_fit_data
from kft.distributed.data_parallel import check_placement
from kft.training.fit_data import check_class_names_fit
from kft.training.fit_data import check_data_labels
from kft.training.head import split_head

METHODS = ("dann", "mmd", "coral")
ADVERSARIES = ("reversal", "confusion")
_LOGGED_ONLY_IN_TRAINING = ("domain_loss", "domain_accuracy", "alignment",
                            "lambda")


@keras.saving.register_keras_serializable(package="kft")
class DomainAdaptationModel(EvaluatesWithoutPenalty,
                            _compat.KeepsStateOnError, ChecksEvalBatches,
                            keras.Model):
    """A kft classifier trained on labelled source and unlabelled target
    batches: task loss on the source, plus a domain term on both.

    - `method="dann"`: a discriminator (`build_discriminator`: Dense,
      BatchNorm, ReLU per width of `hidden_units`, then a logit) on the
      pooled backbone features, trained with binary cross-entropy (source
      0, target 1). Loss: task + `weight` * domain loss. How the features
      learn to fool it is `adversary`:
      `"reversal"` (DANN, Ganin et al. 2016): behind a `GradientReversal`
      layer the features get `-lambda` times the discriminator's gradient,
      i.e. they maximise its loss; `"confusion"` (Tzeng et al. 2015): the
      features minimise the cross-entropy between its output and 1/2 (its
      weights held constant there), + `weight` * lambda * that loss. The
      reversal's objective has no minimum at chance: when the features
      outpace the discriminator they flip it (domain accuracy well below
      0.5) instead of confusing it; the confusion objective is smallest
      at chance, so the domain accuracy stays at or above 0.5.
      lambda follows `reversal_lambda(p, gamma)` over the `fit`: p = step
      / (`epochs` x steps), the step counted from epoch 0, so a `fit`
      from `initial_epoch` (a resume, or `kft.fine_tune`'s phase 2,
      which goes on from phase 1's epochs) starts at p =
      `initial_epoch / epochs`; `fine_tune`'s phase 1 ramps lambda over
      its head epochs alone.
    - `method="mmd"` / `"coral"`: task + lambda * `weight` * `kft.mmd` /
      `kft.coral` of the source and target features (same schedule).

    Source and target images go through the network as one batch, so
    training BatchNorm layers see both domains. Logged in training:
    `domain_loss` and `domain_accuracy` (DANN; chance is 0.5 when the
    features are aligned), `alignment` (MMD/CORAL), `lambda`. `evaluate`,
    `predict` and validation take plain images and report the classifier.

    The discriminator's variables train with the model at the optimizer's
    rate (its default rate under a `kft.BlockwiseOptimizer`: give it its
    own with the group `"domain_discriminator"`, a regex on its variable
    paths). Freezing strategies and `GradualUnfreezing` do not touch it.

    The step is compiled once per `fit` (and per trainable set): each
    batch must have the same size, as `domain_pairs` makes them.

    No method is sure to help: an alignment can match the two domains
    with the classes swapped (README: DANN ended below chance on one seed
    of digits -> digits-M while its source accuracy was 0.96), and
    without target labels no training metric shows it. Check an adapted
    model against the classifier trained on the source alone on a few
    labelled target images; `kft.adapt_batchnorm` (AdaBN) is the cheap
    baseline to beat.

    Args:
        classifier: A `kft.build_classifier` model (a functional model
            with a kft backbone and a chain head, see
            `kft.feature_cache.split_head`). Its layers are shared, its
            `kft_metadata` (class names for `kft.export`) copied.
        method: `"dann"`, `"mmd"` or `"coral"`. Defaults to `"dann"`.
        weight: Weight of the domain term. Defaults to `1.0`.
        gamma: Steepness of the lambda schedule; `None` keeps lambda at
            `max_lambda`. Defaults to `10.0`.
        max_lambda: Limit of the schedule. Defaults to `1.0`.
        hidden_units: Widths of the discriminator's hidden layers (DANN),
            an int for one layer. Defaults to `(1024, 1024)` (the paper's).
        seed: Seed of the discriminator's initialisation. Defaults to `0`.
        adversary: `"confusion"` or `"reversal"` (DANN), see above.
            Defaults to `"confusion"`: in kft's measurements the reversal
            flipped the discriminator (domain accuracy 0.0-0.3) on every
            configuration tried (issue 19 notes).
        discriminator: Your own discriminator (features -> one logit)
            instead of `build_discriminator`'s. Defaults to `None`.
        **kwargs: `name`, as for `keras.Model`.

    Example:
    >>> import keras, kft, numpy as np
    >>> clf = kft.build_classifier("simple_cnn", num_classes=2, weights=None,
    ...                            input_shape=(8, 8, 3))
    >>> model = kft.DomainAdaptationModel(clf, method="dann",
    ...                                   hidden_units=(16,))
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True), metrics=["accuracy"])
    >>> rng = np.random.default_rng(0)
    >>> xs, ys = rng.uniform(0, 255, (16, 8, 8, 3)), rng.integers(0, 2, 16)
    >>> xt = rng.uniform(0, 255, (16, 8, 8, 3))
    >>> pairs = kft.adaptation.domain_pairs((xs, ys), xt, batch_size=8)
    >>> logit = model.discriminator(np.zeros((2, 64)))
    >>> len(pairs), model.adversary, logit.shape
    (2, 'confusion', (2, 1))

    `model.fit(pairs, epochs=...)` trains it (see `domain_pairs`).
    """

    # Its constructor takes `*args` only to refuse Keras' rebuild from a
    # graph (`keras.models.clone_model`), which `kft.fast_cpu_convs`
    # reads here (a functional-like constructor) and refuses too.
    rebuilt_from_graph = False

    def __init__(self, classifier=None, *args, method: str = "dann",
                 weight: float = 1.0, gamma: float | None = 10.0,
                 max_lambda: float = 1.0,
                 hidden_units: int | tuple = (1024, 1024),
                 seed: int = 0, adversary: str = "confusion",
                 discriminator=None, **kwargs):
        if args and isinstance(classifier, keras.Model):
            raise TypeError(
                "DomainAdaptationModel takes one positional argument, the "
                "classifier; pass the others by name (method=..., "
                f"weight=...). Received: {len(args) + 1} positional "
                "arguments")
        if args:
            # `keras.models.clone_model` passes (inputs, outputs) to a
            # functional-like constructor (`*args` makes this one so);
            # otherwise it made a plain Functional classifier without a
            # word, the discriminator and domain step dropped.
            raise TypeError(
                "A DomainAdaptationModel is built from its classifier "
                "(DomainAdaptationModel(classifier, ...)); "
                "keras.models.clone_model cannot pass it. Clone it with "
                "clone = kft.DomainAdaptationModel.from_config("
                "model.get_config()) (then clone.set_weights("
                "model.get_weights()) for the weights).")
        if isinstance(classifier, dict):  # from_config
            classifier = keras.saving.deserialize_keras_object(classifier)
        if not isinstance(classifier, keras.Model) or not getattr(
                classifier, "inputs", None):
            fail_argument("classifier", "a functional Keras classifier "
                          "(kft.build_classifier)", classifier, TypeError)
        from kft.models.batch_augment import BatchAugmentModel

        if isinstance(classifier, BatchAugmentModel):
            # Its mixing runs in its own train step, which this model's
            # step replaces: it would be dropped without a word.
            fail_argument(
                "classifier", "a classifier without batch_augment (Mixup/"
                "CutMix does not run in the domain adaptation step): build "
                "it without batch_augment", classifier, TypeError)
        super().__init__(classifier.inputs, classifier.outputs,
                         name=kwargs.pop("name", "domain_adaptation"),
                         **kwargs)
        self.method = check_choice("method", method, METHODS)
        self.weight = check_number("weight", weight, low=0.0)
        self.gamma = None if gamma is None else check_number(
            "gamma", gamma, low=0.0, low_open=True)
        self.max_lambda = check_number("max_lambda", max_lambda, low=0.0)
        self.hidden_units = _check_widths(hidden_units)
        self.seed = check_seed(seed)
        self.adversary = check_choice("adversary", adversary, ADVERSARIES)
        self.features_model, self.head_model = split_head(self)
        width = self.features_model.output.shape[-1]
        self.reversal = GradientReversal(self.max_lambda, name="reversal")
        if isinstance(discriminator, dict):
            discriminator = keras.saving.deserialize_keras_object(
                discriminator)
        if discriminator is None:
            discriminator = build_discriminator(width, self.hidden_units,
                                                self.seed)
        if not isinstance(discriminator, keras.layers.Layer):
            fail_argument("discriminator", "a Keras layer or model mapping "
                          f"(batch, {width}) features to (batch, 1) logits, "
                          "or None", discriminator, TypeError)
        if not discriminator.built:
            # Its weights must exist before the step is traced: built
            # inside it, they were tracers, never trained nor saved.
            discriminator.build((None, width))
        _check_discriminator(discriminator, width)
        self.discriminator = discriminator
        # Progress of the lambda schedule, carried as step state.
        self.schedule_step = keras.Variable(0.0, trainable=False,
                                            name="schedule_step")
        self.schedule_total = keras.Variable(0.0, trainable=False,
                                             name="schedule_total")
        self.domain_loss_tracker = keras.metrics.Mean(name="domain_loss")
        self.domain_accuracy = keras.metrics.BinaryAccuracy(
            name="domain_accuracy", threshold=0.0)
        self.alignment_tracker = keras.metrics.Mean(name="alignment")
        self.lambda_tracker = keras.metrics.Mean(name="lambda")
        # Class names for kft.export / kft.predict, the dtype policy.
        carry_over(classifier, self)

    def __call__(self, inputs, *args, **kwargs):
        # A {"source", "target"} training batch (which `fit` also uses to
        # build the metrics) is classified by its source images.
        if isinstance(inputs, dict) and set(inputs) == {"source", "target"}:
            inputs = inputs["source"]
        return super().__call__(inputs, *args, **kwargs)

    # -- fit: adds the schedule --------------------------------------------

    def fit(self, x=None, y=None, *args, callbacks=None, **kwargs):
        # JAX does not bounds-check the loss's gather: labels outside the
        # classes would train on garbage without an error.
        num_classes = int(self.outputs[0].shape[-1])
        from kft.data import ImageDataset

        if hasattr(x, "shape") or isinstance(x, ImageDataset):
            # Found in the traced step, the message named a JAX tracer.
            _split_batch(x, y)
        if isinstance(x, DomainPairs):
            check_data_labels((x.xs, x.ys), num_classes, "source")
            if x.class_names is not None:
                check_class_names_fit(x.class_names, self, num_classes,
                                      "source")
            check_data_batches(x, None, name="domain_pairs")
        elif isinstance(x, dict) and y is not None:
            check_data_labels((x.get("source"), np.asarray(y)), num_classes,
                              "y", labels_name="y")
        # A batch that does not split over the devices failed in JAX.
        check_fit_data((x, y, *args), kwargs)
        check_placement(self)
        validation = kwargs.get("validation_data")
        if isinstance(validation, (tuple, list)) and len(validation) == 2:
            check_data_labels(tuple(np.asarray(v) for v in validation),
                              num_classes, "validation_data")
        elif isinstance(validation, ImageDataset):
            check_data_labels(validation, num_classes, "validation_data",
                              model=self)
        callbacks = list(callbacks or [])
        if not any(isinstance(c, _ScheduleProgress) for c in callbacks):
            # Last: after a BackupAndRestore has set the epoch to resume at.
            callbacks.append(_ScheduleProgress(
                kwargs.get("initial_epoch") or 0))
        return super().fit(x, y, *args, callbacks=callbacks, **kwargs)

    def current_lambda(self, step, total):
        if self.gamma is None:
            return ops.convert_to_tensor(self.max_lambda, "float32")
        progress = ops.where(total > 0, step / ops.maximum(total, 1.0), 1.0)
        return reversal_lambda(ops.clip(progress, 0.0, 1.0), self.gamma,
                               self.max_lambda)

    # -- the train step ------------------------------------------------------

    def compute_loss_and_updates(self, trainable_variables,
                                 non_trainable_variables, metrics_variables,
                                 x, y, sample_weight, training=False,
                                 optimizer_variables=None):
        if not training:
            return super().compute_loss_and_updates(
                trainable_variables, non_trainable_variables,
                metrics_variables, x, y, sample_weight, training=training,
                optimizer_variables=optimizer_variables)
        source, target = _split_batch(x, y)
        n_source = source.shape[0]
        mapping = list(zip(self.trainable_variables, trainable_variables))
        mapping += list(zip(self.non_trainable_variables,
                            non_trainable_variables))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            step, total = self.schedule_step.value, self.schedule_total.value
            lam = ops.cast(self.current_lambda(step, total), "float32")
            self.schedule_step.assign(step + 1.0)
            self.reversal.lambda_.assign(lam)
            features = self.features_model(
                ops.concatenate([source, target], axis=0), training=True)
            logits = self.head_model(features[:n_source], training=True)
            extra, domain_logits, align = 0.0, None, None
            if self.method == "dann":
                labels = ops.concatenate([
                    ops.zeros((n_source,)),
                    ops.ones((features.shape[0] - n_source,))])
                if self.adversary == "reversal":
                    domain_logits = ops.squeeze(self.discriminator(
                        self.reversal(features), training=True), -1)
                    domain_loss = ops.mean(ops.binary_crossentropy(
                        labels, domain_logits, from_logits=True))
                    extra = self.weight * domain_loss
                else:
                    domain_logits, domain_loss, confusion = self._confusion(
                        features, labels)
                    extra = self.weight * (domain_loss + lam * confusion)
            else:
                pool = ops.cast(features, "float32")
                align = (mmd if self.method == "mmd" else coral)(
                    pool[:n_source], pool[n_source:])
                extra = lam * self.weight * align
        non_trainable = [scope.get_current_value(v) if
                         scope.get_current_value(v) is not None else value
                         for v, value in zip(self.non_trainable_variables,
                                             non_trainable_variables)]
        task_loss, (trainable_variables, non_trainable,
                    metrics_variables) = self.stateless_compute_loss(
            trainable_variables, non_trainable, metrics_variables,
            x=source, y=y, y_pred=logits, sample_weight=sample_weight,
            training=True)
        loss = task_loss + ops.cast(extra, task_loss.dtype)
        with keras.StatelessScope(state_mapping=list(zip(
                self.metrics_variables, metrics_variables))) as scope:
            self.lambda_tracker.update_state(lam)
            if domain_logits is not None:
                self.domain_loss_tracker.update_state(domain_loss)
                self.domain_accuracy.update_state(labels, domain_logits)
            else:
                self.alignment_tracker.update_state(align)
        metrics_variables = [
            scope.get_current_value(v) if scope.get_current_value(v)
            is not None else value
            for v, value in zip(self.metrics_variables, metrics_variables)]
        unscaled_loss = loss
        if self.optimizer is not None:
            with keras.StatelessScope(state_mapping=list(zip(
                    self.optimizer.variables, optimizer_variables))):
                loss = self.optimizer.scale_loss(loss)
        return loss, (unscaled_loss, logits, non_trainable,
                      metrics_variables)

    def _confusion(self, features, labels):
        # The discriminator learns on the features held constant; the
        # features get the gradient of the cross-entropy between its
        # output (its weights held constant) and 1/2 for both domains,
        # which is smallest at chance: they cannot overshoot into flipping
        # it, as maximising its loss (the reversal) can.
        disc = self.discriminator
        domain_logits = ops.squeeze(disc(ops.stop_gradient(features),
                                         training=True), -1)
        domain_loss = ops.mean(ops.binary_crossentropy(
            labels, domain_logits, from_logits=True))
        frozen = [ops.stop_gradient(v.value) for v in disc.trainable_variables]
        state = [v.value for v in disc.non_trainable_variables]
        fooled, _ = disc.stateless_call(frozen, state, features, training=True)
        confusion = ops.mean(ops.binary_crossentropy(
            ops.full((features.shape[0],), 0.5), ops.squeeze(fooled, -1),
            from_logits=True))
        return domain_logits, domain_loss, confusion

    def _unused_metrics(self):
        return ("alignment",) if self.method == "dann" else (
            "domain_loss", "domain_accuracy")

    def logged_metrics(self):
        """`(names in the training logs, names in the validation logs)` of
        this model's own metrics (`fine_tune` checks `monitor` by them)."""
        unused = self._unused_metrics()
        return [n for n in _LOGGED_ONLY_IN_TRAINING if n not in unused], []

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        unused = self._unused_metrics()
        return {k: v for k, v in logs.items() if k not in unused}

    def test_step(self, *args, **kwargs):
        logs, state = super().test_step(*args, **kwargs)
        logs = {k: v for k, v in logs.items()
                if k not in _LOGGED_ONLY_IN_TRAINING}
        return logs, state

    def get_config(self):
        # The classifier's graph, as a functional model over the shared
        # layers (the same layers, so saved weights line up on loading).
        # A `kft.Classifier`: its config keeps the class names and the
        # pretrained flag, which the loaded model takes back.
        graph = carry_over(self, Classifier(self.inputs, self.outputs,
                                            name=self.name))
        return {
            "name": self.name,
            "classifier": keras.saving.serialize_keras_object(graph),
            "method": self.method, "weight": self.weight,
            "gamma": self.gamma, "max_lambda": self.max_lambda,
            "hidden_units": self.hidden_units, "seed": self.seed,
            "adversary": self.adversary,
            "discriminator": keras.saving.serialize_keras_object(
                self.discriminator),
        }


def build_discriminator(width, hidden_units=(1024, 1024), seed=0):
    """DANN's domain discriminator: per hidden layer Dense, BatchNorm, ReLU
    (as in Ganin et al.'s 1024-1024 discriminator and its common
    implementations), then one logit.

    The BatchNorm layers matter: they make the discriminator invariant to
    the scale and offset of the (concatenated source + target) features,
    so the reversed gradient cannot win the game by inflating the features
    (without them the domain loss explodes and the domain accuracy flips
    far below chance).

    Example:
    >>> import numpy as np
    >>> build_discriminator(8, (4,))(np.zeros((2, 8))).shape
    (2, 1)
    """
    widths = _check_widths(hidden_units)
    seed = check_seed(seed)
    layers = [keras.Input((width,))]
    for i, units in enumerate(widths):
        layers += [
            keras.layers.Dense(units, use_bias=False,
                               kernel_initializer=keras.initializers
                               .GlorotUniform(seed=offset_seed(seed, i))),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ]
    layers.append(keras.layers.Dense(
        1, kernel_initializer=keras.initializers.GlorotUniform(
            seed=offset_seed(seed, len(widths)))))
    return keras.Sequential(layers, name="domain_discriminator")


def _check_widths(hidden_units):
    if isinstance(hidden_units, (list, tuple)):
        return tuple(check_int(f"hidden_units[{i}]", u, min_value=1)
                     for i, u in enumerate(hidden_units))
    return (check_int("hidden_units", hidden_units, min_value=1),)


def _check_discriminator(discriminator, width):
    """Refuses a discriminator that does not map `(batch, width)` features
    to one logit each (found inside the first train step otherwise)."""
    expected = f"a Keras layer or model mapping (batch, {width}) features " \
        "to (batch, 1) logits"
    try:
        out = discriminator.compute_output_spec(
            keras.KerasTensor((None, width)))
    except Exception as error:  # noqa: BLE001 - Keras' own, named below
        fail_argument("discriminator", expected,
                      f"{discriminator.name!r}, which fails on (None, "
                      f"{width}) features: {error}")
    if not hasattr(out, "shape") or tuple(out.shape[1:]) != (1,):
        fail_argument("discriminator", expected,
                      f"{discriminator.name!r} giving "
                      f"{getattr(out, 'shape', type(out).__name__)}")
    last = (_compat.output_operation(discriminator)
            if isinstance(discriminator, keras.Model) else discriminator)
    if getattr(last, "activation", None) is keras.activations.sigmoid:
        # Its loss is binary cross-entropy on logits.
        fail_argument("discriminator", expected + " (no sigmoid: the loss "
                      "applies it)", f"{discriminator.name!r} ending in "
                      "a sigmoid")


class _ScheduleProgress(keras.callbacks.Callback):
    """Sets the lambda schedule at the start of each `fit`: step
    `initial_epoch x steps` of `epochs x steps` (`epochs` is the last
    epoch, as in `fit`), so a fit resumed at an epoch (`initial_epoch=`, or
    a `BackupAndRestore` before this callback) goes on where the schedule
    was. Assigned before the first step reads the variables."""

    def __init__(self, initial_epoch=0):
        super().__init__()
        self.initial_epoch = initial_epoch

    def on_train_begin(self, logs=None):
        steps = self.params.get("steps") or 0
        epochs = self.params.get("epochs") or 0
        first = (_compat.restored_initial_epoch(self.model)
                 or self.initial_epoch)
        self.model.schedule_step.assign(float(steps * first))
        self.model.schedule_total.assign(float(steps * epochs))


def _kind(x):
    # In the traced step an array batch is a JAX tracer.
    if isinstance(x, jax.core.Tracer):
        return "batches of arrays"
    return f"of type {type(x).__name__}"


def _split_batch(x, y):
    if not isinstance(x, dict) or set(x) != {"source", "target"}:
        raise ValueError(
            "A DomainAdaptationModel trains on ({'source': images, "
            "'target': images}, source_labels) batches: make them with "
            "kft.adaptation.domain_pairs((x_source, y_source), x_target). "
            f"Received: x {_kind(x)}"
            + (f" with keys {sorted(x)}" if isinstance(x, dict) else ""))
    if y is None:
        raise ValueError("A DomainAdaptationModel needs source labels: "
                         "batches ({'source', 'target'}, y_source).")
    source, target = x["source"], x["target"]
    check_same_images(source.shape[1:], target.shape[1:], "source", "target")
    if target.shape[0] == 0 or source.shape[0] == 0:
        # The domain loss then saw one domain only (DANN trained without a
        # word; MMD and CORAL refused "at least 2 samples").
        raise ValueError(
            "A DomainAdaptationModel batch needs source and target images. "
            f"Received: a batch of {source.shape[0]} source and "
            f"{target.shape[0]} target images")
    return source, target


class DomainPairs(keras.utils.PyDataset):
    """Batches `({"source": xs, "target": xt}, ys)` for
    `DomainAdaptationModel.fit`; see `domain_pairs`."""

    def __init__(self, source, target, batch_size, seed, class_names=None):
        super().__init__()
        # The source dataset's own names (`fit` checks them against the
        # model's), or `None`.
        self.class_names = class_names
        self.xs, self.ys = source
        self.xt = target
        self.batch_size = batch_size
        self.seed = seed
        self.continue_passes_at(0)

    def __len__(self):
        return len(self.xs) // self.batch_size

    @property
    def passes_begun(self) -> int:
        """Epochs begun: the next epoch reads pass number `passes_begun`
        (its shuffles depend on `seed` and that number only)."""
        return self._pass

    def continue_passes_at(self, number: int) -> None:
        """Makes the next epoch read pass `number`, as a run that had
        trained `number` epochs would: a resumed `fit`
        (`kft.callbacks.BackupAndRestore(..., data=pairs)`) then sees the
        batches the uninterrupted one saw."""
        self._pass = check_int("number", number, min_value=0)
        rng = np.random.default_rng((self.seed, self._pass))
        self.source_order = rng.permutation(len(self.xs))
        # Enough target indices for one epoch, cycling through the target.
        need = len(self) * self.batch_size
        reps = -(-need // len(self.xt))
        self.target_order = np.concatenate(
            [rng.permutation(len(self.xt)) for _ in range(reps)])[:need]

    def on_epoch_end(self):
        self.continue_passes_at(self._pass + 1)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        s, t = self.source_order[part], self.target_order[part]
        # Cast a batch at a time: the user's arrays are kept as they are
        # (a float32 copy of uint8 images held 4x their memory all fit).
        return {"source": np.asarray(self.xs[s], "float32"),
                "target": np.asarray(self.xt[t], "float32")}, self.ys[s]


def domain_pairs(source, target, *, batch_size: int = 32,
                 seed: int = 0) -> DomainPairs:
    """Zips labelled source and unlabelled target images into the batches
    a `DomainAdaptationModel` trains on.

    Each epoch is one shuffled pass over the source (the last partial
    batch is dropped, so every step has the same shapes and the step
    compiles once); target images are drawn in shuffled passes, as many as
    needed. Equal source and target batch sizes, as in DANN. Epoch `e`'s
    shuffles depend on `seed` and `e` only, so a resumed `fit` (with
    `kft.callbacks.BackupAndRestore(..., data=pairs)` and
    `shuffle=False`) reads the batches the uninterrupted one read.

    Args:
        source: `(x, y)` arrays: images `(n, h, w, c)` and labels; or a
            `kft.data.ImageDataset` (e.g. from `kft.data.from_directory`),
            read once into memory in stored order (its own shuffling,
            balanced sampling and augmentation do not apply: these batches
            are shuffled here).
        target: Unlabelled target images `(m, h, w, c)` (an `(x, y)` pair
            raises: adaptation must not see target labels); or a
            `kft.data.ImageDataset`, read into memory likewise, whose
            labels (a loader always attaches some, e.g. folder names) are
            dropped unread. Other iterables (tf.data, generators) raise a
            `TypeError`: turn them into arrays first.
        batch_size: Images per domain per step. Defaults to `32`.
        seed: Seed of the shuffles. Defaults to `0`.

    Returns:
        A `keras.utils.PyDataset` with `len()` steps per epoch.
        `DomainAdaptationModel.fit` checks its labels against the model's
        classes (integers in `[0, num_classes)` or one-hot rows of that
        width) and its `class_names` (a source dataset's own names, else
        `None`) against the model's names.

    Raises:
        ValueError: labelled (`(x, y)`) or empty target, image shapes that
            differ between domains, fewer source images than `batch_size`.
        TypeError: data of another kind than the above.

    Example:
    >>> import numpy as np
    >>> pairs = domain_pairs((np.zeros((10, 8, 8, 3)), np.zeros(10)),
    ...                      np.ones((3, 8, 8, 3)), batch_size=4)
    >>> x, y = pairs[0]
    >>> len(pairs), x["source"].shape, x["target"].shape, y.shape
    (2, (4, 8, 8, 3), (4, 8, 8, 3), (4,))
    """
    batch_size = check_int("batch_size", batch_size, min_value=2)
    seed = check_int("seed", seed, min_value=0)
    from kft.data import ImageDataset

    class_names = (tuple(source.class_names)
                   if isinstance(source, ImageDataset)
                   and not source.numbered_classes else None)
    source = dataset_arrays(source) or source
    if not isinstance(source, (tuple, list)) or len(source) != 2:
        fail_argument("source", "a labelled (x, y) pair of arrays or a "
                      "kft.data.ImageDataset", _describe(source), TypeError)
    xs = image_array(source[0], "source[0]")
    if xs is None:
        fail_argument("source", "a labelled (x, y) pair of arrays or a "
                      "kft.data.ImageDataset", f"an (x, y) pair with x a "
                      f"{type(source[0]).__name__}", TypeError)
    ys = np.asarray(source[1])
    if len(ys) != len(xs):
        raise ValueError(
            f"Argument `source` has {len(xs)} images but {len(ys)} labels.")
    from_dataset = dataset_arrays(target)
    xt = image_array(target if from_dataset is None else from_dataset[0],
                     "target")
    if xt is None:
        fail_argument("target", "an array of unlabelled target images "
                      "(n, height, width, channels) or a "
                      "kft.data.ImageDataset", _describe(target), TypeError)
    check_same_images(xs.shape[1:], xt.shape[1:], "source", "target")
    if len(xs) < batch_size:
        raise ValueError(
            f"Argument `source` has {len(xs)} images, fewer than "
            f"batch_size={batch_size}: no full batch to train on.")
    return DomainPairs((xs, ys), xt, batch_size, seed, class_names)
