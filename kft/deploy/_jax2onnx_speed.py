"""Faster jax2onnx conversions: only the plugins JAX needs, linear-time checks.

Before its first conversion jax2onnx imports every plugin it ships,
those for Flax, Equinox, dm_pix and its examples included, which takes
tens of seconds on a small CPU; kft's graphs are plain JAX, so
`faster_jax2onnx()` imports the `jax2onnx.plugins.jax` tree only.
jax2onnx (0.17) also checks after every lowered equation that its outputs
are connected by scanning every graph input, initializer and node, and its
graph optimizer looks a value's producer up by building the set of every
node's id on each call: both quadratic in the graph's size (EfficientNetB0
spends over a minute in them, the larger backbones hours). `faster_jax2onnx()`
swaps them, for the duration of one conversion, for versions that answer
from the value's own producer link first (checked against the same node
list, its id set built once per list) and fall back to the original scan
otherwise, so the answers are the same. Unknown jax2onnx versions are left
untouched.
"""

import contextlib
import importlib.metadata
import pathlib


def _patches():
    from jax2onnx.converter import conversion_api
    from jax2onnx.converter import ir_optimizations
    from jax2onnx.converter import optimizer_graph_utils
    from jax2onnx.converter import output_binding
    from jax2onnx.plugins import plugin_system
    import onnx_ir as ir

    connected = output_binding._value_is_graph_connected
    producer_node = optimizer_graph_utils._producer_node

    def fast_connected(ctx, value):
        producer = value.producer() if isinstance(value, ir.Value) else None
        if producer is not None and any(
                node is producer for node in reversed(ctx.builder.nodes)):
            return True
        return connected(ctx, value)

    # The ids of the last node list asked about: the original builds this
    # set on every call, and the optimizer asks once per value of a pass
    # (NASNet's transpose pass ran for over 15 minutes). Lists only: the
    # optimizer passes snapshots (`list(graph)`) or lists it only appends
    # to, so the same list of the same length holds the same nodes.
    last = {"nodes": None, "length": -1, "ids": frozenset()}

    def fast_producer_node(nodes, value_or_name):
        if isinstance(value_or_name, ir.Value):
            producer = value_or_name.producer()
            if producer is None and (value_or_name.is_graph_input()
                                     or value_or_name.is_initializer()):
                # Graph inputs and initializers have no producer, and
                # value names are unique in an ONNX graph.
                return None
            if producer is not None and type(nodes) is list:
                if last["nodes"] is not nodes or last["length"] != len(nodes):
                    last.update(nodes=nodes, length=len(nodes),
                                ids=frozenset(map(id, nodes)))
                if id(producer) in last["ids"]:
                    return producer  # what the original returns first
        return producer_node(nodes, value_or_name)

    def import_jax_plugins():
        if not plugin_system._already_imported_plugins:
            root = pathlib.Path(plugin_system.__file__).parent / "jax"
            plugin_system._import_tree(root, "jax2onnx.plugins.jax")

    return [(conversion_api, "import_all_plugins", import_jax_plugins),
            (plugin_system, "import_all_plugins", import_jax_plugins),
            (output_binding, "_value_is_graph_connected", fast_connected),
            (optimizer_graph_utils, "_producer_node", fast_producer_node),
            (ir_optimizations, "_producer_node", fast_producer_node)]


@contextlib.contextmanager
def faster_jax2onnx():
    """Within the block, jax2onnx converts large graphs in linear time."""
    version = importlib.metadata.version("jax2onnx")
    if not version.startswith("0.17."):
        yield
        return
    patches = _patches()
    saved = [(module, name, getattr(module, name))
             for module, name, _ in patches]
    try:
        for module, name, new in patches:
            setattr(module, name, new)
        yield
    finally:
        for module, name, old in saved:
            setattr(module, name, old)
