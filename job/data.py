"""Per-site data: disjoint, seeded partitions of a training set and of a test set.

`digits` (the default) is scikit-learn's bundled 8x8 handwritten digits, resized to 3x32x32 so the
CIFAR-10 network runs on it unchanged; it needs no download. `cifar10` reads CIFAR-10 from a local
directory through torchvision and never downloads it.
"""

import os

import numpy as np
import torch
from torch.utils.data import Subset, TensorDataset

DATASETS = ("digits", "cifar10")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SEED = 20240601
TEST_FRACTION = 0.2


class DataMissingError(RuntimeError):
    pass


def partition(n: int, site_index: int, num_sites: int, seed: int = SEED) -> np.ndarray:
    """Indices of part `site_index` of `num_sites` disjoint parts of range(n), shuffled with `seed`."""
    if not 0 <= site_index < num_sites:
        raise ValueError(f"site index {site_index} is outside 0..{num_sites - 1}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(np.array_split(order, num_sites)[site_index])


def _digits_tensors():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N,1,8,8 in [0,1]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.repeat(1, 3, 1, 1) - 0.5) / 0.5  # N,3,32,32 in [-1,1], like the CIFAR-10 transform
    y = torch.tensor(digits.target, dtype=torch.long)
    return x, y


def cifar10_present(data_dir: str) -> bool:
    return os.path.isfile(os.path.join(data_dir, "cifar-10-batches-py", "batches.meta"))


def require_cifar10(data_dir: str) -> None:
    if not cifar10_present(data_dir):
        raise DataMissingError(
            f"CIFAR-10 not found in {os.path.abspath(data_dir)}: download {CIFAR10_URL} and extract it there "
            f"(it must contain cifar-10-batches-py/), or use --dataset digits"
        )


def digits_indices(site_index: int, num_sites: int, n: int = 1797):
    """(train, test) sample indices of this site in the digits set: one seeded cut, then per-site parts."""
    n_test = int(n * TEST_FRACTION)
    order = np.random.default_rng(SEED + 1).permutation(n)
    test_idx, train_idx = order[:n_test], order[n_test:]
    return (
        train_idx[partition(len(train_idx), site_index, num_sites)],
        test_idx[partition(len(test_idx), site_index, num_sites)],
    )


def load_site_data(dataset: str, site_index: int, num_sites: int, data_dir: str = "data"):
    """(train, test) datasets of this site: disjoint from every other site's parts."""
    if dataset == "digits":
        x, y = _digits_tensors()
        train_part, test_part = digits_indices(site_index, num_sites, len(y))
        return TensorDataset(x[train_part], y[train_part]), TensorDataset(x[test_part], y[test_part])
    if dataset == "cifar10":
        import torchvision
        import torchvision.transforms as transforms

        require_cifar10(data_dir)
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
        train = torchvision.datasets.CIFAR10(root=data_dir, train=True, download=False, transform=transform)
        test = torchvision.datasets.CIFAR10(root=data_dir, train=False, download=False, transform=transform)
        return (
            Subset(train, partition(len(train), site_index, num_sites).tolist()),
            Subset(test, partition(len(test), site_index, num_sites).tolist()),
        )
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
