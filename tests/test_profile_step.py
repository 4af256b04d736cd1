"""benchmarks/profile_step.py: HLO parsing, op grouping, and one real run."""

import gzip
import json
import os
import pathlib

import numpy as np
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"

# A compiled train step in miniature: a forward convolution fused with its
# BatchNorm, the kernel gradient (a convolution of the input with the
# output gradient, then a transpose), the input gradient (reads the
# kernel), the optimizer update and a metric update.
HLO = """HloModule jit_train_step, entry_computation_layout={(f32[2,8,8,4]{3,2,1,0})->f32[]}

%fused_computation (param_0: f32[2,8,8,4], param_1: f32[3,3,4,8]) -> f32[2,8,8,8] {
  %param_0 = f32[2,8,8,4]{3,2,1,0} parameter(0)
  %param_1 = f32[3,3,4,8]{3,2,1,0} parameter(1)
  %conv = f32[2,8,8,8]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/jvp(cnn)/conv1/conv_general_dilated" stack_frame_id=4}
  ROOT %add.1 = f32[2,8,8,8]{3,2,1,0} add(%conv, %conv), metadata={op_name="jit(train_step)/jvp(cnn)/bn1/add"}
}

%fused_transpose (param_0.1: f32[8,3,3,4]) -> f32[3,3,4,8] {
  %param_0.1 = f32[8,3,3,4]{3,2,1,0} parameter(0)
  %transpose.1 = f32[3,3,4,8]{0,3,2,1} transpose(%param_0.1), dimensions={1,2,3,0}
  ROOT %copy.1 = f32[3,3,4,8]{3,2,1,0} copy(%transpose.1)
}

%fused_bn (param_0.2: f32[2,8,8,8]) -> f32[2,8,8,8] {
  %param_0.2 = f32[2,8,8,8]{3,2,1,0} parameter(0)
  ROOT %multiply.2 = f32[2,8,8,8]{3,2,1,0} multiply(%param_0.2, %param_0.2), metadata={op_name="jit(train_step)/transpose(jvp(cnn))/bn1/mul"}
}

ENTRY %main.9 (p0: f32[2,8,8,4], p1: f32[3,3,4,8], p2: f32[2,8,8,8]) -> (f32[3,3,4,8], f32[2,8,8,4], f32[]) {
  %p0 = f32[2,8,8,4]{3,2,1,0} parameter(0), metadata={op_name="data[0]"}
  %p1 = f32[3,3,4,8]{3,2,1,0} parameter(1), metadata={op_name="state[0][0]"}
  %p2 = f32[2,8,8,8]{3,2,1,0} parameter(2)
  %fusion = f32[2,8,8,8]{3,2,1,0} fusion(%p0, %p1), kind=kOutput, calls=%fused_computation, metadata={op_name="jit(train_step)/jvp(cnn)/conv1/conv_general_dilated"}
  %bn_grad = f32[2,8,8,8]{3,2,1,0} fusion(%p2), kind=kLoop, calls=%fused_bn
  %kgrad = f32[8,3,3,4]{3,2,1,0} convolution(%p0, %bn_grad), window={size=8x8 pad=1_1x1_1}, dim_labels=f01b_i01o->01bf, metadata={op_name="jit(train_step)/transpose(jvp(cnn))/conv1/conv_general_dilated"}
  %transpose_copy_fusion = f32[3,3,4,8]{3,2,1,0} fusion(%kgrad), kind=kLoop, calls=%fused_transpose
  %igrad = f32[2,8,8,4]{3,2,1,0} convolution(%bn_grad, %p1), window={size=3x3 pad=1_1x1_1 rhs_reversal=1x1}, dim_labels=b01f_01oi->b01f, metadata={op_name="jit(train_step)/transpose(jvp(cnn))/conv1/conv_general_dilated"}
  %update = f32[3,3,4,8]{3,2,1,0} subtract(%p1, %transpose_copy_fusion), metadata={op_name="jit(train_step)/sgd/sub"}
  %metric = f32[] reduce(%p2, %p2), dimensions={0,1,2,3}, to_apply=%fused_bn, metadata={op_name="jit(train_step)/add"}
  ROOT %tuple = (f32[3,3,4,8]{3,2,1,0}, f32[2,8,8,4]{3,2,1,0}, f32[]) tuple(%update, %igrad, %metric)
}
"""
LAYERS = {"cnn": "Functional", "conv1": "Conv2D",
          "bn1": "BatchNormalization"}


@pytest.fixture(scope="module")
def profile_step():
    """The script as a module (benchmarks/ is not a package)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        import profile_step

        yield profile_step


@pytest.fixture(scope="module")
def classifier(profile_step):
    return profile_step.Classifier(HLO, [(3, 3, 4, 8), (8,)], LAYERS, "sgd")


def test_parse_instruction_reads_shape_opcode_operands_calls_metadata(
        profile_step):
    instr = profile_step.parse_instruction(
        '  ROOT %fusion.3 = (f32[2,4]{1,0}, f32[4]{0}) fusion(%a, %b.1), '
        'kind=kLoop, calls=%fused_computation.3, '
        'metadata={op_name="jit(f)/jvp(m)/dense/dot_general"}')
    assert instr.name == "fusion.3"
    assert instr.opcode == "fusion"
    assert instr.operands == ["a", "b.1"]
    assert instr.calls == ["fused_computation.3"]
    assert instr.op_name == "jit(f)/jvp(m)/dense/dot_general"
    assert profile_step.shape_arrays(instr.shape) == [
        ("f32", (2, 4)), ("f32", (4,))]
    assert profile_step.elements(instr.shape) == 8
    assert profile_step.nbytes(instr.shape) == 48
    assert profile_step.parse_instruction("}") is None


def test_parse_hlo_finds_every_computation(profile_step):
    computations = profile_step.parse_hlo(HLO)
    assert set(computations) == {"fused_computation", "fused_transpose",
                                 "fused_bn", "main.9"}
    assert len(computations["main.9"]) == 11


@pytest.mark.parametrize("op, group, layer", [
    ("fusion", "forward", "conv1"),  # the convolution, not its fused BN
    ("kgrad", "weight gradients", "conv1"),
    ("igrad", "input gradients", "conv1"),
    ("transpose_copy_fusion", "layout", ""),
    ("bn_grad", "normalization", "bn1"),
    ("update", "optimizer update", ""),
    ("metric", "other", ""),
])
def test_classify_groups_each_kind_of_op(classifier, op, group, layer):
    row = classifier.classify(op)
    assert (row["group"], row["layer"]) == (group, layer)


def test_group_times_sums_the_trace_events_per_step(profile_step, classifier,
                                                    tmp_path):
    events = [{"ph": "X", "name": op, "dur": dur, "args": {
        "hlo_module": "jit_train_step", "hlo_op": op}}
        for op, dur in [("kgrad", 3000), ("kgrad", 1000), ("igrad", 2000),
                        ("fusion", 500), ("end: kgrad", 7)]]
    events.append({"ph": "X", "name": "kgrad", "dur": 9e9,
                   "args": {"hlo_module": "jit_other", "hlo_op": "kgrad"}})
    folder = tmp_path / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    totals = profile_step.thunk_times(str(tmp_path), "jit_train_step")
    rows, groups = profile_step.group_times(classifier, totals, steps=2)
    assert [(r["op"], r["ms"]) for r in rows] == [
        ("kgrad", 2.0), ("igrad", 1.0), ("fusion", 0.25)]
    assert groups["weight gradients"] == 2.0
    assert groups["input gradients"] == 1.0
    assert groups["forward"] == 0.25
    assert sum(groups.values()) == 3.25


def test_a_gpu_trace_counts_the_device_events_only(profile_step, tmp_path):
    # The host's launch events name the ops too; their time is not the
    # ops' time on the GPU.
    events = [
        {"ph": "M", "name": "process_name", "pid": 1,
         "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 7,
         "args": {"name": "/device:GPU:0"}},
        {"ph": "X", "pid": 7, "name": "conv", "dur": 4000,
         "args": {"hlo_module": "jit_train_step", "hlo_op": "conv"}},
        {"ph": "X", "pid": 1, "name": "conv", "dur": 50,
         "args": {"hlo_module": "jit_train_step", "hlo_op": "conv"}},
        {"ph": "X", "pid": 7, "name": "add", "dur": 1000,
         "args": {"hlo_module": "jit_other", "hlo_op": "add"}}]
    folder = tmp_path / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    assert profile_step.thunk_times(str(tmp_path)) == {
        "conv": 0.004, "add": 0.001}
    kernels = {}
    assert profile_step.thunk_times(str(tmp_path), "jit_train_step",
                                    kernels) == {"conv": 0.004}
    assert kernels == {"conv": {"conv"}}


@pytest.fixture(scope="module")
def cfg():
    return {"side": "kft", "backbone": "simple_cnn", "strategy": "full",
            "size": 16, "batch": 2, "steps": 1, "warmup": 0,
            "profile_steps": 1, "top": 1000, "gpu": False}


@pytest.fixture
def vs_torch_env(profile_step, monkeypatch):
    # build_kft sets the XLA flag variable for its side; keep ours.
    for name in ("KFT_XLA_CPU_FLAGS", "XLA_FLAGS"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)


def test_profiled_step_is_keras_train_on_batch(profile_step, cfg,
                                               vs_torch_env):
    import jax

    model, x, y = profile_step._vs_torch.build_kft(cfg)
    jitted, state, data = profile_step.make_step(model, x, y)
    state = jax.tree.map(jax.numpy.copy, state)  # keep the model's arrays
    logs, _ = jitted(state, data)
    np.testing.assert_allclose(float(logs["loss"]),
                               model.train_on_batch(x, y), rtol=1e-6)


def test_profile_of_a_real_step_covers_every_group(profile_step, cfg,
                                                   vs_torch_env):
    record = profile_step.profile(cfg)
    groups = record["groups_ms"]
    assert set(groups) == set(profile_step.GROUPS)
    for group in ("forward", "input gradients", "weight gradients",
                  "optimizer update"):
        assert groups[group] > 0, group
    assert record["op_sum_ms"] == pytest.approx(sum(groups.values()))
    # Every trainable convolution has its kernel gradient found.
    grads = {op["layer"] for op in record["ops"]
             if op["group"] == "weight gradients"}
    assert {"block1_conv", "block2_conv", "block3_conv"} <= grads
    assert record["compile_s"] > 0 and record["lower_s"] > 0
    assert record["xla_argument_mib"] > 0
    assert record["peak_rss_compile_mib"] >= record["rss_built_mib"] * 0.5
    assert len(record["losses"]) == 1 + cfg["steps"] + cfg["profile_steps"]
    assert "| 16 | simple_cnn | full | 2 |" in \
        profile_step.summary_table([{**cfg, **record}])


def test_vs_torch_times_the_kft_step_inside_fit(profile_step, cfg,
                                                vs_torch_env):
    import jax
    import jax.monitoring

    compiles = []

    def listener(event, duration, fun_name="", **kwargs):
        if event == "/jax/core/compile/backend_compile_duration" and \
                "train_step" in fun_name:
            compiles.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        result = profile_step._vs_torch.run_kft(
            {**cfg, "steps": 2, "warmup": 1, "kft_loop": "fit"})
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert result["kft_loop"] == "fit"
    # Two rounds of fits of n and 2n steps; the step is their difference.
    fits = result["fit_times_s"]
    assert len(fits) == 2
    assert result["step_times_s"] == [(b - a) / 2 for a, b in fits]
    assert result["median_step_s"] == pytest.approx(
        np.median(result["step_times_s"]))
    # One loss per fit: the first (compile), the warm-up, 2 x 2 timed.
    assert len(result["losses"]) == 6
    assert np.all(np.isfinite(result["losses"]))
    # Only fit ran: the train step compiled once, not once more for
    # train_on_batch.
    assert len(compiles) == 1, compiles
