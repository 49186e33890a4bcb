"""TensorBoard scalars mirroring ``metrics.jsonl`` (``run.tensorboard=true``; needs the tensorboard extra).

``metrics.jsonl`` stays the record the reports read; TensorBoard is a live view of the same numbers,
written to ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nocollapse.config import flatten
from nocollapse.errors import UserError

# Not scalars to plot: the x-axes, and the environment a resume records.
SKIPPED_KEYS = ("step", "epoch", "knn_bank", "resumed")


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """The numeric values of a metric line, keyed by TensorBoard tag (``geometry/features/rankme``)."""
    tags = {}
    for key, value in flatten(record).items():
        if key.startswith(SKIPPED_KEYS) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        # "/" groups TensorBoard tags, so "img/s" becomes "img_per_s"; nested keys become groups.
        tags[key.replace("/", "_per_").replace(".", "/")] = float(value)
    return tags


class TensorBoardLog:
    """Writes each metric line's scalars at its step. ``purge_step`` (a resume's first new step) drops the
    events an interrupted run wrote after its checkpoint, as the resume does for ``metrics.jsonl``."""

    def __init__(self, directory: Path, *, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("run.tensorboard=true needs the tensorboard package: pip install 'nocollapse[tensorboard]', "
                            "or leave run.tensorboard=false (metrics.jsonl and the HTML report hold the same numbers)") from None
        self.writer = SummaryWriter(log_dir=str(directory), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        for tag, value in scalar_tags(record).items():
            self.writer.add_scalar(tag, value, global_step=int(record["step"]))

    def close(self) -> None:
        self.writer.close()
