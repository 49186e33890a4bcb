"""The IDX file format of MNIST and Fashion-MNIST (unsigned-byte arrays), gzip-compressed or raw.

Layout (big-endian): two zero bytes, a type byte (0x08 = unsigned byte), a byte with the number of
dimensions D, then D 4-byte sizes, then the data in row-major order. Hence the magic numbers 2049
(0x00000801, labels, D = 1) and 2051 (0x00000803, images, D = 3).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from nocollapse.errors import UserError

UBYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"
_REDOWNLOAD = "delete it and download it again (`nocollapse download fashion-mnist --to DIR`)"


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """The file's contents, gunzipped when it starts with the gzip magic bytes (whatever its name says)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError; a cut-off stream is EOFError
        raise UserError(f"{path} is not a valid gzip file ({error}): the file is truncated or corrupt; {_REDOWNLOAD}") from None


def parse_idx(data: bytes, *, ndim: int | None = None, source: str = "IDX data") -> np.ndarray:
    """Parse an unsigned-byte IDX array from ``data``; ``ndim`` is the number of dimensions required.

    Returns a writable uint8 array of the header's shape. Raises UserError naming ``source`` when the magic
    number, type byte, number of dimensions or data length is wrong.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        head = data[:4].hex() or "empty"
        raise UserError(f"{source} is not an IDX file (it starts {head}; IDX starts 000008 then the number of dimensions): "
                        f"wrong file, or corrupt; {_REDOWNLOAD}")
    if data[2] != UBYTE:
        raise UserError(f"{source}: IDX type byte is 0x{data[2]:02X}, expected 0x08 (unsigned byte); "
                        "this is not an image or label file of this dataset")
    dims = data[3]
    if ndim is not None and dims != ndim:
        expected = 2048 + ndim
        raise UserError(f"{source}: magic number {int.from_bytes(data[:4], 'big')} says {dims} dimension(s), expected {expected} "
                        f"({ndim} dimension(s)); images and labels files swapped?")
    header = 4 + 4 * dims
    if len(data) < header:
        raise UserError(f"{source}: file ends inside the IDX header ({len(data)} bytes); {_REDOWNLOAD}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=dims, offset=4))
    expected_bytes = int(np.prod(shape, dtype=np.int64))
    got_bytes = len(data) - header
    if got_bytes != expected_bytes:
        what = "truncated" if got_bytes < expected_bytes else "longer than its header says"
        raise UserError(f"{source}: header says shape {shape} = {expected_bytes} bytes of data, the file holds {got_bytes}; "
                        f"the file is {what}; {_REDOWNLOAD}")
    # frombuffer over bytes is read-only; one copy gives torch a writable array it can own.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx(path: str | os.PathLike, *, ndim: int | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip or raw), validated as in :func:`parse_idx`."""
    return parse_idx(read_file_bytes(path), ndim=ndim, source=str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write a uint8 array as an IDX file; gzip it when ``compress`` (default: when the name ends in .gz).

    Used to build small test fixtures and to export subsets in the format other tools read.
    """
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
