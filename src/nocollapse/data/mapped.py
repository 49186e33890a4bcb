"""Images in a file, read row by row on demand: datasets larger than memory.

A :class:`MappedImages` is N fixed-size uint8 images stored back to back in one file (numpy's ``.npy``
format, or a raw binary such as STL-10's). ``images[index]`` reads just those rows with positional reads
(``os.pread``), so a training step costs the bytes of its batch, the process's memory stays the size of a
batch whatever the file's, and the operating system's page cache (not counted in the process's memory)
keeps the rows that fit. Reads release the GIL, so a background thread can fetch the next batch while
the step computes (:class:`~nocollapse.data.prefetch.Prefetcher`). Positional reads share one file
descriptor between threads safely; a copy sent to another process reopens the file there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nocollapse.errors import UserError

LAYOUTS = ("CHW", "CWH")  # how one image's bytes are ordered: row-major per channel, or column-major (STL-10)


class MappedImages:
    """(N, C, H, W) uint8 images stored in ``path`` from byte ``offset``, one image after another.

    ``layout`` "CHW" stores each channel row-major (numpy's C order); "CWH" column-major (each channel
    transposed, as STL-10's MATLAB-written files). Rows come back as (B, C, H, W) either way.
    """

    def __init__(self, path: str | os.PathLike, *, offset: int, shape: tuple[int, int, int, int], layout: str = "CHW") -> None:
        self._fd: int | None = None  # opened on the first read, in the process that reads
        self._pid = -1
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if len(shape) != 4 or min(shape[1:]) < 1 or shape[0] < 0:
            raise ValueError(f"shape must be (N, C, H, W) with C, H, W >= 1, got {shape}")
        self.path, self.offset, self.layout = Path(path), int(offset), layout
        self.shape = tuple(int(d) for d in shape)
        self.dtype = torch.uint8
        self.row_bytes = self.shape[1] * self.shape[2] * self.shape[3]

    @classmethod
    def from_npy(cls, path: str | os.PathLike) -> MappedImages:
        """The (N, C, H, W) uint8 array of a ``.npy`` file (C order), its rows located from the header."""
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(file)
            offset = file.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4:
            raise ValueError(f"{path}: expected a C-order (N, C, H, W) uint8 array, got {dtype} {shape}{' (Fortran order)' if fortran else ''}")
        return cls(path, offset=offset, shape=shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"MappedImages({str(self.path)!r}, shape={self.shape}, layout={self.layout!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}  # a descriptor means nothing in another process

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0)), os.getpid()
        return self._fd

    def __getitem__(self, index: Any) -> torch.Tensor:
        """The rows ``index`` (an int, a slice, or a 1-D integer tensor, array or list, or a boolean mask of the rows)
        as a contiguous uint8 tensor.

        A tuple indexes further axes as a tensor would (``images[0, :, 4, 4]``, ``images[rows, 0]``): only the rows
        its first entry selects are read. ``None``, ``...`` or a bool first read every image.
        """
        if isinstance(index, (torch.Tensor, np.ndarray)) and index.ndim == 0 and index.dtype not in (torch.bool, np.bool_):
            index = int(index)  # a 0-d integer tensor selects one image, as an int does
        if isinstance(index, tuple):
            return self._get_tuple(index)
        if index is None or index is Ellipsis or isinstance(index, bool):
            return self.load()[index].contiguous()  # new axes, or the whole set: a tensor's rules
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._read_run(start, max(stop - start, 0))
            rows = np.arange(start, stop, step)
        elif isinstance(index, (int, np.integer)):
            position = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= position < len(self):
                raise IndexError(f"index {int(index)} is out of range for {len(self)} images")
            return self._read_run(position, 1)[0]
        else:
            if isinstance(index, torch.Tensor):
                rows = index.cpu().numpy()
            else:
                rows = np.asarray([int(i) if isinstance(i, torch.Tensor) else i for i in index], dtype=np.int64 if len(index) == 0 else None)
            if rows.dtype == np.bool_ and rows.shape == (len(self),):  # a mask, as a tensor takes it
                rows = np.flatnonzero(rows)
            if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
                raise IndexError(f"index images with a 1-D array of integers, got {rows.dtype} of shape {rows.shape}")
            rows = np.where(rows < 0, rows + len(self), rows)
            if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
                raise IndexError(f"indices span {int(rows.min())}..{int(rows.max())}, out of range for {len(self)} images")
        out = np.empty((len(rows), self.row_bytes), dtype=np.uint8)
        fd = self._descriptor()
        # In sorted order, neighbouring rows become one read and the file is walked forwards.
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1  # where a run of consecutive rows ends
        for run in np.split(np.arange(len(rows)), breaks) if len(rows) else []:
            first_row, count = int(sorted_rows[run[0]]), len(run)
            targets = order[run]
            if count == 1 or (np.diff(targets) == 1).all():  # into consecutive rows of the batch: read in place
                _pread_into(fd, out[targets[0] : targets[0] + count], self.offset + first_row * self.row_bytes, self.path)
            else:  # the run lands in scattered rows of the batch (a shuffled index): read it whole, then place its rows
                data = np.empty((count, self.row_bytes), dtype=np.uint8)
                _pread_into(fd, data, self.offset + first_row * self.row_bytes, self.path)
                out[targets] = data
        return self._as_images(out)

    def _get_tuple(self, index: tuple[Any, ...]) -> torch.Tensor:
        """``images[first, *rest]``: the rows ``first`` selects, read alone, then ``rest`` applied as a tensor applies it.

        ``first`` is replaced by the same kind of index into the rows read (0 into one row, every row of a slice,
        0..B-1 for B listed rows), so the result, including how torch places the axes of several index arrays,
        is that of the whole tensor.
        """
        if not index:
            return self.load()
        first, rest = index[0], index[1:]
        if isinstance(first, (torch.Tensor, np.ndarray)) and first.ndim == 0 and first.dtype not in (torch.bool, np.bool_):
            first = int(first)
        if first is None or first is Ellipsis or isinstance(first, bool):
            return self.load()[index].contiguous()
        if isinstance(first, (int, np.integer)):
            rows, within = self[first][None], 0
        elif isinstance(first, slice):
            rows, within = self[first], slice(None)
        else:
            rows = self[first]
            within = torch.arange(len(rows))
        return rows[(within, *rest)].contiguous()

    def _read_run(self, start: int, count: int) -> torch.Tensor:
        rows = np.empty((count, self.row_bytes), dtype=np.uint8)
        # Straight into the array: a whole set read through bytes would hold it twice at the peak.
        _pread_into(self._descriptor(), rows, self.offset + start * self.row_bytes, self.path)
        return self._as_images(rows)

    def _as_images(self, rows: np.ndarray) -> torch.Tensor:
        n, (c, h, w) = rows.shape[0], self.shape[1:]
        if self.layout == "CHW":
            return torch.from_numpy(rows.reshape(n, c, h, w))
        return torch.from_numpy(np.ascontiguousarray(rows.reshape(n, c, w, h).transpose(0, 1, 3, 2)))

    def load(self) -> torch.Tensor:
        """Every image, read whole into memory."""
        return self[0 : len(self)]


def _pread_into(fd: int, rows: np.ndarray, offset: int, path: Path) -> None:
    """Fill the contiguous uint8 ``rows`` from byte ``offset``; a file cut short (truncated since it was checked) or a failed
    read is an error naming it."""
    buffer = memoryview(rows.reshape(-1))
    done, size = 0, len(buffer)
    while done < size:
        try:
            count = os.preadv(fd, [buffer[done:]], offset + done)
        except OSError as error:  # EIO from a failing disk, a network file system gone away
            raise UserError(f"reading {path} failed ({error.strerror or error}) at byte {offset + done}; check the disk, or delete the "
                            "file so that it is rebuilt (a cache) or fetched again (a dataset)") from error
        if not count:
            raise UserError(f"{path} ends at byte {offset + done}, before the {size} bytes wanted at {offset}: the file was truncated; "
                            "delete it so that it is rebuilt (a cache) or fetched again (a dataset)")
        done += count
