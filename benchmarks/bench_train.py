"""Training and data benchmarks: resx.core.train against a bare PyTorch loop (trainer_overhead) and
iterate_batches against a torchvision DataLoader on CIFAR-10 files (data_pipeline)."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from resx.core.config import PRESETS, RunConfig

from .harness import Sizes, interleaved, ratio, spread

# ---------------------------------------------------------------------------------------------
# trainer_overhead: resx.train against a bare loop, same model, data, batches and optimizer

def bare_loop(model: torch.nn.Module, S, cfg: RunConfig, epochs: int) -> torch.nn.Module:
    """The baseline: a plain PyTorch loop over S in memory; the same seeded batches as resx.train."""
    from resx.core.train import make_optimizer

    optimizer = make_optimizer(list(model.parameters()), cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(S), generator=generator).split(cfg.batch_size):
            loss = F.cross_entropy(model(S.x[idx]), S.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def bench_trainer_overhead(sizes: Sizes, reps: int) -> tuple[float, dict]:
    """Throughput of resx.train (no evaluator) over a bare loop's; the smaller over the models."""
    from resx.core.data import load_data
    from resx.core.models import build_model
    from resx.core.train import train

    raw = {}
    cases = {"demo-mlp": (PRESETS["demo-mlp"], sizes.train_epochs),
             "demo-resnet": (PRESETS["demo-resnet"], sizes.resnet_epochs)}
    for name, (preset, epochs) in cases.items():
        if not epochs:
            continue
        cfg = preset.replace(schedule="constant", device="cpu")  # the bare loop keeps lr constant too
        data = load_data(cfg)
        torch.manual_seed(cfg.seed)
        model0 = build_model(cfg, data.input_shape, data.num_classes)
        arms = {"bare": lambda m: bare_loop(m, data.S, cfg, epochs),
                "resx": lambda m: (train(m, data, cfg, phase="base", epochs=epochs), m)[1]}
        times, first = interleaved(arms, reps, setup=lambda: copy.deepcopy(model0))
        steps = epochs * -(-len(data.S) // cfg.batch_size)
        same = max((a - b).abs().max().item() for a, b in zip(first["bare"].state_dict().values(),
                                                             first["resx"].state_dict().values())
                   if a.is_floating_point())
        raw[name] = {"what": f"{cfg.arch} depth {cfg.depth} width {cfg.width}, n={len(data.S)}, batch "
                             f"{cfg.batch_size}, {cfg.optimizer}, {epochs} epoch(s) = {steps} steps a round",
                     "bare_steps_per_s": spread([steps / t for t in times["bare"]], unit="steps/s"),
                     "resx_steps_per_s": spread([steps / t for t in times["resx"]], unit="steps/s"),
                     "throughput_resx_over_bare": ratio(times["bare"], times["resx"]),
                     "max_abs_weight_difference": same}
    return min(r["throughput_resx_over_bare"]["median"] for r in raw.values()), raw


# ---------------------------------------------------------------------------------------------
# data_pipeline: tensors in memory against torchvision's DataLoader, on CIFAR-10 files

def write_cifar10(root: Path, per_file: int, test: int = 100, seed: int = 0) -> dict:
    """CIFAR-10 in its on-disk format under root/cifar-10-batches-py: five pickled train batches of
    `per_file` images (uint8 (n, 3072), R, G, B planes), a test batch, batches.meta. Returns the
    md5 constants torchvision checks, for these files (as tests/test_data.py pins them)."""
    import torchvision.datasets as tvd

    rng = np.random.default_rng(seed)
    folder = root / tvd.CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for name, n in [(f, per_file) for f, _ in tvd.CIFAR10.train_list] + [(f, test) for f, _ in tvd.CIFAR10.test_list]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist(), "filenames": [f"{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    meta = tvd.CIFAR10.meta["filename"]
    (folder / meta).write_bytes(pickle.dumps({"label_names": [f"class_{k}" for k in range(10)]}, protocol=2))
    md5[meta] = hashlib.md5((folder / meta).read_bytes()).hexdigest()
    return md5


@contextlib.contextmanager
def cifar10_folder(per_file: int):
    """RESX_DATA_DIR on a temporary synthetic CIFAR-10, and torchvision's md5 constants for its
    files (undone on exit): both resx and the baseline read it through torchvision.datasets.CIFAR10."""
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10
    with tempfile.TemporaryDirectory(prefix="resx-bench-cifar-") as tmp:
        md5 = write_cifar10(Path(tmp), per_file)
        with mock.patch.dict(os.environ, {"RESX_DATA_DIR": tmp}), \
                mock.patch.object(cls, "train_list", [[n, md5[n]] for n, _ in cls.train_list]), \
                mock.patch.object(cls, "test_list", [[n, md5[n]] for n, _ in cls.test_list]), \
                mock.patch.object(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]}):
            yield Path(tmp)


def bench_data_pipeline(sizes: Sizes, reps: int) -> tuple[float, dict]:
    """One epoch of augmented, normalised (128, 3, 32, 32) batches: resx against DataLoader(s)."""
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    from resx.core.data import TORCHVISION, iterate_batches, load_data

    _, _, _, mean, std = TORCHVISION["cifar10"]
    n = 5 * sizes.cifar_per_file
    cfg = PRESETS["cifar10-resnet8"].replace(n=n, n_probe=50, n_test=50, device="cpu")
    with cifar10_folder(sizes.cifar_per_file) as root:
        start = time.perf_counter()
        data = load_data(cfg)
        resx_load = time.perf_counter() - start
        start = time.perf_counter()
        dataset = tvd.CIFAR10(str(root), train=True, transform=T.Compose([
            T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]))
        tv_load = time.perf_counter() - start
    generator = torch.Generator().manual_seed(0)

    def epoch(batches):
        shapes = set()
        for x, y in batches:
            shapes.add((tuple(x.shape[1:]), x.dtype))
        return shapes

    arms = {"resx": lambda: epoch(iterate_batches(data.S, cfg.batch_size, generator, augment=True))}
    loaders = {}
    for w in sizes.loader_workers:  # persistent workers: the baseline at its best, no start-up per epoch
        loaders[w] = torch.utils.data.DataLoader(dataset, cfg.batch_size, shuffle=True, num_workers=w,
                                                 persistent_workers=w > 0)
        arms[f"dataloader_workers_{w}"] = (lambda loader: lambda: epoch(loader))(loaders[w])
    try:
        times, first = interleaved(arms, reps)
    finally:
        for loader in loaders.values():   # persistent workers end with their iterator
            if getattr(loader, "_iterator", None) is not None:
                loader._iterator._shutdown_workers()
    if len({frozenset(s) for s in first.values()}) != 1:
        raise AssertionError(f"the arms yield different batches: {first}")
    raw = {"what": f"one epoch of {n} CIFAR-10-format images, batch {cfg.batch_size}, random crop (pad 4) + "
                   f"flip + normalise; the DataLoader with PIL transforms (ToTensor, Normalize)",
           "load_s": {"resx (load_data: unpickle, select, to float32)": resx_load,
                      "torchvision.datasets.CIFAR10": tv_load},
           "resx_images_per_s": spread([n / t for t in times["resx"]], unit="images/s")}
    for w in sizes.loader_workers:
        arm = f"dataloader_workers_{w}"
        raw[f"{arm}_images_per_s"] = spread([n / t for t in times[arm]], unit="images/s")
        raw[f"speedup_over_{arm}"] = ratio(times[arm], times["resx"])
    best = min(sizes.loader_workers, key=lambda w: statistics.median(times[f"dataloader_workers_{w}"]))
    raw["headline_against"] = f"dataloader_workers_{best} (the fastest baseline)"
    return raw[f"speedup_over_dataloader_workers_{best}"]["median"], raw
