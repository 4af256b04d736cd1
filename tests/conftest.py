import os

# Scripts the resume and multi-process tests run in a subprocess, not a test module (the
# doctest collection would import and run it).
collect_ignore = ["resume_script.py", "multiprocess_script.py", "data"]

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    # Auto-generated layer names ("dense_3") depend on earlier models;
    # tests start from a clean name space and a fixed seed.
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield
