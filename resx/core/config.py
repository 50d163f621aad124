"""Validated run configuration (design.md "Runs"; theory.md sections 1-3).

A `RunConfig` is frozen; every field is checked in `__post_init__`, and a bad value raises
`ConfigError` naming the field, the value and what is allowed. `to_dict`/`from_dict` serve the
store, the URL and the command line.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYNTHETIC_DATASETS = ("teacher", "shapes")
TORCHVISION_DATASETS = ("cifar10", "cifar100", "mnist", "fashion-mnist")
BUNDLED_DATASETS = ("digits",)   # shipped inside an installed wheel (scikit-learn's load_digits): no download
DATASETS = SYNTHETIC_DATASETS + TORCHVISION_DATASETS + BUNDLED_DATASETS + ("npz",)
NUM_CLASSES = {"teacher": 10, "shapes": 10, "cifar10": 10, "cifar100": 100, "mnist": 10, "fashion-mnist": 10,
               "digits": 10}
IMAGE_DATASETS = ("shapes",) + TORCHVISION_DATASETS + BUNDLED_DATASETS

ARCHS = ("mlp", "resnet", "resnet18", "resnet34")   # the last two: torchvision's, adapted to small images
TORCHVISION_BLOCKS = {"resnet18": 8, "resnet34": 16}   # their residual blocks (2-2-2-2, 3-4-6-3)

# Operator caps (design.md "What bad input gets"); a shared server may lower them, never raise.
MAX_DEPTH = 64
MAX_WIDTH = 4096
MAX_N = 1_000_000


def _short_repr(value: Any, limit: int = 80) -> str:
    """repr, bounded (an int of 5000 digits has no repr past Python's limit, and none is readable)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ConfigError(ValueError):
    """A configuration value is out of range; names the field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={_short_repr(value)} is not allowed: {allowed}")


@dataclass(frozen=True)
class RunConfig:
    # data (theory.md 1): S trains, P chooses the jumpboard, T tests; all independent
    dataset: str = "teacher"          # one of DATASETS
    npz_path: str = ""                # only for dataset="npz": arrays X (n, ...) and y (n,)
    input_dim: int = 32               # teacher task: Gaussian input dimension
    teacher_temperature: float = 1.0  # teacher task: labels ~ softmax(teacher(x) / T)
    n: int = 2000                     # training sample S
    n_probe: int = 2000               # probe sample P (direction and step of the jumpboard)
    n_test: int = 2000                # test sample T
    n_pop: int = 131072               # fresh sample for the population risk L (synthetic only), 2^17
    augment: bool = False             # random crop + flip per batch (image datasets only)
    # model (theory.md 2)
    arch: str = "mlp"                 # "mlp" | "resnet" | "resnet18" | "resnet34" (torchvision's; depth, width unused)
    init_weights: str = ""            # a state dict file the old model starts from (its sha256 is in the run's
                                      # content address); base training then runs `epochs` more (0: none)
    depth: int = 4                    # residual blocks (resnet: blocks per stage, 6*depth+2 layers)
    width: int = 64                   # mlp hidden width; resnet base channels w (stages w, 2w, 4w)
    position: int = 2                 # insert after block `position` (0 = right after the stem)
    # optimisation
    optimizer: str = "adamw"          # "sgd" (momentum 0.9) | "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"          # "constant" | "cosine" (per phase)
    batch_size: int = 128
    epochs: int = 8                   # base training; demo-mlp: L_S ~ 0.93 against L ~ 1.34, Bayes 0.885
    finetune_epochs: int = 5          # expanded model and control each get this many epochs
    finetune: str = "block"           # "block": new block only | "all": every parameter
    # theory (theory.md 4-8)
    delta: float = 0.05               # confidence: guarantees hold with probability >= 1 - delta
    bound: str = "grs"                # "grs" (Golowich et al. 2018) | "bft" (Bartlett et al. 2017)
    m_cert: int = 262144              # fresh sample for the hold-out certificates (synthetic only), 2^18:
                                      # demo-mlp's jumpboard (L(f_J) - L(f_old) = -0.0044) certifies from ~1e5;
                                      # a cap: the step draws only as many as the pilot predicts it needs
    certify: bool = True              # the certify step (hold-out and PAC-Bayes certificates) after
                                      # fine-tuning; sweep and figure cells turn it off unless asked
    # reproducibility and placement
    seed: int = 0
    device: str = "auto"              # "auto" | "cpu" | "cuda"

    def __post_init__(self):
        _check_choice("dataset", self.dataset, DATASETS)
        if self.dataset == "npz" and not self.npz_path:
            raise ConfigError("npz_path", self.npz_path, "a path to an .npz file when dataset='npz'")
        _check_choice("arch", self.arch, ARCHS)
        if not isinstance(self.init_weights, str):
            raise ConfigError("init_weights", self.init_weights, "a path to a state dict file, or empty")
        if self.arch != "mlp" and self.dataset == "teacher":
            raise ConfigError("arch", self.arch, "'mlp' for the teacher task (vector inputs)")
        _check_int("input_dim", self.input_dim, 1, 4096)
        _check_float("teacher_temperature", self.teacher_temperature, 1e-3, 1e3)
        _check_int("n", self.n, 2, MAX_N)
        _check_int("n_probe", self.n_probe, 4, MAX_N)
        _check_int("n_test", self.n_test, 2, MAX_N)
        _check_int("n_pop", self.n_pop, 256, 1 << 22)
        _check_bool("augment", self.augment)
        _check_int("depth", self.depth, 1, MAX_DEPTH if self.arch == "mlp" else MAX_DEPTH // 4)
        _check_int("width", self.width, 1, MAX_WIDTH if self.arch == "mlp" else 256)
        _check_int("position", self.position, 0, self.num_positions - 1,
                   f"an integer from 0 (after the stem) to {self.num_positions - 1} (after the last block)")
        _check_choice("optimizer", self.optimizer, ("sgd", "adamw"))
        _check_float("lr", self.lr, 1e-7, 10.0)
        _check_float("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_choice("schedule", self.schedule, ("constant", "cosine"))
        _check_int("batch_size", self.batch_size, 1, 65536)
        _check_int("epochs", self.epochs, 0 if self.init_weights else 1, 10_000,
                   None if self.init_weights else "an integer from 1 to 10000 (0 only with init_weights)")
        _check_int("finetune_epochs", self.finetune_epochs, 0, 10_000)
        _check_choice("finetune", self.finetune, ("block", "all"))
        _check_float("delta", self.delta, 1e-6, 0.5)
        _check_choice("bound", self.bound, ("grs", "bft"))
        _check_int("m_cert", self.m_cert, 2, 1 << 24)
        _check_bool("certify", self.certify)
        _check_int("seed", self.seed, 0, 2**31 - 1)
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))

    @property
    def num_blocks(self) -> int:
        """Residual blocks in the old model (resnet: 3 stages of `depth`; torchvision's: fixed)."""
        if self.arch in TORCHVISION_BLOCKS:
            return TORCHVISION_BLOCKS[self.arch]
        return self.depth if self.arch == "mlp" else 3 * self.depth

    @property
    def num_positions(self) -> int:
        """Insertion points: after the stem and after every block."""
        return self.num_blocks + 1

    @property
    def is_synthetic(self) -> bool:
        return self.dataset in SYNTHETIC_DATASETS

    @property
    def num_classes(self) -> int | None:
        """K, derived from the dataset; None for an .npz file, whose K (max label + 1) is read with
        its data (`TaskData.num_classes`), so that a config never reads files."""
        return NUM_CLASSES.get(self.dataset)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Build from a dict of field values; unknown keys and wrong types raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError("config", type(d).__name__, "a JSON object of field values")
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(str(key) or "<empty key>", d[key], f"one of the fields {sorted(known)}")
        return cls(**{k: _coerce(k, v, known[k].type) for k, v in d.items()})


def parse_assignment(text: str) -> tuple[str, Any]:
    """'key=value' from the command line -> (key, typed value), typed by the field."""
    key, sep, raw = text.partition("=")
    known = {f.name: f for f in dataclasses.fields(RunConfig)}
    if not sep or key not in known:
        raise ConfigError(key or text, raw, f"key=value with key one of {sorted(known)}")
    kind = known[key].type
    try:
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            value: Any = raw.lower() in ("1", "true", "yes")
        elif kind == "int":
            value = int(raw)
        elif kind == "float":
            value = float(raw)
        else:
            value = raw
    except ValueError:
        raise ConfigError(key, raw, f"a value of type {kind}") from None
    return key, value


def _coerce(name: str, value: Any, kind: str) -> Any:
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool),
          "str": lambda v: isinstance(v, str)}[kind]
    if not ok(value):
        raise ConfigError(name, value, f"a value of type {kind}")
    if kind == "float":
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(name, value, "a finite number") from None
    return value


def _check_choice(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(name, value, f"one of {list(allowed)}")


def _check_int(name, value, lo, hi, allowed=None):
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(name, value, allowed or f"an integer from {lo} to {hi}")


def _check_float(name, value, lo, hi):
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or not lo <= value <= hi):
        raise ConfigError(name, value, f"a finite number from {lo:g} to {hi:g}")


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ConfigError(name, value, "true or false")


# Named presets. Times are for 2 CPU cores (measured; README "Presets").
PRESETS: dict[str, RunConfig] = {
    # default: synthetic teacher, post-LN MLP; the whole pipeline in well under 60 s. Chosen so the
    # mechanism shows: the old model fits S without memorising it, the descent condition is observed
    # at most positions, and the jumpboard lowers L by many standard errors (README "Presets").
    "demo-mlp": RunConfig(),
    # the paper's mechanism on the paper's architecture (issue 11; README "Presets"): demo-resnet's
    # ResNet-8 with a probe sample four times larger, so that the one-sided descent the block's ReLU
    # kink allows is observable at the chosen position (theory.md 4b), and a population sample large
    # enough to resolve the jumpboard's gain Delta_R; only the new block is fine-tuned. The hold-out
    # certificate gets 2^16 fresh points: it does not certify at 2^18 either (loss range c ~ 35), and
    # says from which m it would, while 2^18 image forward passes of four models took two minutes.
    "mechanism-resnet": RunConfig(dataset="shapes", arch="resnet", depth=1, width=8, position=2, n=2000,
                                  n_probe=4000, n_test=1000, n_pop=32768, m_cert=65536, optimizer="sgd",
                                  lr=0.05, weight_decay=5e-4, batch_size=128, epochs=8, finetune_epochs=2,
                                  finetune="block"),
    # synthetic images, ResNet-8 (one block per stage), base channels 8. Eight epochs leave the old
    # model short of fitting S, so the expanded model fine-tunes every parameter, like the control.
    # What it shows (seed 0): the gradient is nonzero at the chosen position, but from 1000 probe
    # points descent is not observable, eta* = 0 and Delta_R = 0: the weak signal needs a larger
    # probe sample (mechanism-resnet, README "Presets").
    "demo-resnet": RunConfig(dataset="shapes", arch="resnet", depth=1, width=8, position=2, n=2000,
                             n_probe=1000, n_test=1000, n_pop=4096, m_cert=16384, optimizer="sgd", lr=0.05,
                             weight_decay=5e-4, batch_size=128, epochs=8, finetune_epochs=2, finetune="all"),
    # the paper's setting: ResNet-8 with base channel 4 on real data
    # real data that needs no download: scikit-learn's 1797 handwritten digits (8x8, CC BY 4.0), split
    # disjointly into S, P, T (no population: T certifies, as for CIFAR). Flattened to 64 numbers by
    # the post-LN MLP; the ResNet-8 takes the 8x8 images as they are (strides 1, 2, 2: 8 -> 4 -> 2,
    # no upsampling). What each shows, and its wall time: README "Presets".
    "digits-mlp": RunConfig(dataset="digits", arch="mlp", depth=4, width=64, position=2, n=800, n_probe=600,
                            n_test=397, epochs=10, finetune_epochs=3, batch_size=64),
    "digits-resnet": RunConfig(dataset="digits", arch="resnet", depth=1, width=8, position=2, n=800,
                               n_probe=600, n_test=397, optimizer="sgd", lr=0.05, weight_decay=5e-4,
                               batch_size=64, epochs=10, finetune_epochs=3, finetune="block"),
    "cifar10-resnet8": RunConfig(dataset="cifar10", arch="resnet", depth=1, width=4, position=1,
                                 n=50000, n_probe=5000, n_test=5000, augment=True, optimizer="sgd",
                                 lr=0.1, weight_decay=5e-4, batch_size=128, epochs=30, finetune_epochs=5),
    "cifar100-resnet8": RunConfig(dataset="cifar100", arch="resnet", depth=1, width=4, position=1,
                                  n=50000, n_probe=5000, n_test=5000, augment=True, optimizer="sgd",
                                  lr=0.1, weight_decay=5e-4, batch_size=128, epochs=30, finetune_epochs=5),
}
DEFAULT_PRESET = "demo-mlp"


@dataclass(frozen=True)
class OperatorCaps:
    """Limits the operator of a shared server sets through the environment (design.md).

    RESX_MAX_WIDTH, RESX_MAX_DEPTH, RESX_MAX_N (each of n, n_probe, n_test), RESX_MAX_RUNNING
    (running or queued jobs per browser session). Unset means the built-in limits, or with
    RESX_DEMO=1 the public demo's (DEMO_CAPS: sized for about 2 cores and 2.7 GB).
    """
    max_width: int = MAX_WIDTH
    max_depth: int = MAX_DEPTH
    max_n: int = MAX_N
    max_running_per_session: int = 2

    @classmethod
    def from_env(cls, environ=None) -> "OperatorCaps":
        import os
        env = os.environ if environ is None else environ
        demo = env.get("RESX_DEMO", "").strip().lower() in ("1", "true", "yes")
        values = dict(DEMO_CAPS) if demo else {}
        for name, var in (("max_width", "RESX_MAX_WIDTH"), ("max_depth", "RESX_MAX_DEPTH"),
                          ("max_n", "RESX_MAX_N"), ("max_running_per_session", "RESX_MAX_RUNNING")):
            raw = env.get(var, "").strip()
            if raw:
                if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
                    raise ConfigError(var, raw, "a positive integer")
                values[name] = int(raw)
        return cls(**values)

    def check(self, cfg: RunConfig) -> RunConfig:
        """Raise ConfigError when `cfg` is over a cap; return it unchanged otherwise."""
        _check_int("width", cfg.width, 1, self.max_width, f"at most {self.max_width} on this server")
        _check_int("depth", cfg.depth, 1, self.max_depth, f"at most {self.max_depth} on this server")
        for name in ("n", "n_probe", "n_test"):
            value = getattr(cfg, name)
            _check_int(name, value, 1, self.max_n, f"at most {self.max_n} on this server")
        return cfg


# The public demo's caps (RESX_DEMO=1): one run per session, sizes the lesson and demo presets fit in.
DEMO_CAPS = {"max_width": 128, "max_depth": 8, "max_n": 5000, "max_running_per_session": 1}


def build_config(preset: str | None, config_file: str | None, assignments: list[str]) -> RunConfig:
    """A preset (default demo-mlp) or a JSON file, then `key=value` overrides, validated once: what
    `python -m resx run|sweep|figures` take as --preset, --config and --set."""
    if preset and config_file:
        raise ConfigError("--config", config_file, "either --preset or --config, not both")
    if config_file:
        path = Path(config_file)
        try:
            base = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # JSONDecodeError, and ints past Python's digit limit
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
