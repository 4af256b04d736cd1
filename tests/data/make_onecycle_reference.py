"""Records PyTorch's `OneCycleLR` rates and momenta for kft's parity test.

Writes `tests/data/onecycle_reference.json`, which
`tests/test_schedules.py` compares `kft.OneCycle` against without torch.

Usage (needs `pip install torch`):
    python tests/data/make_onecycle_reference.py [--output PATH]
"""

import argparse
import json
import os

import torch

CASES = {
    "cos": {"max_lr": 0.1, "total_steps": 200, "pct_start": 0.3,
            "anneal_strategy": "cos", "div_factor": 25.0,
            "final_div_factor": 1e4, "three_phase": False},
    "linear": {"max_lr": 0.1, "total_steps": 200, "pct_start": 0.3,
               "anneal_strategy": "linear", "div_factor": 25.0,
               "final_div_factor": 1e4, "three_phase": False},
    "cos_three_phase": {"max_lr": 2e-3, "total_steps": 150,
                        "pct_start": 0.25, "anneal_strategy": "cos",
                        "div_factor": 10.0, "final_div_factor": 100.0,
                        "three_phase": True},
    "linear_three_phase": {"max_lr": 2e-3, "total_steps": 150,
                           "pct_start": 0.25, "anneal_strategy": "linear",
                           "div_factor": 10.0, "final_div_factor": 100.0,
                           "three_phase": True},
}


def record(case):
    """Rates and momenta (SGD momentum) of each of the case's steps."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=case["max_lr"], momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, base_momentum=0.85, max_momentum=0.95, **case)
    rates, momenta = [], []
    for _ in range(case["total_steps"]):
        rates.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return {"case": case, "rates": rates, "momenta": momenta}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(
        os.path.dirname(__file__), "onecycle_reference.json"))
    args = parser.parse_args()
    reference = {"torch_version": torch.__version__,
                 "cases": {name: record(case) for name, case in CASES.items()}}
    with open(args.output, "w") as f:
        json.dump(reference, f, indent=1)
    print(f"wrote {args.output} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
