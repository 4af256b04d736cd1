"""Writes the PyTorch reference for kft's per-block optimizer parity test.

A small conv + dense model with fixed initial weights and data is trained
for 20 steps with `torch.optim` param groups (3 groups at different rates);
the initial weights, the data, the cases and the final weights go to
`tests/data/torch_reference_optimizers.npz`, which
`tests/test_optimizers.py` compares kft against without torch.

Usage (needs `pip install torch==2.13.0`):
    python benchmarks/torch_reference.py [--output PATH]
"""

import argparse
import json

import numpy as np
import torch

STEPS, BATCH = 20, 8
SHAPES = {  # Keras layouts: conv kernel (kh, kw, in, out), dense (in, out).
    "conv/kernel": (3, 3, 3, 4), "conv/bias": (4,),
    "fc1/kernel": (4, 8), "fc1/bias": (8,),
    "fc2/kernel": (8, 3), "fc2/bias": (3,),
}
# Adam eps is tiny on purpose: Keras adds `epsilon` to sqrt(v) before the
# bias correction, PyTorch after, so with eps=1e-8 the two *optimizers*
# differ by ~4e-5 relative on the conv kernel (small gradients) whatever
# the grouping; 1e-12 makes the comparison about the param groups.
GROUPS = {"conv": "^conv/", "fc1": "^fc1/", "fc2": "^fc2/"}
CASES = {
    "sgd": {"optimizer": "SGD", "kwargs": {"momentum": 0.9},
            "rates": {"conv": 0.01, "fc1": 0.05, "fc2": 0.1}},
    "sgd_nesterov": {"optimizer": "SGD",
                     "kwargs": {"momentum": 0.9, "nesterov": True},
                     "rates": {"conv": 0.01, "fc1": 0.05, "fc2": 0.1}},
    "adam": {"optimizer": "Adam", "kwargs": {"eps": 1e-12},
             "rates": {"conv": 1e-3, "fc1": 3e-3, "fc2": 1e-2}},
    "adamw": {"optimizer": "AdamW",
              "kwargs": {"eps": 1e-12, "weight_decay": 0.1},
              "rates": {"conv": 1e-3, "fc1": 3e-3, "fc2": 1e-2}},
    "adamw_no_bias_decay": {"optimizer": "AdamW",
                            "kwargs": {"eps": 1e-12, "weight_decay": 0.1},
                            "rates": {"conv": 1e-3, "fc1": 3e-3,
                                      "fc2": 1e-2},
                            "exclude_bias_and_norm": True},
}


def forward(params, x):
    kernel = params["conv/kernel"].permute(3, 2, 0, 1)
    h = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), kernel,
                                   params["conv/bias"])
    h = torch.relu(h).mean(dim=(2, 3))
    h = torch.relu(h @ params["fc1/kernel"] + params["fc1/bias"])
    return h @ params["fc2/kernel"] + params["fc2/bias"]


def train(case, init, x, y):
    params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    kwargs = dict(case["kwargs"])
    groups = []
    for group in GROUPS:
        names = [k for k in params if k.startswith(group + "/")]
        if case.get("exclude_bias_and_norm"):
            groups.append({"params": [params[k] for k in names
                                      if params[k].ndim > 1],
                           "lr": case["rates"][group]})
            groups.append({"params": [params[k] for k in names
                                      if params[k].ndim <= 1],
                           "lr": case["rates"][group], "weight_decay": 0.0})
        else:
            groups.append({"params": [params[k] for k in names],
                           "lr": case["rates"][group]})
    optimizer = getattr(torch.optim, case["optimizer"])(groups, **kwargs)
    for step in range(STEPS):
        batch = slice(step * BATCH, (step + 1) * BATCH)
        optimizer.zero_grad()
        logits = forward(params, torch.tensor(x[batch]))
        loss = torch.nn.functional.cross_entropy(
            logits, torch.tensor(y[batch], dtype=torch.long))
        loss.backward()
        optimizer.step()
    return {k: p.detach().numpy().copy() for k, p in params.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output",
                        default="tests/data/torch_reference_optimizers.npz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    init = {}
    for name, shape in SHAPES.items():
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        scale = 1.0 / np.sqrt(fan_in) if len(shape) > 1 else 0.1
        init[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    x = rng.standard_normal((STEPS * BATCH, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, 3, STEPS * BATCH).astype(np.int64)
    out = {"x": x, "y": y, "torch_version": np.array(torch.__version__),
           "cases": np.array(json.dumps(CASES)),
           "groups": np.array(json.dumps(GROUPS))}
    out.update({f"init/{k}": v for k, v in init.items()})
    for case_name, case in CASES.items():
        final = train(case, init, x, y)
        out.update({f"{case_name}/{k}": v for k, v in final.items()})
    np.savez(args.output, **out)
    print(f"wrote {args.output}: {len(CASES)} cases, torch "
          f"{torch.__version__}")


if __name__ == "__main__":
    main()
