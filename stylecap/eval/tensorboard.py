"""Metric scalars for TensorBoard, on the tables' scale, and marked so that readers know the scale.

Training (val/*) and eval mode (z_eval/*) write every metric of metric_specs.METRICS with
``tensorboard=True`` as value * scale (CIDEr 76.6, not 0.766), with the description "x100" that
TensorBoard shows on the card. Runs written before that convention hold raw 0-1 values and no
description: ``to_shown_scale`` tells the two apart (compare.py's curves read both).
"""
from __future__ import annotations

from stylecap.eval.metric_specs import METRICS, tensorboard_scalars

SCALED = "x100"  # the summary description of a metric scalar written x100


def add_metric_scalars(writer, metrics: dict, prefix: str, step: int) -> dict[str, float]:
    """Write tensorboard_scalars(metrics, prefix) at ``step`` through a torch SummaryWriter, each with its
    scale as the summary description. Returns what was written."""
    from tensorboard.plugins.scalar.metadata import create_summary_metadata
    from torch.utils.tensorboard.summary import scalar
    written = tensorboard_scalars(metrics, prefix)
    scale = {f"{prefix}/{s.name}": s.scale for s in METRICS}
    for tag, value in written.items():
        summary = scalar(tag, value)  # a Summary proto with one simple_value, as add_scalar writes
        if scale[tag] == 100:  # the scalars plugin's metadata, with the scale as its description
            summary.value[0].metadata.CopyFrom(create_summary_metadata(display_name=tag, description=SCALED))
        writer._get_file_writer().add_summary(summary, step)  # add_scalar takes no description
    return written


def to_shown_scale(tag: str, values: list[tuple[int, float]], description: str) -> list[tuple[int, float]]:
    """A metric curve read back from events on the tables' scale: as written when marked x100, else
    (older runs, raw 0-1) times the metric's scale. Tags that are no metric (val/loss) are unchanged."""
    name = tag.split("/", 1)[-1]
    scale = next((s.scale for s in METRICS if s.name == name and s.tensorboard), 1)
    if scale == 1 or SCALED in (description or ""):
        return values
    return [(step, v * scale) for step, v in values]
