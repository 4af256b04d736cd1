"""Trains with GradualUnfreezing + BackupAndRestore; SIGKILLs itself in
epoch KFT_TEST_KILL_AT (when set), or at the end of epoch
KFT_TEST_KILL_AT_END between the two callbacks' writes (in the order
KFT_TEST_ORDER, "unfreeze_first" or "backup_first"). Used by
test_callbacks.py."""

import os
import signal
import sys

import numpy as np

import kft  # noqa: F401  (selects the JAX backend)
import keras

workdir = sys.argv[1]
kill_at = os.environ.get("KFT_TEST_KILL_AT")
kill_at_end = os.environ.get("KFT_TEST_KILL_AT_END")
order = os.environ.get("KFT_TEST_ORDER", "unfreeze_first")
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

    def on_epoch_end(self, epoch, logs=None):
        if kill_at_end and epoch == int(kill_at_end):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if epoch == self.model._initial_epoch and epoch > 0:
            stage = self.model_stage()
            print(f"resumed at epoch {epoch} with {stage} blocks unfrozen")

    def model_stage(self):
        names = {v.path.split("_")[0] for v in self.model.trainable_variables}
        return len(names & {"block1", "block2", "block3", "stem"})


unfreeze = kft.callbacks.GradualUnfreezing(every=1, backup_dir=backup,
                                           verbose=0)
restore = keras.callbacks.BackupAndRestore(backup)
first, second = ((unfreeze, restore) if order == "unfreeze_first"
                 else (restore, unfreeze))
model.fit(x, y, epochs=5, batch_size=8, shuffle=False, verbose=0,
          callbacks=[first, Killer(), second])
os.makedirs(workdir, exist_ok=True)
np.savez(os.path.join(workdir, "final.npz"),
         **{v.path: np.array(v.value) for v in model.weights},
         **{"opt/" + v.path: np.array(v.value)
            for v in model.optimizer.variables})
