"""Datasets and samplers: S, P, T in memory as tensors, batched by indexing (design.md "Data").

Three kinds of task (theory.md 1):
- synthetic with a sampler, so that the population risk L is real: "teacher" (Gaussian inputs,
  labels from a fixed random network's tempered softmax; its Bayes risk is the floor) and
  "shapes" (10 classes of 3x16x16 images for the resnet);
- real datasets through `torchvision.datasets`, read from the operator's data folder, and
  "digits" (1797 8x8 handwritten digits bundled with scikit-learn, so every install has real data);
- user arrays from an `.npz` file (`allow_pickle=False`), size-limited and validated.

S, P and T are independent: synthetic tasks draw each from its own generator stream; real and
`.npz` data take disjoint parts of seeded permutations. Everything lives on the run's device.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .config import RunConfig

log = logging.getLogger(__name__)

# draws (x, y, p): p (n, K) the distribution each label was drawn from (Split.p)
Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

TASK_SEED = 20_240_517        # fixes the teacher and the shapes templates; never cfg.seed
BAYES_POINTS = 1 << 17        # Monte Carlo points for the teacher's Bayes risk
STREAMS = {"S": 1, "P": 2, "T": 3, "train_perm": 4, "test_perm": 5, "npz_perm": 6, "digits_perm": 7}
MAX_NPZ_CLASSES = 10_000


class DataError(Exception):
    """Data that cannot be used; the message says what was wrong and what is expected."""


@dataclass
class Split:
    """A sample held in memory on the run's device: x (n, d) or (n, C, H, W) float32, y (n,) int64
    labels (or, from `expected()`, (n, K) float32 label distributions).

    p (n, K) float32, synthetic draws only: the distribution y_i was drawn from, given x_i and the
    sampler's latent choices (teacher: p(.|x); shapes: the template's class with the label noise),
    so that E[l(f(x_i), y_i) | x_i, latent] = -sum_c p_ic log softmax(f(x_i))_c exactly. The
    population estimators use it to average the label noise out (theory.md 4, "Rao-Blackwell")."""
    x: torch.Tensor
    y: torch.Tensor
    p: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def expected(self) -> "Split":
        """The same points with y replaced by p, so that a loss on it is E[l | x_i, latent]: the same
        mean as on the labels, less the label noise's variance (per_sample_losses)."""
        if self.p is None:
            raise ValueError("this sample has no label distributions p (only synthetic draws have them)")
        return Split(self.x, self.p)

    def head(self, k: int) -> "Split":
        """The first k points (with their p)."""
        return Split(self.x[:k], self.y[:k], None if self.p is None else self.p[:k])


@dataclass
class TaskData:
    name: str
    S: Split                      # training sample, size n
    P: Split                      # probe sample, size n_probe (jumpboard direction and step)
    T: Split                      # test sample, size n_test
    num_classes: int
    input_shape: tuple[int, ...]  # (d,) or (C, H, W)
    sampler: Optional[Sampler]    # fresh draws from D on the task's device (synthetic tasks only)
    bayes_risk: Optional[tuple[float, float]]  # (value, stderr) of E_x H(p(.|x)), teacher only
    is_image: bool


def data_dir() -> Path:
    """The operator's data folder: $RESX_DATA_DIR, else ~/.resx/data (never from UI input)."""
    env = os.environ.get("RESX_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".resx" / "data"


def download_allowed() -> bool:
    """torchvision may download only when the operator sets RESX_ALLOW_DOWNLOAD=1."""
    return os.environ.get("RESX_ALLOW_DOWNLOAD") == "1"


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU generator for one named stream of a run; streams of one seed are independent.

    The stream seed is numpy's SeedSequence([seed, id]) hash, so it never coincides with
    `torch.Generator().manual_seed(seed)` used elsewhere for the same seed.
    """
    state = np.random.SeedSequence([seed, STREAMS[stream]]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def load_data(cfg: RunConfig, device: torch.device | str = "cpu") -> TaskData:
    """S, P, T (and the sampler, and the Bayes risk) for `cfg.dataset`, moved to `device` once."""
    device = torch.device(device)
    if cfg.dataset == "teacher":
        task = _teacher_task(cfg)
    elif cfg.dataset == "shapes":
        task = _shapes_task(cfg)
    elif cfg.dataset == "npz":
        task = _npz_task(cfg)
    elif cfg.dataset == "digits":
        task = _digits_task(cfg)
    else:
        task = _torchvision_task(cfg)
    if cfg.arch != "mlp" and not task.is_image:
        raise DataError(f"arch={cfg.arch!r} needs images (n, C, H, W) or (n, H, W); {cfg.dataset!r} gives "
                        f"vectors of shape {task.input_shape}: use arch='mlp'")
    for name in ("S", "P", "T"):
        s = getattr(task, name)
        setattr(task, name, Split(s.x.to(device, torch.float32), s.y.to(device, torch.int64),
                                  None if s.p is None else s.p.to(device, torch.float32)))
    if task.sampler is not None:
        task.sampler = _on_device(task.sampler, device)
    log.info("loaded %s: n=%d, n_probe=%d, n_test=%d, input %s, K=%d, on %s", task.name, len(task.S),
             len(task.P), len(task.T), task.input_shape, task.num_classes, device)
    return task


def _on_device(sampler: Sampler, device: torch.device) -> Sampler:
    def draw(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(t.to(device) for t in sampler(n, generator))
    return draw


def _draw_splits(sampler: Sampler, cfg: RunConfig) -> tuple[Split, Split, Split]:
    """S, P, T as independent draws from D, each from its own stream of cfg.seed."""
    sizes = {"S": cfg.n, "P": cfg.n_probe, "T": cfg.n_test}
    return tuple(Split(*sampler(m, stream_generator(cfg.seed, k))) for k, m in sizes.items())


# ---------------------------------------------------------------------------------------------
# teacher: x ~ N(0, I_d), y ~ Categorical(softmax(teacher(x) / temperature))

TEACHER_HIDDEN = 128
TEACHER_GAIN = 1.5    # hidden weights N(0, gain^2 / fan_in): tanh units partly in their nonlinearity
TEACHER_SCALE = 5.0   # output weights N(0, scale^2 / 128): Bayes risk ~0.89 nats at T = 1, about any d


@functools.lru_cache(maxsize=8)
def _teacher_weights(d: int) -> tuple[torch.Tensor, ...]:
    """The fixed teacher d -> 128 -> 128 -> 10 (tanh), from TASK_SEED: all run seeds share it."""
    g = torch.Generator().manual_seed(TASK_SEED + d)
    h = TEACHER_HIDDEN
    w1 = torch.randn(d, h, generator=g) * (TEACHER_GAIN / math.sqrt(d))        # (d, h)
    b1 = torch.randn(h, generator=g) * 0.1                                       # (h,)
    w2 = torch.randn(h, h, generator=g) * (TEACHER_GAIN / math.sqrt(h))        # (h, h)
    w3 = torch.randn(h, 10, generator=g) * (TEACHER_SCALE / math.sqrt(h))      # (h, K)
    return w1, b1, w2, w3


def teacher_logits(x: torch.Tensor) -> torch.Tensor:
    """teacher(x) = tanh(tanh(x W1 + b1) W2) W3 for x (n, d) on the CPU: (n, 10)."""
    w1, b1, w2, w3 = _teacher_weights(x.shape[1])
    return torch.tanh(torch.tanh(x @ w1 + b1) @ w2) @ w3


def teacher_sampler(d: int, temperature: float) -> Sampler:
    """Draws (x, y, p) from D: x ~ N(0, I_d), y ~ p = softmax(teacher(x) / T); on the CPU."""
    def draw(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.randn(n, d, generator=generator)                              # (n, d)
        p = torch.softmax(teacher_logits(x) / temperature, dim=1)              # (n, K)
        y = torch.multinomial(p, 1, generator=generator).squeeze(1)            # (n,)
        return x, y, p
    return draw


@functools.lru_cache(maxsize=32)
def teacher_bayes_risk(d: int, temperature: float, m: int = BAYES_POINTS) -> tuple[float, float]:
    """Bayes risk E_x H(softmax(teacher(x) / T)) by Monte Carlo on m fresh x: (value, stderr).

    The cross-entropy is minimised by the true conditional p(.|x), where it equals the entropy
    H(p(.|x)); stderr = std(H) / sqrt(m). The points come from TASK_SEED, not from a run seed.
    """
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(TASK_SEED - 1))  # (m, d)
    logp = torch.log_softmax(teacher_logits(x) / temperature, dim=1)               # (m, K)
    H = -(logp.exp() * logp).sum(1)                                                # (m,)
    return H.mean().item(), H.std().item() / math.sqrt(m)


def _teacher_task(cfg: RunConfig) -> TaskData:
    sampler = teacher_sampler(cfg.input_dim, cfg.teacher_temperature)
    S, P, T = _draw_splits(sampler, cfg)
    return TaskData("teacher", S, P, T, 10, (cfg.input_dim,), sampler,
                    teacher_bayes_risk(cfg.input_dim, cfg.teacher_temperature), is_image=False)


# ---------------------------------------------------------------------------------------------
# shapes: per-class low-frequency colour templates, shifted, contrast-jittered, noisy

SHAPES_SIZE = 16
SHAPES_MAX_SHIFT = 3       # circular shift in each direction, pixels
SHAPES_NOISE = 1.5         # additive Gaussian noise std (templates have unit pixel std)
SHAPES_LABEL_NOISE = 0.05  # probability that the label is replaced by a uniform class


@functools.lru_cache(maxsize=1)
def shapes_templates() -> torch.Tensor:
    """Ten fixed templates (10, 3, 16, 16), unit pixel std: sums of random 2-D cosines.

    Frequencies 0..2 cycles per image, random phases and per-channel amplitudes, from TASK_SEED.
    """
    g = torch.Generator().manual_seed(TASK_SEED + 1)
    K, C, H = 10, 3, SHAPES_SIZE
    grid = torch.arange(H, dtype=torch.float32) * (2 * math.pi / H)             # (H,)
    freqs = [(a, b) for a in range(3) for b in range(3) if (a, b) != (0, 0)]
    t = torch.zeros(K, C, H, H)
    for a, b in freqs:
        amp = torch.randn(K, C, 1, 1, generator=g)                               # (K, C, 1, 1)
        phase = torch.rand(K, 1, 1, 1, generator=g) * (2 * math.pi)
        wave = a * grid[:, None] + b * grid[None, :]                             # (H, H)
        t += amp * torch.cos(wave + phase)
    t -= t.mean(dim=(1, 2, 3), keepdim=True)
    return t / t.std(dim=(1, 2, 3), keepdim=True)


def shapes_sampler(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draws (x, y, p) from the shapes distribution on the CPU: x (n, 3, 16, 16), y (n,), p (n, 10).

    x = c * roll(template_y, (dy, dx)) + noise, with dy, dx uniform in [-3, 3], contrast
    c ~ U(0.5, 1.5), noise N(0, 1.5^2) per pixel; then with probability 0.05 the label is redrawn
    uniformly, so even the Bayes classifier errs (about 4.5% of the time) and L > 0.
    p = 0.95 e_template + 0.05 / 10: the label's distribution given x and its template.
    """
    t = shapes_templates()
    K, C, H, W = t.shape
    s = SHAPES_MAX_SHIFT
    y = torch.randint(K, (n,), generator=generator)                               # (n,)
    dy = torch.randint(-s, s + 1, (n, 1), generator=generator)
    dx = torch.randint(-s, s + 1, (n, 1), generator=generator)
    rows = (torch.arange(H) - dy) % H                                             # (n, H)
    cols = (torch.arange(W) - dx) % W                                             # (n, W)
    x = t[y[:, None, None, None], torch.arange(C)[None, :, None, None],
          rows[:, None, :, None], cols[:, None, None, :]]                        # (n, C, H, W)
    contrast = 0.5 + torch.rand(n, 1, 1, 1, generator=generator)
    x = contrast * x + SHAPES_NOISE * torch.randn(n, C, H, W, generator=generator)
    flip = torch.rand(n, generator=generator) < SHAPES_LABEL_NOISE
    p = F.one_hot(y, K).float() * (1 - SHAPES_LABEL_NOISE) + SHAPES_LABEL_NOISE / K   # (n, K)
    y = torch.where(flip, torch.randint(K, (n,), generator=generator), y)
    return x, y, p


def _shapes_task(cfg: RunConfig) -> TaskData:
    S, P, T = _draw_splits(shapes_sampler, cfg)
    return TaskData("shapes", S, P, T, 10, (3, SHAPES_SIZE, SHAPES_SIZE), shapes_sampler, None,
                    is_image=True)


# ---------------------------------------------------------------------------------------------
# torchvision datasets from the operator's folder

# name: (torchvision class, folder under data_dir(), expected files, per-channel mean, std)
TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                "{data_batch_1..5,test_batch,batches.meta}",
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", "cifar-100-python", "{train,test,meta}",
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ("MNIST", "MNIST/raw",
              "{train,t10k}-{images-idx3,labels-idx1}-ubyte", (0.1307,), (0.3081,)),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw",
                      "{train,t10k}-{images-idx3,labels-idx1}-ubyte", (0.2860,), (0.3530,)),
}


def _read_torchvision(name: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as uint8 (N, C, H, W) and int64 (N,), straight from `.data`, no PIL."""
    import torchvision.datasets as tvd

    cls_name, folder, files, _, _ = TORCHVISION[name]
    root = data_dir().resolve()
    where = root / folder
    hint = (f"expected {where}/{files} (the dataset's standard layout under RESX_DATA_DIR={root}); "
            f"set RESX_DATA_DIR to the folder that holds {folder.split('/')[0]}/, "
            f"or set RESX_ALLOW_DOWNLOAD=1 to let torchvision download it")
    try:
        ds = getattr(tvd, cls_name)(root=str(root), train=train, download=download_allowed())
    except RuntimeError as e:
        raise DataError(f"{name}: dataset files not found or corrupted in {where} ({e}); {hint}") from None
    except Exception as e:  # a pickle, header or shape error (wrong files), or a failed download
        what = "could not download or read" if download_allowed() else "could not read"
        raise DataError(f"{name}: {what} the files in {where} ({type(e).__name__}: {e}); {hint}") from None
    data = torch.as_tensor(np.asarray(ds.data))                               # (N, H, W[, C]) uint8
    x = data.permute(0, 3, 1, 2) if data.dim() == 4 else data[:, None]        # (N, C, H, W)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)           # (N,)
    return x, y


def _torchvision_task(cfg: RunConfig) -> TaskData:
    """S from a seeded permutation of the train split; P, T disjoint parts of one of the test split."""
    _, _, _, mean, std = TORCHVISION[cfg.dataset]
    x_tr, y_tr = _read_torchvision(cfg.dataset, train=True)
    x_te, y_te = _read_torchvision(cfg.dataset, train=False)
    if cfg.n > len(y_tr):
        raise DataError(f"{cfg.dataset}: n={cfg.n} training points requested but the train split "
                        f"holds {len(y_tr)}; use n <= {len(y_tr)}")
    if cfg.n_probe + cfg.n_test > len(y_te):
        raise DataError(f"{cfg.dataset}: n_probe + n_test = {cfg.n_probe + cfg.n_test} requested but "
                        f"the test split holds {len(y_te)}; use n_probe + n_test <= {len(y_te)}")
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)

    def take(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> Split:
        # select first, then convert: only the chosen images are ever float32
        return Split((x[idx].float() / 255.0 - mean_t) / std_t, y[idx])

    perm_tr = torch.randperm(len(y_tr), generator=stream_generator(cfg.seed, "train_perm"))
    perm_te = torch.randperm(len(y_te), generator=stream_generator(cfg.seed, "test_perm"))
    S = take(x_tr, y_tr, perm_tr[:cfg.n])
    P = take(x_te, y_te, perm_te[:cfg.n_probe])
    T = take(x_te, y_te, perm_te[cfg.n_probe:cfg.n_probe + cfg.n_test])
    K = 100 if cfg.dataset == "cifar100" else 10
    return TaskData(cfg.dataset, S, P, T, K, tuple(x_tr.shape[1:]), None, None, is_image=True)


# ---------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled copy of the UCI optdigits test set, no download

DIGITS_SIZE = 1797               # images of 8x8 pixels, values 0..16, 10 classes (174-183 each)
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760   # pixel mean and std of x/16 over all 1797 images (fixed, as CIFAR's)
DIGITS_CREDIT = ("UCI ML hand-written digits (optdigits; Alpaydin and Kaynak 1998), via scikit-learn's "
                 "load_digits; CC BY 4.0")


def _digits_task(cfg: RunConfig) -> TaskData:
    """S, P, T: disjoint parts of one seeded permutation of the 1797 images, (1, 8, 8) each,
    standardised by fixed constants. There is no sampler: as for CIFAR, T stands in for the population."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("digits: scikit-learn is not installed; pip install -r requirements.txt "
                        "(it ships the 1797 images inside its wheel, nothing is downloaded)") from None
    bunch = load_digits()
    X = (np.asarray(bunch.images, dtype=np.float32)[:, None] / 16.0 - DIGITS_MEAN) / DIGITS_STD   # (1797, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    S, P, T = _disjoint_splits(X, y, cfg, "digits_perm", "digits")
    return TaskData("digits", S, P, T, 10, tuple(X.shape[1:]), None, None, is_image=True)


def _disjoint_splits(X: np.ndarray, y: np.ndarray, cfg: RunConfig, stream: str, source: str
                     ) -> tuple[Split, Split, Split]:
    """S, P, T: disjoint parts (n, n_probe, n_test) of one permutation of the rows of `source`,
    seeded by cfg.seed on `stream`; too few rows raise DataError saying how many there are."""
    need = cfg.n + cfg.n_probe + cfg.n_test
    if need > len(y):
        raise DataError(f"{source}: n + n_probe + n_test = {need} rows requested but it holds {len(y)}; "
                        f"lower n, n_probe or n_test so that they sum to <= {len(y)}")
    perm = torch.randperm(len(y), generator=stream_generator(cfg.seed, stream)).numpy()
    cuts = np.split(perm[:need], [cfg.n, cfg.n + cfg.n_probe])
    return tuple(Split(torch.from_numpy(X[i]), torch.from_numpy(y[i])) for i in cuts)


# ---------------------------------------------------------------------------------------------
# user arrays: .npz with X and y

def load_npz(path: str, max_bytes: int = 200 * 2**20) -> tuple[np.ndarray, np.ndarray]:
    """Validated arrays from an .npz file: X float32 (n, d) or (n, C, H, W), y int64 (n,).

    Allowed: `X` numeric (int or float, finite), 2-D (n, d), 3-D (n, H, W) (a channel axis is
    added) or 4-D (n, C, H, W); `y` integer, 1-D, the same n, values in [0, K) with K >= 2.
    Pickled objects are refused (allow_pickle=False); so are files or contents over max_bytes.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"npz file {p} does not exist; expected an .npz archive holding arrays X and y")
    size = p.stat().st_size
    if size > max_bytes:
        raise DataError(f"npz file {p} is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB")
    if not zipfile.is_zipfile(p):
        raise DataError(f"{p} is not an .npz archive (np.savez); expected arrays X and y saved with "
                        f"np.savez or np.savez_compressed")
    try:
        with zipfile.ZipFile(p) as z:  # the sizes after decompression, before anything is decompressed
            unpacked = sum(info.file_size for info in z.infolist())
    except Exception as e:
        raise DataError(f"{p} is not a readable .npz archive ({type(e).__name__}: {e}); expected arrays X and y "
                        f"saved with np.savez or np.savez_compressed") from None
    if unpacked > max_bytes:
        raise DataError(f"npz file {p} unpacks to {unpacked / 2**20:.1f} MiB; the limit is "
                        f"{max_bytes / 2**20:.1f} MiB")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in ("X", "y") if k not in f.files]
            if missing:
                raise DataError(f"npz file {p} lacks {missing} (it holds {f.files}); expected arrays "
                                f"X (n, d) or (n, C, H, W) and y (n,)")
            X, y = f["X"], f["y"]
    except DataError:
        raise
    except ValueError as e:  # object arrays and pickles under allow_pickle=False
        raise DataError(f"npz file {p} could not be read without unpickling ({e}); expected plain "
                        f"numeric arrays X and y, not object arrays or pickles") from None
    except Exception as e:
        raise DataError(f"npz file {p} could not be read ({type(e).__name__}: {e}); expected an "
                        f"archive saved with np.savez holding arrays X and y") from None
    return _validate_arrays(X, y, str(p))


def save_upload(content: bytes, folder: Path, max_bytes: int = 200 * 2**20) -> Path:
    """Validate an uploaded .npz and keep it as folder/<sha256>.npz; return its path.

    The bytes are checked by `load_npz` (no unpickling, size, shapes, labels) in a temporary
    file first, so nothing invalid is ever kept; the same upload twice gives the same path.
    """
    if len(content) > max_bytes:
        raise DataError(f"the upload is {len(content) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(content).hexdigest()
    final = folder / f"{digest}.npz"
    if final.exists():
        return final
    tmp = folder / f".{digest}.{os.getpid()}.tmp"
    try:
        tmp.write_bytes(content)
        try:
            load_npz(str(tmp), max_bytes)
        except DataError as e:  # the message names the upload, not the server's folder
            raise DataError(str(e).replace(str(tmp), "the upload")) from None
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _validate_arrays(X: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(X, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"{where}: X and y must be .npy arrays (np.savez); found members that are not")
    if X.dtype.kind not in "iuf":
        raise DataError(f"{where}: X has dtype {X.dtype}; expected an integer or float array")
    if X.ndim not in (2, 3, 4):
        raise DataError(f"{where}: X has shape {X.shape}; expected (n, d), (n, H, W) or (n, C, H, W)")
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: y has dtype {y.dtype}; expected integer class labels "
                        f"(e.g. y.astype(np.int64))")
    if y.ndim != 1:
        raise DataError(f"{where}: y has shape {y.shape}; expected a 1-D array (n,) of labels")
    if len(y) != len(X):
        raise DataError(f"{where}: X has {len(X)} rows but y has {len(y)}; expected the same n")
    if len(y) == 0 or min(X.shape[1:]) == 0:
        raise DataError(f"{where}: X has shape {X.shape}; expected a non-empty array")
    X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise DataError(f"{where}: X holds {int((~np.isfinite(X)).sum())} NaN or infinite values "
                        f"(or values too large for float32); expected finite numbers")
    if y.min() < 0:
        raise DataError(f"{where}: y holds negative labels (min {y.min()}); expected labels in [0, K)")
    K = int(y.max()) + 1
    if not 2 <= K <= MAX_NPZ_CLASSES:
        raise DataError(f"{where}: labels give K = max(y) + 1 = {K} classes; expected "
                        f"2 <= K <= {MAX_NPZ_CLASSES}")
    if X.ndim == 3:
        X = X[:, None]                                                            # (n, 1, H, W)
    return X, y.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _npz_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    return load_npz(path)


def _npz_arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
    """load_npz, remembered per (path, mtime, size) so RunConfig.num_classes reads a file once."""
    p = Path(path).resolve()
    if not p.is_file():
        raise DataError(f"npz file {p} does not exist; expected an .npz archive holding arrays X and y")
    st = p.stat()
    return _npz_cached(str(p), st.st_mtime_ns, st.st_size)


def npz_num_classes(path: str) -> int:
    """K = max(y) + 1 of a validated .npz file."""
    return int(_npz_arrays(path)[1].max()) + 1


def _npz_task(cfg: RunConfig) -> TaskData:
    """S, P, T: disjoint parts of one seeded permutation of the rows; X kept as given (float32)."""
    X, y = _npz_arrays(cfg.npz_path)
    S, P, T = _disjoint_splits(X, y, cfg, "npz_perm", cfg.npz_path)
    return TaskData("npz", S, P, T, int(y.max()) + 1, tuple(X.shape[1:]), None, None,
                    is_image=X.ndim == 4)


# ---------------------------------------------------------------------------------------------
# batching

def iterate_batches(split: Split, batch_size: int, generator: torch.Generator, augment: bool = False,
                    shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (x, y) batches by indexing a seeded permutation; keeps the last partial batch.

    `augment` applies `augment_batch` to image splits (n, C, H, W) and is ignored for vectors.
    `generator` is a CPU generator; it drives the permutation, then the augmentations.
    """
    n = len(split)
    device = split.y.device
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(device)
    augment = augment and split.x.dim() == 4
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        x = split.x[idx]
        if augment:
            x = augment_batch(x, generator)
        yield x, split.y[idx]


def augment_batch(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by `pad`, then a random horizontal flip, for x (n, C, H, W).

    out_i[c, h, w] = xpad_i[c, h + a_i, w' + b_i], w' = W-1-w if flipped else w, with a_i, b_i
    uniform in [0, 2 pad]: two gathers (rows, then columns) for the batch on x's device. The random numbers come from
    the CPU `generator`, so the result depends only on it.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_batch needs images (n, C, H, W); got shape {tuple(x.shape)}")
    n, C, H, W = x.shape
    a = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator).to(x.device)  # (n, 1)
    b = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator).to(x.device)
    flip = (torch.rand(n, 1, generator=generator) < 0.5).to(x.device)         # (n, 1)
    xpad = F.pad(x, (pad, pad, pad, pad))                                      # (n, C, H+2p, W+2p)
    h = torch.arange(H, device=x.device)
    w = torch.arange(W, device=x.device)
    rows = a + h                                                               # (n, H)
    cols = b + torch.where(flip, W - 1 - w, w)                                 # (n, W)
    Wp = W + 2 * pad
    picked = xpad.gather(2, rows[:, None, :, None].expand(n, C, H, Wp))        # (n, C, H, W+2p)
    return picked.gather(3, cols[:, None, None, :].expand(n, C, H, W))         # (n, C, H, W)
