"""Several JAX processes on localhost training one model data-parallel.

One module fixture runs `tests/multiprocess_script.py` as 2 processes
with the launcher twice: in the first, process 1 SIGKILLs itself as the
second of two epochs begins; the second run resumes from the backup. The
tests read the processes' prefixed output.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import kft
from kft.distributed import ProcessFailed
from kft.distributed import launch_command
from kft.distributed.__main__ import main as launcher_main

sys.path.insert(0, os.path.dirname(__file__))
import multiprocess_script as script  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(__file__), "multiprocess_script.py")
EPOCHS = 2
KILL_EPOCH = 1


def _launch(out, *extra, processes=2):
    buffer = io.StringIO()
    error = None
    try:
        launch_command([sys.executable, SCRIPT, str(out), "--epochs",
                        str(EPOCHS), *extra], processes, out=buffer)
    except ProcessFailed as failed:
        error = failed
    return buffer.getvalue(), error, time.time()


def _printed(output, key):
    """`{process index: value}` of the lines `[i] KEY value`."""
    found = {}
    for line in output.splitlines():
        prefix, _, rest = line.partition(" ")
        if rest.startswith(key + " "):
            found[int(prefix.strip("[]"))] = rest[len(key) + 1:]
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiprocess")
    killed, error, ended = _launch(out, "--kill-epoch", str(KILL_EPOCH))
    resumed, resume_error, _ = _launch(out)
    return {"out": out, "killed": killed, "error": error, "ended": ended,
            "resumed": resumed, "resume_error": resume_error}


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """The same training as 4 processes, uninterrupted."""
    out = tmp_path_factory.mktemp("four_processes")
    output, error, _ = _launch(out, processes=4)
    assert error is None, output[-3000:]
    return {"out": out, "output": output}


@pytest.fixture(scope="module")
def one_process():
    """The final weights of the same training in this process."""
    x, y = script.make_data()
    model = script.make_model()
    start = np.concatenate([np.ravel(w) for w in model.get_weights()])
    model.fit(kft.data.from_arrays(x, y, batch_size=8, shuffle=False),
              epochs=EPOCHS, verbose=0)
    one = np.concatenate([np.ravel(w) for w in model.get_weights()])
    assert np.abs(one - start).max() > 1e-2  # training moved the weights
    return one


@pytest.mark.slow
def test_kill_fails_the_job_cleanly(runs):
    error = runs["error"]
    assert error is not None, runs["killed"][-3000:]
    assert (error.index, error.returncode) == (1, -9)
    assert "process 1 was killed by SIGKILL" in str(error)
    killed_at = float(_printed(runs["killed"], "KILLING")[1])
    # The survivor blocks in a collective: the launcher ends it (5 s grace).
    assert runs["ended"] - killed_at < 30


@pytest.mark.slow
def test_restart_resumes_from_the_backup(runs):
    assert runs["resume_error"] is None, runs["resumed"][-3000:]
    epochs = _printed(runs["resumed"], "EPOCHS")
    assert {k: json.loads(v) for k, v in epochs.items()} == {
        0: [KILL_EPOCH], 1: [KILL_EPOCH]}


def _check_equal_to_one_process(output, out, one, processes):
    digests = _printed(output, "WEIGHTS")
    assert len(digests) == processes and len(set(digests.values())) == 1
    many = np.load(out / "final.npy")
    # Same batches, same seed: only the order of float32 sums differs
    # (gradients all-reduced over the processes).
    print(f"max |{processes} processes - 1 process| =",
          np.abs(many - one).max())
    np.testing.assert_allclose(many, one, rtol=1e-4, atol=1e-5)


def _check_shards(output, processes):
    """Each process' shuffled pass: disjoint slices that, put together in
    process order, are the global batches of one process."""
    shards = {k: json.loads(v) for k, v in _printed(output, "SHARD").items()}
    assert set(shards) == set(range(processes))
    seen = [v for shard in shards.values() for v in shard]
    assert sorted(seen) == list(range(44))  # disjoint and covering
    x, y = script.make_data()
    one = [int(v) for images, _ in kft.data.from_arrays(
        x, y, batch_size=8, shuffle=True, seed=3) for v in images[:, 0, 0, 0]]
    local, last = 8 // processes, 4 // processes
    together = []
    for batch in range(5):
        for index in range(processes):
            together += shards[index][batch * local:(batch + 1) * local]
    for index in range(processes):
        together += shards[index][5 * local:5 * local + last]
    assert together == one


@pytest.mark.slow
def test_processes_end_equal_to_one_process(runs, one_process):
    _check_equal_to_one_process(runs["resumed"], runs["out"], one_process, 2)


@pytest.mark.slow
def test_4_processes_end_equal_to_one_process(four, one_process):
    _check_equal_to_one_process(four["output"], four["out"], one_process, 4)


@pytest.mark.slow
def test_shards_are_disjoint_slices_of_the_global_batches(runs, four):
    _check_shards(runs["killed"], 2)
    _check_shards(four["output"], 4)


def _one_process_results(out):
    """`whole_data_results` in this process, with the weights the
    processes trained."""
    model = script.make_model()
    flat, weights = np.load(out / "final.npy"), []
    for w in model.get_weights():
        weights.append(flat[:w.size].reshape(w.shape))
        flat = flat[w.size:]
    model.set_weights(weights)
    return script.whole_data_results(model, *script.make_data())


@pytest.mark.slow
def test_whole_data_results_are_one_process_results(runs, four):
    # kft.evaluate and cache_features read each process' slice of a
    # kft.data dataset: each process reported on its own part (accuracy
    # 0.9 and 0.6 for one process' 0.75), the head trained on two
    # different caches, and kft.evaluate on arrays and kft.predict raised
    # a JAX error.
    # Fisher and BatchNorm statistics: the same in every process too.
    for output, out, processes in ((runs["resumed"], runs["out"], 2),
                                   (four["output"], four["out"], 4)):
        results = {k: json.loads(v)
                   for k, v in _printed(output, "RESULTS").items()}
        assert set(results) == set(range(processes)), output[-3000:]
        one = _one_process_results(out)
        assert one["cache_shape"][0] == 43
        assert sum(map(sum, one["confusion"])) == 43
        for got in results.values():
            assert got["confusion"] == one["confusion"]
            assert got["arrays_confusion"] == one["confusion"]
            assert got["mistakes"] == one["mistakes"]
            assert got["cache_shape"] == one["cache_shape"]
            assert got["cache_labels"] == one["cache_labels"]
            assert got["cache_sum"] == pytest.approx(one["cache_sum"],
                                                     rel=1e-5)
            np.testing.assert_allclose(got["predicted"], one["predicted"],
                                       rtol=1e-5, atol=1e-6)
            assert got["bn_images"] == one["bn_images"] == 43
            # Each process augments its slice of every global batch.
            assert one["augmented"] == [16, True]
            assert got["augmented"] == [16 // processes, True]
            for key in ("fisher_sum", "bn_sum"):
                assert got[key] == pytest.approx(one[key], rel=1e-5), key


@pytest.mark.slow
def test_only_process_0_writes(runs, four):
    for output in (runs["killed"], runs["resumed"], four["output"]):
        writes = {k: json.loads(v)
                  for k, v in _printed(output, "WRITES").items()}
        assert all(writes.get(i, []) == [] for i in (1, 2, 3))
    writes = {k: json.loads(v)
              for k, v in _printed(four["output"], "WRITES").items()}
    assert set(writes) == {0, 1, 2, 3}
    final = {k: json.loads(v)
             for k, v in _printed(runs["resumed"], "WRITES").items()}
    written = {os.path.basename(path) for _, path in final[0]}
    assert {"training_metadata.json", "backup", "final.npy"} <= written


def test_launcher_stops_the_others_and_names_the_failure(tmp_path, capsys):
    program = tmp_path / "fail.py"
    program.write_text(
        "import os, sys, time\n"
        "if os.environ['KFT_PROCESS_ID'] == '1':\n"
        "    print('bye'); sys.exit(3)\n"
        "time.sleep(60)\n")
    start = time.monotonic()
    assert launcher_main(["--processes", "2", str(program)]) == 1
    assert time.monotonic() - start < 20
    captured = capsys.readouterr()
    assert "[1] bye" in captured.out
    assert "process 1 exited with code 3" in captured.err
    # One launcher per host (--process-id 1 of 2): its process is process
    # 1 in its variables, its output's prefix and the failure named. Killed
    # (as by the OOM killer), it still shows what it printed: the launcher
    # unbuffers its processes' output, which a pipe would hold back
    # (PYTHONUNBUFFERED is removed here, as this machine sets it).
    buffer = io.StringIO()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with pytest.raises(ProcessFailed, match="process 1 was killed by "
                       "SIGKILL"):
        launch_command(
            [sys.executable, "-c", "import os, signal; print('id', "
             "os.environ['KFT_PROCESS_ID']); "
             "os.kill(os.getpid(), signal.SIGKILL)"], 1, num_processes=2,
            first_process_id=1, coordinator="127.0.0.1:1", env=env,
            out=buffer)
    assert "[1] id 1\n" in buffer.getvalue()


@pytest.mark.parametrize("argv, message", [
    (["--num-processes", "2", "--process-id", "2"],
     "Argument --process-id must be an integer in [0, 1]. Received: "
     "--process-id 2"),
    (["--processes", "3", "--num-processes", "2"],
     "Argument --num-processes must be an integer >= 3. Received: "
     "--num-processes 2"),
    (["--processes", "0"], "Argument --processes must be"),
    # 0 read as "not given": ">= 2", from the default --processes.
    (["--num-processes", "0"], "Argument --num-processes must be an "
     "integer >= 1. Received: --num-processes 0"),
])
def test_launcher_errors_name_its_flags(argv, message, capsys):
    # They named launch_command's arguments (`first_process_id`).
    with pytest.raises(SystemExit) as exit_:
        launcher_main([*argv, "x.py"])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_launched_scripts_start_before_kft_and_without_its_flags(
        tmp_path, capsys, monkeypatch):
    # Each process ran its script through `python -m
    # kft.distributed._script`, which imported kft (so Keras and JAX)
    # first, and inherited the XLA flags `import kft` had added to the
    # launcher's XLA_FLAGS: a script that set KFT_XLA_CPU_FLAGS (or its
    # own XLA_FLAGS) before importing kft could not turn them off.
    from kft import _config

    monkeypatch.setitem(_config._flag_state, "added", ("--kft_added=1",))
    monkeypatch.setenv("XLA_FLAGS", "--user_flag=2 --kft_added=1")
    # Inherited from a launcher that launched this one: another port.
    monkeypatch.setenv("JAX_COORDINATOR_BIND_ADDRESS", "127.0.0.1:1")
    program = tmp_path / "probe.py"
    program.write_text(
        "import os, sys\n"
        "print('IMPORTED', sorted({'kft', 'keras', 'jax'}\n"
        "                         & set(sys.modules)))\n"
        "print('FLAGS', os.environ.get('XLA_FLAGS'))\n"
        "print('BIND', os.environ.get('JAX_COORDINATOR_BIND_ADDRESS'),\n"
        "      os.environ['KFT_COORDINATOR'])\n")
    assert launcher_main(["--processes", "2", str(program)]) == 0
    out = capsys.readouterr().out
    for index in (0, 1):
        assert f"[{index}] IMPORTED []" in out, out
        assert f"[{index}] FLAGS --user_flag=2\n" in out, out
        # The loopback coordinator's service binds loopback only (JAX's
        # default was every interface).
        bind, address = out.split(f"[{index}] BIND ")[1].split("\n")[0].split()
        assert bind == address and address.startswith("127.0.0.1:"), out
    # An environment given to launch_command is taken as it is.
    buffer = io.StringIO()
    launch_command([sys.executable, str(program)], 1, out=buffer,
                   env={**os.environ, "XLA_FLAGS": "--kft_added=1"})
    assert "[0] FLAGS --kft_added=1\n" in buffer.getvalue()


@pytest.mark.slow
def test_a_failing_process_fails_the_job_while_the_others_wait(tmp_path):
    # The failing process (an uncaught exception, or sys.exit with a
    # message, as here) printed its error and then hung in JAX's exit
    # handler, waiting for the other, which waited in a collective for it:
    # the job never ended. Each process' start takes ~5 s.
    program = tmp_path / "fail.py"
    program.write_text(
        "import sys, kft\n"
        "kft.distributed.initialize()\n"
        "if kft.distributed.process_index() == 1:\n"
        "    sys.exit('no data folder in process 1')\n"
        "kft.distributed.barrier('after')\n"
        "print('passed the barrier')\n")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "kft.distributed", "--processes", "2",
         "--grace", "2", str(program)], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = launcher.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        pytest.fail("the job hung: " + launcher.communicate()[0][-2000:])
    assert launcher.returncode == 1, output[-2000:]
    assert "process 1 exited with code 1" in output
    assert "[1] no data folder in process 1" in output
    assert "passed the barrier" not in output


def test_sigterm_to_the_launcher_ends_its_processes(tmp_path):
    # Python's default SIGTERM skipped the launcher's cleanup: both
    # processes kept running, re-parented to init.
    program = tmp_path / "sleep.py"
    program.write_text("import os, time\nprint('PID', os.getpid())\n"
                       "time.sleep(60)\n")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "kft.distributed", "--processes", "2",
         "--grace", "1", str(program)], stdout=subprocess.PIPE, text=True)
    pids = []
    for line in launcher.stdout:
        if " PID " in line:
            pids.append(int(line.split()[-1]))
        if len(pids) == 2:
            break
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in pids)


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child reaped by the launcher is gone; a zombie would still count.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[-1][0] != "Z"


def test_global_batch_must_split_over_the_processes():
    data = kft.data.from_arrays(np.zeros((14, 4, 4, 3)), np.arange(14) % 2,
                                batch_size=6, shuffle=False)
    with pytest.raises(ValueError, match="divisible by the 4 processes.*"
                                         "batch_size=6"):
        len(data.with_shard((1, 4)))
    third = data.with_shard((2, 3))
    assert len(third) == 2
    with pytest.warns(UserWarning, match="2 of the 14 examples are left") \
            as caught:
        assert [len(labels) for _, labels in third] == [2, 2]
        assert [len(labels) for _, labels in third] == [2, 2]
    # Once, at the user's line (it named kft's file, and came again).
    assert [w.filename for w in caught
            if "are left" in str(w.message)] == [__file__]


def test_launched_settings_errors():
    from kft.distributed.processes import launched_settings

    with pytest.raises(ValueError, match="KFT_NUM_PROCESSES must be"):
        launched_settings({"KFT_COORDINATOR": "127.0.0.1:1"})
    with pytest.raises(ValueError, match="KFT_PROCESS_ID=2"):
        launched_settings({"KFT_COORDINATOR": "h:1", "KFT_NUM_PROCESSES": "2",
                           "KFT_PROCESS_ID": "2"})
    # JAX's own variable names the coordinator when kft's is not set (as
    # documented): without it each process of the job trained alone.
    numbers = {"KFT_NUM_PROCESSES": "2", "KFT_PROCESS_ID": "1"}
    assert launched_settings({"JAX_COORDINATOR_ADDRESS": "h:1",
                              **numbers}) == ("h:1", 2, 1)
    assert launched_settings({"JAX_COORDINATOR_ADDRESS": "h:1",
                              "KFT_COORDINATOR": "k:2", **numbers})[0] == "k:2"
    # An explicit data shard has the same bound: 0 <= index < count.
    with pytest.raises(ValueError, match=r"shard\[0\]` must be an integer "
                       r"in \[0, 1\]"):
        kft.distributed.data_shard((2, 2))
    assert kft.distributed.data_shard((1, 2)) == (1, 2)


def test_last_batch_error_names_each_process_share(monkeypatch):
    # 2 processes x 2 devices, 18 examples at batch 8: the last global
    # batch of 2 leaves 1 example in each process, which its 2 devices
    # cannot split. The message said "holds 1 examples" (the share, not
    # the batch) and suggested a drop_remainder no loader takes.
    from kft.distributed import data_parallel

    monkeypatch.setattr(data_parallel, "batch_shards", lambda: 2)
    data = kft.data.from_arrays(np.zeros((18, 4, 4, 3)), np.arange(18) % 2,
                                batch_size=8, shuffle=False)
    with pytest.raises(ValueError) as raised:
        data_parallel.check_data_batches(data.with_shard((0, 2)), None,
                                         name="x")
    message = str(raised.value)
    assert "holds 1 examples in each of the 2 processes" in message
    assert "leaves a multiple of 4 (or none)" in message
    assert "drop_remainder" not in message


def test_training_and_validation_batches_are_checked_before_training(
        monkeypatch):
    # Keras reads the validation data after the first training epoch, and
    # an array's last training batch at its end: a batch that did not
    # split over the processes (or devices) failed there, naming
    # `batch_size`; lr_find failed at its last batch with JAX's
    # IndivisibleError.
    from kft.distributed import data_parallel

    monkeypatch.setattr(data_parallel, "batch_shards", lambda: 2)
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(8, 8, 3))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    before = [np.array(v.value) for v in model.weights]
    x, y = np.zeros((9, 8, 8, 3)), np.arange(9) % 2
    val = kft.data.from_arrays(x, y, batch_size=3, shuffle=False)
    for validation, message in [
            (val.with_shard((0, 2)), r"`validation_data.batch_size` \(the "
             r"global batch\) must be divisible by the 2 processes"),
            ((x, y), r"last batch of `validation_data` \(9 examples at "
             r"batch_size=4\) holds 1 examples"),
            ((x, y, np.ones(9)), r"last batch of `validation_data`"),
            ([x, y], r"last batch of `validation_data`")]:  # a list too
        with pytest.raises(ValueError, match=message):
            model.fit(x[:8], y[:8], batch_size=4, validation_data=validation,
                      validation_batch_size=4, verbose=0)
    # 21 examples at 1/3: Keras validates on the last 7, batches 4 + 3.
    with pytest.raises(ValueError, match=r"validation_split=0.33.* part "
                       r"\(7 examples at batch_size=4\) holds 3"):
        model.fit(np.zeros((21, 8, 8, 3)), np.arange(21) % 2, batch_size=4,
                  validation_split=1 / 3, verbose=0)
    with pytest.raises(ValueError, match=r"last batch of `data`.*holds 1"):
        kft.lr_find(model, (x, y), batch_size=4, steps=10)
    # The last training batch failed at the end of the first epoch.
    with pytest.raises(ValueError, match=r"last batch of `x` \(9 examples "
                       r"at batch_size=4\) holds 1"):
        model.fit(x, y, batch_size=4, verbose=0)
    # Inputs given as a dict or a list are the same arrays.
    with pytest.raises(ValueError, match=r"last batch of `x` \(9 examples "
                       r"at batch_size=4\) holds 1"):
        model.fit({model.inputs[0].name: x}, y, batch_size=4, verbose=0)
    with pytest.raises(ValueError, match=r"last batch of `x`"):
        model.fit([x], y, batch_size=4, verbose=0)
    # 20 examples at 0.25: Keras trains on the first 15 (batches 4 x 3 + 3).
    with pytest.raises(ValueError, match=r"training part of `x` \("
                       r"validation_split=0.25\) \(15 examples at "
                       r"batch_size=4\) holds 3"):
        model.fit(np.zeros((20, 8, 8, 3)), np.arange(20) % 2, batch_size=4,
                  validation_split=0.25, verbose=0)
    assert all(np.array_equal(a, np.array(v.value))
               for a, v in zip(before, model.weights))
    # With steps_per_epoch Keras may never reach the last batch (2 of its 3
    # here): refused before, though it trained.
    model.fit(x, y, batch_size=4, steps_per_epoch=2, epochs=1, verbose=0)
    data_parallel.check_fit_data(
        (x[:8], y[:8]), {"validation_data": (x[:8], y[:8])})


def test_secondary_scratch_folder_goes_when_fit_raises(tmp_path, monkeypatch):
    # Keras' `fit` skips `on_train_end` when it raises: a secondary
    # process's scratch checkpoints stayed in the temp folder for good.
    from kft.distributed import backup as backup_module

    monkeypatch.setattr(backup_module, "is_primary", lambda: False)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("stop")

    callback = kft.distributed.BackupAndRestore(str(tmp_path / "shared"))
    scratches = []
    for _ in range(2):
        with pytest.raises(RuntimeError, match="stop"):
            model.fit(x, y, epochs=2, verbose=0, callbacks=[callback, Stop()])
        scratches.append(callback._writer.backup_dir)
        assert os.listdir(scratches[-1])  # the epoch's checkpoint is there
    assert not os.path.exists(scratches[0])  # removed by the next `fit`
    # A fit that ends removes its scratch copy at once, also where Keras
    # keeps the checkpoint (delete_checkpoint=False: process 0's is kept).
    kept = kft.distributed.BackupAndRestore(str(tmp_path / "kept"),
                                            delete_checkpoint=False)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[kept])
    assert not os.path.exists(kept._writer.backup_dir)
    del callback
    import gc

    gc.collect()
    assert not os.path.exists(scratches[1])  # removed with the callback


def test_scratch_folders_of_processes_that_are_gone_are_removed():
    # A failed multi-process job ends its processes by an abort: their
    # scratch checkpoints stayed in the temp folder, one pair per attempt.
    import subprocess
    import tempfile

    from kft.distributed.processes import scratch_dir

    import socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    temp, host = tempfile.gettempdir(), socket.gethostname()
    stale = tempfile.mkdtemp(prefix=f"kft-backup-{host}.{gone.pid}-",
                             dir=temp)
    open(os.path.join(stale, "latest.weights.h5"), "w").close()
    live = tempfile.mkdtemp(prefix=f"kft-backup-{host}.{os.getpid()}-",
                            dir=temp)
    # Another host's folder (a shared temporary folder): its PID means
    # nothing here.
    other = tempfile.mkdtemp(prefix=f"kft-backup-otherhost.{gone.pid}-",
                             dir=temp)
    made = scratch_dir("kft-backup-")
    try:
        assert not os.path.exists(stale)
        assert all(os.path.isdir(p) for p in (live, other, made))
    finally:
        for path in (live, other, made):
            os.rmdir(path)
