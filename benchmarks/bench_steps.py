"""The pipeline's steps timed (issue 10, item 4): theory steps against base training.

`python -m benchmarks.bench_steps [PRESET ...]` (default demo-mlp demo-resnet) runs each preset's
pipeline once in this process with one torch thread, after a warm-up optimizer (the first one
imports torch._dynamo, seconds that belong to no step), and prints the per-step timings that
`run_pipeline` records, the theory steps' total (estimate_margins + jumpboard + terms_and_routes)
and its ratio to train_base (target <= 0.5), with the machine and the load average.
"""
from __future__ import annotations

import json
import sys
import time

import torch

from .harness import machine_info


def main(argv=None) -> int:
    presets = (argv if argv is not None else sys.argv[1:]) or ["demo-mlp", "demo-resnet"]
    torch.set_num_threads(1)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    from resx.core.config import PRESETS
    from resx.runs.pipeline import run_pipeline

    print(json.dumps({"machine": machine_info()}), flush=True)
    for name in presets:
        t0 = time.perf_counter()
        result = run_pipeline(PRESETS[name])
        t = result["timings"]
        theory = t["estimate_margins"] + t["jumpboard"] + t["terms_and_routes"]
        print(json.dumps({"preset": name, "total_s": round(time.perf_counter() - t0, 2), "timings": t,
                          "theory_s": round(theory, 2), "theory_over_base": round(theory / t["train_base"], 2),
                          "loadavg": [round(x, 2) for x in __import__("os").getloadavg()]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
