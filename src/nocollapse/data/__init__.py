"""Datasets as uint8 images, in memory or read from a file on demand: Fashion-MNIST (IDX), CIFAR-10/100 (safe
pickles), STL-10 (its binary files, memory-mapped), image folders (labelled or not, decoded once into a cache),
a batch prefetcher, and verified downloads. Pillow is imported only by the image-folder reader."""

from nocollapse.data.dataset import DATA_DIR_ENV, ImageDataset
from nocollapse.data.download import download_dataset
from nocollapse.data.idx import read_idx, write_idx
from nocollapse.data.mapped import MappedImages
from nocollapse.data.prefetch import Prefetcher
from nocollapse.data.registry import DATASETS, SPLITS, dataset_splits, load_dataset

__all__ = ["DATASETS", "DATA_DIR_ENV", "SPLITS", "ImageDataset", "MappedImages", "Prefetcher", "dataset_splits", "download_dataset",
           "load_dataset", "read_idx", "write_idx"]
