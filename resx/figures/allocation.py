"""Depth-width allocation: the paper's Table 3 and the same fit on a user's grid (theory.md 9).

Two sources, both external to the paper, each named where it is used:

- **GPT-3 configurations** (`GPT3_CONFIGS`): Brown et al. 2020, "Language Models are Few-Shot
  Learners", NeurIPS 2020, arXiv 2005.14165, Table 2.1 (model name, n_params, n_layers, d_model,
  n_heads, d_head), kept as printed there: `d_model = 5140` for GPT-3 13B is widely read as a typo
  for 5120 (= 40 heads x 128), and GPT-3 XL's 24 heads x 128 = 3072 does not match its d_model 2048.
- **The depth-width fit** (`LEVINE_2020`): Levine, Wies, Sharir, Bata and Shashua 2020, "Limits to
  Depth Efficiencies of Self-Attention" (NeurIPS 2020; arXiv 2006.12467, later versions titled
  "The Depth-to-Width Interplay in Self-Attention"). Its form: the optimal width grows
  exponentially with depth, ln d_x = a + b L, i.e. the optimal depth grows like the log of width,
  L_opt(d_x) = (ln d_x - a) / b. The constants a = 5.039, b = 5.55e-2 (natural log) are **not**
  read from the paper here (its full text is not available offline); they are the values quoted,
  with the paper as their source, in the BigScience workshop's sizing notes
  (github.com/bigscience-workshop/bigscience, `math/README.md`, "Width-depth tradeoff":
  n_params = 12 L exp(2a) exp(2 b L)). Cross-check against statements of the paper itself: it
  projects a 1-trillion-parameter network to width about 30K and depth 92 (paper abstract and the
  authors' project page); these constants give L* = 94.7, d* = 29.7K at 10^12 parameters
  (12 L d^2 = N): the width matches, the depth is 3% higher. They also reproduce the paper's
  qualitative verdicts: GPT-3 175B (96 layers) is deeper than the fit's 80.5 ("too deep for its
  size"), and every smaller GPT-3 size is shallower than the fit's depth for its size. No
  standard errors are available for these constants.

Our own part (**[resx]**): the size-matched projection (solve 12 L d^2 = N on the fitted curve)
and `fit_allocation`, the same log law fitted by least squares to a user's depth x width grid.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

PARAMS_PER_LAYER = 12   # n_params ~ 12 L d^2 for a Transformer layer (attention 4d^2 + MLP 8d^2; Kaplan et al. 2020)


@dataclass(frozen=True)
class GPT3Config:
    """One row of Brown et al. 2020, Table 2.1."""
    name: str
    n_params: float
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int


# Brown et al. 2020 (arXiv 2005.14165), Table 2.1. d_model 5140 for 13B is as printed there.
GPT3_CONFIGS: tuple[GPT3Config, ...] = (
    GPT3Config("GPT-3 Small", 125e6, 12, 768, 12, 64),
    GPT3Config("GPT-3 Medium", 350e6, 24, 1024, 16, 64),
    GPT3Config("GPT-3 Large", 760e6, 24, 1536, 16, 96),
    GPT3Config("GPT-3 XL", 1.3e9, 24, 2048, 24, 128),
    GPT3Config("GPT-3 2.7B", 2.7e9, 32, 2560, 32, 80),
    GPT3Config("GPT-3 6.7B", 6.7e9, 32, 4096, 32, 128),
    GPT3Config("GPT-3 13B", 13.0e9, 40, 5140, 40, 128),
    GPT3Config("GPT-3 175B", 175.0e9, 96, 12288, 96, 128),
)


@dataclass(frozen=True)
class DepthWidthLaw:
    """L_opt(d) = slope * ln(d) + intercept, equivalently ln d_opt(L) = a + b L (b = 1/slope,
    a = -intercept/slope): the optimal depth grows like the log of width (Levine et al. 2020's form).

    `*_se` and `cov` are least-squares standard errors when the law was fitted here (nan otherwise);
    `source` says where the constants come from.
    """
    slope: float
    intercept: float
    source: str
    slope_se: float = math.nan
    intercept_se: float = math.nan
    cov: float = math.nan          # Cov(slope, intercept)
    n_points: int = 0

    @classmethod
    def from_exponential(cls, a: float, b: float, source: str) -> "DepthWidthLaw":
        """From ln d_opt(L) = a + b L."""
        if not b > 0:
            raise ValueError(f"b={b} is not allowed: a positive number (width grows with depth)")
        return cls(slope=1.0 / b, intercept=-a / b, source=source)

    @property
    def a(self) -> float:
        """ln d_opt(L) = a + b L (nan when slope = 0: depth does not move with width)."""
        return -self.intercept / self.slope if self.slope != 0 else math.nan

    @property
    def b(self) -> float:
        return 1.0 / self.slope if self.slope != 0 else math.nan

    @property
    def a_se(self) -> float:
        """Delta method: a = -intercept/slope, gradient (intercept/slope^2, -1/slope)."""
        if self.slope == 0:
            return math.nan
        g = np.array([self.intercept / self.slope**2, -1.0 / self.slope])
        return float(math.sqrt(g @ self._cov_matrix() @ g))

    @property
    def b_se(self) -> float:
        """Delta method: b = 1/slope, se(b) = se(slope) / slope^2."""
        return self.slope_se / self.slope**2 if self.slope != 0 else math.nan

    def _cov_matrix(self) -> np.ndarray:
        return np.array([[self.slope_se**2, self.cov], [self.cov, self.intercept_se**2]])

    def depth_for_width(self, width) -> np.ndarray:
        """L_opt(d) = slope ln d + intercept."""
        return self.slope * np.log(np.asarray(width, dtype=np.float64)) + self.intercept

    def width_for_depth(self, depth) -> np.ndarray:
        """d_opt(L) = exp((L - intercept) / slope) = exp(a + b L)."""
        return np.exp((np.asarray(depth, dtype=np.float64) - self.intercept) / self.slope)

    def depth_se(self, width) -> np.ndarray:
        """Standard error of the fitted line at `width`: sqrt(x^2 var(slope) + var(icpt) + 2x cov)."""
        x = np.log(np.asarray(width, dtype=np.float64))
        return np.sqrt(x**2 * self.slope_se**2 + self.intercept_se**2 + 2 * x * self.cov)

    def size_matched(self, n_params: float, params_per_layer: float = PARAMS_PER_LAYER) -> tuple[float, float]:
        """(L*, d*) on the law with params_per_layer * L * d^2 = n_params [resx].

        ln(c L) + 2 ln d_opt(L) - ln N is increasing in L (slope > 0), so bisection on L in
        (0, 1e5] finds the unique root. Returns (nan, nan) when there is none (or slope <= 0).
        """
        if not n_params > 0:
            raise ValueError(f"n_params={n_params} is not allowed: a positive number")
        if not self.slope > 0:
            return math.nan, math.nan

        def excess(L):                     # ln(c L d_opt(L)^2 / N), with ln d_opt(L) = (L - intercept) / slope
            return math.log(params_per_layer * L) + 2.0 * (L - self.intercept) / self.slope - math.log(n_params)

        lo, hi = 1e-6, 1e5
        if excess(lo) > 0 or excess(hi) < 0:
            return math.nan, math.nan
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if excess(mid) > 0:
                hi = mid
            else:
                lo = mid
        L = 0.5 * (lo + hi)
        return L, float(self.width_for_depth(L))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(a=self.a, b=self.b, a_se=self.a_se, b_se=self.b_se,
                 form="L_opt(d) = slope * ln(d) + intercept  <=>  ln d_opt(L) = a + b L")
        return d


LEVINE_2020 = DepthWidthLaw.from_exponential(
    a=5.039, b=5.55e-2,
    source=("Levine et al. 2020 (arXiv 2006.12467), fit ln d_x = a + b L; constants a = 5.039, "
            "b = 0.0555 as quoted from that paper in the BigScience workshop notes "
            "(bigscience-workshop/bigscience, math/README.md), not read from the paper itself; "
            "no standard errors published with them"))


def table3(law: DepthWidthLaw = LEVINE_2020, configs: Sequence[GPT3Config] = GPT3_CONFIGS) -> list[dict]:
    """Table 3 [paper]: each GPT-3 configuration beside the law's projections.

    Columns: the GPT-3 row (Brown et al. 2020, Table 2.1); `L_opt_for_width` = L_opt(d_model)
    and `d_opt_for_depth` = d_opt(n_layers) (Levine et al.'s form); `L_star`, `d_star`: the
    point on the law with 12 L d^2 = n_params [resx], and `verdict` comparing n_layers to L_star.
    """
    rows = []
    for c in configs:
        L_star, d_star = law.size_matched(c.n_params)
        verdict = "deeper than the fit" if c.n_layers > L_star else "shallower than the fit"
        rows.append({"model": c.name, "n_params": c.n_params, "n_layers": c.n_layers, "d_model": c.d_model,
                     "n_heads": c.n_heads, "d_head": c.d_head,
                     "L_opt_for_width": float(law.depth_for_width(c.d_model)),
                     "d_opt_for_depth": float(law.width_for_depth(c.n_layers)),
                     "L_star": L_star, "d_star": d_star, "verdict": verdict})
    return rows


TABLE3_COLUMNS = ("model", "n_params", "n_layers", "d_model", "n_heads", "d_head", "L_opt_for_width",
                  "d_opt_for_depth", "L_star", "d_star", "verdict")


def write_table3_csv(path: Path, rows: Optional[list[dict]] = None, law: DepthWidthLaw = LEVINE_2020) -> Path:
    """table3.csv: the 8 GPT-3 rows and their projections (rounded: depths 0.1, widths 1)."""
    rows = table3(law) if rows is None else rows
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TABLE3_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            out = dict(r)
            for k in ("L_opt_for_width", "L_star"):
                out[k] = f"{r[k]:.1f}"
            for k in ("d_opt_for_depth", "d_star"):
                out[k] = f"{r[k]:.0f}"
            out["n_params"] = f"{r['n_params']:.4g}"
            w.writerow(out)
    return path


# ---------------------------------------------------------------------------------------------
# the same form on a user's grid [resx]

def fit_log_law(widths: Iterable[float], depths: Iterable[float], source: str = "least squares") -> DepthWidthLaw:
    """Ordinary least squares of depth on ln(width): depth = slope ln(width) + intercept.

    With m points, X = [ln w, 1], s^2 = RSS / (m - 2), Cov(beta) = s^2 (X'X)^-1 (normal-errors OLS).
    Needs at least 2 distinct widths; the standard errors need m >= 3 (nan otherwise).
    """
    x = np.log(np.asarray(list(widths), dtype=np.float64))            # (m,)
    y = np.asarray(list(depths), dtype=np.float64)                    # (m,)
    if x.shape != y.shape or len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(f"fit_log_law needs at least 2 distinct widths with one depth each; got "
                         f"{len(x)} points and {len(np.unique(x))} distinct widths")
    X = np.stack([x, np.ones_like(x)], 1)                             # (m, 2)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    if abs(beta[0]) < 1e-12 * (1.0 + np.abs(y).max()):   # round-off of an exactly flat fit: keep a, b = nan honest
        beta[0] = 0.0
    m = len(x)
    if m > 2:
        s2 = float(((y - X @ beta) ** 2).sum() / (m - 2))
        cov = s2 * np.linalg.inv(X.T @ X)
        se_slope, se_icpt, c = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1]), float(cov[0, 1])
    else:
        se_slope = se_icpt = c = math.nan
    return DepthWidthLaw(slope=float(beta[0]), intercept=float(beta[1]), source=source, slope_se=se_slope,
                         intercept_se=se_icpt, cov=c, n_points=m)


@dataclass(frozen=True)
class AllocationFit:
    """The log law fitted to a grid: for each width, the depth with the lowest mean loss [resx]."""
    law: DepthWidthLaw
    points: list = field(default_factory=list)   # [{"width", "best_depth", "best_loss", "depths"}]
    loss_key: str = "test_loss_old"
    n: Optional[int] = None                       # the sample size the cells were filtered to

    def to_dict(self) -> dict:
        return {"law": self.law.to_dict(), "points": self.points, "loss_key": self.loss_key, "n": self.n}


def best_depths(cells: Sequence[dict], loss_key: str = "test_loss_old", n: Optional[int] = None) -> tuple[list, Optional[int]]:
    """For each width, the depth whose loss (mean over seeds) is lowest; ties go to the shallower.

    Cells with several `n` are filtered to `n` (default: the largest). Widths with fewer than two
    depths say nothing about the best depth and are skipped.
    """
    usable = [c for c in cells if c.get(loss_key) is not None and math.isfinite(c[loss_key])]
    if not usable:
        raise ValueError(f"no cell has a finite {loss_key!r}; cells need keys depth, width, {loss_key}")
    ns = sorted({c.get("n") for c in usable if c.get("n") is not None})
    if n is None and ns:
        n = ns[-1]
    if n is not None:
        usable = [c for c in usable if c.get("n") in (None, n)]
    losses: dict = defaultdict(list)
    for c in usable:
        losses[(int(c["width"]), int(c["depth"]))].append(float(c[loss_key]))
    points = []
    for width in sorted({w for w, _ in losses}):
        depths = sorted(d for w, d in losses if w == width)
        if len(depths) < 2:
            continue
        means = [float(np.mean(losses[(width, d)])) for d in depths]
        i = int(np.argmin(means))
        points.append({"width": width, "best_depth": depths[i], "best_loss": means[i], "depths": depths,
                       "mean_losses": means})
    return points, n


def fit_allocation(cells: Sequence[dict], loss_key: str = "test_loss_old", n: Optional[int] = None) -> AllocationFit:
    """Fit best_depth(width) = slope ln(width) + intercept to a grid's cells, with standard errors.

    `cells`: dicts with depth, width, n, seed and `loss_key` (e.g. test_loss_old, test_loss_new).
    Depth is in the grid's own unit (blocks per stage for resnet, blocks for mlp). Raises
    ValueError with fewer than two widths that have at least two depths each.
    """
    points, n = best_depths(cells, loss_key, n)
    if len(points) < 2:
        raise ValueError(f"fit_allocation needs at least 2 widths with at least 2 depths each; the cells "
                         f"give {len(points)} (loss {loss_key!r}, n={n})")
    law = fit_log_law([p["width"] for p in points], [p["best_depth"] for p in points],
                      source=f"least squares on this grid's best depth per width ({loss_key}, n={n})")
    return AllocationFit(law=law, points=points, loss_key=loss_key, n=n)
