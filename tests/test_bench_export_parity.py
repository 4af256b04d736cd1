"""benchmarks/export_parity.py: its check of an ill-conditioned model."""

import types

import keras
import numpy as np

import kft

def test_taming_scales_the_last_norm_of_each_residual_branch(
        benchmark_script):
    # EfficientNet's branches end in BatchNormalization, then dropout
    # (stochastic depth), then the Add.
    script = benchmark_script("export_parity")
    model = kft.build_classifier("efficientnetb0", num_classes=3,
                                 weights=None, input_shape=(32, 32, 3))
    adds = [layer for layer in kft.models.backbones.find_backbone(
        model).layers if isinstance(layer, keras.layers.Add)]
    assert script._tame(model) == len(adds) == 9
    scaled = [v.path for v in model.weights if v.path.endswith("gamma")
              and np.allclose(np.asarray(v.value), 0.1)]
    assert len(scaled) == 9
    assert all("project_bn" in path for path in scaled)


def test_a_row_reports_keras_own_sensitivity(benchmark_script):
    script = benchmark_script("export_parity")
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3))
    row = script._row("simple_cnn", types.SimpleNamespace(size=16, repeats=1),
                      x.astype("float32"))
    assert row["ok"] and row["tamed_norms"] == 0
    assert 0 <= row["keras_self_diff"] < script.TOLERANCE
    assert row["keras_self_diff_untamed"] is None
    line = script._table([row]).splitlines()[-1]
    assert line.startswith("| simple_cnn |") and "| ok |" in line
    # A tamed row gives the self-difference before and after, and every
    # row the difference over the largest logit (its scale when the logits
    # are far below 1, where the tolerance's is 1).
    tamed = dict(row, keras_self_diff=6.6e-10, keras_self_diff_untamed=0.55,
                 tamed_norms=69, max_diff_random=1e-9, max_logit_random=2e-4,
                 max_diff_digits=0.0, max_logit_digits=0.0)
    line = script._table([tamed]).splitlines()[-1]
    assert "| 5.0e-06 | ok (tamed) | 5.5e-01 -> 6.6e-10 |" in line
