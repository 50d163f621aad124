"""The sweep that chose the `mechanism-resnet` preset (issue 11): ResNet-8 on `shapes`, over width,
base epochs, n_probe and position. One old model per (width, epochs); for each n_probe (a prefix of
one probe sample) and position: the cross-fitted "descent observable" test (theory.md 4b) and the
jumpboard's Delta_R = L(f_old) - L(f_J) with its paired standard error on a population sample.

    nice -n 10 python -m benchmarks.preset_hunt [--widths 8,16] [--epochs 4,8,16] [--probes 1000,2000,4000]

Not a benchmark (nothing is timed against a baseline); a research script, kept so the table in the
issue's note can be reproduced. Prints one row per cell as it goes.
"""
from __future__ import annotations

import argparse
import time

import torch

from resx.core.config import PRESETS
from resx.core.data import Split, load_data
from resx.core.models import build_model, insert_block
from resx.core.train import draw_population, risk, train
from resx.theory.jumpboard import jump_margins, jumpboard_path
from resx.theory.margins import candidate_block, descent_tests


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="8,16")
    ap.add_argument("--epochs", default="3,8")
    ap.add_argument("--probes", default="1000,4000")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n-pop", type=int, default=8192)
    ap.add_argument("--all-jumps", action="store_true", help="run the jumpboard where descent is not observable too")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)   # a shared machine: one thread each
    probes = [int(v) for v in args.probes.split(",")]
    print("width epochs n_probe position L_S L_pop slope_cross se ucb observable eta* Delta_R Delta_R_se z train_s",
          flush=True)
    for width in [int(v) for v in args.widths.split(",")]:
        for epochs in [int(v) for v in args.epochs.split(",")]:
            cfg = PRESETS["demo-resnet"].replace(width=width, epochs=epochs, n=args.n, n_probe=max(probes),
                                                 n_pop=args.n_pop, seed=args.seed, device="cpu")
            torch.manual_seed(cfg.seed)
            data = load_data(cfg, torch.device("cpu"))
            population = draw_population(data, cfg.n_pop, seed=cfg.seed + 10_007)
            old = build_model(cfg, data.input_shape, data.num_classes)
            t = time.perf_counter()
            train(old, data, cfg, phase="base", epochs=cfg.epochs)
            train_s = time.perf_counter() - t
            L_S, L_pop = risk(old, data.S).loss, risk(old, population).loss
            positions = list(range(cfg.num_positions))
            candidates = {k: candidate_block(old, k, data.S.x, cfg.seed) for k in positions}
            tiny = Split(data.T.x[:2], data.T.y[:2])     # S and T are display-only in the line search
            for n_probe in probes:
                P = Split(data.P.x[:n_probe], data.P.y[:n_probe])
                tests = descent_tests(old, P, positions, candidates, cfg.delta, cfg.seed)
                for k in positions:
                    tt = tests[k]
                    if not (tt.observable or args.all_jumps):
                        print(f"{width} {epochs} {n_probe} {k} {L_S:.3f} {L_pop:.3f} {tt.slope_cross:+.4f} "
                              f"{tt.se:.4f} {tt.ucb:+.4f} 0 - - - - {train_s:.0f}", flush=True)
                        continue
                    new, _ = insert_block(old, k, data.S.x, data.S.y, seed=cfg.seed)
                    jb = jumpboard_path(new, k, tiny, P, tiny, None, seed=cfg.seed, delta=cfg.delta)
                    gain = jump_margins(old, jb.model, tiny, population, delta=cfg.delta)
                    z = gain["Delta_R"] / gain["Delta_R_se"] if gain["Delta_R_se"] else 0.0
                    print(f"{width} {epochs} {n_probe} {k} {L_S:.3f} {L_pop:.3f} {tt.slope_cross:+.4f} "
                          f"{tt.se:.4f} {tt.ucb:+.4f} {int(tt.observable)} {jb.eta:.3g} "
                          f"{gain['Delta_R']:+.2e} {gain['Delta_R_se']:.1e} {z:+.1f} {train_s:.0f}", flush=True)


if __name__ == "__main__":
    main()
