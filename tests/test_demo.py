import numpy as np

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
