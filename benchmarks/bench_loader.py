"""Loader throughput: kft.data.from_directory vs torchvision ImageFolder.

Builds a folder of real JPEGs (random ~500x375 crops of the sample photos
shipped with scikit-learn and scikit-image), then times images/s of
224x224 batches with the "standard" augmentation for both loaders, with the
same worker count. torchvision gets the seeds' transform list
(RandomResizedCrop(scale=(0.8, 1)), flip, rotation 15, ColorJitter,
RandomGrayscale, GaussianBlur, ToTensor, Normalize, RandomErasing).

Each timing runs in a fresh process (loaders alternate, kft first), so no
loader's background workers or prefetching run during another's timing;
the first batch (start-up, kft's augmentation compile) is not timed.

    python benchmarks/bench_loader.py --workers 2 --repeats 5

`--placement` also times `model.fit` steps of a small model with the
augmentation in the pipeline (host) and in the model (device).
"""

import argparse
import os
import statistics

import numpy as np
from PIL import Image

import _harness


def sample_photos():
    from sklearn.datasets import load_sample_images
    import skimage.data

    photos = list(load_sample_images().images)
    for name in ("astronaut", "chelsea", "coffee", "rocket", "retina",
                 "hubble_deep_field", "immunohistochemistry"):
        photos.append(np.asarray(getattr(skimage.data, name)())[..., :3])
    return photos


def build_folder(root, num_images, seed=0):
    """Writes `num_images` JPEG crops, one class per source photo."""
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    for i in range(num_images):
        label = i % len(photos)
        image = Image.fromarray(photos[label])
        width, height = (500, 375) if rng.random() < 0.7 else (375, 500)
        scale = max(width / image.width, height / image.height, 1.0)
        scale *= rng.uniform(1.0, 1.3)
        image = image.resize((round(image.width * scale),
                              round(image.height * scale)), Image.BICUBIC)
        left = rng.integers(0, image.width - width + 1)
        top = rng.integers(0, image.height - height + 1)
        crop = image.crop((left, top, left + width, top + height))
        folder = os.path.join(root, f"class_{label:02d}")
        os.makedirs(folder, exist_ok=True)
        crop.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def time_batches(iterable, num_images):
    """Images per second drawing `num_images` after the first batch, which
    is left out (start-up, workers, kft's augmentation compile)."""

    def endless():
        while True:
            yield from iterable

    batches = endless()
    next(batches)
    seen = 0

    def draw():
        nonlocal seen
        while seen < num_images:
            seen += len(next(batches)[1])

    seconds = _harness.time_steps(draw, 1, warmup=0)["median_s"]
    return seen / seconds


def loader_rate(spec):
    """One timing in this fresh process: `spec` is the command line's
    arguments and "loader", the name of the loader to time."""
    args = argparse.Namespace(**spec)
    return time_batches(LOADERS[args.loader](args.root, args), args.images)


def kft_loader(root, args):
    import kft

    train, _ = kft.data.from_directory(
        root, args.image_size, args.batch_size,
        augmentation=args.augmentation, num_workers=args.workers)
    return train


def keras_grain_loader(root, args):
    """Keras' own grain loader (no augmentation: it has no such option)."""
    import kft  # noqa: F401  (selects the JAX backend)
    import keras

    return keras.utils.image_dataset_from_directory(
        root, image_size=(args.image_size, args.image_size),
        batch_size=args.batch_size, format="grain", verbose=False)


def torchvision_loader(root, args):
    import torch
    from torchvision import datasets, transforms

    torch.set_num_threads(1)
    transform = transforms.Compose([
        transforms.RandomResizedCrop(args.image_size, scale=(0.8, 1.0)),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomRotation(15),
        transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2,
                               hue=0.1),
        transforms.RandomGrayscale(p=0.1),
        transforms.GaussianBlur(kernel_size=3, sigma=(0.1, 2.0)),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406],
                             std=[0.229, 0.224, 0.225]),
        transforms.RandomErasing(p=0.2, scale=(0.02, 0.15)),
    ])
    if args.augmentation == "none":
        transform = transforms.Compose([
            transforms.Resize((args.image_size, args.image_size)),
            transforms.ToTensor()])
    return torch.utils.data.DataLoader(
        datasets.ImageFolder(root, transform), batch_size=args.batch_size,
        shuffle=True, num_workers=args.workers, persistent_workers=True)


LOADERS = {"kft": kft_loader, "torchvision": torchvision_loader,
           "keras": keras_grain_loader}


def placement(root, args):
    """Steps/s of model.fit with augmentation on host vs in the model."""
    import kft  # selects the JAX backend before Keras loads
    import keras

    results = {}
    for where in ("host", "model"):
        train, _ = kft.data.from_directory(
            root, args.image_size, args.batch_size,
            augmentation=args.augmentation, augment_on=where,
            num_workers=args.workers)
        model = kft.build_classifier(
            "simple_cnn", len(train.class_names), weights=None,
            input_shape=(args.image_size, args.image_size, 3))
        if where == "model":
            model = kft.augmentation.attach(model, train.augmentation)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        timing = _harness.time_steps(
            lambda: model.fit(train, epochs=1, verbose=0), args.repeats,
            warmup=1)  # the warm-up epoch compiles
        results[where] = [train.num_examples / t for t in timing["times_s"]]
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/kft_bench_jpegs")
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=1024,
                        help="images timed per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--augmentation", default="standard")
    parser.add_argument("--loaders", default="kft,torchvision")
    parser.add_argument("--placement", action="store_true")
    parser.add_argument("--out", default=None,
                        help="JSON file; default benchmarks/results/"
                             "loader_<augmentation>[_placement].json")
    args = parser.parse_args()
    out = args.out or _harness.results_path(
        f"loader_{args.augmentation}"
        + ("_placement" if args.placement else "") + ".json")
    if not os.path.isdir(args.root):
        build_folder(args.root, args.num_images)
    record = {"args": vars(args), "loadavg_before": _harness.loadavg()}
    print(f"folder {args.root}: {args.num_images} JPEGs, load "
          f"{record['loadavg_before']}")
    if args.placement:
        record["fit_images_per_s"] = placement(args.root, args)
        for where, rates in record["fit_images_per_s"].items():
            print(f"fit, augment on {where}: median "
                  f"{statistics.median(rates):.1f} img/s {rates}")
    else:
        names = args.loaders.split(",")
        rates = {name: [] for name in names}
        for _ in range(args.repeats):  # interleaved, so load drifts hit both
            for name in names:
                run = _harness.run_isolated(
                    "bench_loader:loader_rate", {**vars(args), "loader": name})
                if run.error:
                    raise SystemExit(f"{name}: {run.error}")
                rates[name].append(run.results[0])
        for name in names:
            print(f"{name}: median {statistics.median(rates[name]):.1f} "
                  f"img/s {[round(r, 1) for r in rates[name]]}")
        for other in names[1:]:
            ratio = statistics.median(rates[names[0]]) / statistics.median(
                rates[other])
            print(f"ratio {names[0]}/{other}: {ratio:.2f}x")
        record["images_per_s"] = rates
        record["median_images_per_s"] = {
            name: statistics.median(r) for name, r in rates.items()}
        print(f"load after: {_harness.loadavg()}")
    _harness.write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
