"""Training: what trains, and recipes that change it.

- `state`: keeping a compiled model consistent when its trainable set
  changes (`changing_trainable`, `refresh_training_state`).
- `freezing`: strategies (`freeze`) and the BatchNorm policy.
- `summary`: `trainable_summary`, per block.
- `unfreezing`: the `GradualUnfreezing` callback; `unfreeze_schedules`
  (`Every`, `Milestones`, `Plateau`) say when; `unfreeze_backup` keeps its
  resume state beside `BackupAndRestore`'s.
- `compile_notice`: the `CompileNotice` callback.
- `monitor`: which way a monitored metric improves.
- `fine_tune`: the two-phase recipe; `phases` (best-epoch keeping, the
  cosine rate), `fit_data` (the data forms it takes).
- `feature_cache`: `cache_features` and `fit_head`; `head` splits a
  model at its head.
"""
