"""Headless entry point: `python -m resx run|presets ...` (design.md "Runs").

Errors in the input (configuration, data folder, files) print one clear line and exit with 2,
never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .config import DEFAULT_PRESET, PRESETS, ConfigError, RunConfig, parse_assignment
from .data import DataError
from .records import Record

EXIT_BAD_INPUT = 2


def build_config(preset: str | None, config_file: str | None, assignments: list[str]) -> RunConfig:
    """A preset (default demo-mlp) or a JSON file, then `key=value` overrides, validated once."""
    if preset and config_file:
        raise ConfigError("--config", config_file, "either --preset or --config, not both")
    if config_file:
        path = Path(config_file)
        try:
            base = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError("--config", config_file, f"a readable JSON file ({e})") from None
        base = RunConfig.from_dict(base).to_dict()
    else:
        name = preset or DEFAULT_PRESET
        if name not in PRESETS:
            raise ConfigError("--preset", name, f"one of {sorted(PRESETS)}")
        base = PRESETS[name].to_dict()
    for text in assignments:
        key, value = parse_assignment(text)
        base[key] = value
    return RunConfig.from_dict(base)


class ProgressBar:
    """One line on stderr: phase, a bar, the latest loss."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width = stream, width
        self.phase, self.loss, self.last = "", float("nan"), 0.0
        self.live = stream.isatty()

    def __call__(self, record: Record):
        if record.name == "batch_loss":
            self.loss = record.value
        if record.name != "progress":
            return
        now = time.monotonic()
        if record.phase != self.phase:
            if self.phase:
                self.stream.write("\n" if self.live else "")
            self.phase = record.phase
        elif now - self.last < 0.2 and record.value < 1.0:
            return
        self.last = now
        filled = int(round(self.width * record.value))
        line = f"{self.phase:>8} [{'#' * filled}{'.' * (self.width - filled)}] {100 * record.value:5.1f}%  loss {self.loss:.4f}"
        if self.live:
            self.stream.write("\r" + line)
        elif record.value >= 1.0:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.live and self.phase:
            self.stream.write("\n")


def cmd_run(args) -> int:
    from .pipeline import run_pipeline

    cfg = build_config(args.preset, args.config, args.set or [])
    out = Path(args.out) if args.out else Path("resx-runs") / time.strftime("%Y%m%d-%H%M%S")
    bar = ProgressBar()
    try:
        result = run_pipeline(cfg, sink=bar, out_dir=out)
    finally:
        bar.close()
    print(json.dumps(summary(result), indent=2))
    print(f"wrote {out / 'result.json'}", file=sys.stderr)
    return 0 if result["status"] == "done" else 1


def summary(result: dict) -> dict:
    keep = {"status": result["status"], "message": result.get("message")}
    for name in ("old", "new", "control"):
        if name in result:
            keep[name] = {k: v for k, v in result[name].items() if v is not None}
    if "insertion" in result:
        keep["insertion"] = {k: result["insertion"][k] for k in ("position", "max_abs_logit_diff", "preserved")}
    for key in ("routes",):
        if key in result:
            keep[key] = result[key]
    return keep


def cmd_presets(args) -> int:
    for name, cfg in PRESETS.items():
        marker = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name}{marker}")
        print("  " + json.dumps(cfg.to_dict()))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m resx", description="Depth expansion in normalized residual networks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, insert a block, fine-tune against a control; write result.json")
    run.add_argument("--preset", help=f"one of {sorted(PRESETS)} (default {DEFAULT_PRESET})")
    run.add_argument("--config", help="a JSON file of RunConfig fields")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one field; repeatable")
    run.add_argument("--out", help="output folder (default resx-runs/<time>)")
    run.set_defaults(func=cmd_run)
    presets = sub.add_parser("presets", help="list the presets and their configurations")
    presets.set_defaults(func=cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
