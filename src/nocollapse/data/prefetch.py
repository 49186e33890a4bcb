"""Batches read ahead of the training step, in a background thread: a step never waits for the disk.

The rows of step s + 1 (and s + 2) are read while step s computes; reading a :class:`MappedImages`
releases the GIL, so the two overlap even on one core's worth of Python. Batches come out in step
order, exactly those that ``index_of(step)`` names, so a run that streams its data trains on the same
batches as one that holds it in memory, and a resumed run on those of an uninterrupted one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor


class Prefetcher:
    """``get(step)`` gives ``images[index_of(step)]`` for steps ``start, start + 1, ... < stop`` in order,
    each read ``depth`` steps ahead by a daemon thread (pinned, for a fast copy to a GPU, with ``pin``)."""

    def __init__(self, images: Any, index_of: Callable[[int], Tensor], start: int, stop: int, *, pin: bool = False, depth: int = 2) -> None:
        self._images, self._index_of, self._pin = images, index_of, pin
        self._next = start
        self._ready: queue.Queue[tuple[int, Tensor | BaseException]] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(start, stop), name="nocollapse-prefetch", daemon=True)
        self._thread.start()

    def _read(self, start: int, stop: int) -> None:
        for step in range(start, stop):
            try:
                batch: Tensor | BaseException = self._images[self._index_of(step)]
                if self._pin:
                    batch = batch.pin_memory()
            except BaseException as error:  # noqa: BLE001 - handed to the training thread, which raises it
                batch = error
            while not self._stopped.is_set():
                try:
                    self._ready.put((step, batch), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stopped.is_set() or isinstance(batch, BaseException):
                return

    def get(self, step: int) -> Tensor:
        """The batch of ``step``, which must be the step after the last one asked for."""
        if step != self._next:
            raise RuntimeError(f"prefetcher: asked for step {step}, but the next batch read is for step {self._next}")
        read_step, batch = self._ready.get()
        self._next += 1
        if isinstance(batch, BaseException):
            raise batch
        assert read_step == step
        return batch

    def close(self) -> None:
        """Stop reading ahead (the thread ends within its current read)."""
        self._stopped.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def concatenate(parts: list[Any]) -> Any:
    """One image source of several (splits), indexed as if stacked: a tensor when all are tensors."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(part, Tensor) for part in parts):
        return torch.cat(parts)
    return ConcatenatedImages(parts)


class ConcatenatedImages:
    """Several image sources (tensors or MappedImages) read as one: row i of the second follows the first's last."""

    def __init__(self, parts: list[Any]) -> None:
        shapes = {tuple(part.shape[1:]) for part in parts}
        if len(shapes) != 1:
            raise ValueError(f"the splits' images differ in shape: {sorted(shapes)}")
        self.parts = parts
        self.starts = torch.tensor([0] + [len(part) for part in parts]).cumsum(0)
        self.shape = (int(self.starts[-1]), *next(iter(shapes)))
        self.dtype = torch.uint8

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> Tensor:
        """The images ``index`` selects (an int, a slice, or a 1-D integer or boolean tensor, array or list) as one tensor."""
        if isinstance(index, (torch.Tensor, np.ndarray)) and index.ndim == 0 and index.dtype not in (torch.bool, np.bool_):
            index = int(index)  # a 0-d integer tensor selects one image, as an int does
        if isinstance(index, (int, np.integer)):
            return self[torch.tensor([int(index)])][0]
        # Through a tensor's own indexing: negative rows, masks and out-of-range errors as a tensor has them.
        rows = torch.arange(len(self))[index if isinstance(index, slice) else torch.as_tensor(index).cpu()].contiguous()
        which = torch.bucketize(rows, self.starts[1:], right=True)  # the part each row falls in
        out = torch.empty((len(rows), *self.shape[1:]), dtype=torch.uint8)
        for part_index, part in enumerate(self.parts):
            chosen = (which == part_index).nonzero().flatten()
            if len(chosen):
                out[chosen] = part[rows[chosen] - self.starts[part_index]]
        return out

    def load(self) -> Tensor:
        return torch.cat([part if isinstance(part, Tensor) else part.load() for part in self.parts])
