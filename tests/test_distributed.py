"""Data-parallel training on CPU with gloo and 2 processes: gathered losses match one process on the
whole batch, in value and gradient, a 2-process run trains, checkpoints and resumes exactly, and every
process exits cleanly (status 0 after success, the error's own status after a fault; never SIGABRT)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from conftest import TINY_RUN, write_tiny_fashion_mnist
from nocollapse.config import resolve_config
from nocollapse.losses import SFRIK_KERNEL, info_nce_loss, kernel_uniformity, singular_value_loss, uniformity_loss, whitened_mse
from nocollapse.train.distributed import gather_views, init_distributed, shutdown_distributed

WORLD = 2
VIEWS, BATCH, IN, DIM = 2, 16, 6, 4

# Each loss that needs the statistics of the whole batch; W-MSE whitens 2 sub-batches of 8 drawn by the global RNG.
GATHERED_LOSSES = {
    "whitened_mse": lambda z: whitened_mse(z, w_size=8),
    "singular_value": singular_value_loss,
    "kernel_mmd_gram": lambda z: kernel_uniformity(z, SFRIK_KERNEL, path="gram"),
    "kernel_mmd_moments": lambda z: kernel_uniformity(z, SFRIK_KERNEL, path="moments"),
    "uniformity": uniformity_loss,
    "info_nce": info_nce_loss,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    assert init_distributed("cpu").world_size == WORLD


def loss_worker(rank: int, port: int) -> None:
    join_group(rank, port)
    inputs = torch.randn(VIEWS, BATCH, IN, generator=torch.Generator().manual_seed(0))
    for name, loss_fn in GATHERED_LOSSES.items():
        torch.manual_seed(1)
        reference = nn.Linear(IN, DIM)
        model = DistributedDataParallel(nn.Linear(IN, DIM))
        model.module.load_state_dict(reference.state_dict())

        torch.manual_seed(2)  # W-MSE's sub-batch permutation: the same draw in both computations
        expected = loss_fn(reference(inputs))
        expected.backward()

        torch.manual_seed(2)
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        loss = loss_fn(gather_views(model(inputs[:, rows])))
        loss.backward()  # DDP averages the parameter gradients over the 2 processes

        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5, msg=f"{name}: loss")
        for (param_name, param), ref in zip(model.module.named_parameters(), reference.parameters()):
            torch.testing.assert_close(param.grad, ref.grad, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: grad of {param_name}: {m}")
    del model  # DDP's reducer holds the group: released first, the group's destruction joins gloo's threads
    shutdown_distributed()


def test_each_gathered_loss_and_its_gradients_match_one_process_on_the_whole_batch():
    mp.spawn(loss_worker, args=(free_port(),), nprocs=WORLD)


def gather_is_differentiable_worker(rank: int, port: int) -> None:
    join_group(rank, port)
    local = torch.full((1, 2, 3), float(rank + 1), requires_grad=True)
    gathered = gather_views(local)
    assert gathered.shape == (1, 4, 3) and gathered[0, :2].eq(1).all() and gathered[0, 2:].eq(2).all()  # rank order
    (gathered * torch.arange(4.0).view(1, 4, 1)).sum().backward()
    # Both processes back-propagate the same loss: the rows' gradient is summed over them.
    torch.testing.assert_close(local.grad, WORLD * torch.tensor([0.0, 1.0]).add(2 * rank).view(1, 2, 1).expand(1, 2, 3))
    shutdown_distributed()


def test_the_gather_keeps_rank_order_and_sums_the_gradient_of_each_slice():
    mp.spawn(gather_is_differentiable_worker, args=(free_port(),), nprocs=WORLD)


def exit_without_teardown_worker(rank: int, port: int) -> None:
    join_group(rank, port)
    for _ in range(50):
        dist.all_reduce(torch.ones(10_000))  # a temporary: its Python object dies while gloo may still hold the work
    # No teardown: returning exits the process, and init_distributed's atexit handler must leave the group.


def test_a_process_that_exits_right_after_its_collectives_exits_cleanly():
    """The cause of the SIGABRTs at exit: gloo threads freeing a collective's tensors during finalisation.
    Without init_distributed's atexit teardown, 13 of 40 such pairs aborted on 2 CPU cores; 8 pairs in a
    row then pass by chance only (27/40)^8 ≈ 4% of the time."""
    for _ in range(8):
        mp.spawn(exit_without_teardown_worker, args=(free_port(),), nprocs=WORLD)  # raises when a process ends by a signal


def train_worker(rank: int, port: int, overrides: list[str], resume: bool, crash_at: int | None) -> None:
    from nocollapse.train.loop import Trainer

    join_group(rank, port)
    trainer = Trainer(resolve_config("fmnist", overrides), resume=resume, progress=False, log=lambda *_: None)
    if crash_at is not None:
        real_step = trainer.train_step

        def stop_at(images, *generators):
            if trainer.step == crash_at:
                raise KeyboardInterrupt
            return real_step(images, *generators)

        trainer.train_step = stop_at
    try:
        trainer.fit()
    except KeyboardInterrupt:
        pass
    if trainer.dist.is_main:
        torch.save({k: v.cpu() for k, v in trainer.method.state_dict().items()}, Path(trainer.run_dir) / f"weights-rank{rank}.pt")
    trainer.close()


def run_two_processes(overrides: list[str], *, resume: bool = False, crash_at: int | None = None) -> None:
    mp.spawn(train_worker, args=(free_port(), overrides, resume, crash_at), nprocs=WORLD)


@pytest.mark.parametrize("wmse", [False, True], ids=["byol", "wmse"])
def test_a_two_process_run_checkpoints_and_resumes_to_the_uninterrupted_weights(tmp_path, wmse):
    data = write_tiny_fashion_mnist(tmp_path / "data")
    extra = ["method.name=wmse", "augment.num_views=2", "model.projection_dim=4", "method.wmse.w_size=8", "optim.name=adam",
             "optim.lr=0.001", "optim.scale_lr=false"] if wmse else []
    base = [*TINY_RUN, f"data.data_dir={data}", f"run.out_dir={tmp_path}", "run.device=cpu", "run.checkpoint_every=3", *extra]

    run_two_processes([*base, "run.name=straight"])
    run_two_processes([*base, "run.name=resumed"], crash_at=7)  # stopped after the checkpoint at step 6
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 6
    run_two_processes([*base, "run.name=resumed"], resume=True)

    straight = torch.load(tmp_path / "straight" / "weights-rank0.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "weights-rank0.pt", weights_only=True)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
    assert '"processes": 2' in (tmp_path / "straight" / "environment.json").read_text()

    def losses(run: str) -> list[tuple[int, float]]:
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in records if "loss" in r]

    # Rank 0 alone logs, once per window (every 2 steps and at each checkpoint), the mean over both processes;
    # the resumed run logs exactly the uninterrupted run's losses.
    assert [step for step, _ in losses("straight")] == [2, 3, 4, 6, 8]
    assert losses("resumed") == losses("straight")
    assert not list(tmp_path.glob("*/weights-rank1.pt"))


def skip_worker(rank: int, port: int, overrides: list[str]) -> None:
    from nocollapse.errors import CollapseError
    from nocollapse.train.loop import Trainer

    join_group(rank, port)
    trainer = Trainer(resolve_config("fmnist", overrides), progress=False, log=lambda *_: None)
    real_losses = trainer.compute_losses

    def faults_on_rank_1(views, noise):
        terms = real_losses(views, noise)
        if rank == 1 and trainer.step == 3:  # a value outside the gradient: only this process can see it
            terms["embedding_std"] = terms["embedding_std"] * float("nan")
        if rank == 1 and trainer.step == 5:  # a loss that fails here alone (W-MSE whitening of per-process batches can)
            raise CollapseError("whitening failed")
        return terms

    trainer.compute_losses = faults_on_rank_1
    trainer.fit()
    # Parameters only: BatchNorm statistics differ between processes on CPU anyway (no SyncBatchNorm there).
    weights = {name: p.detach() for name, p in trainer.method.named_parameters()}
    torch.save({"skipped": trainer.skipped_steps, "weights": weights}, Path(trainer.run_dir) / f"end-rank{rank}.pt")
    trainer.close()


def test_a_step_is_skipped_by_every_process_when_one_of_them_sees_a_fault(tmp_path):
    """A non-finite value or a failed loss in one process: every process skips the step, none waits forever
    in an all-reduce the others never join, and the replicas stay identical."""
    data = write_tiny_fashion_mnist(tmp_path / "data")
    overrides = [*TINY_RUN, f"data.data_dir={data}", f"run.out_dir={tmp_path}", "run.device=cpu", "run.name=skip", "run.max_skipped_steps=2",
                 "eval.monitor_every=0"]
    mp.spawn(skip_worker, args=(free_port(), overrides), nprocs=WORLD)
    ends = [torch.load(tmp_path / "skip" / f"end-rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
    assert [end["skipped"] for end in ends] == [2, 2]
    assert any(key.startswith("target.") for key in ends[0]["weights"])
    for key, value in ends[0]["weights"].items():  # had one process stepped, the replicas would have drifted apart
        torch.testing.assert_close(ends[1]["weights"][key], value, rtol=0, atol=0, msg=key)
    skipped = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines() if '"skipped"' in line]
    assert [s["step"] for s in skipped] == [4, 6] and "(another process)" in skipped[0]["skipped"]
    assert "the loss failed in another process" in skipped[1]["skipped"]


def torchrun(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m nocollapse train`` of a tiny run on CPU."""
    data = write_tiny_fashion_mnist(tmp_path / "data")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "nocollapse",
               "train", "--quiet", "--no-report", *TINY_RUN, "eval.linear_probe=false", f"data.data_dir={data}", f"run.out_dir={tmp_path}",
               f"run.name={name}", "run.device=cpu", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("method", [
    ["regularizers.uniformity=1"],
    ["method.name=msbreg", "augment.num_views=4", "regularizers.singular_value=30", "regularizers.brownian=0.1"],
    ["method.name=sfrik", "model.projection_dim=32"],
], ids=["byol+uniformity", "msbreg", "sfrik"])
def test_torchrun_trains_and_rank_zero_evaluates(tmp_path, method):
    result = torchrun(tmp_path, "ddp", *method)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("training ") == 1 and result.stdout.count("run saved in") == 1  # rank 0 alone speaks
    assert "convnet" in result.stdout and "random convnet" in result.stdout  # and evaluates
    assert (tmp_path / "ddp" / "eval.json").is_file() and (tmp_path / "ddp" / "encoder.pt").is_file()


def test_torchrun_exits_zero_after_a_run_without_evaluation_and_with_the_error_status_after_a_fault(tmp_path):
    """Schedulers read the exit status: a run that trained is 0 whatever the path out, and a fault is the
    CLI's own status 2 (torchrun may end the slower rank with SIGTERM once one has failed), never an abort."""
    for attempt in range(3):
        finished = torchrun(tmp_path, f"no-eval-{attempt}", "--no-eval")
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert (tmp_path / f"no-eval-{attempt}" / "encoder.pt").is_file()
    diverged = torchrun(tmp_path, "diverged", "optim.lr=1e30")  # non-finite losses at the first logged window
    assert diverged.returncode != 0
    assert "non-finite loss" in diverged.stderr and "exitcode: 2" in diverged.stderr, diverged.stderr[-3000:]
    assert "SIGABRT" not in diverged.stderr and "exitcode  : -6" not in diverged.stderr, diverged.stderr[-3000:]


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, monkeypatch):
    from nocollapse.errors import UserError
    from nocollapse.train import distributed
    from nocollapse.train.loop import Trainer

    data = write_tiny_fashion_mnist(tmp_path / "data")
    monkeypatch.setattr(distributed, "init_distributed", lambda device_type: distributed.Distributed(rank=0, world_size=3))
    monkeypatch.setattr("nocollapse.train.loop.init_distributed", distributed.init_distributed)
    config = resolve_config("fmnist", [*TINY_RUN, f"data.data_dir={data}", f"run.out_dir={tmp_path}", "run.device=cpu"])
    with pytest.raises(UserError, match="must split into equal sub-batches .* over the 3 processes"):
        Trainer(config, progress=False, log=lambda *_: None)
