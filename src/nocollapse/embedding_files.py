"""Files of embeddings: (N, D) float32 rows with, row by row, the source of each (a path, or dataset:split:index) and
its label where there is one.

Three formats, chosen by the file's suffix:

- ``.npy``: the (N, D) float32 array (``numpy.load``), with ``<stem>.txt`` beside it: a ``source<TAB>label`` header,
  then one line per row (the label empty where there is none);
- ``.safetensors``: tensors ``embeddings`` (N, D) float32 and ``labels`` (N,) int64 (−1: none); the header's metadata
  holds ``sources`` (a JSON list) and the encoder's description;
- ``.parquet`` (needs ``pyarrow``): columns ``source`` (string), ``label`` (int64, null: none) and ``embedding``
  (fixed-size list of D float32); the schema's metadata holds the encoder's description.

Rows are written as they come (a collection larger than memory streams through) to temporary files beside the
target, which is put in place only when complete: a failure (a full disk, an interrupt) leaves no partial file.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nocollapse.errors import UserError

FORMATS = (".npy", ".safetensors", ".parquet")
SAFETENSORS_HEADER_LIMIT = 100_000_000  # bytes: safetensors refuses larger headers, where the sources are kept
_COPY_ROWS = 8192  # rows copied at a time when a file is assembled: memory stays small whatever N


def index_path(path: Path) -> Path:
    """The ``.txt`` index of an ``.npy`` embeddings file."""
    return path.with_suffix(".txt")


def output_files(path: Path) -> list[Path]:
    """Every file that writing ``path`` creates (an ``.npy`` has its index)."""
    return [path, index_path(path)] if path.suffix == ".npy" else [path]


def check_output(path: Path, *, force: bool) -> None:
    """Refuse an unknown format, or an existing output without ``force``, before any work is done."""
    if path.suffix not in FORMATS:
        raise UserError(f"--out {path}: the suffix says the format; use one of {', '.join(FORMATS)}")
    if path.suffix == ".parquet":
        _import_pyarrow()
    existing = [str(file) for file in output_files(path) if file.exists()]
    if existing and not force:
        raise UserError(f"{', '.join(existing)} already exist(s); pass --force to overwrite, or choose another --out")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: the folder {path.parent} does not exist")


def _import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - the submodule is what writes
    except ImportError:
        raise UserError("writing .parquet needs pyarrow: `pip install pyarrow` (or `pip install 'nocollapse[parquet]'`); "
                        "or write .npy or .safetensors") from None
    return pyarrow


class EmbeddingWriter:
    """Rows appended by :meth:`write`, put in place by :meth:`finish`; :meth:`abort` (or an error) leaves nothing."""

    def __init__(self, path: str | os.PathLike, dim: int, metadata: dict[str, str]) -> None:
        self.path, self.dim, self.metadata = Path(path), dim, dict(metadata)
        self.sources: list[str] = []
        self.labels: list[int] = []
        self._source_bytes = 0
        owner = f"{socket.gethostname()}.{os.getpid()}"
        self._rows = self.path.with_name(f".{self.path.name}.{owner}.rows.tmp")
        self._final = {file: file.with_name(f".{file.name}.{owner}.tmp") for file in output_files(self.path)}
        self._parquet: Any = None
        try:
            if self.path.suffix == ".parquet":
                pyarrow = _import_pyarrow()
                self._schema = pyarrow.schema([("source", pyarrow.string()), ("label", pyarrow.int64()),
                                               ("embedding", pyarrow.list_(pyarrow.float32(), dim))],
                                              metadata={key.encode(): value.encode() for key, value in self.metadata.items()})
                self._parquet = pyarrow.parquet.ParquetWriter(self._final[self.path], self._schema)
            else:
                self._file = open(self._rows, "wb")
        except OSError as error:
            self._failed(error)

    def write(self, rows: Tensor, sources: list[str], labels: list[int | None]) -> None:
        """Append (B, D) ``rows`` with their ``sources`` and ``labels`` (None: no label)."""
        values = rows.detach().to("cpu", torch.float32).contiguous().numpy()
        if values.shape[1:] != (self.dim,) or len(sources) != len(values) or len(labels) != len(values):
            raise ValueError(f"rows {values.shape}, {len(sources)} sources and {len(labels)} labels do not match (D = {self.dim})")
        try:
            if self._parquet is not None:
                self._write_parquet(values, sources, labels)
            else:
                if self.path.suffix == ".safetensors":
                    self._source_bytes += sum(len(json.dumps(source)) + 2 for source in sources) * 2  # escaped twice in the header
                    if self._source_bytes > SAFETENSORS_HEADER_LIMIT:
                        raise UserError(f"{self.path}: the sources of {self.count + len(values)} rows would pass the safetensors header "
                                        f"limit ({SAFETENSORS_HEADER_LIMIT // 10**6} MB), and readers would refuse the file; write .npy or "
                                        ".parquet for this many images")
                self._file.write(values.tobytes())
                self.sources += sources
                self.labels += [-1 if label is None else int(label) for label in labels]
        except OSError as error:
            self._failed(error)

    def _write_parquet(self, values: np.ndarray, sources: list[str], labels: list[int | None]) -> None:
        pyarrow = _import_pyarrow()
        embedding = pyarrow.FixedSizeListArray.from_arrays(pyarrow.array(values.reshape(-1), pyarrow.float32()), self.dim)
        table = pyarrow.Table.from_arrays([pyarrow.array(sources, pyarrow.string()), pyarrow.array(labels, pyarrow.int64()), embedding],
                                          schema=self._schema)
        self._parquet.write_table(table)
        self.sources += sources

    @property
    def count(self) -> int:
        return len(self.sources)

    def finish(self) -> Path:
        """Assemble the file(s) and rename them into place; returns ``path``."""
        try:
            if self._parquet is not None:
                self._parquet.close()
                self._parquet = None
            else:
                self._file.close()
                rows = np.memmap(self._rows, dtype=np.float32, mode="r", shape=(self.count, self.dim)) if self.count else np.empty((0, self.dim), np.float32)
                if self.path.suffix == ".npy":
                    self._assemble_npy(rows)
                else:
                    self._assemble_safetensors(rows)
                del rows
            for temporary in self._final.values():
                _sync(temporary)
            for target, temporary in self._final.items():
                os.replace(temporary, target)
        except OSError as error:
            self._failed(error)
        finally:
            self._rows.unlink(missing_ok=True)
        return self.path

    def _assemble_npy(self, rows: np.ndarray) -> None:
        # Written, not mapped: a full disk is then an error from write(), never a SIGBUS from a page with no block.
        with open(self._final[self.path], "wb") as file:
            np.lib.format.write_array_header_1_0(file, {"descr": "<f4", "fortran_order": False, "shape": (self.count, self.dim)})
            for start in range(0, self.count, _COPY_ROWS):
                file.write(np.ascontiguousarray(rows[start : start + _COPY_ROWS]).astype("<f4").tobytes())
        lines = ["source\tlabel"] + [f"{_one_line(source)}\t{'' if label < 0 else label}" for source, label in zip(self.sources, self.labels)]
        self._final[index_path(self.path)].write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _assemble_safetensors(self, rows: np.ndarray) -> None:
        # The format, written directly so that N rows need not be in memory at once: an 8-byte little-endian header
        # length, the JSON header (padded with spaces to a multiple of 8), then the tensors' bytes back to back.
        embedding_bytes, label_bytes = self.count * self.dim * 4, self.count * 8
        header = {"embeddings": {"dtype": "F32", "shape": [self.count, self.dim], "data_offsets": [0, embedding_bytes]},
                  "labels": {"dtype": "I64", "shape": [self.count], "data_offsets": [embedding_bytes, embedding_bytes + label_bytes]},
                  "__metadata__": {**self.metadata, "sources": json.dumps(self.sources)}}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        with open(self._final[self.path], "wb") as file:
            file.write(len(encoded).to_bytes(8, "little"))
            file.write(encoded)
            for start in range(0, self.count, _COPY_ROWS):
                file.write(np.ascontiguousarray(rows[start : start + _COPY_ROWS]).astype("<f4").tobytes())
            file.write(np.asarray(self.labels, dtype="<i8").tobytes())

    def abort(self) -> None:
        """Remove every temporary file (the target, if it existed before, is untouched)."""
        if self._parquet is not None:
            try:
                self._parquet.close()
            except OSError:
                pass
            self._parquet = None
        elif hasattr(self, "_file") and not self._file.closed:
            self._file.close()
        for temporary in [self._rows, *self._final.values()]:
            temporary.unlink(missing_ok=True)

    def _failed(self, error: OSError) -> None:
        self.abort()
        raise UserError(f"cannot write {self.path} ({error.strerror or error}); nothing was written there. Free disk space or choose "
                        "another --out") from None


def _one_line(text: str) -> str:
    """A source as one field of the index: tabs and line breaks (legal in file names) escaped."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda match: _ESCAPES[match[1]], text)


def _sync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def read_embeddings(path: str | os.PathLike) -> tuple[Tensor, list[str], list[int | None]]:
    """(embeddings (N, D) float32, sources, labels with None for none) of a file :class:`EmbeddingWriter` wrote."""
    path = Path(path)
    if path.suffix == ".npy":
        embeddings = torch.from_numpy(np.load(path))
        lines = index_path(path).read_text(encoding="utf-8").split("\n")[1:-1]  # not splitlines: U+2028 and others are legal in names
        fields = [line.rsplit("\t", 1) for line in lines]
        return embeddings, [_unescape(source) for source, _ in fields], [int(label) if label else None for _, label in fields]
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            sources = json.loads(file.metadata()["sources"])
            labels = file.get_tensor("labels").tolist()
            return file.get_tensor("embeddings"), sources, [None if label < 0 else label for label in labels]
    if path.suffix == ".parquet":
        table = _import_pyarrow().parquet.read_table(path)
        flat = table.column("embedding").combine_chunks().flatten().to_numpy()
        return torch.from_numpy(flat.reshape(table.num_rows, -1).copy()), table.column("source").to_pylist(), table.column("label").to_pylist()
    raise UserError(f"{path}: not an embeddings file ({', '.join(FORMATS)})")
