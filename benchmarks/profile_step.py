"""Where the time, memory and compile time of a kft training step go, on CPU.

Builds the kft side of `bench_vs_torch.py` (`_vs_torch.build_kft`: same
model, freezing, optimizer, loss and batch), jit-compiles Keras' own
`model.train_step` the way `train_on_batch` does (state donated), and
reports:

- compile time: tracing + lowering and XLA's compile, seconds (the
  persistent cache is off in the child process, so these are cold);
- memory: `compiled.memory_analysis()` (XLA's temp, argument, output
  bytes) and the process RSS after building, after compiling (with the
  peak during the compile), after the first step and after the timed
  steps (with the peak of the steps alone);
- per-op time: `--profile-steps` steps under `jax.profiler.trace`; XLA's
  CPU runtime records one event per executed HLO op ("thunk"), which is
  matched to the compiled HLO (`compiled.as_text()`) and its metadata:
  `jvp(...)` marks the forward, `transpose(jvp(...))` the backward, the
  optimizer's name scope the update, and the Keras layer scope names the
  layer. Each op goes to one group:

  forward | input gradients | weight gradients | normalization |
  optimizer update | layout (transposes, copies) | other

  An op's main instruction is its convolution, else its matrix product,
  else its reduction (else its largest op). In the backward, it is a
  weight gradient when that is a convolution, matrix product or
  reduction that reads no trainable weight (an input gradient reads the
  kernel: traced through transposes, flips, slices and fusions to the
  step's `state[0]` parameters) and whose output has the element count
  of a weight (or of one kernel position of it: kft's shifted
  convolutions take a gradient per position) or fewer elements than an
  operand, in a layer class with weights (convolution, dense,
  normalization); every other backward op is an input gradient. Ops of
  BatchNormalization / LayerNormalization layers are "normalization";
  ops that only transpose, copy, flip or reshape, and fusions whose
  result is a transpose or copy (XLA fuses elementwise producers into
  them, e.g. a frozen BatchNorm recomputed into the transposed input of
  a kernel-gradient convolution), are "layout". Unnamed ops XLA creates
  take the name of their nearest named user. Ops that XLA fused across
  layers count for their main instruction. Op times are summed per
  step; the runtime may run independent ops in parallel, so the sum can
  exceed the step's time (both are reported).

    python benchmarks/profile_step.py --backbones resnet50 --sizes 64
    python benchmarks/profile_step.py    # the four backbones at 64 px

Results: one JSON per row under `benchmarks/results/profile/` (or
`--out-dir`) and a markdown table next to them (`<tag>_table.md`). Each
row runs in a fresh process (flags and peaks are per process).
"""

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import statistics
import tempfile
import time

import _harness
import _vs_torch

GROUPS = ("forward", "input gradients", "weight gradients", "normalization",
          "optimizer update", "layout", "other")
NORM_CLASSES = ("BatchNormalization", "LayerNormalization",
                "GroupNormalization")
_LAYOUT_OPS = {"transpose", "copy", "reshape", "bitcast", "copy-start",
               "copy-done", "reverse"}
# Ops through which an operand still "is" a weight (a kernel transposed,
# flipped or sliced per position).
_WEIGHT_VIEWS = _LAYOUT_OPS | {"reverse", "slice", "dynamic-slice",
                               "broadcast", "convert", "fusion"}
# Layer classes that hold weights (pooling gradients also reduce).
_WEIGHTED = re.compile(r"Conv|Dense|Normalization|Embedding")
_TRAINABLE = "state[0]"  # Keras' train_step state: trainable weights first
_PASSIVE_OPS = {"parameter", "constant", "tuple", "get-tuple-element",
                "bitcast"}
# Ops whose runtime events contain their nested ops' events.
_CONTAINER_OPS = {"while", "conditional", "call", "async-start",
                  "async-done"}
_PRIORITY = ("convolution", "dot", "custom-call", "reduce-window", "reduce",
             "scatter", "gather")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
          "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
          "f64": 8, "c64": 8, "c128": 16}


# HLO text.

Instr = collections.namedtuple(
    "Instr", "name shape opcode operands calls op_name index root")
_HEAD = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_NAME = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_CALLS = re.compile(
    r"\b(?:calls|to_apply|body|condition|branch_computations)="
    r"(\{[^}]*\}|%?[\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def _balanced(text, start):
    """Index just past the bracket group opening at `text[start]`."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def parse_instruction(line):
    """An `Instr` from one HLO instruction line, or None."""
    match = _NAME.match(line)
    if not match:
        return None
    rest = line[match.end():]
    end = _balanced(rest, 0) if rest.startswith("(") else rest.find(" ")
    shape, rest = rest[:end], rest[end:].lstrip()
    paren = rest.find("(")
    if paren <= 0:
        return None
    opcode = rest[:paren]
    close = _balanced(rest, paren)
    operands = re.findall(r"%([\w.\-]+)", rest[paren:close])
    attrs = rest[close:]
    calls = []
    for group in _CALLS.findall(attrs):
        calls += re.findall(r"%?([\w.\-]+)", group.strip("{}"))
    op_name = _OP_NAME.search(attrs)
    index = rest[paren + 1:close - 1] if opcode == "parameter" else ""
    return Instr(match.group(2), shape, opcode, operands, calls,
                 op_name.group(1) if op_name else "",
                 int(index) if index.isdigit() else None,
                 bool(match.group(1)))


def parse_hlo(text):
    """`{computation: {instruction name: Instr}}` of an HLO module's text."""
    computations, current = {}, None
    for line in text.splitlines():
        if current is None:
            head = _HEAD.match(line)
            if head and "=" not in line.split("(")[0]:
                current = computations.setdefault(head.group(1), {})
            continue
        if line.strip() == "}":
            current = None
            continue
        instr = parse_instruction(line)
        if instr is not None:
            current[instr.name] = instr
    return computations


def shape_arrays(shape):
    """`[(dtype, dims)]` of an HLO shape (one entry per tuple element)."""
    return [(dtype, tuple(int(d) for d in dims.split(",") if d))
            for dtype, dims in _ARRAY.findall(shape)]


def elements(shape):
    """Elements of the largest array in `shape`."""
    return max((math.prod(dims) for _, dims in shape_arrays(shape)),
               default=0)


def nbytes(shape):
    return sum(math.prod(dims) * _BYTES.get(dtype, 4)
               for dtype, dims in shape_arrays(shape))


# Classification.

def weight_sizes(shapes):
    """Element counts a weight gradient has: each weight's, and one kernel
    position's (a kernel's last two dims, a depthwise kernel's channels)."""
    sizes = set()
    for shape in shapes:
        sizes.add(math.prod(shape))
        if len(shape) == 4:
            sizes.add(shape[2] * shape[3])
            sizes.add(shape[2])
    return sizes


def layer_of(op_name, layer_classes):
    """(layer name, class name) of the innermost Keras layer in `op_name`."""
    found = ("", "")
    for part in op_name.split("/"):
        part = re.sub(r"^(?:\w+\()+|\)+$", "", part)
        if part in layer_classes:
            found = (part, layer_classes[part])
    return found


def phase_of(op_name):
    if "transpose(jvp(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "update" if op_name else ""


class Classifier:
    """Groups the top-level ops of a compiled HLO module.

    Args:
        hlo_text: `compiled.as_text()`.
        weight_shapes: Shapes of the trainable weights.
        layer_classes: `{layer name: class name}` of the model's layers.
        optimizer_name: The optimizer's name scope (e.g. "sgd").
    """

    def __init__(self, hlo_text, weight_shapes, layer_classes,
                 optimizer_name):
        self.computations = parse_hlo(hlo_text)
        self.sizes = weight_sizes(weight_shapes)
        self.layer_classes = layer_classes
        self.optimizer_name = optimizer_name
        self.top = {}  # top-level op name -> Instr, over every computation
        fused = {c for comp in self.computations.values()
                 for i in comp.values() if i.opcode == "fusion"
                 for c in i.calls}
        for name, comp in self.computations.items():
            if name not in fused:
                self.top.update(comp)
        self._all = {n: i for comp in self.computations.values()
                     for n, i in comp.items()}
        self._caller = {c: i for i in self._all.values()
                        if i.opcode == "fusion" for c in i.calls}
        self._home = {n: c for c, comp in self.computations.items()
                      for n in comp}
        self._users = collections.defaultdict(list)
        for instr in self.top.values():
            for operand in instr.operands:
                self._users[operand].append(instr)

    def body(self, instr):
        """`instr` and every instruction of the computations it fuses."""
        out, todo = [instr], list(instr.calls if instr.opcode == "fusion"
                                  else [])
        while todo:
            comp = self.computations.get(todo.pop(), {})
            for i in comp.values():
                out.append(i)
                if i.opcode == "fusion":
                    todo += i.calls
        return out

    def _shape(self, name):
        instr = self._all.get(name)
        return instr.shape if instr else ""

    def main(self, body):
        active = [i for i in body if i.opcode not in _PASSIVE_OPS]
        if not active:
            return body[0]
        rank = {op: n for n, op in enumerate(_PRIORITY)}
        return min(active, key=lambda i: (rank.get(i.opcode, len(rank)),
                                          -elements(i.shape)))

    def classify(self, name):
        """A dict describing top-level op `name`, with its "group"."""
        instr = self.top[name]
        body = self.body(instr)
        main = self.main(body)
        op_name = main.op_name or next(
            (i.op_name for i in body if i.op_name), "") or \
            self._user_op_name(name)
        layer, cls = layer_of(op_name, self.layer_classes)
        phase = phase_of(op_name)
        active = {i.opcode for i in body} - _PASSIVE_OPS - {"fusion"}
        if instr.opcode in _CONTAINER_OPS:
            group = "other"
        elif active and active <= _LAYOUT_OPS or (
                main.opcode not in _PRIORITY and any(
                    i.root and i.opcode in ("transpose", "copy")
                    for i in body[1:])):
            group = "layout"
        elif cls in NORM_CLASSES:
            group = "normalization"
        elif phase == "forward":
            group = "forward"
        elif phase == "backward":
            # kft.ops.conv_grads names its kernel gradients' ops.
            group = ("weight gradients" if _WEIGHTED.search(cls) and (
                "kernel_gradient" in op_name.split("/")
                or self._is_weight_grad(main)) else "input gradients")
        elif phase == "update" and self.optimizer_name and any(
                part == self.optimizer_name
                for part in op_name.split("/")):
            group = "optimizer update"
        else:
            group = "other"
        return {"op": name, "group": group, "phase": phase, "layer": layer,
                "layer_class": cls, "primitive": op_name.split("/")[-1],
                "main_opcode": main.opcode, "shape": instr.shape,
                "op_name": op_name}

    def _user_op_name(self, name, hops=3):
        """The op name of the nearest user that has one (XLA leaves some
        ops it creates, such as a pooling gradient's indices, unnamed)."""
        todo = [name]
        for _ in range(hops):
            users = [u for n in todo for u in self._users.get(n, [])]
            for user in users:
                found = user.op_name or next(
                    (i.op_name for i in self.body(user) if i.op_name), "")
                if found:
                    return found
            todo = [u.name for u in users]
        return ""

    def _is_weight_grad(self, main):
        """A backward op computes a weight gradient when its main op is a
        convolution, matrix product or reduction that reads no trainable
        weight (an input gradient reads the kernel) and whose output has
        a weight's element count or fewer elements than an operand."""
        if main.opcode not in ("convolution", "dot", "reduce",
                               "reduce-window"):
            return False
        if any(self._reads_weight(o) for o in main.operands):
            return False
        out = elements(main.shape)
        ins = [elements(self._shape(o)) for o in main.operands]
        return out in self.sizes or out < max(ins, default=0)

    def _reads_weight(self, name, hops=12):
        """Whether `name` is a trainable weight, or a view of one (through
        layout ops, slices, flips, and out of fused computations)."""
        instr = self._all.get(name)
        if instr is None or hops == 0:
            return False
        if instr.opcode == "parameter":
            if instr.op_name.startswith(_TRAINABLE):
                return True
            caller = self._caller.get(self._home.get(name))
            return (caller is not None and instr.index is not None
                    and instr.index < len(caller.operands)
                    and self._reads_weight(caller.operands[instr.index],
                                           hops - 1))
        if instr.opcode == "fusion":
            roots = [i for i in self.body(instr)[1:]
                     if i.opcode not in _PASSIVE_OPS]
            if any(i.opcode not in _WEIGHT_VIEWS for i in roots):
                return False
            return any(self._reads_weight(o, hops - 1)
                       for o in instr.operands)
        if instr.opcode in _WEIGHT_VIEWS:
            return any(self._reads_weight(o, hops - 1)
                       for o in instr.operands)
        return False


# Profiler trace.

def thunk_times(trace_dir, module=None, kernels=None):
    """`{op name: total seconds}` of `module`'s (None: every module's) op
    events in a trace. A GPU trace also has the host's events for the ops
    it launches: only the device's are counted then. `kernels`, a dict of
    sets, gets each op's event names (a GPU op's kernels)."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json*"),
                      recursive=True)
    if not paths:
        raise RuntimeError(f"no perfetto trace under {trace_dir}")
    opener = gzip.open if paths[0].endswith(".gz") else open
    with opener(paths[0], "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    devices = {event.get("pid") for event in events
               if event.get("ph") == "M" and event.get("name") ==
               "process_name" and re.search(
                   r"GPU|/device:", str((event.get("args") or {})
                                        .get("name", "")))}
    totals = collections.Counter()
    for event in events:
        args = event.get("args") or {}
        if (event.get("ph") == "X" and "hlo_op" in args
                and module in (None, args.get("hlo_module"))
                and (not devices or event.get("pid") in devices)
                and not event.get("name", "").startswith("end: ")):
            totals[args["hlo_op"]] += event.get("dur", 0) / 1e6
            if kernels is not None:
                kernels.setdefault(args["hlo_op"], set()).add(event["name"])
    return totals


def group_times(classifier, totals, steps):
    """Per-op rows (ms per step, sorted) and per-group ms per step."""
    rows, groups = [], dict.fromkeys(GROUPS, 0.0)
    for name, seconds in totals.items():
        if name in classifier.top:
            row = classifier.classify(name)
        else:  # an event the module text does not name
            row = {"op": name, "group": "other", "phase": "", "layer": "",
                   "layer_class": "", "primitive": "", "main_opcode": "",
                   "shape": "", "op_name": ""}
        if classifier.top.get(name) and \
                classifier.top[name].opcode in _CONTAINER_OPS:
            continue  # its nested ops have their own events
        row["ms"] = 1000 * seconds / steps
        groups[row["group"]] += row["ms"]
        rows.append(row)
    rows.sort(key=lambda r: -r["ms"])
    return rows, groups


# The step.

def layer_classes(model):
    """`{layer name: class name}` of `model`'s layers, nested ones too."""
    out, todo = {}, [model]
    while todo:
        layer = todo.pop()
        out[layer.name] = type(layer).__name__
        todo += getattr(layer, "layers", [])
    return out


def make_step(model, x, y):
    """Keras' train step of `model`, jitted as `train_on_batch` jits it.

    Returns `(jitted, state, data)`; `state` holds the model's current
    values (donated by the first call: copy it to keep the model usable).
    """
    import jax

    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    state = ([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables],
             [v.value for v in model.optimizer.variables],
             [v.value for v in model.metrics_variables])
    data = (jax.numpy.asarray(x), jax.numpy.asarray(y), None)
    return jax.jit(model.train_step, donate_argnums=0), state, data


def malloc_trim():
    """Collects garbage, hands glibc's free heap back to the OS (Linux)
    and returns the RSS after it, MiB (None without glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return _harness.rss_mib()


def ops_state():
    """`{file: sha1[:10]}` of kft/ops/*.py as this run reads them (the
    convolution code under measurement while it is being changed)."""
    import hashlib

    folder = os.path.join(os.path.dirname(_harness.HERE), "kft", "ops")
    return {os.path.basename(path): hashlib.sha1(
        open(path, "rb").read()).hexdigest()[:10]
        for path in sorted(glob.glob(os.path.join(folder, "*.py")))}


def profile(cfg):
    """Compiles, runs and profiles the step of `cfg`; returns the record."""
    import jax

    record = {"rss_start_mib": _harness.rss_mib(), "kft_ops": ops_state()}
    model, x, y = _vs_torch.build_kft(cfg)
    record["rss_built_mib"] = _harness.rss_mib()
    jitted, state, data = make_step(model, x, y)
    _harness.reset_peak_rss()
    begin = time.perf_counter()
    lowered = jitted.lower(state, data)
    record["lower_s"] = time.perf_counter() - begin
    begin = time.perf_counter()
    compiled = lowered.compile()
    record["compile_s"] = time.perf_counter() - begin
    record["peak_rss_compile_mib"] = _harness.peak_rss_mib()
    record["rss_compiled_mib"] = _harness.rss_mib()
    if cfg.get("malloc_trim"):  # how much of it is freed, unreturned heap
        record["rss_trimmed_mib"] = malloc_trim()
    memory = compiled.memory_analysis()
    for key in ("temp", "argument", "output", "alias", "generated_code"):
        value = getattr(memory, f"{key}_size_in_bytes", None)
        record[f"xla_{key}_mib"] = None if value is None else value / 2**20
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    record["xla_gflops"] = (cost or {}).get("flops", 0) / 1e9
    hlo = compiled.as_text()
    del lowered
    _harness.reset_peak_rss()
    logs, state = compiled(state, data)
    losses = [float(logs["loss"])]
    record["rss_first_step_mib"] = _harness.rss_mib()
    times = []
    for i in range(cfg["warmup"] + cfg["steps"]):
        begin = time.perf_counter()
        logs, state = compiled(state, data)
        losses.append(float(logs["loss"]))  # waits for the step
        if i >= cfg["warmup"]:
            times.append(time.perf_counter() - begin)
    record["median_step_s"] = statistics.median(times)
    record["step_times_s"] = times
    record["peak_rss_steps_mib"] = _harness.peak_rss_mib()
    record["rss_steps_mib"] = _harness.rss_mib()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(cfg["profile_steps"]):
                logs, state = compiled(state, data)
                losses.append(float(logs["loss"]))
        module = re.match(r"HloModule ([\w.\-]+)", hlo).group(1)
        totals = thunk_times(trace_dir, module)
    record.update(
        losses=losses, loadavg=_harness.loadavg(),
        weight_shapes=[list(v.shape) for v in model.trainable_variables],
        layer_classes=layer_classes(model),
        optimizer_name=model.optimizer.name,
        op_ms={name: 1000 * t / cfg["profile_steps"]
               for name, t in totals.items()})
    record.update(regroup(record, hlo, cfg["top"]))
    if cfg.get("hlo_out"):
        _harness.write_text(cfg["hlo_out"], hlo)
    return record


def regroup(record, hlo, top):
    """The grouped fields of a record from its raw `op_ms` and its HLO
    text (so the grouping can be redone without running the step)."""
    classifier = Classifier(hlo, record["weight_shapes"],
                            record["layer_classes"], record["optimizer_name"])
    totals = {name: ms / 1000 for name, ms in record["op_ms"].items()}
    rows, groups = group_times(classifier, totals, 1)
    return {"groups_ms": groups, "ops": rows[:top], "n_ops": len(rows),
            "op_sum_ms": sum(groups.values()), "by_class_ms": by_class(rows)}


def by_class(rows):
    """ms per step per (group, layer class), largest first."""
    totals = collections.Counter()
    for row in rows:
        totals[f"{row['group']} | {row['layer_class'] or '-'}"] += row["ms"]
    return dict(totals.most_common())


def run(cfgs):
    """The child side: profiles each config in this process (one each)."""
    for cfg in cfgs:
        yield {**cfg, **profile(cfg)}


# Tables.

def summary_table(records):
    """One row per profiled step: time, groups, compile, memory."""
    head = ("| size | backbone | strategy | batch | ms/step | op sum ms | "
            + " | ".join(f"{g} ms" for g in GROUPS)
            + " | lower s | compile s | XLA temp MiB | XLA args MiB | "
              "RSS built | peak RSS compile | RSS 1st step | "
              "peak RSS steps | load | cpu_convs.py |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        if "error" in r:
            rows.append(f"| {r['size']} | {r['backbone']} | {r['strategy']}"
                        f" | {r['batch']} | error |")
            continue
        cells = [str(r["size"]), r["backbone"], r["strategy"],
                 str(r["batch"]), f"{1000 * r['median_step_s']:.0f}",
                 f"{r['op_sum_ms']:.0f}"]
        cells += [f"{r['groups_ms'][g]:.0f}" for g in GROUPS]
        cells += [f"{r['lower_s']:.1f}", f"{r['compile_s']:.1f}",
                  f"{r['xla_temp_mib']:.0f}", f"{r['xla_argument_mib']:.0f}"]
        cells += [f"{r[k]:.0f}" for k in (
            "rss_built_mib", "peak_rss_compile_mib", "rss_first_step_mib",
            "peak_rss_steps_mib")]
        cells += [(r.get("loadavg") or ["?"])[0],
                  r.get("kft_ops", {}).get("cpu_convs.py", "?")[:7]]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ops_table(record, n=15):
    """The `n` slowest ops of one record."""
    rows = ["| op | group | layer (class) | primitive | main op | shape | "
            "ms/step | % |", "|---|---|---|---|---|---|---:|---:|"]
    total = record["op_sum_ms"] or 1
    for op in record["ops"][:n]:
        shape = op["shape"].split("{")[0]
        rows.append(f"| {op['op']} | {op['group']} | {op['layer']} "
                    f"({op['layer_class']}) | {op['primitive']} | "
                    f"{op['main_opcode']} | {shape} | {op['ms']:.1f} | "
                    f"{100 * op['ms'] / total:.1f} |")
    return "\n".join(rows)


def class_table(record, n=10):
    rows = ["| group \\| layer class | ms/step | % |", "|---|---:|---:|"]
    total = record["op_sum_ms"] or 1
    for key, ms in list(record["by_class_ms"].items())[:n]:
        rows.append(f"| {key.replace('|', chr(92) + '|')} | {ms:.1f} | "
                    f"{100 * ms / total:.1f} |")
    return "\n".join(rows)


def tables(records, header):
    """The markdown of a run: the summary, then each row's slowest ops."""
    text = [header, "", summary_table(records)]
    for r in records:
        if "error" not in r:
            text += ["", f"### {r['backbone']} {r['size']} px "
                     f"{r['strategy']}, batch {r['batch']}", "",
                     ops_table(r), "", class_table(r)]
    return "\n".join(text) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+",
                        default=list(_vs_torch.BACKBONES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--batch", type=int, default=None,
                        help="default: 16 at 64 px and below, else 4")
    parser.add_argument("--strategy", default="full",
                        choices=_vs_torch.STRATEGIES)
    parser.add_argument("--side", default="kft", choices=("kft", "kft-fast"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=40,
                        help="ops kept per row in the JSON")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--malloc-trim", action="store_true",
                        help="after compiling, return freed heap to the OS "
                             "and record the RSS (rss_trimmed_mib)")
    parser.add_argument("--xla-flags", default=None,
                        help="run with exactly these XLA_FLAGS instead of "
                             "kft's default CPU flags")
    parser.add_argument("--hlo-dir", default=None,
                        help="also write each compiled HLO module here")
    parser.add_argument("--out-dir",
                        default=_harness.results_path("profile"))
    parser.add_argument("--from-json", nargs="+", default=None,
                        help="no runs: the tables of these result files "
                             "(grouped again from their HLO when "
                             "`hlo_out` still exists)")
    args = parser.parse_args()
    begin, records = time.perf_counter(), []
    if args.from_json:
        for path in args.from_json:
            with open(path) as f:
                record = json.load(f)
            if "error" not in record and os.path.exists(
                    record.get("hlo_out") or ""):
                with open(record["hlo_out"]) as f:
                    record.update(regroup(record, f.read(), record["top"]))
            records.append(record)
        print(tables(records, _harness.header(begin)))
        return
    for size in args.sizes:
        for backbone in args.backbones:
            cfg = {"side": args.side, "backbone": backbone,
                   "strategy": args.strategy, "size": size,
                   "batch": args.batch or (16 if size <= 64 else 4),
                   "steps": args.steps, "warmup": args.warmup,
                   "profile_steps": args.profile_steps, "top": args.top,
                   "gpu": False, "malloc_trim": args.malloc_trim}
            if args.xla_flags is not None:
                cfg["xla_flags"] = args.xla_flags
            if args.hlo_dir:
                cfg["hlo_out"] = os.path.join(
                    args.hlo_dir, f"{args.tag}_{size}_{backbone}.hlo.txt")
            run_ = _harness.run_isolated(
                "profile_step:run", [cfg], timeout=args.timeout,
                env={"XLA_FLAGS": None, "KFT_COMPILATION_CACHE": "0"})
            record = run_.results[0] if run_.results else {
                **cfg, "error": run_.error or "no result"}
            records.append(record)
            name = f"{args.tag}_{size}_{backbone}_{args.strategy}.json"
            _harness.write_json(os.path.join(args.out_dir, name), record)
            status = record.get("error", "")[-300:] or (
                f"{1000 * record['median_step_s']:.0f} ms/step, compile "
                f"{record['lower_s']:.1f} + {record['compile_s']:.1f} s")
            print(f"[{time.perf_counter() - begin:5.0f} s] {size} "
                  f"{backbone}: {status}", flush=True)
    text = tables(records, _harness.header(begin))
    print(text)
    _harness.write_text(os.path.join(args.out_dir, f"{args.tag}_table.md"),
                        text)


if __name__ == "__main__":
    main()
