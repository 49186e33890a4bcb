"""Accuracy while training: a linear classifier on the detached encoder features of each training batch.

solo-learn's and lightly's online evaluation. Every step, the features the method's own forward pass computed for its
views (caught by a forward hook on the online encoder, so no image goes through the encoder twice) train a linear head
with its own Adam optimiser on the batch's labels; its top-1 on those views, measured before its update, is logged per
window as ``online_top1``. It is a training-set, augmented-view accuracy of a head that is still learning, so it reads
below the final linear probe; its use is the curve: it rises from the first steps and falls when the features collapse.

Nothing flows back: the features are detached, the head's weights start at zero and its updates draw no random numbers,
so the encoder's weights are the same, bit for bit, with and without it (tests/test_online_probe.py, on the CPU). Pretraining images
without a label (STL-10's ``unlabeled`` split) are left out of its loss and its accuracy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nocollapse.train.distributed import mean_over_processes

UNLABELLED = -1  # the label of a pretraining image that has none
LEARNING_RATE = 1e-3  # Adam's; features are not standardised, and Adam's per-coordinate steps do not need it


class OnlineProbe:
    """A linear head ``W f + b`` on (features of) ``encoder``, trained by :meth:`update` after each step's forward pass."""

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int, device: torch.device) -> None:
        self.weight = torch.zeros(num_classes, feature_dim, device=device, requires_grad=True)  # (C, D)
        self.bias = torch.zeros(num_classes, device=device, requires_grad=True)  # (C,)
        self.optimizer = torch.optim.Adam([self.weight, self.bias], lr=LEARNING_RATE)
        self._caught: list[Tensor] = []
        self._catching = False  # set only inside the training step's forward pass (:meth:`catching`)
        self._hook = encoder.register_forward_hook(self._catch)
        # The window's correct predictions and labelled rows, summed on the device: read once per logging window.
        self._correct = torch.zeros((), device=device)
        self._count = torch.zeros((), device=device)

    @contextlib.contextmanager
    def catching(self) -> Iterator[None]:
        """Catch the encoder's outputs in this block (the training step's forward pass). Outside it the hook does nothing,
        so other passes (the monitor, the evaluation, a user's own) neither feed the probe nor pile up features; the hook
        stays registered, since adding and removing it every step would make torch.compile trace the encoder again."""
        self._catching = True
        try:
            yield
        finally:
            self._catching = False

    def _catch(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        if self._catching:
            self._caught.append(output.detach())

    def update(self, labels: Tensor) -> None:
        """One Adam step of the head on the features caught since the last call, whose rows are ``len(caught)/B`` views
        of the B images labelled ``labels`` (:data:`UNLABELLED` for none), in the order the method passed them; the
        head's predictions before the step are counted into the window's accuracy (no host sync)."""
        features, self._caught = torch.cat(self._caught).float(), []
        labels = labels.repeat(len(features) // len(labels))
        known = labels != UNLABELLED
        logits = torch.addmm(self.bias, features, self.weight.t())  # (M·B, C)
        # Sums over the labelled rows, in tensors: a boolean index here would cost a host sync every step.
        count = known.sum()
        loss = (F.cross_entropy(logits, labels.clamp_min(0), reduction="none") * known).sum() / count.clamp_min(1)
        self._correct += ((logits.argmax(dim=1) == labels) & known).sum()
        self._count += count
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Under DDP each process saw its own rows: averaging the gradients keeps one head for all of them (one all-reduce).
        averaged = mean_over_processes(torch.cat([self.weight.grad.flatten(), self.bias.grad]))
        self.weight.grad, self.bias.grad = averaged[: self.weight.numel()].view_as(self.weight), averaged[self.weight.numel() :]
        self.optimizer.step()

    def take_window(self) -> Tensor:
        """(correct, labelled rows) of the steps since the last call, a (2,) tensor on the device; then restart the count."""
        window = torch.stack([self._correct, self._count])
        self._correct, self._count = torch.zeros_like(self._correct), torch.zeros_like(self._count)
        return window

    def discard(self) -> None:
        """Forget the features of a step that was skipped (a non-finite loss): the head does not learn from it."""
        self._caught = []

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight.detach().clone(), "bias": self.bias.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.weight.copy_(state["weight"])
            self.bias.copy_(state["bias"])
        self.optimizer.load_state_dict(state["optimizer"])

    def close(self) -> None:
        """Remove the hook from the encoder."""
        self._hook.remove()


def pretraining_labels(datasets: list[Any]) -> tuple[Tensor | None, int]:
    """(labels of the stacked pretraining splits, :data:`UNLABELLED` where a split has none; classes), or (None, 0) when
    no split has labels."""
    labelled = [dataset for dataset in datasets if dataset.labels is not None]
    if not labelled:
        return None, 0
    parts = [dataset.labels if dataset.labels is not None else torch.full((len(dataset),), UNLABELLED, dtype=torch.long)
             for dataset in datasets]
    return torch.cat(parts), max(len(dataset.classes) for dataset in labelled)
