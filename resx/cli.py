"""Headless entry point: `python -m resx run|presets ...` (design.md "Runs").

Errors in the input (configuration, data folder, files) print one clear line and exit with 2,
never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from .core.config import DEFAULT_PRESET, PRESETS, ConfigError, build_config
from .core.data import DataError
from .core.records import Record

EXIT_BAD_INPUT = 2


class ProgressBar:
    """One tqdm bar per phase on stderr (train base, fine-tune, ...), the latest loss as its postfix;
    where stderr is not a terminal (a log file), one line per finished phase instead."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.bar, self.phase, self.loss = stream, None, "", None
        self.live = stream.isatty()

    def __call__(self, record: Record):
        if record.name == "batch_loss":
            self.loss = record.value
        if record.name != "progress":
            return
        from tqdm import tqdm

        if record.phase != self.phase:
            self.close()
            self.phase, self.loss = record.phase, None
            if not self.live:
                return
            self.bar = tqdm(total=1000, desc=f"{record.phase:>9}", file=self.stream, leave=True,
                            bar_format="{desc} {bar} {percentage:3.0f}% {elapsed}{postfix}", mininterval=0.2)
        if not self.live:
            if record.value >= 1.0:
                loss = f"  loss {self.loss:.4f}" if self.loss is not None else ""
                self.stream.write(f"{self.phase:>9} done{loss}\n")
            return
        self.bar.n = int(round(1000 * min(max(record.value, 0.0), 1.0)))
        if self.loss is not None:
            self.bar.set_postfix_str(f"loss {self.loss:.4f}", refresh=False)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_run(args) -> int:
    """Run the pipeline, recording it in the store (shared with the app) unless --no-store."""
    from .runs.pipeline import run_pipeline
    from .runs.store import RecordWriter, Store

    assignments = list(args.set or [])
    store = None if args.no_store else Store()
    if args.init_weights:   # kept as <sha256>.pt: the configuration names the weights by their hash
        from .core.weights import read_state_dict, save_weights
        path = Path(args.init_weights)
        read_state_dict(path, f"--init-weights {path}")   # the size cap before the bytes are read
        folder = (store.home if store else Path("resx-runs")) / "weights"
        assignments.append(f"init_weights={save_weights(path.read_bytes(), folder).resolve()}")
    cfg = build_config(args.preset, args.config, assignments)
    run_id = store.create_run(cfg.to_dict(), source="cli") if store else time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else (store.home / "runs" / run_id if store else Path("resx-runs") / run_id)
    writer = RecordWriter(store, run_id) if store else None
    bar = ProgressBar()

    def sink(record: Record):
        bar(record)
        if writer:
            writer(record)

    if store:
        store.set_status(run_id, "running")
    try:
        result = run_pipeline(cfg, sink=sink, out_dir=out)
    except BaseException as e:
        if store:
            writer.close()
            status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"
            store.set_status(run_id, status, f"{type(e).__name__}: {e}")
        raise
    finally:
        bar.close()
    if store:
        writer.close()
        store.set_result(run_id, result)
        for path in sorted(p for p in out.iterdir() if p.is_file()):
            store.add_artifact(run_id, path.name, path)
        store.set_status(run_id, result["status"], result.get("message"))
        print(f"run {run_id} recorded in {store.path}", file=sys.stderr)
    print(json.dumps(summary(result), indent=2) if args.json else summary_table(result, run_id))
    print(f"wrote {out / 'result.json'}", file=sys.stderr)
    return 0 if result["status"] == "done" else 1


def cmd_certify(args) -> int:
    """Certify a finished run later, from its saved checkpoints (a run or sweep cell that skipped
    the certify step): the store's run ID, or a run folder (--dir) holding result.json and *.pt."""
    from .runs.pipeline import CertifyError, certify_saved_run, certify_stored_run, finite_json
    from .runs.store import Store

    if bool(args.id) == bool(args.dir):
        raise ConfigError("ID", args.id or args.dir, "either a run id or --dir FOLDER, not both")
    try:
        result = certify_saved_run(Path(args.dir)) if args.dir else certify_stored_run(Store(), args.id)
    except CertifyError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cert = result["certificates"]
    if args.json:
        print(json.dumps(finite_json(cert), indent=2))
        return 0
    for item in cert["items"]:
        print(f"{item['name']}: {'certified' if item['certified'] else 'not certified'} "
              f"(bound {number(item['bound'])}, observed {number(item['observed'])})")
    print(f"certified in {result['timings']['certify']:.1f} s; the full section: --json, or result.json",
          file=sys.stderr)
    return 0


def cmd_runs(args) -> int:
    """List, show or export runs from the store."""
    from .runs.store import Store

    store = Store()
    store.recover_interrupted()  # runs whose process died (kill -9, a crash) read as interrupted
    if args.action == "list":
        for run in store.list_runs(status=args.status):
            cfg = run["config"]
            print(f"{run['id']}  {run['status']:<11} {run['source']:<4} {cfg.get('dataset')}/{cfg.get('arch')} "
                  f"depth={cfg.get('depth')} width={cfg.get('width')} position={cfg.get('position')}  {run['created']}")
        return 0
    if not args.id:
        raise ConfigError("ID", None, f"a run id after 'runs {args.action}' (see 'runs list')")
    run = store.get_run(args.id)
    if run is None:
        raise ConfigError("ID", args.id, "the id of a run in the store (see 'runs list')")
    if args.action == "show":
        if args.json or not run.get("result"):
            print(json.dumps(run, indent=2, default=str))
        else:
            print(summary_table(run["result"], run["id"], run["status"]))
        return 0
    fmt = "json" if args.json else "csv"
    out = Path(args.out or f"{args.id}.{fmt}")
    (store.export_json if args.json else store.export_csv)(args.id, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def summary(result: dict) -> dict:
    keep = {"status": result["status"], "message": result.get("message")}
    for name in ("old", "new", "control"):
        if name in result:
            keep[name] = {k: v for k, v in result[name].items() if v is not None}
    if "insertion" in result:
        keep["insertion"] = {k: result["insertion"][k] for k in ("position", "max_abs_logit_diff", "preserved")}
    position = result.get("config", {}).get("position")
    at = next((m for m in result.get("margins") or [] if m["position"] == position), None)
    if at is not None:   # theory.md 4b: two different claims at the inserted position
        keep["descent"] = {"position": position, "gradient_nonzero": at["observed"],
                           **{k: at.get(k) for k in ("descent_observable", "slope_cross", "slope_cross_se",
                                                     "slope_cross_ucb")}}
    if result.get("jumpboard"):
        jump = result["jumpboard"]
        keep["jumpboard"] = {"eta": jump["eta"], "note": jump.get("note") or None}
    if result.get("terms") and result["terms"].get("Delta_R") is not None:
        keep["Delta_R"] = {"value": result["terms"]["Delta_R"], "se": result["terms"].get("Delta_R_se")}
    for key in ("routes",):
        if key in result:
            keep[key] = result[key]
    return keep


def number(x, digits: int = 4) -> str:
    """A number for a terminal: 4 significant digits, powers of ten as 1.23x10^5 rather than 1.23e+05."""
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    text = f"{x:.{digits}g}"
    if "e" in text:
        mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
        text = f"{float(mantissa):g}x10^{int(exponent)}"
    return text


def summary_table(result: dict, run_id: str, status: str | None = None) -> str:
    """The run in a few lines: risks of each model, preservation, both routes, the control."""
    lines = [f"run {run_id}: {status or result['status']}" + (f" ({result['message']})" if result.get("message") else "")]
    models = [m for m in ("old", "f_J", "new", "control") if m in result]
    if models:
        lines.append(f"{'model':<9} {'L_S':>8} {'L_T':>8} {'L (population)':>22}")
        for m in models:
            r = result[m]
            pop = f"{r['L_pop']:.4f} ± {r['L_pop_se']:.4f}" if r.get("L_pop") is not None else "n/a"
            lines.append(f"{m:<9} {r['L_S']:>8.4f} {r['L_T']:>8.4f} {pop:>22}")
    if "insertion" in result:
        ins = result["insertion"]
        lines.append(f"insert at position {ins['position']}: max |f_new - f_old| = {number(ins['max_abs_logit_diff'], 2)}"
                     f" ({'preserved' if ins['preserved'] else 'NOT preserved'})")
    terms = result.get("terms") or {}
    if terms:
        lines.append(f"gains: Delta_R = {number(terms.get('Delta_R_used'))} ({terms.get('Delta_R_source', '')}), "
                     f"Delta_ERM = {number(terms['Delta_ERM'])}")
    for key, route in (result.get("routes") or {}).items():
        if isinstance(route, dict):
            lines.append(f"route {key}: {route['verdict'].replace('_', ' ')}; bound {number(route['bound'])}, "
                         f"cost {number(route['cost'])}" + (f"; {route['guarantee']}, at {route['level']}"
                                                             if route.get("level") else ""))
    beats = result.get("expansion_beats_control")
    if beats:
        lines.append(f"expanded against control: {beats['verdict']} ({beats['risk']} {beats['new']:.4f} against "
                     f"{beats['control']:.4f}, difference {number(beats['difference'])} ± {number(beats['difference_se'], 2)})")
    cert = result.get("certificates")
    if cert and cert.get("computed"):
        hold = cert["holdout"]
        certified = [item["name"] for item in cert["items"] if item["certified"]]
        lines.append(f"certificates: {len(certified)} of {len(cert['items'])} certify"
                     + (f" ({', '.join(certified)})" if certified else "") + f"; hold-out on {hold['sample']}")
    elif cert:
        lines.append(f"certificates: not computed (certify=false); `python -m resx certify {run_id}` (or --dir "
                     "on the run folder) computes them from the checkpoints")
    lines.append("the full result: --json, or result.json")
    return "\n".join(lines)


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
    run.add_argument("--init-weights", metavar="FILE", help="a state dict (torch.save(model.state_dict())) the old "
                     "model starts from, checked against --set arch=...; base training then runs `epochs` "
                     "more (--set epochs=0: none)")
    run.add_argument("--out", help="output folder (default $RESX_HOME/runs/<run id>)")
    run.add_argument("--no-store", action="store_true", help="do not record the run in the store")
    run.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    run.set_defaults(func=cmd_run)
    runs = sub.add_parser("runs", help="the run history shared with the app: list | show ID | export ID")
    runs.add_argument("action", choices=("list", "show", "export"))
    runs.add_argument("id", nargs="?", help="a run id (show, export)")
    runs.add_argument("--status", help="list only runs with this status")
    runs.add_argument("--json", action="store_true", help="show: the whole run as JSON instead of a table; "
                                                          "export: JSON (run, config, result, metrics) instead of CSV")
    runs.add_argument("--out", help="export file (default ID.csv or ID.json)")
    runs.set_defaults(func=cmd_runs)
    certify = sub.add_parser("certify", help="certify a finished run later from its checkpoints (sweep cells "
                                             "and runs with certify=false skip the step)")
    certify.add_argument("id", nargs="?", help="a run id of the store (see 'runs list')")
    certify.add_argument("--dir", help="a run folder with result.json and the checkpoints, instead of an id")
    certify.add_argument("--json", action="store_true", help="print the certificates section as JSON")
    certify.set_defaults(func=cmd_certify)
    presets = sub.add_parser("presets", help="list the presets and their configurations")
    presets.set_defaults(func=cmd_presets)
    from .scale.demo_assets import add_assets_parser
    from .scale.paper_figures import add_figures_parser
    from .scale.sweep import add_sweep_parser
    add_sweep_parser(sub)
    add_figures_parser(sub)
    add_assets_parser(sub)
    from .runs.serve import add_serve_parser
    add_serve_parser(sub)
    add_bench_parser(sub)
    return parser


def add_bench_parser(sub):
    """`bench` forwards to the checkout's benchmarks/ (`python -m benchmarks`): benchmarks measure
    resx from outside, so they live beside tests/, not inside the package."""
    try:
        from benchmarks.suite import add_bench_parser as add_suite_parser
    except ModuleNotFoundError as e:
        if e.name not in ("benchmarks", "benchmarks.suite"):
            raise
        bench = sub.add_parser("bench", help="the benchmark suite (needs a source checkout)")
        bench.set_defaults(func=lambda args: no_benchmarks())
        return
    add_suite_parser(sub)


def no_benchmarks() -> int:
    print("error: the benchmarks live in the source checkout's benchmarks/ folder; run "
          "`python -m resx bench` from the checkout's root", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python -m resx presets | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
