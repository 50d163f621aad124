"""The data behind the paper's Figures 1-3, observability and Table 3, from small trained models
(theory.md 5 and 9). `resx.scale.paper_figures` writes them and is `python -m resx figures`.

Named steps, each a function of a `FigureSettings` and a `ModelBank` (trained base models, one
per training configuration, shared between figures so that a model is trained once):

- `figure1_data`: head-input gradient covariance of a ResNet-8 (w = 4) and of a wider network
  (paper: ResNet-56, w = 16) on a held-out sample T: heatmap, eigenvalues, off-diagonal entries.
- `figure2_data`: s_k = ||mean_i g_k,i|| against block index on T, one curve per depth.
- `observability_data`: z, z_unbiased, split-half cosine and n ||gbar||^2 / tr Sigma of the
  activation gradient at the middle position against width and n (repeated held-out subsamples).
- `figure3_data`: a depth x width (x seed) grid; per cell the whole pipeline (base, margins,
  jumpboard, fine-tune with control, routes), summarised by `cell_from_result`.
- `figure3_from_cells`: aggregate any cell summaries (here, or a sweep's) into Figure 3 and the
  theory-vs-experiment map.
- Table 3 comes from `resx.figures.allocation`.
"""
from __future__ import annotations

import logging
import math
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..core.config import IMAGE_DATASETS, ConfigError, RunConfig
from ..core.data import TaskData, load_data
from ..core.models import build_model
from ..core.train import draw_population, resolve_device, risk, train
from ..figures.cells import cell_from_result
from ..theory.signals import activation_gradients, gradient_covariance, head_input_gradients, mean_signal, observability

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class FigureError(RuntimeError):
    """A figure could not be computed (a training run diverged or was cancelled); says which."""


# ---------------------------------------------------------------------------------------------
# settings

def _recipe(dataset: str, quick: bool, device: str = "auto") -> RunConfig:
    """The training recipe every model of a figures run shares (only depth, width, seed vary).

    SGD (momentum 0.9, lr 0.1, weight decay 5e-4), as the cifar10-resnet8 preset [paper: ResNet-8
    on CIFAR]; torchvision datasets add its augmentation at paper size. Quick: small n, batch 32
    and few epochs, so that everything runs in minutes on 2 CPU cores.
    """
    if dataset not in IMAGE_DATASETS:
        raise ConfigError("dataset", dataset, f"an image dataset, one of {list(IMAGE_DATASETS)} "
                                              f"(the figures are about ResNets)")
    common = dict(dataset=dataset, arch="resnet", depth=1, width=4, position=0, optimizer="sgd",
                  weight_decay=5e-4, device=device, certify=False)   # grid cells certify only when asked
    if dataset == "shapes":
        if quick:   # batch 32, lr 0.1: a ResNet-8 w=8 reaches L_T ~0.7 in 3 epochs of n=1000 (measured)
            return RunConfig(**common, n=1000, n_probe=500, n_test=500, n_pop=1024, lr=0.1, batch_size=32,
                             epochs=4, finetune_epochs=1)
        return RunConfig(**common, n=10000, n_probe=2000, n_test=5000, n_pop=16384, lr=0.1, batch_size=128,
                         epochs=20, finetune_epochs=5)
    if quick:
        return RunConfig(**common, n=2000, n_probe=500, n_test=1000, lr=0.1, batch_size=32, epochs=3,
                         finetune_epochs=1)
    return RunConfig(**common, n=50000, n_probe=5000, n_test=5000, augment=True, lr=0.1, batch_size=128,
                     epochs=30, finetune_epochs=5)


@dataclass(frozen=True)
class FigureSettings:
    """What `make_figures` trains and measures. Depth is the RunConfig knob (resnet: blocks per
    stage, 6 depth + 2 layers); width the base channels w (stages w, 2w, 4w)."""
    base: RunConfig                                   # shared training recipe (dataset, n, epochs, ...)
    fig1_model: tuple[int, int] = (1, 4)              # (depth, width): ResNet-8, base channel 4 [paper]
    fig1_wide: tuple[int, int] = (9, 16)              # ResNet-56, channel 16 for panel (d) [paper]
    fig2_depths: tuple[int, ...] = (1, 3, 5, 9)       # ResNet-8/20/32/56 (ours: the paper's depths unknown)
    fig2_width: int = 16
    obs_depth: int = 1
    obs_widths: tuple[int, ...] = (4, 8, 16, 32, 64)
    obs_ns: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
    obs_repeats: int = 8                              # disjoint held-out subsamples per (width, n)
    obs_position: Optional[int] = None                # None: the middle position num_blocks // 2 (where
                                                      # figure 3 inserts); num_blocks: the head input
    fig3_depths: tuple[int, ...] = (1, 2, 3, 5)
    fig3_widths: tuple[int, ...] = (4, 8, 16, 32)
    fig3_seeds: tuple[int, ...] = (0, 1, 2)
    fig3_expand: bool = True                          # whole pipeline per cell; False: base models only
    seed: int = 0                                     # seed of the models of figures 1, 2, observability
    max_offdiag: int = 20000                          # off-diagonal entries sampled for Figure 1 (d)

    def __post_init__(self):
        for name in ("fig2_depths", "obs_widths", "obs_ns", "fig3_depths", "fig3_widths", "fig3_seeds"):
            value = getattr(self, name)
            if not value or any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in value):
                raise ConfigError(name, value, "a non-empty tuple of non-negative integers")
        if min(self.obs_ns) < 4:
            raise ConfigError("obs_ns", self.obs_ns, "sample sizes of at least 4 (a split half needs 2)")
        if not isinstance(self.obs_repeats, int) or self.obs_repeats < 1:
            raise ConfigError("obs_repeats", self.obs_repeats, "a positive integer")
        last = self.config(self.obs_depth, self.obs_widths[0]).num_blocks
        if self.obs_position is not None and not (isinstance(self.obs_position, int) and 0 <= self.obs_position <= last):
            raise ConfigError("obs_position", self.obs_position, f"None (the middle) or an integer from 0 to {last}")
        # every model configuration is validated by RunConfig itself
        for depth, width in [self.fig1_model, self.fig1_wide, *((d, self.fig2_width) for d in self.fig2_depths),
                             *((self.obs_depth, w) for w in self.obs_widths),
                             *((d, w) for d in self.fig3_depths for w in self.fig3_widths)]:
            self.config(depth, width)

    @classmethod
    def paper(cls, dataset: str = "shapes", device: str = "auto", seed: int = 0) -> "FigureSettings":
        """Paper-size architectures (ResNet-8 w=4, ResNet-56 w=16) and a 4 x 4 x 3 grid."""
        return cls(base=_recipe(dataset, quick=False, device=device), seed=seed)

    @classmethod
    def quick(cls, dataset: str = "shapes", device: str = "auto", seed: int = 0) -> "FigureSettings":
        """Minutes on 2 CPU cores: every model is a ResNet-8/14/20 (w 4-16), a 2 x 2 x 2 grid.

        The grid's models at seed 0 double as the models of figures 1, 2 and observability.
        """
        return cls(base=_recipe(dataset, quick=True, device=device), fig1_model=(1, 4), fig1_wide=(1, 16),
                   fig2_depths=(1, 2, 3), fig2_width=8, obs_depth=1, obs_widths=(4, 8, 16),
                   obs_ns=(32, 64, 128, 256, 512), obs_repeats=4, fig3_depths=(1, 2), fig3_widths=(4, 8),
                   fig3_seeds=(0, 1), seed=seed)

    def config(self, depth: int, width: int, seed: Optional[int] = None) -> RunConfig:
        return self.base.replace(depth=depth, width=width, position=0, seed=self.seed if seed is None else seed)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["base"] = self.base.to_dict()
        return d


def arch_label(cfg: RunConfig) -> str:
    """'ResNet-8, w=4' (6 depth + 2 layers) or 'MLP depth 3, w=64'."""
    if cfg.arch == "resnet":
        return f"ResNet-{6 * cfg.depth + 2}, w={cfg.width}"
    return f"MLP depth {cfg.depth}, w={cfg.width}"


# ---------------------------------------------------------------------------------------------
# trained base models, shared between figures

def model_key(cfg: RunConfig) -> RunConfig:
    """The configuration with every field that does not shape the trained base model normalised."""
    return cfg.replace(position=0, finetune_epochs=0, finetune="block", delta=0.05, bound="grs", certify=False)


def _data_key(cfg: RunConfig) -> tuple:
    return (cfg.dataset, cfg.npz_path, cfg.input_dim, cfg.teacher_temperature, cfg.n, cfg.n_probe, cfg.n_test,
            cfg.seed, cfg.arch, cfg.device)


class ModelBank:
    """Trained base models f_old, one per `model_key(cfg)`, and their data, trained on first use.

    Training follows the pipeline's recipe: seed, load data, build, `train` for cfg.epochs. A
    model trained elsewhere (e.g. by `run_pipeline`) can be deposited with `put`.
    """

    def __init__(self, cancel: Optional[threading.Event] = None, progress: Optional[Progress] = None):
        self.cancel = cancel
        self.progress = progress or (lambda msg: None)
        self._models: dict = {}
        self._data: dict = {}

    def data(self, cfg: RunConfig) -> TaskData:
        key = _data_key(cfg)
        if key not in self._data:
            self._data[key] = load_data(cfg, resolve_device(cfg.device))
        return self._data[key]

    def __contains__(self, cfg: RunConfig) -> bool:
        return model_key(cfg) in self._models

    def put(self, cfg: RunConfig, model: torch.nn.Module):
        self._models[model_key(cfg)] = model.eval()

    def get(self, cfg: RunConfig) -> tuple[torch.nn.Module, TaskData]:
        key = model_key(cfg)
        if key not in self._models:
            self._models[key] = self._train(key)
        return self._models[key], self.data(key)

    def _train(self, cfg: RunConfig) -> torch.nn.Module:
        _check_cancel(self.cancel)
        self.progress(f"train {arch_label(cfg)}, seed {cfg.seed}, {cfg.epochs} epochs on n={cfg.n}")
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        data = self.data(cfg)
        model = build_model(cfg, data.input_shape, data.num_classes).to(device)
        outcome = train(model, data, cfg, phase="base", epochs=cfg.epochs, cancel=self.cancel)
        if outcome.status != "done":
            raise FigureError(f"training {arch_label(cfg)} (seed {cfg.seed}) ended as {outcome.status}: "
                              f"{outcome.message}")
        return model.eval()


def _check_cancel(cancel: Optional[threading.Event]):
    if cancel is not None and cancel.is_set():
        raise FigureError("cancelled")


# ---------------------------------------------------------------------------------------------
# Figure 1: covariance of the activation gradient before the head

def head_covariance(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, max_offdiag: int = 20000,
                    seed: int = 0) -> dict:
    """Sigma = Cov(g), g = dl/d(features) at the head input on (x, y) (theory.md 5, Figure 1 [paper])."""
    return gradient_covariance(head_input_gradients(model, x, y), max_offdiag=max_offdiag, seed=seed)


def figure1_data(bank: ModelBank, settings: FigureSettings) -> dict:
    """Panels (a)-(c) for `fig1_model` and (d) for `fig1_wide`, each on its held-out sample T."""
    out = {}
    for name, (depth, width) in (("main", settings.fig1_model), ("wide", settings.fig1_wide)):
        cfg = settings.config(depth, width)
        model, data = bank.get(cfg)
        bank.progress(f"figure 1: gradient covariance of {arch_label(cfg)}")
        cov = head_covariance(model, data.T.x, data.T.y, settings.max_offdiag, seed=settings.seed)
        out[name] = {"label": f"{arch_label(cfg)}, {cfg.dataset}", "depth": depth, "width": width,
                     "num_classes": data.num_classes, "sample": "T", "test_loss": risk(model, data.T).loss,
                     "cov": cov}
    return out


# ---------------------------------------------------------------------------------------------
# Figure 2: s_k against block index

def signal_curve(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> dict:
    """s_k = ||mean_i g_k,i|| at every position k = 0..num_blocks (theory.md 5, Figure 2 [paper]),
    conv maps summed over space, hooks with reduction="sum" (`activation_gradients`).

    Beside it (ours): floor_k = sqrt(tr Sigma_k / n), the level the plug-in s_k reaches from
    noise alone (E ||gbar||^2 = ||E g||^2 + tr Sigma / n), and s_unbiased_k = sqrt(max(0,
    s_k^2 - tr Sigma_k / n)).
    """
    _, grads = activation_gradients(model, x, y, batch_size, sum_spatial=True, keep_acts=False)
    s = mean_signal(grads)
    floor, unbiased = [], []
    for g, s_k in zip(grads, s):
        g = g.double()
        n = g.shape[0]
        tr = g.var(0, unbiased=True).sum().item()                         # tr Sigma_k
        floor.append(math.sqrt(tr / n))
        unbiased.append(math.sqrt(max(0.0, s_k**2 - tr / n)))
    return {"s": s, "floor": floor, "s_unbiased": unbiased, "n": int(len(y))}


def figure2_data(bank: ModelBank, settings: FigureSettings) -> list[dict]:
    """One curve per depth in `fig2_depths` at `fig2_width`, each model trained with the same recipe
    and seed, s_k measured on its held-out sample T."""
    curves = []
    for depth in settings.fig2_depths:
        cfg = settings.config(depth, settings.fig2_width)
        model, data = bank.get(cfg)
        bank.progress(f"figure 2: s_k of {arch_label(cfg)}")
        curve = signal_curve(model, data.T.x, data.T.y)
        curves.append({"label": arch_label(cfg), "depth": depth, "width": settings.fig2_width,
                       "num_blocks": len(model.blocks), "sample": "T", **curve})
    return curves


# ---------------------------------------------------------------------------------------------
# observability against width and n

OBS_KEYS = ("z", "z_unbiased", "z_null", "cosine_split", "snr")


def held_out_pool(data: TaskData, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(x, y, where): a fresh sample of `size` from the sampler (synthetic tasks), else the test sample T."""
    if data.sampler is not None:
        x, y, _ = data.sampler(size, torch.Generator().manual_seed(seed))
        return x, y, "fresh sample from D"
    return data.T.x[:size], data.T.y[:size], "test sample T"


def observability_rows(G: torch.Tensor, ns: Sequence[int], repeats: int, seed: int = 0) -> list[dict]:
    """`signals.observability` on `repeats` subsamples of G (N, D) per n: mean and sd of each metric.

    Subsamples are disjoint when N >= repeats * n, random subsets otherwise; n > N is skipped.
    """
    N = G.shape[0]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in ns:
        if n > N:
            log.warning("observability: n=%d exceeds the %d held-out gradients; skipped", n, N)
            continue
        values: dict = {k: [] for k in OBS_KEYS}
        perm = torch.randperm(N, generator=gen)
        for r in range(repeats):
            idx = perm[r * n:(r + 1) * n] if N >= repeats * n else torch.randperm(N, generator=gen)[:n]
            o = observability(G[idx], generator=gen)
            for k in OBS_KEYS:
                values[k].append(o[k])
        row = {"n": int(n), "D": int(G.shape[1]), "repeats": repeats}
        for k, v in values.items():
            v = np.asarray(v, dtype=np.float64)
            v = v[np.isfinite(v)]
            row[f"{k}_mean"] = float(v.mean()) if len(v) else None
            row[f"{k}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        rows.append(row)
    return rows


def observability_data(bank: ModelBank, settings: FigureSettings) -> list[dict]:
    """Rows (width, n, metric means and sds) of the activation gradient g_k at position k, conv maps
    summed over space ((N, C_k), C_k proportional to the width), on a held-out pool per width.

    Position k = `obs_position`, by default the middle num_blocks // 2, where figure 3 inserts.
    Not the head input by default: there g = (softmax(z) - e_y)' W_head has rank <= K - 1 whatever
    the width, so width cannot raise its observability (the head input is k = num_blocks: with
    global average pooling the spatially summed g_num_blocks equals the head-input gradient).
    """
    rows = []
    pool_size = settings.obs_repeats * max(settings.obs_ns)
    for width in settings.obs_widths:
        cfg = settings.config(settings.obs_depth, width)
        model, data = bank.get(cfg)
        k = len(model.blocks) // 2 if settings.obs_position is None else settings.obs_position
        bank.progress(f"observability: {arch_label(cfg)}, position {k}")
        x, y, where = held_out_pool(data, pool_size, seed=settings.seed + 7)
        _, (G,) = activation_gradients(model, x, y, positions=[k], sum_spatial=True, keep_acts=False)  # (N, C_k)
        for row in observability_rows(G, settings.obs_ns, settings.obs_repeats, seed=settings.seed):
            rows.append({"width": width, "depth": settings.obs_depth, "position": k, "sample": where, **row})
    return rows


# ---------------------------------------------------------------------------------------------
# Figure 3: the depth x width grid

def figure3_data(bank: ModelBank, settings: FigureSettings, runs_dir: Optional[Path] = None) -> list[dict]:
    """Cells of the grid fig3_depths x fig3_widths x fig3_seeds.

    With `fig3_expand`, each cell is a whole `run_pipeline` (insertion at the middle position,
    num_blocks // 2), its result.json and checkpoints under runs_dir/d{depth}_w{width}_s{seed}
    (a temporary folder when runs_dir is None); the trained base model joins the bank. Without,
    each cell is a base model only (test_loss_new is None).
    """
    from ..runs.pipeline import load_checkpoint, run_pipeline

    cells = []
    with tempfile.TemporaryDirectory(prefix="resx-fig3-") as tmp:
        root = Path(runs_dir) if runs_dir is not None else Path(tmp)
        for seed in settings.fig3_seeds:
            for width in settings.fig3_widths:
                for depth in settings.fig3_depths:
                    _check_cancel(bank.cancel)
                    cfg = settings.config(depth, width, seed)
                    if not settings.fig3_expand:
                        model, data = bank.get(cfg)
                        population = draw_population(data, cfg.n_pop, seed=cfg.seed + 10_007)  # as the pipeline
                        test = population if population is not None else data.T
                        cells.append({"depth": depth, "width": width, "n": cfg.n, "seed": seed,
                                      "dataset": cfg.dataset, "arch": cfg.arch, "status": "done",
                                      "test_risk": "L_pop" if population is not None else "L_T",
                                      "test_loss_old": risk(model, test).loss, "test_loss_new": None,
                                      "L_T_old": risk(model, data.T).loss})
                        continue
                    cfg = cfg.replace(position=cfg.num_blocks // 2)
                    bank.progress(f"figure 3: pipeline {arch_label(cfg)}, seed {seed}, insert at {cfg.position}")
                    out = root / f"d{depth}_w{width}_s{seed}"
                    result = run_pipeline(cfg, cancel=bank.cancel, out_dir=out)
                    cell = cell_from_result(result)
                    cell["timings"] = result.get("timings")
                    cells.append(cell)
                    if result["status"] == "cancelled":
                        raise FigureError("cancelled")
                    if result["status"] == "done" and cfg not in bank:
                        bank.put(cfg, load_checkpoint(out, "old", cfg, result["input_shape"], result["num_classes"])
                                 .to(resolve_device(cfg.device)))
    return cells
