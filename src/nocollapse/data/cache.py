"""An image folder decoded once: a uint8 ``.npy`` array at the run's image size plus a JSON index, reused by later runs.

Decoding JPEGs is most of the cost of reading a photo collection, and it is the same work every epoch and
every run; here it is done once, over all the cores, into ``CACHE/<key>/images.npy`` ((N, C, S, S) uint8,
numpy's own format, so ``numpy.load(..., mmap_mode="r")`` reads it too) and ``index.json`` (the files with
their sizes and modification times, the image size and channels). Training reads rows from the array
(:class:`~nocollapse.data.mapped.MappedImages`); the set never has to fit in memory.

A cache is used only when its index matches the folder as it is now (the same files, sizes, mtimes,
image size and channels, and the decoder's settings) and the array has the size the index implies: a changed folder or setting
rebuilds it, a truncated array too. A build writes to temporary names, removes the old index, then renames
the array and finally the index into place, so an interrupted or failed build never leaves a cache that a
later run would use, and a build that fails before its renames (a full disk) leaves the previous cache intact.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from nocollapse.data.mapped import MappedImages
from nocollapse.errors import UserError
from nocollapse.progress import Progress

CACHE_VERSION = 1
CACHE_DIR_ENV = "NOCOLLAPSE_CACHE_DIR"
_CHUNK = 64  # images per task sent to a decoding process: large enough to amortise the hand-over
_CANNOT_RESERVE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}  # posix_fallocate unsupported here
_TEMPORARY = re.compile(r"(images\.npy|index\.json)\.(?P<host>.+)\.(?P<pid>\d+)\.tmp(\.compact)?")  # a build's files, by owner


def default_cache_dir() -> Path:
    """``$NOCOLLAPSE_CACHE_DIR``, else ``$XDG_CACHE_HOME/nocollapse``, else ``~/.cache/nocollapse``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nocollapse"


def file_records(root: Path, files: Sequence[Path]) -> list[list[Any]]:
    """``[relative path, size, mtime_ns, ctime_ns]`` of each file: what says that a folder changed since its cache was built."""
    records = []
    for path in files:
        try:
            stat = path.stat()
            # ctime too: a chmod that makes an unreadable file readable changes it, not the mtime.
            records.append([path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns])
        except OSError:  # a broken link: listed (its decode fails and is reported), with nothing to compare
            records.append([path.relative_to(root).as_posix(), -1, -1, -1])
    return records


def folder_digest(records: dict[str, list[list[Any]]], settings: dict[str, Any] | None = None) -> str:
    """One hash of every split's :func:`file_records` (the channel count depends on all of them) and of the decoder's
    ``settings`` (JSON values): what a file decodes to, or whether it decodes at all, depends on them too."""
    return hashlib.sha256(json.dumps({"files": records, "settings": settings or {}}, sort_keys=True).encode()).hexdigest()


def cached_images(root: Path, split: str, files: Sequence[Path], records: list[list[Any]], *, digest: str, image_size: int,
                  choose_mode: Callable[[], str], cache_dir: Path, decode: Callable[[Path, int, str], np.ndarray],
                  reason: Callable[[Path, BaseException], str], errors: tuple[type[BaseException], ...], progress: bool = True,
                  log: Callable[[str], object] = print) -> tuple[MappedImages, list[int], dict[str, str]]:
    """The decoded images of ``files`` (of ``root/split``, described by ``records``) from the cache, built first
    if missing or stale.

    ``digest`` (:func:`folder_digest`) stands for the whole folder as it is now; a cache built from another
    state is rebuilt. ``choose_mode()`` gives the Pillow mode, "L" or "RGB", when a build needs it (it reads
    every image header of the folder; a valid cache remembers it). ``decode(path, image_size, mode)`` gives
    one (S, S) or (S, S, 3) uint8 image, raising one of ``errors`` for an unreadable file, described by
    ``reason(path, error)``. Returns the images, the positions in ``files`` of their rows (every file that
    decoded, in order) and ``{relative path: reason}`` for the rest.
    """
    key = hashlib.sha256(f"{root.resolve()}\0{split}".encode()).hexdigest()[:16]
    folder = cache_dir / f"{split}-{key}-{image_size}px"
    expected = {"version": CACHE_VERSION, "root": str(root.resolve()), "split": split, "image_size": image_size, "digest": digest}
    index_path, array_path = folder / "index.json", folder / "images.npy"
    cached = _read_index(index_path)
    if cached is not None and {k: cached.get(k) for k in expected} == expected:
        try:
            images = MappedImages.from_npy(array_path)
            rows = cached["rows"]
            channels = 1 if cached["mode"] == "L" else 3
            if images.shape == (len(rows), channels, image_size, image_size) and array_path.stat().st_size == images.offset + len(rows) * images.row_bytes:
                return images, rows, cached["unreadable"]
        except (OSError, ValueError, KeyError):
            pass  # damaged: rebuilt below
        log(f"cache {folder} is damaged (truncated or unreadable): rebuilding it")
    elif cached is not None:
        log(f"{root / split} changed since its cache was built (files, sizes, dates or settings): decoding it again")
    mode = choose_mode()
    rows, unreadable = _build(folder, files, records, {**expected, "mode": mode, "files": records}, channels=1 if mode == "L" else 3,
                              decode=decode, reason=reason, errors=errors, progress=progress, log=log)
    return MappedImages.from_npy(array_path), rows, unreadable


def _read_index(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _decode_chunk(decode: Callable[[Path, int, str], np.ndarray], errors: tuple[type[BaseException], ...],
                  reason: Callable[[Path, BaseException], str], paths: list[Path], first_row: int, array_path: Path, image_size: int,
                  mode: str) -> list[str | None]:
    """Decode ``paths`` into rows ``first_row, first_row + 1, ...`` of the array at ``array_path`` (run in a decoding
    process); for each, None or the reason it could not be read. The pixels go straight into the shared file:
    sending them back to the parent to copy cost more than the decoding on 2 cores (the build ran at 0.45× a
    one-process loop that way)."""
    array = np.load(array_path, mmap_mode="r+")
    out: list[str | None] = []
    for row, path in enumerate(paths, start=first_row):
        try:
            image = decode(path, image_size, mode)
            array[row] = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
            out.append(None)
        except errors as error:
            out.append(reason(path, error))
    # No flush: the rows are in the page cache, where every process sees them; the parent syncs the file once at the end
    # (a flush per chunk waited for the disk every 64 images).
    return out


def _build(folder: Path, files: Sequence[Path], records: list[list[Any]], index: dict[str, Any], *, channels: int,
           decode: Callable[[Path, int, str], np.ndarray], reason: Callable[[Path, BaseException], str],
           errors: tuple[type[BaseException], ...], progress: bool, log: Callable[[str], object]) -> tuple[list[int], dict[str, str]]:
    size = index["image_size"]
    row_bytes = channels * size * size
    needed = len(files) * row_bytes + 4096
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(folder)  # before the space check: what they hold may be the space that is missing
        free = shutil.disk_usage(folder).free
    except OSError as error:
        raise UserError(f"cannot create the image cache in {folder} ({error.strerror or error}); set data.cache_dir to a writable "
                        f"folder with {_size(needed)} free") from None
    if free < needed:
        raise UserError(f"the image cache of {len(files)} images at {size} px needs {_size(needed)} in {folder.parent}, which has "
                        f"{_size(free)} free; free space or set data.cache_dir to another disk")
    owner = f"{socket.gethostname()}.{os.getpid()}"
    temporary_array, temporary_index = folder / f"images.npy.{owner}.tmp", folder / f"index.json.{owner}.tmp"
    log(f"decoding {len(files)} images of {folder.name.split('-')[0]} to {size}×{size} into {folder} (once; later runs reuse it)")
    started = time.perf_counter()
    try:
        array = np.lib.format.open_memmap(temporary_array, mode="w+", dtype=np.uint8, shape=(len(files), channels, size, size))
        del array  # the decoding processes write the rows
        _reserve(temporary_array)
        bar = Progress(len(files), "decode", enabled=progress)
        rows: list[int] = []
        unreadable: dict[str, str] = {}
        chunks = [list(files[start : start + _CHUNK]) for start in range(0, len(files), _CHUNK)]
        workers = min(os.cpu_count() or 1, max(1, len(chunks)))
        pool = ProcessPoolExecutor(workers) if workers > 1 else _InProcess()
        try:
            tasks = [(decode, errors, reason, chunk, number * _CHUNK, temporary_array, size, index["mode"]) for number, chunk in enumerate(chunks)]
            results = pool.map(_decode_chunk, *zip(*tasks))
            position = 0
            for chunk_results in results:
                for result in chunk_results:
                    if result is None:
                        rows.append(position)
                    else:
                        unreadable[records[position][0]] = result
                    position += 1
                elapsed = time.perf_counter() - started
                bar.update(len(chunk_results), **{"img/s": f"{position / max(elapsed, 1e-9):.0f}"})
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C or a failure: not after every queued image is decoded
            raise
        pool.shutdown()
        bar.close()
        _compact(temporary_array, rows)
        _sync(temporary_array)  # on disk before it is named: a crash after the renames must not leave an index over lost rows
        temporary_index.write_text(json.dumps({**index, "rows": rows, "unreadable": unreadable}))
        (folder / "index.json").unlink(missing_ok=True)  # from here until the last rename no index exists: never a mismatched pair
        os.replace(temporary_array, folder / "images.npy")
        os.replace(temporary_index, folder / "index.json")
    except OSError as error:
        _remove(temporary_array, temporary_index)
        raise UserError(f"writing the image cache in {folder} failed ({error.strerror or error}); it needs {_size(needed)}. "
                        "Free space or set data.cache_dir to another disk; no half-written cache is kept") from None
    except BaseException:
        _remove(temporary_array, temporary_index)
        raise
    seconds = time.perf_counter() - started
    log(f"decoded {len(rows)} images in {seconds:.1f}s ({len(files) / max(seconds, 1e-9):.0f} img/s), {_size(len(rows) * row_bytes)} on disk")
    return rows, unreadable


def _remove_abandoned(folder: Path) -> None:
    """The temporary files of builds on this host whose process is gone (killed): left, they would fill the disk. A build
    in progress, here or on another host sharing the folder, keeps its files."""
    host = socket.gethostname()
    for path in folder.glob("*.tmp*"):
        match = _TEMPORARY.fullmatch(path.name)
        if match and match["host"] == host and not _alive(int(match["pid"])):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _reserve(path: Path) -> None:
    """Allocate the blocks of the (sparse) file at ``path`` now, so that a disk too full for it fails here with an
    error, not later with a SIGBUS in the process that writes a row into a page with no block behind it."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size)
        except OSError as error:
            if error.errno not in _CANNOT_RESERVE:
                raise  # ENOSPC, EDQUOT, EFBIG: the build would fail later, as a SIGBUS
            # A file system that cannot allocate ahead: writes allocate as they come.


def _sync(path: Path) -> None:
    with open(path, "r+b") as file:
        os.fsync(file.fileno())


def _remove(temporary_array: Path, temporary_index: Path) -> None:
    """The files of a build that did not finish: the array, its compacted copy and the index."""
    for path in (temporary_array, temporary_array.with_name(temporary_array.name + ".compact"), temporary_index):
        path.unlink(missing_ok=True)


def _compact(path: Path, rows: list[int]) -> None:
    """Rewrite the array of ``path`` as its ``rows`` (the files that decoded; the others left their rows empty)."""
    full = np.load(path, mmap_mode="r")
    if full.shape[0] == len(rows):
        return
    compacted = path.with_name(path.name + ".compact")
    kept = np.lib.format.open_memmap(compacted, mode="w+", dtype=np.uint8, shape=(len(rows), *full.shape[1:]))
    _reserve(compacted)
    for start in range(0, len(rows), 4096):
        kept[start : start + 4096] = full[rows[start : start + 4096]]
    kept.flush()
    del kept, full
    os.replace(compacted, path)


class _InProcess:
    """The interface of ProcessPoolExecutor's ``map`` and ``shutdown`` without processes (one core, or one chunk)."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None

    @staticmethod
    def map(function: Callable[..., Any], *iterables: Any) -> Any:
        return map(function, *iterables)


def _size(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
