"""Checkpoints and run files written atomically: a crash leaves the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from nocollapse.errors import UserError


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A failed write (disk full, no permission) removes the temporary file and raises a UserError that
    says so; ``path`` keeps its previous content.
    """
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes the file private; give it the mode open() would
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except OSError as error:
        if temp:
            Path(temp).unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"nothing was written to {path}"
        raise UserError(f"cannot write {path} ({error.strerror or error}); {kept}. Free disk space or point run.out_dir "
                        "(or --out) to a writable place, then continue with --resume") from None
    except BaseException:
        if temp:
            Path(temp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda file: torch.save(state, file))


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Weights as safetensors: raw tensors and a JSON header, nothing executable, so anyone can load them
    without trusting the file (and from other frameworks)."""
    from safetensors.torch import save

    data = save({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, lambda file: file.write(data))


def save_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, lambda file: file.write((json.dumps(value, indent=2) + "\n").encode()))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, no code runs."""
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train first, or point to a run directory that has one")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which and stop
        raise UserError(f"cannot read checkpoint {path} ({type(error).__name__}: {error}); it is corrupt or not a nocollapse checkpoint") from None


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: Callable[[str], str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (which then names this process's pid) for the ``with`` block; when another
    process holds it, raise UserError ``busy(its pid)``. The operating system releases the lock when the process ends,
    however it ends, so a killed holder leaves no stale lock. Where there is no ``fcntl`` (Windows) nothing is locked."""
    try:
        import fcntl
    except ModuleNotFoundError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise UserError(busy(lock.read().strip() or "?")) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
