"""Speed of the one-pass closed-form descent margins (THEORY.md 4) against autograd: a thin wrapper.

The benchmarks live in `resx.bench` (`python -m resx bench`); this runs its two margin benchmarks:
all_positions (10 positions in one pass against one-at-a-time insertion, n = 2000) and
per_sample_stats (closed-form per-sample statistics against an autograd loop, n = 500).

Usage: python benchmarks/bench_margins.py [--quick] [--json] [--reps 5] [--threads 1]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resx.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--only", "all_positions,per_sample_stats", *sys.argv[1:]]))
