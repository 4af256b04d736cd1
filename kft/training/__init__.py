"""Training: what trains, and recipes that change it.

- `state`: keeping a compiled model consistent when its trainable set
  changes (`changing_trainable`, `refresh_training_state`).
- `freezing`: strategies (`freeze`) and the BatchNorm policy.
- `summary`: `trainable_summary`, per block.
- `unfreezing`: the `GradualUnfreezing` callback.
- `compile_notice`: the `CompileNotice` callback.
- `monitor`: which way a monitored metric improves.
- `fine_tune`: the two-phase recipe.
- `feature_cache`: `cache_features` and `fit_head`.
"""
