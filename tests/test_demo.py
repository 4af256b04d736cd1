import numpy as np
import pytest

import kft
import kft.demo


def test_demo_compares_transfer_with_random_weights_and_fine_tunes_them(
        monkeypatch):
    # `kft demo`'s headline is transfer versus scratch: scratch must start
    # from random weights (a scratch built from the weights file compared
    # transfer with transfer), and with target_epochs <= 10 partial and full
    # must keep a fine-tuning epoch (head_epochs = target_epochs left them
    # 0 epochs: feature extraction under another name). Nothing trains here:
    # pretraining writes a recognisable backbone, fine_tune only records.
    def pretrain(settings, splits, weights_file, temporary, say):
        source = kft.build_classifier("simple_cnn", 5, weights=None,
                                      input_shape=settings.input_shape)
        backbone = source.get_layer("simple_cnn")
        for variable in backbone.weights:
            variable.assign(np.full(variable.shape, 0.25, "float32"))
        backbone.save_weights(weights_file)

    built, calls = [], []
    build_classifier = kft.demo.build_classifier

    def spy_build(*args, **kwargs):
        built.append(kwargs.get("weights"))
        return build_classifier(*args, **kwargs)

    def spy_fine_tune(model, train, val, **kwargs):
        backbone = model.get_layer("simple_cnn").weights
        calls.append((kwargs["strategy"], kwargs["head_epochs"],
                      kwargs.get("epochs", 0),
                      all(np.all(v.numpy() == 0.25) for v in backbone)))

    monkeypatch.setattr(kft.demo, "_pretrain", pretrain)
    monkeypatch.setattr(kft.demo, "build_classifier", spy_build)
    monkeypatch.setattr(kft.demo, "fine_tune", spy_fine_tune)
    rows = kft.demo.run_demo(image_size=8, target_per_class=2,
                             source_epochs=1, target_epochs=3,
                             print_fn=None, plots=False)
    strategies = [r["strategy"] for r in rows]
    assert strategies == ["scratch", "feature_extraction", "partial", "full"]
    scratch, *transfer = built
    assert scratch is None
    assert len(set(transfer)) == 1 and transfer[0].endswith(".weights.h5")
    # (fine_tune recipe, head epochs, phase-2 epochs, backbone pretrained):
    # 3 epochs each; partial and full take min(10, 3 - 1) on the head.
    # The mutants gave scratch a pretrained backbone, or partial and full
    # (.., 3, 0, True).
    assert dict(zip(strategies, calls)) == {
        "scratch": ("full", 1, 2, False),
        "feature_extraction": ("feature_extraction", 3, 0, True),
        "partial": ("partial", 2, 1, True),
        "full": ("full", 2, 1, True)}


def test_demo_seeds_scratch_starts_random_and_files_go_to_the_workdir(
        tmp_path, monkeypatch):
    # `kft demo --seeds N`: its build() gives the pretrained backbone with
    # the digits as class names, and its scratch strategy must re-draw the
    # weights before a full fine-tune (left pretrained, scratch compared
    # transfer with transfer). Without matplotlib the demo says why the
    # plots are missing; with a workdir and no output_dir, comparison.json
    # lands in the workdir (documented default).
    def pretrain(settings, splits, weights_file, temporary, say):
        source = kft.build_classifier("simple_cnn", 5, weights=None,
                                      input_shape=settings.input_shape)
        for variable in source.get_layer("simple_cnn").weights:
            variable.assign(np.full(variable.shape, 0.25, "float32"))
        source.get_layer("simple_cnn").save_weights(weights_file)

    asked, tuned = {}, []

    def fake_compare(build, train, val, test, **kwargs):
        asked.update(kwargs, build=build, train=train, val=val)
        runs = [{"strategy": "full", "seed": seed,
                 "metrics": {"accuracy": 0.5}, "trainable_params": 1,
                 "train_time": 1.0} for seed in kwargs["seeds"]]
        return kft.StrategyComparison(runs, ["full"], kwargs["seeds"],
                                      "accuracy")

    def spy_fine_tune(model, train, val, **kwargs):
        backbone = model.get_layer("simple_cnn").weights
        tuned.append((kwargs, any(np.all(v.numpy() == 0.25)
                                  for v in backbone)))
        return "tuned"

    monkeypatch.setattr(kft.demo, "_pretrain", pretrain)
    monkeypatch.setattr(kft.demo, "compare_strategies", fake_compare)
    monkeypatch.setattr(kft.demo, "fine_tune", spy_fine_tune)
    monkeypatch.setattr(kft.demo, "_have_matplotlib", lambda: False)
    monkeypatch.setattr(kft.demo, "available", lambda: False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"output_dir.*a directory.*"
                       r"Received: output_dir="):
        kft.demo.run_demo(output_dir=str(tmp_path / "file"), print_fn=None)
    printed = []
    kft.demo.run_demo(image_size=8, target_per_class=2, target_epochs=3,
                      seeds=2, workdir=str(tmp_path), print_fn=printed.append)
    assert printed[0] == kft.demo._NO_PLOTS
    assert (tmp_path / "comparison.json").exists()
    assert not (tmp_path / "strategies.png").exists()
    *_, scratch = asked["strategies"]
    model = asked["build"]()
    assert model.kft_metadata["class_names"] == ["5", "6", "7", "8", "9"]
    assert all(np.all(v.numpy() == 0.25)
               for v in model.get_layer("simple_cnn").weights)
    assert scratch(model, asked["train"], asked["val"], 0) == "tuned"
    (kwargs, pretrained), = tuned
    assert not pretrained
    assert (kwargs["strategy"], kwargs["head_epochs"], kwargs["epochs"]) == (
        "full", 1, 2)
