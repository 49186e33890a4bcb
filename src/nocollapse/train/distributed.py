"""Data-parallel training on PyTorch's own engine: torchrun launches the processes, DDP averages gradients.

``torchrun --nproc_per_node=N -m nocollapse train ...`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
:func:`init_distributed` joins the process group (nccl on CUDA, gloo on CPU). Each process trains on
its slice of every global batch. Losses that need statistics of the whole batch (whitening, singular
values, kernel MMD, uniformity, InfoNCE) see it through :func:`gather_views`, an all-gather whose
backward hands each process the summed gradient of its own rows; DDP then averages the parameter
gradients over the processes, which together gives exactly the gradient of one process on the global
batch.

Teardown. A process must leave the group while its interpreter is still whole: gloo's worker threads
hold each collective's tensors until they drop the finished work, and a tensor whose Python object
died first needs the GIL to be freed; a thread asking for the GIL while Python finalises is ended
(``pthread_exit``) inside a ``noexcept`` destructor, which is ``std::terminate`` — "terminate called
without an active exception", SIGABRT, a non-zero exit after a run that succeeded. Measured here: two
gloo processes that all-reduce and exit without destroying the group abort 13 times in 40.
:func:`init_distributed` therefore registers :func:`shutdown_distributed` with ``atexit`` (which runs
before finalisation, on every exit path that finalises: success, an error, Ctrl-C; a SIGTERM under torchrun
ends the process without finalising, so nothing races there), and the trainer calls it
once its DDP wrapper, which keeps the group alive through its reducer, is released.
"""

from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from nocollapse.errors import UserError


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes metrics, checkpoints, evaluates and reports."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str) -> Distributed:
    """Join the process group torchrun set up (nccl for CUDA, gloo for CPU); a single process when not launched by it."""
    if not launched_by_torchrun():
        return Distributed()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl" and not dist.is_nccl_available():
            raise UserError("run.device is CUDA but this torch build has no NCCL; run with run.device=cpu (gloo)")
        dist.init_process_group(backend)
        atexit.register(shutdown_distributed)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed() -> None:
    """Destroy the process group, and so join gloo's threads, while Python can still free what they hold.

    Objects that still reference the group (a DDP wrapper's reducer, a finished collective's work) are
    collected first, so that destroying the group drops its last reference and its threads are joined
    now, not during finalisation. Safe to call more than once, and without a group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


class _GatherRows(torch.autograd.Function):
    """All-gather along ``dim`` in rank order; backward: the all-reduced (summed) gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, tensor: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        ctx.dim, ctx.rows = dim, tensor.shape[dim]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        # Every rank computed the same loss of the same gathered batch; the sum over ranks of their
        # gradients, divided by DDP's averaging, is the single-process gradient of these rows.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.narrow(ctx.dim, dist.get_rank() * ctx.rows, ctx.rows), None


def gather_rows(tensor: Tensor, dim: int = 0) -> Tensor:
    """``tensor`` of every process concatenated along ``dim`` (rank order), differentiable; itself outside DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherRows.apply(tensor, dim)


def gather_views(embeddings: Tensor) -> Tensor:
    """(M, B, d) embeddings of this process's sub-batch → (M, world·B, d) of the global batch."""
    return gather_rows(embeddings, dim=1)


def mean_over_processes(values: Tensor) -> Tensor:
    """The mean of ``values`` over the processes (logged losses), itself in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()
