"""The offline dataset and its per-site partitions."""

import numpy as np
import pytest
import torch

from fedtrack.job.data import DataMissingError, digits_indices, load_site_data, partition
from fedtrack.job.model import SimpleNetwork


def test_partitions_are_disjoint_cover_everything_and_are_seeded():
    parts = [partition(1000, i, 3) for i in range(3)]
    assert sum(len(p) for p in parts) == 1000
    assert len(np.unique(np.concatenate(parts))) == 1000
    assert np.array_equal(partition(1000, 1, 3), parts[1])
    assert not np.array_equal(partition(1000, 1, 3, seed=7), parts[1])
    with pytest.raises(ValueError):
        partition(10, 2, 2)


def test_digits_sites_get_disjoint_train_and_test_parts_in_cifar_shape():
    parts = [idx for site in range(2) for idx in digits_indices(site, 2)]
    assert sum(len(p) for p in parts) == 1797
    assert len(np.unique(np.concatenate(parts))) == 1797  # every sample in exactly one part
    (tr1, te1), (tr2, _) = load_site_data("digits", 0, 2), load_site_data("digits", 1, 2)
    assert len(tr1) == len(parts[0]) and len(te1) == len(parts[1]) and len(tr2) == len(parts[2])
    x, y = tr1[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= int(y) <= 9
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(load_site_data("digits", 0, 2)[0].tensors[0], tr1.tensors[0])  # deterministic
    assert SimpleNetwork()(torch.stack([tr1[i][0] for i in range(4)])).shape == (4, 10)


def test_cifar10_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataMissingError, match="CIFAR-10 not found in .*cifar-10-python.tar.gz"):
        load_site_data("cifar10", 0, 2, str(tmp_path))


def test_cifar10_is_read_through_torchvision_and_partitioned(tmp_path, monkeypatch):
    """A tiny CIFAR-10 in the real on-disk format (python pickles); only the checksums are the fake's."""
    import hashlib
    import pickle

    import torchvision

    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    rng = np.random.default_rng(0)
    sums = {}
    for name, n in [(f"data_batch_{i}", 10) for i in range(1, 6)] + [("test_batch", 20)]:
        blob = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        (batches / name).write_bytes(pickle.dumps(blob))
        sums[name] = hashlib.md5((batches / name).read_bytes()).hexdigest()
    meta = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]})
    (batches / "batches.meta").write_bytes(meta)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list", [[f"data_batch_{i}", sums[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setitem(torchvision.datasets.CIFAR10.meta, "md5", hashlib.md5(meta).hexdigest())

    (tr1, te1), (tr2, te2) = (load_site_data("cifar10", i, 2, str(tmp_path)) for i in range(2))
    assert (len(tr1), len(tr2), len(te1), len(te2)) == (25, 25, 10, 10)
    assert not set(tr1.indices) & set(tr2.indices) and not set(te1.indices) & set(te2.indices)
    x, y = tr1[0]
    assert x.shape == (3, 32, 32) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
