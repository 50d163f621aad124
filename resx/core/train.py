"""One training loop for the old model, the expanded model and the control; risk evaluation.

The loop emits `Record`s through a sink, checks a cancel flag every batch, and ends as
`diverged` (with the step and the loss) when the loss goes non-finite. On CUDA the training steps
run under bf16 autocast; every risk (and so every paired difference) is evaluated in float32
outside autocast, since the differences resx reports are 1e-3 to 1e-5 and bf16 keeps 8 mantissa
bits. On the CPU a seed and the torch thread count (result.json: torch_threads) make a run
reproducible; other thread counts move the last digits (about 1e-7 relative on demo-mlp).
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RunConfig
from .data import Split, TaskData, iterate_batches
from .models import FromPosition, activations_at, run_blocks
from .tv_resnet import TVBasicBlock, TVBottleneck, block_line
from .records import Record, RecordSink, discard

log = logging.getLogger(__name__)

EVAL_BATCH = 4096
PREFIX_BYTES = 256 << 20   # StackedSplits keeps activations up to this size
POP_CURVE_POINTS = 8192   # population sample used for the live curves; the final numbers use n_pop
# A batch loss above DIVERGED_FACTOR * log K (46 nats for K = 10: the true class gets probability
# e^-46 on average) means the run has blown up. A post-LN network rarely reaches inf or NaN,
# since normalization bounds every activation; its loss explodes and stays there instead.
DIVERGED_FACTOR = 20.0


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass(frozen=True)
class Risk:
    """Mean cross-entropy on a sample with its standard error std/sqrt(m), and accuracy."""
    loss: float
    stderr: float
    acc: float
    m: int


@torch.no_grad()
def per_sample_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int = EVAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """l(f(x_i), y_i) and correctness for every i, eval mode, float32 (autocast off, even inside
    an autocast region: risks are differenced, theory.md 6): (m,), (m,).
    y: labels (m,), or label distributions p (m, K) (Split.expected): then the loss is
    -sum_c p_ic log softmax_c = E[l | x_i] and the correctness p_i[argmax f(x_i)] = P(correct | x_i)."""
    return losses_sharing_prefix([model], 0, x, y, batch_size)[0]


def same_prefix(a: nn.Module, b: nn.Module, position: int) -> bool:
    """Whether a and b compute the same function up to position `position`: their stems and
    blocks[:position] hold equal parameters and buffers (f_new and f_J against f_old when only
    the new block was fine-tuned: frozen modules stay in eval mode, THEORY.md 6)."""
    if type(a) is not type(b) or min(len(a.blocks), len(b.blocks)) < position:
        return False
    for part_a, part_b in [(a.stem, b.stem)] + [(a.blocks[i], b.blocks[i]) for i in range(position)]:
        sa, sb = part_a.state_dict(), part_b.state_dict()
        if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
            return False
    return True


def losses_of(models: dict, position: int, x: torch.Tensor, y: torch.Tensor) -> dict:
    """{name: per-sample losses} of several models on (x, y): those with the first one's prefix at
    `position` (same_prefix) share one pass over it, the others get their own."""
    names = list(models)
    anchor = models[names[0]]
    sharing = [n for n in names if n == names[0] or same_prefix(anchor, models[n], position)]
    out = dict(zip(sharing, (loss for loss, _ in losses_sharing_prefix([models[n] for n in sharing], position, x, y))))
    for n in names:
        if n not in out:
            out[n] = per_sample_losses(models[n], x, y)[0]
    return {n: out[n] for n in names}


@torch.no_grad()
def losses_sharing_prefix(models: list[nn.Module], position: int, x: torch.Tensor, y: torch.Tensor,
                          batch_size: int = EVAL_BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """per_sample_losses of each model, the stem and blocks[:position] of the first computed once
    per batch and shared by all: only for models with `same_prefix` (position 0: one model, whole)."""
    was = [m.training for m in models]
    for m in models:
        m.eval()
    out = [([], []) for _ in models]
    for i in range(0, len(x), batch_size):
        target = y[i:i + batch_size]
        with torch.autocast(x.device.type, enabled=False):
            if position == 0 and len(models) == 1:
                heads = [models[0](x[i:i + batch_size])]
            else:
                h = run_blocks(models[0], models[0].embed(x[i:i + batch_size]), 0, position)
                heads = [FromPosition(m, position)(h) for m in models]
        for (losses, correct), logits in zip(out, heads):
            logits = logits.float()
            losses.append(F.cross_entropy(logits, target, reduction="none"))
            guess = logits.argmax(1)
            correct.append(guess == target if target.dim() == 1 else target.gather(1, guess[:, None])[:, 0])
    for m, w in zip(models, was):
        m.train(w)
    return [(torch.cat(losses), torch.cat(correct)) for losses, correct in out]


class LossMemo:
    """per_sample_losses, each (model, sample) pair computed once: the evaluate, terms and certify
    steps difference the same final models on the same samples (2^17 population points each time).
    Only for models that no longer change; the memo holds them, so an id is never reused."""

    def __init__(self):
        self._memo: dict = {}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int = EVAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._key(model, x, y)
        if key not in self._memo:
            self._memo[key] = (model, per_sample_losses(model, x, y, batch_size))
        return self._memo[key][1]

    def fill(self, models: list[nn.Module], position: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Compute the losses of several models with `same_prefix` at `position` on (x, y) in one
        pass, the shared blocks once (losses_sharing_prefix): later calls find them here."""
        todo = [m for m in models if self._key(m, x, y) not in self._memo]
        if todo:
            for m, value in zip(todo, losses_sharing_prefix(todo, position, x, y)):
                self._memo[self._key(m, x, y)] = (m, value)

    @staticmethod
    def _key(model, x, y) -> tuple:
        return (id(model), x.data_ptr(), tuple(x.shape), y.data_ptr())


def risk(model: nn.Module, split: Split, losses: Callable = per_sample_losses) -> Risk:
    """L_A(f) = mean_i l(f(x_i), y_i) on a sample A, with stderr = std / sqrt(m) (theory.md 1).
    `losses`: per_sample_losses or a LossMemo."""
    return _risk_of(*losses(model, split.x, split.y))


def _risk_of(losses: torch.Tensor, correct: torch.Tensor) -> Risk:
    m = len(losses)
    se = losses.std().item() / math.sqrt(m) if m > 1 else float("nan")
    return Risk(losses.mean().item(), se, correct.float().mean().item(), m)


class StackedSplits:
    """Several samples as one tensor, so that a model's risk on each takes one pass, not one per
    sample (the jumpboard's line search: S, P2, T and a population slice at every step).
    Exact in eval mode, where every sample's loss depends on that sample alone.

    With `fixed_until=(model, k)`: the stem and blocks before position k will not change, so the
    activations at k are computed once and every later pass starts there (when they fit in
    PREFIX_BYTES; otherwise every pass starts from the input)."""

    def __init__(self, splits: dict[str, Split], fixed_until: Optional[tuple[nn.Module, int]] = None):
        self.names = list(splits)
        self.sizes = [len(s.y) for s in splits.values()]
        self.x = torch.cat([s.x for s in splits.values()])
        ys = [s.y for s in splits.values()]
        K = next((y.shape[1] for y in ys if y.dim() == 2), None)
        if K is not None:   # some are distributions (Split.expected): labels as one-hot, the same loss
            ys = [y if y.dim() == 2 else F.one_hot(y, K).to(torch.float32) for y in ys]
        self.y = torch.cat(ys)
        self.position = None
        if fixed_until is not None:
            model, k = fixed_until
            one = activations_at(model, self.x[:1], k)
            if one.element_size() * one.numel() * len(self.x) <= PREFIX_BYTES:
                self.x, self.position = activations_at(model, self.x, k, batch_size=EVAL_BATCH), k

    def risks(self, model: nn.Module) -> dict[str, Risk]:
        reader = model if self.position is None else FromPosition(model, self.position)
        return self._split(*per_sample_losses(reader, self.x, self.y))

    def line(self, model: nn.Module, direction: dict) -> Optional["StackedLine"]:
        """The risks along phi = eta d of the zero block at the stored position (blocks' `line`), or
        None when the activations were not stored or (h, u) would not fit in PREFIX_BYTES
        (torchvision's blocks: tv_resnet.block_line)."""
        block = model.blocks[self.position] if self.position is not None else None
        if (self.position is None or 2 * self.x.element_size() * self.x.numel() > PREFIX_BYTES
                or not (hasattr(block, "line") or isinstance(block, (TVBasicBlock, TVBottleneck)))):
            return None
        return StackedLine(self, model, direction)

    def _split(self, losses, correct) -> dict[str, Risk]:
        return {name: _risk_of(l, c) for name, l, c in
                zip(self.names, losses.split(self.sizes), correct.split(self.sizes))}


class StackedLine(nn.Module):
    """A line search's risks from stored (h, u) pairs: at step eta the zero block at position k
    maps h to post(h + eta u) (PostLNBlock.line, BasicBlock.line), then blocks[k+1:] and the head.
    Equal to StackedSplits.risks of the model with the block's live parameters at eta d, up to
    float rounding (eta (d_W a) against (eta d_W) a)."""

    def __init__(self, samples: StackedSplits, model: nn.Module, direction: dict):
        super().__init__()
        k = samples.position
        block = model.blocks[k]
        was = block.training
        block.eval()
        with torch.no_grad():
            line = block.line if hasattr(block, "line") else lambda h, d: block_line(block, h, d)
            parts = [line(samples.x[i:i + EVAL_BATCH], direction) for i in range(0, len(samples.x), EVAL_BATCH)]
        block.train(was)
        self.samples, self.post = samples, parts[0][1]
        self.hu = torch.stack([samples.x, torch.cat([u for u, _ in parts])], 1)   # (n, 2, ...)
        self.rest = FromPosition(model, k + 1)
        self.eta = 0.0

    def forward(self, hu):
        return self.rest(self.post(hu[:, 0] + self.eta * hu[:, 1]))

    def risks(self, eta: float) -> dict[str, Risk]:
        self.eta = float(eta)
        return self.samples._split(*per_sample_losses(self, self.hu, self.samples.y))


def draw_population(data: TaskData, n: int, seed: int) -> Optional[Split]:
    """A fresh sample from D for the population risk (synthetic tasks); None for real data."""
    if data.sampler is None:
        return None
    return Split(*data.sampler(n, torch.Generator().manual_seed(seed)))


class Evaluator:
    """Emits L_S, L_T (and L on a population sample) as records; used at every epoch end."""

    def __init__(self, data: TaskData, population: Optional[Split]):
        self.data = data
        self.population = None
        if population is not None:
            k = min(len(population), POP_CURVE_POINTS)
            self.population = population.head(k)

    def __call__(self, model: nn.Module, phase: str, step: int, sink: RecordSink) -> dict[str, Risk]:
        splits = {"S": self.data.S, "T": self.data.T}
        if self.population is not None:
            splits["pop"] = self.population
        out = {}
        for name, split in splits.items():
            r = risk(model, split)
            out[name] = r
            sink(Record(phase, step, name, "loss", r.loss, r.stderr))
            sink(Record(phase, step, name, "acc", r.acc))
        return out


@dataclass(frozen=True)
class TrainOutcome:
    status: str          # "done" | "diverged" | "cancelled"
    steps: int
    last_loss: float
    message: str = ""


def make_optimizer(params: list[nn.Parameter], cfg: RunConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(step: int, total: int, cfg: RunConfig) -> float:
    """Constant, or cosine from lr to 0 over the phase: lr * (1 + cos(pi * step / total)) / 2."""
    if cfg.schedule == "constant" or total <= 0:
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def train(model: nn.Module, data: TaskData, cfg: RunConfig, *, phase: str, epochs: int,
          params: Optional[Iterable[nn.Parameter]] = None, sink: RecordSink = discard,
          cancel: Optional[threading.Event] = None, evaluator: Optional[Evaluator] = None,
          seed: Optional[int] = None, epoch_hook: Optional[Callable[[nn.Module, int, int], None]] = None
          ) -> TrainOutcome:
    """Minimise L_S over `params` (default: all) for `epochs` passes over S.

    Ends as "diverged" when a batch loss is non-finite or above DIVERGED_FACTOR * log K.
    Records: "batch_loss" about ten times an epoch, "lr", "progress" (0..1), and the evaluator's
    L_S / L_T / L at step 0 and after every epoch. `epoch_hook(model, epoch, step)` runs before
    the first step and after each epoch's evaluation (the pipeline measures descent margins there).
    """
    params = [p for p in (model.parameters() if params is None else params)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = make_optimizer(params, cfg)
    generator = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    steps_per_epoch = math.ceil(len(data.S) / cfg.batch_size)
    total = steps_per_epoch * epochs
    log_every = max(1, steps_per_epoch // 10)
    augment = cfg.augment and data.is_image
    step, last_loss = 0, float("nan")
    diverged_above = DIVERGED_FACTOR * math.log(data.num_classes)

    if evaluator is not None:
        evaluator(model, phase, 0, sink)
    if epoch_hook is not None:
        epoch_hook(model, 0, 0)
    _train_mode(model)
    try:
        for epoch in range(epochs):
            for x, y in iterate_batches(data.S, cfg.batch_size, generator, augment=augment):
                if cancel is not None and cancel.is_set():
                    return TrainOutcome("cancelled", step, last_loss, f"cancelled at step {step}")
                lr = lr_at(step, total, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with _autocast(x.device):
                    loss = F.cross_entropy(model(x).float(), y)
                last_loss = loss.item()
                if not math.isfinite(last_loss) or last_loss > diverged_above:
                    msg = (f"diverged at step {step} of {phase}: loss {last_loss:.4g} "
                           f"(non-finite or above {diverged_above:.1f} = {DIVERGED_FACTOR:g} log K; lr {cfg.lr:g})")
                    log.warning(msg)
                    sink(Record(phase, step, "S", "diverged_loss", last_loss))
                    return TrainOutcome("diverged", step, last_loss, msg)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if step % log_every == 0 or step == total:
                    sink(Record(phase, step, "S", "batch_loss", last_loss))
                    sink(Record(phase, step, "", "lr", lr))
                    sink(Record(phase, step, "", "progress", step / total))
            if evaluator is not None:
                risks = evaluator(model, phase, step, sink)
                if not math.isfinite(risks["S"].loss):
                    msg = f"diverged at step {step} of {phase}: L_S {risks['S'].loss}"
                    return TrainOutcome("diverged", step, risks["S"].loss, msg)
            if epoch_hook is not None:
                epoch_hook(model, epoch + 1, step)
                _train_mode(model)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return TrainOutcome("done", step, last_loss)


def _train_mode(model: nn.Module):
    """model.train(), except modules whose own parameters are all frozen stay in eval mode
    (their running statistics do not move); a module with no parameters follows its parent."""
    model.train()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            module.eval()


def _autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op on the CPU (so CPU runs are exact and reproducible)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
