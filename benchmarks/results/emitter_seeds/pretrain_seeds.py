"""Source pretraining of examples/forgetting.py for many seeds: test accuracy."""
import sys, time, types
import kft, keras, numpy as np
sys.path.insert(0, "examples")
import forgetting as F
args = types.SimpleNamespace(source_epochs=15, batch_size=16)
shape = (16, 16, 3)
t = time.perf_counter()
for seed in range(int(sys.argv[1]), int(sys.argv[2])):
    data = kft.datasets.digits(image_size=16, target_per_class=10, seed=seed)
    source, train, test = F.pretrain(data, shape, args, seed)
    print(seed, round(F.accuracy(source, *test), 3), round(time.perf_counter() - t), flush=True)
