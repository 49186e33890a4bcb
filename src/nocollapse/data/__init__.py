"""Datasets as in-memory uint8 tensors: Fashion-MNIST (IDX), CIFAR-10/100 (safe pickles), image folders,
and verified downloads. Pillow is imported only by the image-folder reader."""

from nocollapse.data.dataset import DATA_DIR_ENV, ImageDataset
from nocollapse.data.download import download_dataset
from nocollapse.data.idx import read_idx, write_idx
from nocollapse.data.registry import DATASETS, load_dataset

__all__ = ["DATASETS", "DATA_DIR_ENV", "ImageDataset", "download_dataset", "load_dataset", "read_idx", "write_idx"]
