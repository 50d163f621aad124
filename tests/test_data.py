"""Datasets and samplers: real on-disk formats, synthetic tasks, batching, augmentation, .npz checks."""
import hashlib
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd

from resx.core import data as D
from resx.core.config import RunConfig
from resx.core.data import (DataError, Split, augment_batch, iterate_batches, load_data, load_npz,
                       npz_num_classes)


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """An empty operator data folder; downloads forbidden."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("RESX_DATA_DIR", str(root))
    monkeypatch.delenv("RESX_ALLOW_DOWNLOAD", raising=False)
    return root


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# torchvision formats, written for real

def _cifar_batch(rng, n, first_id, label_key, num_classes):
    """A batch dict as in the CIFAR python files: data uint8 (n, 3072) = R, G, B planes, row-major."""
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(first_id, first_id + n)          # R at (0, 0) identifies the image
    labels = rng.integers(0, num_classes, size=n).tolist()
    batch = {"batch_label": "testing batch", "data": data, label_key: labels,
             "filenames": [f"img_{first_id + i}.png" for i in range(n)]}
    if label_key == "fine_labels":
        batch["coarse_labels"] = [k // 5 for k in labels]
    return batch


def _write_cifar(root, monkeypatch, cls, rng):
    """Write cls's files (5 images a train file, 8 test images) and pin their md5 sums on cls.

    torchvision checks every CIFAR file against the md5 of the real 160 MB download, which no
    tiny file can match; the test replaces only those md5 constants by the md5 of the files it
    wrote, so the integrity check still runs and still guards these exact bytes.
    """
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    is_100 = cls is tvd.CIFAR100
    key, K = ("fine_labels", 100) if is_100 else ("labels", 10)
    raw = {}
    next_id = 0
    for split, files in (("train", cls.train_list), ("test", cls.test_list)):
        parts, first = [], next_id
        for name, _ in files:
            n = 8 if split == "test" else (10 if is_100 else 5)
            batch = _cifar_batch(rng, n, next_id, key, K)
            next_id += n
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
            parts.append(batch)
        raw[split] = (np.concatenate([b["data"] for b in parts]),
                      np.concatenate([b[key] for b in parts]), first)
    meta = {cls.meta["key"]: [f"class_{k}" for k in range(K)]}
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps(meta, protocol=2))
    monkeypatch.setattr(cls, "train_list", [[n, _md5(folder / n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, _md5(folder / n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})
    return raw


def _check_split(split, raw_data, raw_labels, first_id, mean, std):
    """Every image in `split` equals its raw row (found by its id pixel), normalised, with its label."""
    C = len(mean)
    mean_t, std_t = torch.tensor(mean).view(C, 1, 1), torch.tensor(std).view(C, 1, 1)
    ids = set()
    for x, y in zip(split.x, split.y):
        pixel = x[0, 0, 0] * std[0] + mean[0]
        i = int(round(pixel.item() * 255)) - first_id
        ids.add(i)
        expected = torch.from_numpy(raw_data[i].reshape(C, 32, 32).astype(np.float32)) / 255
        torch.testing.assert_close(x, (expected - mean_t) / std_t)
        assert int(y) == int(raw_labels[i])
    return ids


@pytest.mark.parametrize("name, cls", [("cifar10", tvd.CIFAR10), ("cifar100", tvd.CIFAR100)])
def test_cifar_files_load_with_correct_pixels_and_labels(name, cls, data_root, monkeypatch):
    """CIFAR batch files in the real pickled format arrive as (C, H, W) pixels and labels, normalised."""
    raw = _write_cifar(data_root, monkeypatch, cls, np.random.default_rng(0))
    n_train = len(raw["train"][1])
    assert raw["train"][2] == 0
    cfg = RunConfig(dataset=name, n=n_train, n_probe=4, n_test=4, seed=3)
    task = load_data(cfg)
    _, _, _, mean, std = D.TORCHVISION[name]
    assert task.S.x.shape == (n_train, 3, 32, 32) and task.S.x.dtype == torch.float32
    assert task.S.y.dtype == torch.int64
    assert task.input_shape == (3, 32, 32) and task.is_image and task.sampler is None
    assert task.num_classes == (100 if name == "cifar100" else 10)
    assert _check_split(task.S, *raw["train"], mean, std) == set(range(n_train))
    ids_P = _check_split(task.P, *raw["test"], mean, std)
    ids_T = _check_split(task.T, *raw["test"], mean, std)
    assert len(ids_P) == 4 and len(ids_T) == 4 and not ids_P & ids_T
    # a known pixel of a known image: G channel at row 7, column 3 of train image 2
    data = raw["train"][0]
    i = next(k for k in range(n_train) if round((task.S.x[k, 0, 0, 0].item() * std[0] + mean[0]) * 255) == 2)
    expected = (data[2, 1024 + 7 * 32 + 3] / 255 - mean[1]) / std[1]
    assert task.S.x[i, 1, 7, 3].item() == pytest.approx(expected, abs=1e-5)


def _write_idx(path, array):
    """An idx file (MNIST's raw format): magic 0x00000800 | 3-byte type code 0x08 (ubyte) | ndim,
    then each dimension as a big-endian int32, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_idx_files_load_with_correct_pixels_and_labels(name, folder, data_root):
    """Raw idx-ubyte files in <root>/<Class>/raw arrive as (n, 1, 28, 28) pixels and their labels."""
    rng = np.random.default_rng(1)
    raw = data_root / folder / "raw"
    raw.mkdir(parents=True)
    images = {}
    for prefix, n in (("train", 6), ("t10k", 7)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(n)                       # the id pixel
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        images[prefix] = (x, y)
    task = load_data(RunConfig(dataset=name, n=6, n_probe=4, n_test=3, seed=5))
    (mean,), (std,) = D.TORCHVISION[name][3:]
    assert task.S.x.shape == (6, 1, 28, 28) and task.input_shape == (1, 28, 28)
    for split, prefix in ((task.S, "train"), (task.P, "t10k"), (task.T, "t10k")):
        x, y = images[prefix]
        for xi, yi in zip(split.x, split.y):
            i = int(round((xi[0, 0, 0].item() * std + mean) * 255))
            torch.testing.assert_close(xi[0], (torch.from_numpy(x[i]).float() / 255 - mean) / std)
            assert int(yi) == int(y[i])
    assert task.S.x[:, 0, 5, 9].sort().values.tolist() == pytest.approx(
        sorted(((images["train"][0][:, 5, 9] / 255 - mean) / std).tolist()), abs=1e-5)


def test_a_missing_folder_names_the_folder_and_the_expected_files(data_root):
    """Without the dataset's files, DataError names the absolute folder, the files and the two settings."""
    with pytest.raises(DataError) as e:
        load_data(RunConfig(dataset="cifar10", n=10, n_probe=4, n_test=4))
    msg = str(e.value)
    assert str(data_root.resolve() / "cifar-10-batches-py") in msg
    assert "data_batch_1..5" in msg and "test_batch" in msg and "batches.meta" in msg
    assert "RESX_DATA_DIR" in msg and "RESX_ALLOW_DOWNLOAD=1" in msg
    with pytest.raises(DataError, match=r"MNIST/raw.*train,t10k"):
        load_data(RunConfig(dataset="mnist", n=10, n_probe=4, n_test=4))


def test_wrong_files_and_oversized_requests_say_what_is_available(data_root, monkeypatch):
    """A folder of unreadable files, or more points than a split holds, gives DataError with the count."""
    _write_cifar(data_root, monkeypatch, tvd.CIFAR10, np.random.default_rng(2))  # 25 train, 8 test
    with pytest.raises(DataError, match=r"holds 25; use n <= 25"):
        load_data(RunConfig(dataset="cifar10", n=26, n_probe=4, n_test=4))
    with pytest.raises(DataError, match=r"test split holds 8"):
        load_data(RunConfig(dataset="cifar10", n=10, n_probe=5, n_test=4))
    bad = data_root / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(b"not a pickle")
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", _md5(bad)]])
    with pytest.raises(DataError, match=r"could not read the files in .*cifar-10-batches-py"):
        load_data(RunConfig(dataset="cifar10", n=10, n_probe=4, n_test=4))


# ---------------------------------------------------------------------------------------------
# synthetic tasks

def _population_estimate(logits_fn, sampler, n, generator, chunk=8192):
    """Mean cross-entropy of a model on n fresh draws, and its standard error std / sqrt(n)."""
    losses = []
    for start in range(0, n, chunk):
        x, y, _ = sampler(min(chunk, n - start), generator)
        losses.append(F.cross_entropy(logits_fn(x), y, reduction="none"))
    losses = torch.cat(losses)
    return losses.mean().item(), losses.std().item() / math.sqrt(n)


def test_teacher_population_estimates_converge_at_the_root_n_rate():
    """A fixed model's population-risk stderr shrinks by ~4 from n to 16n; estimates agree within a few SE."""
    task = load_data(RunConfig(n=16, n_probe=16, n_test=16))
    w = torch.randn(32, 10, generator=torch.Generator().manual_seed(0)) * 0.3  # a fixed linear model
    model = lambda x: x @ w  # noqa: E731
    g = torch.Generator().manual_seed(1)
    m1, se1 = _population_estimate(model, task.sampler, 2048, g)
    m16, se16 = _population_estimate(model, task.sampler, 2048 * 16, g)
    m64, se64 = _population_estimate(model, task.sampler, 2048 * 64, g)
    assert 3.2 < se1 / se16 < 5.0
    assert abs(m16 - m64) < 4 * math.hypot(se16, se64)
    assert abs(m1 - m64) < 4 * math.hypot(se1, se64)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_teacher_labels_follow_the_tempered_softmax(temperature):
    """The teacher's own cross-entropy on fresh draws equals the Bayes risk E H(p(.|x)) within a few SE."""
    task = load_data(RunConfig(n=16, n_probe=16, n_test=16, teacher_temperature=temperature))
    bayes, bayes_se = task.bayes_risk
    m, se = _population_estimate(lambda x: D.teacher_logits(x) / temperature, task.sampler, 1 << 16,
                                 torch.Generator().manual_seed(2))
    assert abs(m - bayes) < 4 * math.hypot(se, bayes_se)
    w = torch.randn(32, 10, generator=torch.Generator().manual_seed(3))
    random_risk, _ = _population_estimate(lambda x: x @ w, task.sampler, 1 << 14,
                                          torch.Generator().manual_seed(4))
    assert 0 < bayes < min(random_risk, math.log(10))


def test_teacher_is_shared_across_run_seeds_and_splits_are_independent():
    """Two run seeds share one teacher (same draws for the same generator) but get different S, P, T."""
    a = load_data(RunConfig(n=64, n_probe=64, n_test=64, seed=0))
    b = load_data(RunConfig(n=64, n_probe=64, n_test=64, seed=1))
    xa, ya, _ = a.sampler(256, torch.Generator().manual_seed(9))
    xb, yb, _ = b.sampler(256, torch.Generator().manual_seed(9))
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and a.bayes_risk == b.bayes_risk
    assert not torch.equal(a.S.x, b.S.x)
    assert not torch.equal(a.S.x, a.P.x) and not torch.equal(a.P.x, a.T.x)
    assert torch.equal(load_data(RunConfig(n=64, n_probe=64, n_test=64, seed=0)).S.x, a.S.x)


@pytest.mark.parametrize("name", ["teacher", "shapes"])
def test_each_draw_carries_the_distribution_its_label_came_from(name):
    """Over 2^15 draws: the label frequencies match mean p per class, and p at the drawn label averages
    sum_c p_c^2, as it must if y_i ~ p_i point by point (p shuffled across points would fail it)."""
    sampler = D.teacher_sampler(32, 1.0) if name == "teacher" else D.shapes_sampler
    n = 1 << 15
    x, y, p = sampler(n, torch.Generator().manual_seed(12))
    assert p.shape == (n, 10) and torch.allclose(p.sum(1), torch.ones(n))
    onehot = F.one_hot(y, 10).float()
    diff = onehot - p
    assert ((diff.mean(0)).abs() < 4 * diff.std(0) / math.sqrt(n)).all()
    def z_at_label(q):   # mean(q_i at y_i - sum_c q_ic^2) in standard errors: 0 if y_i ~ q_i
        d = q[torch.arange(n), y] - (q * q).sum(1)
        return d.mean().item() / (d.std().item() / math.sqrt(n))

    assert abs(z_at_label(p)) < 4
    shuffled = p[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    assert abs(z_at_label(shuffled)) > 20   # the check has power
    if name == "shapes":
        assert torch.allclose(p.max(1).values, torch.full((n,), 0.955))


def test_shapes_is_learnable_but_not_perfectly():
    """A shift-searching nearest-template classifier beats chance (10%) clearly, and label noise caps it."""
    task = load_data(RunConfig(dataset="shapes", arch="resnet", depth=1, width=4, position=1,
                               n=16, n_probe=16, n_test=2000))
    assert task.T.x.shape == (2000, 3, 16, 16) and task.is_image and task.bayes_risk is None
    t = D.shapes_templates()                                                     # (K, C, H, W)
    s = D.SHAPES_MAX_SHIFT
    shifted = torch.stack([t.roll((dy, dx), (2, 3)) for dy in range(-s, s + 1) for dx in range(-s, s + 1)])
    scores = torch.einsum("nchw,skchw->nsk", task.T.x, shifted).amax(1)         # (n, K)
    acc = (scores.argmax(1) == task.T.y).float().mean().item()
    assert 0.6 < acc < 0.99


# ---------------------------------------------------------------------------------------------
# batching and augmentation

def test_iterate_batches_visits_every_index_once_per_epoch():
    """Each epoch yields every sample exactly once, keeps the last partial batch, and reshuffles."""
    split = Split(torch.arange(23, dtype=torch.float32)[:, None], torch.arange(23))
    g = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        batches = list(iterate_batches(split, 5, g))
        assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
        order = torch.cat([y for _, y in batches])
        assert sorted(order.tolist()) == list(range(23))
        assert all(torch.equal(x[:, 0].long(), y) for x, y in batches)
        epochs.append(order)
    assert not torch.equal(epochs[0], epochs[1])
    plain = torch.cat([y for _, y in iterate_batches(split, 5, g, shuffle=False)])
    assert torch.equal(plain, torch.arange(23))


def test_augment_batch_outputs_are_flipped_translations_of_the_padded_input():
    """Every output is a (maybe flipped) window of the zero-padded input at an offset in [-pad, pad]."""
    x = torch.randn(32, 2, 5, 6, generator=torch.Generator().manual_seed(0))
    pad = 2
    out = augment_batch(x, torch.Generator().manual_seed(1), pad=pad)
    assert out.shape == x.shape
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(1), pad=pad))
    assert not torch.equal(out, augment_batch(x, torch.Generator().manual_seed(2), pad=pad))
    xpad = F.pad(x, (pad,) * 4)
    found = set()
    for i in range(len(x)):
        matches = [(a, b, f) for a in range(2 * pad + 1) for b in range(2 * pad + 1) for f in (0, 1)
                   if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(xpad[i, :, a:a + 5, b:b + 6]))]
        assert matches, f"sample {i} is not a flipped translation of its input"
        found.add(matches[0])
    assert len({(a, b) for a, b, _ in found}) > 5 and {f for _, _, f in found} == {0, 1}


def test_augment_batch_without_padding_only_flips():
    """With pad=0 each output is its input or its mirror image, and both occur."""
    x = torch.randn(40, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, torch.Generator().manual_seed(3), pad=0)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


# ---------------------------------------------------------------------------------------------
# .npz files

def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_a_good_npz_loads_and_splits_disjointly(tmp_path):
    """A valid file loads (3-D X gains a channel) and S, P, T are disjoint parts of its rows."""
    n = 50
    X = np.zeros((n, 6, 7), dtype=np.uint8)
    X[:, 0, 0] = np.arange(n)                         # a row id
    y = np.arange(n) % 3
    path = _npz(tmp_path, X=X, y=y)
    Xl, yl = load_npz(path)
    assert Xl.shape == (n, 1, 6, 7) and Xl.dtype == np.float32 and yl.dtype == np.int64
    assert npz_num_classes(path) == 3
    task = load_data(RunConfig(dataset="npz", npz_path=path, n=20, n_probe=10, n_test=15, seed=4))
    ids = [set(s.x[:, 0, 0, 0].long().tolist()) for s in (task.S, task.P, task.T)]
    assert [len(i) for i in ids] == [20, 10, 15] and len(set.union(*ids)) == 45
    assert all(torch.equal(s.y, s.x[:, 0, 0, 0].long() % 3) for s in (task.S, task.P, task.T))
    assert task.is_image and task.input_shape == (1, 6, 7) and task.num_classes == 3
    with pytest.raises(DataError, match=r"holds 50"):
        load_data(RunConfig(dataset="npz", npz_path=path, n=40, n_probe=10, n_test=15))


@pytest.mark.parametrize("arrays, pattern", [
    (dict(X=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4) % 2), r"pickl"),
    (dict(X=np.array([[0.0, np.nan]] * 4), y=np.arange(4) % 2), r"NaN or infinite.*expected finite"),
    (dict(X=np.zeros(4), y=np.arange(4) % 2), r"shape \(4,\).*expected \(n, d\)"),
    (dict(X=np.zeros((4, 1, 2, 2, 2)), y=np.arange(4) % 2), r"expected \(n, d\)"),
    (dict(X=np.zeros((4, 3)), y=np.arange(5) % 2), r"4 rows but y has 5"),
    (dict(X=np.zeros((4, 3)), y=(np.arange(4) % 2)[:, None]), r"expected a 1-D array"),
    (dict(X=np.zeros((4, 3)), y=np.array([0.0, 1, 0, 1])), r"expected integer class labels"),
    (dict(X=np.zeros((4, 3)), y=np.array([0, -1, 0, 1])), r"negative labels"),
    (dict(X=np.zeros((4, 3)), y=np.zeros(4, dtype=int)), r"2 <= K"),
    (dict(X=np.zeros((4, 3)), z=np.arange(4)), r"lacks \['y'\]"),
    (dict(X=np.array([["a", "b"]] * 4), y=np.arange(4) % 2), r"integer or float"),
])
def test_bad_npz_files_raise_a_helpful_data_error(tmp_path, arrays, pattern):
    """Each malformed file raises DataError saying what was wrong and what is allowed."""
    with pytest.raises(DataError, match=pattern):
        load_npz(_npz(tmp_path, **arrays))


def test_npz_size_limits_and_non_archives_are_refused(tmp_path):
    """Files over max_bytes (packed or unpacked) and plain pickles raise DataError naming the limit."""
    path = tmp_path / "big.npz"
    np.savez_compressed(path, X=np.zeros((2000, 100)), y=np.arange(2000) % 2)  # 1.6 MB unpacked
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match=r"unpacks to .* the limit is"):
        load_npz(str(path), max_bytes=1_000_000)
    with pytest.raises(DataError, match=r"the limit is"):
        load_npz(str(path), max_bytes=1_000)
    pickled = tmp_path / "evil.npz"
    pickled.write_bytes(pickle.dumps({"X": np.zeros((4, 2)), "y": np.arange(4) % 2}))
    with pytest.raises(DataError, match=r"not an .npz archive"):
        load_npz(str(pickled))
    with pytest.raises(DataError, match=r"does not exist"):
        load_npz(str(tmp_path / "absent.npz"))


def test_uploads_are_validated_before_they_are_kept(tmp_path):
    """A valid upload is kept once under its hash; an invalid one raises DataError and leaves nothing behind."""
    import io

    from resx.core.data import save_upload

    good = io.BytesIO()
    np.savez(good, X=np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32), y=np.arange(20) % 2)
    path = save_upload(good.getvalue(), tmp_path / "uploads")
    assert path.exists() and save_upload(good.getvalue(), tmp_path / "uploads") == path
    bad = io.BytesIO()
    np.savez(bad, X=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="unpickling"):
        save_upload(bad.getvalue(), tmp_path / "uploads")
    with pytest.raises(DataError, match="limit"):
        save_upload(good.getvalue(), tmp_path / "uploads", max_bytes=10)
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == [path.name]
