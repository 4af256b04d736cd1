"""Trains with GradualUnfreezing + BackupAndRestore; SIGKILLs itself in
epoch KFT_TEST_KILL_AT (when set). Used by test_callbacks.py."""

import os
import signal
import sys

import numpy as np

import kft  # noqa: F401  (selects the JAX backend)
import keras

workdir = sys.argv[1]
kill_at = os.environ.get("KFT_TEST_KILL_AT")
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (32, 16, 16, 3)).astype("float32")
y = rng.integers(0, 3, 32).astype("int32")
model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                             input_shape=(16, 16, 3))
model.compile(keras.optimizers.Adam(1e-2),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
backup = os.path.join(workdir, "backup")


class Killer(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if kill_at and self.epoch == int(kill_at) and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if epoch == self.model._initial_epoch and epoch > 0:
            stage = self.model_stage()
            print(f"resumed at epoch {epoch} with {stage} blocks unfrozen")

    def model_stage(self):
        names = {v.path.split("_")[0] for v in self.model.trainable_variables}
        return len(names & {"block1", "block2", "block3", "stem"})


model.fit(x, y, epochs=5, batch_size=8, shuffle=False, verbose=0, callbacks=[
    kft.callbacks.GradualUnfreezing(every=1, backup_dir=backup, verbose=0),
    keras.callbacks.BackupAndRestore(backup),
    Killer(),
])
os.makedirs(workdir, exist_ok=True)
np.savez(os.path.join(workdir, "final.npz"),
         **{v.path: np.array(v.value) for v in model.weights},
         **{"opt/" + v.path: np.array(v.value)
            for v in model.optimizer.variables})
