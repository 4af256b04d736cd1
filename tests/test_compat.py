"""Private Keras/JAX API is used only in kft/_compat.py."""

import pathlib
import re

import pytest

from kft import _compat

KFT = pathlib.Path(__file__).resolve().parents[1] / "kft"
# The private Keras attributes kft relies on (see kft/_compat.py).
PRIVATE = re.compile(
    r"\._(jax_state|jax_state_synced|compiled_trainable_state|"
    r"trainable_variables|trainable_variables_indices|var_key|variables|"
    r"iterations|learning_rate|get_variable_index|backend_update_step|"
    r"apply_weight_decay|use_weight_decay|u_product|tracker|flatten_layers|"
    r"layers|direction|compile_config|transform_images|get_zoom_matrix|"
    r"get_fill_value)\b|\bjax_state_sync\b|\bkeras\.src\b|\bjax\._src\b")


def test_private_keras_and_jax_api_only_in_the_compat_module():
    offenders = []
    for path in sorted(KFT.rglob("*.py")):
        if path.name == "_compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE.search(code):
                offenders.append(f"{path.relative_to(KFT)}:{number}: "
                                 f"{line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_pattern_catches_what_it_should():
    for line in ("optimizer._iterations", "from keras.src.utils import x",
                 "model._jax_state_synced = True", "m.jax_state_sync()",
                 "layer._flatten_layers()", "from jax._src import xla_bridge"):
        assert PRIVATE.search(line), line
    assert not PRIVATE.search("self._stage = 1")


@pytest.mark.parametrize("version", ["3.15.0", "3.15.1", "3.15.2.dev0"])
def test_supported_keras_versions(version):
    _compat.check_keras_version(version)


@pytest.mark.parametrize("version", ["3.14.0", "3.16.0", "4.0.0"])
def test_unsupported_keras_version_raises_naming_both(version):
    with pytest.raises(ImportError, match=rf">=3.15,<3.16.*found Keras "
                                          rf"{re.escape(version)}"):
        _compat.check_keras_version(version)


def test_installed_keras_is_supported():
    _compat.check_keras_version()


def test_ctrl_c_while_keras_reads_a_steps_logs_ends_the_fit():
    # Keras' log conversion had a bare `except:`: the KeyboardInterrupt of
    # a Ctrl-C landing while it waited on a step's result was swallowed
    # and training went on (3 of 6 `fine_tune` runs, 6 of 6 plain fits).
    import keras

    import kft  # noqa: F401 - applies kft's fix
    from keras.src.backend.jax import trainer
    from keras.src.utils import python_utils

    class Interrupted:
        def __float__(self):
            raise KeyboardInterrupt

    for convert in (python_utils.pythonify_logs, trainer.pythonify_logs):
        with pytest.raises(KeyboardInterrupt):
            convert({"loss": Interrupted()})
        # What Keras kept as it is, it still keeps.
        assert convert({"a": {"b": 2}, "name": "x", "n": keras.ops.ones(())}
                       ) == {"b": 2.0, "name": "x", "n": 1.0}
