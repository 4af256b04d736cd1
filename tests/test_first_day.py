"""What `import kft` changes in a fresh process, and how it says so."""

import json
import logging
import os
import subprocess
import sys

import pytest

from kft import _config as _backend

_CONFIG_VARIABLES = ("KERAS_BACKEND", "KERAS_HOME", "KFT_COMPILATION_CACHE",
                     "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME",
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")


def _run(code, home, **env):
    base = {k: v for k, v in os.environ.items() if k not in _CONFIG_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        timeout=300, env=base | {"HOME": str(home), "JAX_PLATFORMS": "cpu"}
        | env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _write_keras_json(home, **config):
    (home / ".keras").mkdir(parents=True, exist_ok=True)
    (home / ".keras" / "keras.json").write_text(json.dumps(
        _backend._KERAS_DEFAULT_CONFIG | config))


def test_keras_json_backend_is_replaced_with_one_warning(tmp_path):
    _write_keras_json(tmp_path, backend="torch")
    code = ("import logging; logging.basicConfig(level=logging.INFO); "
            "import kft, keras; print(keras.backend.backend())")
    result = _run(code, tmp_path)
    assert result.stdout.split() == ["jax"]
    keras_json = str(tmp_path / ".keras" / "keras.json")
    warnings = [line for line in result.stderr.splitlines()
                if line.startswith("WARNING:kft:")]
    assert warnings == [
        f"WARNING:kft:kft: {keras_json} selects the 'torch' backend; kft "
        "runs Keras on JAX, so it set KERAS_BACKEND=jax for this process. "
        "Set KERAS_BACKEND=jax yourself to silence this."]
    cache = os.path.join(str(tmp_path), ".cache", "kft", "jax")
    assert (f"INFO:kft:kft: JAX compilation cache in {cache} "
            "(KFT_COMPILATION_CACHE=0 turns it off)") in result.stderr


def test_jax_cache_settings_made_before_import_are_kept(tmp_path):
    mine = str(tmp_path / "my-cache")
    code = (
        "import logging; logging.basicConfig(level=logging.INFO); "
        "import jax; "
        f"jax.config.update('jax_compilation_cache_dir', {mine!r}); "
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 7.0)"
        "; import kft; "
        "print(jax.config.jax_compilation_cache_dir, "
        "jax.config.jax_persistent_cache_min_compile_time_secs)")
    _write_keras_json(tmp_path)  # Keras' own default file: no choice
    result = _run(code, tmp_path)
    assert result.stdout.split() == [mine, "7.0"]
    assert "kft:" not in result.stderr


def test_the_users_logging_setup_after_import_works(tmp_path):
    # grain -> orbax -> absl ran `logging.basicConfig()` during
    # `import kft`, so the user's own call after it did nothing.
    code = ("import logging, kft; print(logging.getLogger().handlers); "
            "logging.basicConfig(level=logging.INFO, format='mine %(message)s'"
            "); logging.getLogger('app').info('hello')")
    result = _run(code, tmp_path)
    assert result.stdout.split() == ["[]"]
    assert "mine hello" in result.stderr.splitlines()


def test_keras_own_default_file_is_no_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    path = str(tmp_path / "keras.json")
    assert _backend._keras_config_backend() == (None, path)
    (tmp_path / "keras.json").write_text(json.dumps(
        _backend._KERAS_DEFAULT_CONFIG))
    assert _backend._keras_config_backend() == (None, path)
    (tmp_path / "keras.json").write_text(json.dumps(
        _backend._KERAS_DEFAULT_CONFIG | {"floatx": "float16"}))
    assert _backend._keras_config_backend() == ("tensorflow", path)
    (tmp_path / "keras.json").write_text("{not json")
    assert _backend._keras_config_backend() == (None, path)


@pytest.fixture
def jax_cache_config(monkeypatch):
    import jax

    names = ("jax_compilation_cache_dir",
             "jax_persistent_cache_min_compile_time_secs")
    saved = {name: getattr(jax.config, name) for name in names}
    for variable in _CONFIG_VARIABLES[2:]:
        monkeypatch.delenv(variable, raising=False)
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    yield jax
    for name, value in saved.items():
        jax.config.update(name, value)


def test_compilation_cache_respects_user_settings(jax_cache_config, tmp_path,
                                                  monkeypatch, caplog):
    jax = jax_cache_config
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # A threshold from the environment is the user's, even at JAX's default.
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1.0")
    with caplog.at_level(logging.INFO, logger="kft"):
        directory = _backend.enable_compilation_cache()
    assert directory == str(tmp_path / "kft" / "jax")
    assert jax.config.jax_compilation_cache_dir == directory
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0
    assert [r.getMessage() for r in caplog.records] == [
        f"kft: JAX compilation cache in {directory} "
        "(KFT_COMPILATION_CACHE=0 turns it off)"]
    # A directory already configured is kept, and nothing is said.
    caplog.clear()
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    with caplog.at_level(logging.INFO, logger="kft"):
        assert _backend.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    assert not caplog.records
    # Asked for explicitly: set, with kft's threshold when the user set none.
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    assert _backend.enable_compilation_cache(tmp_path / "explicit") == str(
        tmp_path / "explicit")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.5


def test_another_backend_chosen_before_import_is_refused(monkeypatch):
    # Keras reads KERAS_BACKEND once: kft cannot switch it, and says how.
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(ImportError, match=r"^kft runs on the JAX backend of "
                       r"Keras, but KERAS_BACKEND='torch'\. Unset it or set "
                       r"KERAS_BACKEND=jax before importing kft\.$"):
        _backend.ensure_jax_backend()


def test_keras_json_of_an_unwritable_home_is_read_where_keras_writes_it(
        tmp_path, monkeypatch):
    # Keras keeps its config in /tmp/.keras when the home folder is not
    # writable (a container's read-only home); the backend chosen there
    # is the one to override.
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _backend._keras_config_backend()[1] == str(
        tmp_path / ".keras" / "keras.json")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert _backend._keras_config_backend()[1] == "/tmp/.keras/keras.json"
