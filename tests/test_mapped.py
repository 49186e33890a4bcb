"""MappedImages against numpy's own indexing of the same array, on small .npy and raw files."""

import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from nocollapse.data.mapped import MappedImages
from nocollapse.data.prefetch import concatenate
from nocollapse.errors import UserError

SHAPE = (13, 3, 5, 7)  # H ≠ W, so a transposed read has the wrong shape or the wrong pixels


@pytest.fixture
def array() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=SHAPE, dtype=np.uint8)


@pytest.fixture
def npy(tmp_path, array) -> Path:
    path = tmp_path / "images.npy"
    np.save(path, array)
    return path


def same(got: torch.Tensor, want: np.ndarray) -> None:
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8 and got.is_contiguous()
    assert tuple(got.shape) == want.shape
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_from_npy_reads_the_header_of_either_version(tmp_path, array, version):
    path = tmp_path / "v.npy"
    with path.open("wb") as file:
        np.lib.format.write_array(file, array, version=version)
    images = MappedImages.from_npy(path)
    assert images.shape == SHAPE and len(images) == SHAPE[0] and images.dtype == torch.uint8
    same(images.load(), array)


@pytest.mark.parametrize("index", [
    [5, 0, 5, 12, 3, 3],  # any order, with repeats
    [12, 11, 10, 9],  # consecutive, backwards
    [0, 1, 2, 7, 8, 2],  # runs that are merged into one read, and a repeat across runs
    [-1, -13, 4],  # negative indices count from the end
    [6],
])
def test_integer_indices_as_tensor_array_or_list(npy, array, index):
    images = MappedImages.from_npy(npy)
    want = array[index]
    same(images[torch.tensor(index)], want)
    same(images[np.array(index, dtype=np.int32)], want)
    same(images[index], want)


@pytest.mark.parametrize("index", [
    slice(None), slice(2, 9), slice(None, None, 2), slice(1, 12, 3), slice(None, None, -1), slice(10, 2, -2),
    slice(-3, None), slice(5, 5), slice(100, None), slice(-100, 3), slice(8, 3),
])
def test_slices(npy, array, index):
    same(MappedImages.from_npy(npy)[index], array[index])


def test_integers_give_one_image(npy, array):
    images = MappedImages.from_npy(npy)
    for i in (0, 12, -1, -13, np.int64(4)):
        same(images[i], array[i])  # (C, H, W)


@pytest.mark.parametrize("index", [torch.tensor([], dtype=torch.int64), np.array([], dtype=np.int64)])
def test_empty_index(npy, index):
    same(MappedImages.from_npy(npy)[index], np.empty((0, *SHAPE[1:]), dtype=np.uint8))


@pytest.mark.parametrize("index", [13, -14, [0, 13], torch.tensor([-14, 0]), np.array([3, 99])])
def test_out_of_range(npy, index):
    with pytest.raises(IndexError, match="out of range for 13 images"):
        MappedImages.from_npy(npy)[index]


@pytest.mark.parametrize("index", [torch.tensor([0.0, 1.0]), np.array([[0, 1]]), torch.tensor([[0], [1]])])
def test_index_that_is_not_a_1d_integer_array(npy, index):
    with pytest.raises(IndexError, match="1-D array of integers"):
        MappedImages.from_npy(npy)[index]


def test_results_are_independent_writable_copies(npy, array):
    images = MappedImages.from_npy(npy)
    for batch in (images[2:4], images[[2, 3]], images[2]):
        batch.fill_(0)  # must neither fail (read-only memory) nor change the file
    same(images.load(), array)


def test_column_major_layout_after_a_header(tmp_path, array):
    """CWH: each channel stored transposed (MATLAB order, as STL-10), from ``offset`` after other bytes."""
    path = tmp_path / "raw.bin"
    path.write_bytes(b"header!" + np.ascontiguousarray(array.transpose(0, 1, 3, 2)).tobytes() + b"trailing bytes are ignored")
    images = MappedImages(path, offset=7, shape=SHAPE, layout="CWH")
    same(images.load(), array)
    same(images[[9, 1, 9]], array[[9, 1, 9]])
    same(images[::4], array[::4])
    same(images[-2], array[-2])


def test_row_major_layout_of_a_raw_file(tmp_path, array):
    path = tmp_path / "raw.bin"
    path.write_bytes(b"xyz" + array.tobytes())
    same(MappedImages(path, offset=3, shape=SHAPE)[[4, 2]], array[[4, 2]])


def test_bad_arguments(tmp_path, npy):
    with pytest.raises(ValueError, match="layout must be one of"):
        MappedImages(npy, offset=0, shape=SHAPE, layout="HWC")
    with pytest.raises(ValueError, match=r"shape must be \(N, C, H, W\)"):
        MappedImages(npy, offset=0, shape=(13, 3, 0, 7))
    for bad in (np.zeros((2, 3, 4, 5), dtype=np.float32), np.zeros((2, 4, 5), dtype=np.uint8),
                np.asfortranarray(np.zeros((2, 3, 4, 5), dtype=np.uint8))):
        np.save(tmp_path / "bad.npy", bad)
        with pytest.raises(ValueError, match="expected a C-order"):
            MappedImages.from_npy(tmp_path / "bad.npy")


def test_pickle_round_trip_after_use(npy, array):
    images = MappedImages.from_npy(npy)
    same(images[[1, 2]], array[[1, 2]])  # opens the descriptor, which must not travel
    copy = pickle.loads(pickle.dumps(images))
    assert copy.shape == images.shape and copy.path == images.path and copy.layout == images.layout
    same(copy[[12, 0]], array[[12, 0]])
    del images  # closing the original's descriptor leaves the copy working
    same(copy[5], array[5])


def test_unpickled_in_another_process(tmp_path, npy, array):
    images = MappedImages.from_npy(npy)
    images[0]
    (tmp_path / "images.pickle").write_bytes(pickle.dumps(images))
    script = ("import pickle, sys; images = pickle.load(open(sys.argv[1], 'rb')); "
              "sys.stdout.buffer.write(images[[7, 3, 7]].numpy().tobytes())")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "images.pickle")], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == array[[7, 3, 7]].tobytes()


def test_reads_from_many_threads_at_once(tmp_path):
    """One shared descriptor, positional reads: concurrent batches never see each other's rows."""
    array = np.random.default_rng(1).integers(0, 256, size=(200, 3, 16, 24), dtype=np.uint8)
    np.save(tmp_path / "many.npy", array)
    images = MappedImages.from_npy(tmp_path / "many.npy")

    def read(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        for _ in range(30):
            index = rng.integers(0, 200, size=int(rng.integers(1, 40)))
            start = int(rng.integers(0, 190))
            if not (np.array_equal(images[index].numpy(), array[index])
                    and np.array_equal(images[start : start + 10].numpy(), array[start : start + 10])):
                return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(read, range(16)))


def test_file_truncated_after_construction_is_an_error_naming_it(npy, array):
    images = MappedImages.from_npy(npy)
    os.truncate(npy, images.offset + 2 * images.row_bytes + 10)  # two whole rows and part of the third
    same(images[1], array[1])  # what is still there reads fine
    for index in (2, slice(0, 3), [0, 12], slice(None, None, 5)):
        with pytest.raises(UserError, match=rf"{npy}.*truncated"):
            images[index]
    with pytest.raises(UserError, match="truncated"):
        images.load()


def test_splits_concatenated_read_as_the_stacked_array(npy, array):
    """A split in memory followed by one on disk (unlabeled + train, as STL-10's protocol) reads as np.concatenate."""
    extra = np.random.default_rng(1).integers(0, 256, size=(4, *SHAPE[1:]), dtype=np.uint8)
    both, want = concatenate([torch.from_numpy(extra), MappedImages.from_npy(npy)]), np.concatenate([extra, array])
    assert both.shape == want.shape and len(both) == len(want)
    for index in (0, 5, -1, slice(2, 9), slice(None, None, 3), [16, 0, 4, 3], np.array([7, 7, 1])):
        same(both[index], want[index])
    same(both[torch.tensor([3, 4, 12])], want[[3, 4, 12]])
    same(both[torch.tensor(5)], want[5])
    same(both[np.int64(-2)], want[-2])
    mask = np.arange(len(want)) % 3 == 0
    same(both[torch.from_numpy(mask)], want[mask])
    same(both.load(), want)
    with pytest.raises(IndexError):
        both[[len(want)]]
