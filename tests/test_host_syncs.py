"""The GPU form of a training step waits on the device nowhere: checked on CPU, op by op.

On a GPU, an op whose result size or Python value depends on the data (``.item()``, ``bool(t)``,
``nonzero``, a boolean-mask index, a linear-algebra error check, ...) blocks the host until the
device has caught up, and the step loses the CPU's head start in queueing kernels. A dispatch mode
sees the aten ops a training step dispatches, the backward pass's included, and records the ones
that would sync. It sees an op, not the kernels inside it, so a syncing op is recognised by its own
name or arguments (a boolean index, ``check_errors=True``). ``.tolist()`` and copies to the host do
not pass through it; the step makes neither.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nocollapse.augment import views
from nocollapse.config import resolve_config
from nocollapse.train.loop import Trainer

# Ops that read a value, a data-dependent size or an error status back from the device (as dispatched:
# torch.linalg.cholesky, inv and solve reach the dispatcher as their _ex form plus _linalg_check_errors).
SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique", "aten::_unique2",
           "aten::unique_dim", "aten::unique_consecutive", "aten::equal", "aten::bincount", "aten::histc",
           "aten::_linalg_check_errors", "aten::_linalg_eigh", "aten::_linalg_svd", "aten::linalg_eig",
           "aten::linalg_eigvals", "aten::linalg_pinv"}
BOOLEAN_INDEXED = {"aten::index.Tensor", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


class SyncRecorder(TorchDispatchMode):
    """Records the name of every op that would make the host wait on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name in SYNCING or name.split(".")[0] in SYNCING:
            self.syncs.append(name)
        elif name in BOOLEAN_INDEXED and any(index is not None and index.dtype in (torch.bool, torch.uint8) for index in args[1]):
            self.syncs.append(f"{name} with a boolean mask")
        elif (kwargs or {}).get("check_errors"):
            self.syncs.append(f"{name} with check_errors")
        elif name.startswith("aten::repeat_interleave") and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.int64 \
                and (kwargs or {}).get("output_size") is None:
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


def test_the_recorder_sees_each_kind_of_sync():
    x = torch.randn(6, 3)
    spd = x.T @ x + torch.eye(3)
    with SyncRecorder() as recorder:
        x[x[:, 0] > 0].sum()
        x.sum().item()
        torch.linalg.cholesky(spd)
        torch.linalg.svdvals(x)
        torch.linalg.cholesky_ex(spd)  # the _ex form reports failure in a tensor: no sync
        torch.where(x > 0, x, 0).sum()
    assert recorder.syncs == ["aten::index.Tensor with a boolean mask", "aten::_local_scalar_dense", "aten::_linalg_check_errors",
                              "aten::_linalg_svd"]


# Each preset at its own sizes (batch, views, projection: they choose code paths, such as the singular value
# loss's Gram form for d > N), on a narrow encoder, with the syncs its step is allowed: W-MSE reads back
# whether every whitening Cholesky succeeded, once per step, to fail with a clear error instead of a NaN loss.
PRESETS = {
    "fmnist": [],
    "fmnist-byol": [],
    "fmnist-wmse2": ["aten::_local_scalar_dense"],
    "fmnist-wmse4": ["aten::_local_scalar_dense"],
    "fmnist-msbreg": [],
    "fmnist-sfrik": [],
    "byol+contrastive": [],
    "byol+uniformity": [],
    "byol+mhe": [],
}


@pytest.mark.parametrize("preset", PRESETS)
def test_a_training_step_in_its_gpu_form_makes_no_host_sync(preset, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(views, "selects_by_index", lambda device: False)  # the augmentation's GPU form
    config = resolve_config(preset, ["model.widths=8,16", f"data.data_dir={tiny_data}", f"run.out_dir={tmp_path}", "run.device=cpu"])
    assert config.run.max_skipped_steps == 0  # checking every step syncs on purpose; it is off by default
    trainer = Trainer(config, progress=False, log=lambda *_: None)
    images = trainer.pretrain_images[: config.optim.batch_size]
    assert len(images) == config.optim.batch_size
    trainer.train_step(images, torch.Generator().manual_seed(0))  # the first step makes the optimiser's state
    with SyncRecorder() as recorder:
        trainer.train_step(images, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    assert recorder.syncs == PRESETS[preset]
