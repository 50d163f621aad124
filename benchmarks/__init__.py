"""The one place for resx's benchmarks: speed and memory measured as ratios against a baseline run
side by side, never asserted in tests. `python -m benchmarks` (or `python -m resx bench` from a
checkout) runs the suite in suite.py; each area's benchmarks sit in their own bench_*.py; the
shared timing helpers in harness.py. Imports resx, never the other way round except for the
`bench` subcommand's lazy forward."""
