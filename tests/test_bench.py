"""The benchmark suite (`python -m resx bench`, `python -m benchmarks`): the shape of its report, never its numbers."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import harness
from benchmarks import suite as bench
from resx.core.config import ConfigError

CHEAP = ("trainer_overhead.ratio", "data_pipeline.ratio", "all_positions.ratio", "per_sample_stats.ratio",
         "panel_render.ms")


def run_cli(argv, capsys):
    """`python -m resx bench ARGV` through the parser resx.cli makes; (exit code, stdout)."""
    from resx.cli import make_parser

    parser = make_parser()
    args = parser.parse_args(["bench", *argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def test_quick_json_reports_every_requested_benchmark_with_a_numeric_headline(capsys):
    """--quick --json prints one JSON object: the machine, and each requested benchmark's headline,
    unit, target and raw figures."""
    code, out = run_cli(["--quick", "--json", "--reps", "1", "--only", ",".join(CHEAP)], capsys)
    report = json.loads(out)
    assert code == 0, {k: v.get("error") for k, v in report["benchmarks"].items()}
    machine = report["machine"]
    for key in ("cpu", "cores", "torch", "torch_threads", "load_average"):
        assert machine[key] is not None, key
    assert list(report["benchmarks"]) == list(CHEAP)
    for name, entry in report["benchmarks"].items():
        assert isinstance(entry["headline"], float), (name, entry.get("error"))
        assert entry["unit"] and entry["target"].split()[0] in (">=", "<=")
        assert isinstance(entry["met"], bool) and entry["raw"]


def test_a_failing_benchmark_is_reported_and_the_rest_still_run(monkeypatch):
    """A benchmark that raises gets a null headline and its error; the next one still runs."""
    def broken(sizes, reps):
        raise RuntimeError("no such device")

    monkeypatch.setitem(bench.BENCHMARKS, "broken.ms", bench.Benchmark("broken.ms", "ms", "<= 1", broken))
    report = bench.run_suite(["broken.ms", "per_sample_stats.ratio"], quick=True, reps=1)
    broken_entry, next_entry = report["benchmarks"]["broken.ms"], report["benchmarks"]["per_sample_stats.ratio"]
    assert broken_entry["headline"] is None and "RuntimeError: no such device" in broken_entry["error"]
    assert isinstance(next_entry["headline"], float)


def test_only_takes_short_names_and_refuses_unknown_ones():
    """--only accepts 'all_positions' for 'all_positions.ratio'; an unknown name raises ConfigError naming --only."""
    assert bench.select("all_positions,panel_render.ms") == ["all_positions.ratio", "panel_render.ms"]
    with pytest.raises(ConfigError, match="--only"):
        bench.select("all_positions,warp_drive")


def test_interleaved_alternates_the_order_of_the_arms_every_round():
    """After one warm-up each, rounds run A B, then B A, then A B: load drift falls on both arms alike."""
    calls = []
    arms = {"A": lambda: calls.append("A"), "B": lambda: calls.append("B")}
    times, _ = harness.interleaved(arms, reps=3, min_round_s=0.0)
    assert calls == ["A", "B", "A", "B", "B", "A", "A", "B"]
    assert [len(t) for t in times.values()] == [3, 3]


def test_the_gpu_check_runs_end_to_end_on_the_cpu():
    """benchmarks/gpu_check.sh's dry run (RESX_GPU_CHECK_DEVICE=cpu): the CLI and a job on small
    CIFAR-format data, every comparison made and passed, so the script a GPU session runs once has
    been run (it once read margin keys that result.json does not have)."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=root, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "RESX_GPU_CHECK_DEVICE": "cpu"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "all checks passed"
    # preservation x3, losses x12, margin; diagnose: preservation x2, slopes, pick
    assert sum(line.startswith("ok   ") for line in lines) == 3 + 12 + 1 + 4
