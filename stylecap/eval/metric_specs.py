"""The metrics, each defined once: its name, where metrics.json keeps it, how it is shown (x100 or raw,
digits), which way is better and its note. The printed table and the HTML report (stylecap.eval.tables),
the per-style breakdowns (stylecap.eval.report), compare.py's columns and the TensorBoard scalars all
read METRICS; the COCO toolkit's output keys (STANDARD) are its ``coco`` entries.

A new metric is its module (which writes its value into metrics.json, see stylecap.eval.scoring) plus
one entry here. This module imports nothing: every other eval module may read it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shown:
    """How a value is printed: scale 100 = x100 as papers report it, 1 = raw; digits after the point."""
    scale: int
    digits: int

    def __call__(self, value: float) -> str:
        return f"{value * self.scale:.{self.digits}f}"


@dataclass(frozen=True)
class Compared:
    """A column of compare.py's table (mean ± std over seeds; also comparison.csv/.json)."""
    column: str  # the column's name, also its key in comparison.json
    shown: Shown
    order: int  # columns are sorted by it (stable: equal orders keep METRICS' order)
    plotted: bool = False  # one of the bars of compare.py's metrics.png


@dataclass(frozen=True)
class MetricSpec:
    name: str  # the row's name in the printed table and the HTML report
    key: tuple[str, ...]  # where metrics.json keeps it: ("CIDEr",), ("diversity", "distinct-1"), ...
    higher_is_better: bool
    table: Shown | None  # how the table shows it (None: not a row)
    note: str = ""  # the row's note; "{ref}" = the value at ref_key, shown like the metric ("-" if None)
    ref_key: tuple[str, ...] | None = None
    # no value: "skipped" = a 'skipped' row (reason from metrics["skipped"][skip_key] or 'not computed'),
    # "skipped_if_reason" = that row only when a reason was recorded, "dash" = a '-' row when the
    # key's section (key[0]) is there, "hide" = no row
    missing: str = "hide"
    skip_key: str | None = None  # its key in metrics["skipped"] (default: name)
    coco: bool = False  # computed by the COCO toolkit (stylecap.eval.coco_metrics), also per style and group
    compare: Compared | None = None
    tensorboard: bool = False  # written as a TensorBoard scalar <prefix>/<name>

    @property
    def scale(self) -> int:
        """The metric's one scale (100: a share or caption metric shown x100, as papers print it; 1: raw):
        the table, the report, compare.py, its plots and TensorBoard all show value * scale;
        metrics.json keeps the raw value."""
        return self.table.scale if self.table else self.compare.shown.scale if self.compare else 1

    def value(self, metrics: dict) -> Any:
        """The value at ``key`` in a metrics dict, None when any level is absent or None."""
        return lookup(metrics, self.key)


def lookup(metrics: dict, key: tuple[str, ...]) -> Any:
    cur: Any = metrics
    for part in key:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


_X100, _RAW4 = Shown(100, 2), Shown(1, 4)  # shares (0-1) are x100 too: 33.00 = 33% of the captions


def _coco(name: str, order: int, plotted: bool) -> MetricSpec:
    """A COCO-toolkit metric: top-level key, x100 everywhere, always a row (or 'skipped'), in TensorBoard."""
    return MetricSpec(name, (name,), True, _X100, missing="skipped", coco=True, tensorboard=True,
                      compare=Compared(name, Shown(100, 1), order, plotted))


METRICS: tuple[MetricSpec, ...] = (
    _coco("BLEU-1", 10, False),
    _coco("BLEU-2", 11, False),
    _coco("BLEU-3", 12, False),
    _coco("BLEU-4", 13, True),
    _coco("METEOR", 14, True),
    _coco("ROUGE-L", 15, True),
    _coco("CIDEr", 16, True),  # CIDEr-D, as the COCO toolkit computes it
    _coco("SPICE", 17, True),
    MetricSpec("CLIP-S", ("clip_score", "CLIP-S"), True, _RAW4, note="0-2.5 scale",
               missing="skipped_if_reason", skip_key="CLIPScore"),
    MetricSpec("RefCLIP-S", ("clip_score", "RefCLIP-S"), True, _RAW4, note="0-2.5 scale"),
    MetricSpec("distinct-1", ("diversity", "distinct-1"), True, _X100, note="unique / all unigrams",
               compare=Compared("distinct-1", Shown(100, 1), 40)),
    MetricSpec("distinct-2", ("diversity", "distinct-2"), True, _X100, note="unique / all bigrams",
               compare=Compared("distinct-2", Shown(100, 1), 41)),
    MetricSpec("vocab size", ("diversity", "vocab_size"), True, Shown(1, 0),
               compare=Compared("vocabulary", Shown(1, 0), 42)),
    MetricSpec("copied", ("diversity", "copied"), False, _X100, note="share of captions copied from training"),
    MetricSpec("style top1", ("style_fidelity", "generated", "top1"), True, _X100, missing="dash",
               note="human references: {ref}", ref_key=("style_fidelity", "references", "top1"),
               compare=Compared("style top-1", Shown(100, 1), 20, plotted=True)),
    MetricSpec("style top5", ("style_fidelity", "generated", "top5"), True, _X100, missing="dash",
               note="human references: {ref}", ref_key=("style_fidelity", "references", "top5")),
    MetricSpec("style ppl", ("style_ppl", "generated"), False, Shown(1, 1),
               note="trigram LM of the style (lower is better); human references: {ref}",
               ref_key=("style_ppl", "references"), compare=Compared("style ppl", Shown(1, 1), 21)),
    MetricSpec("baseline CIDEr", ("baseline", "CIDEr"), True, _X100, note="always '{ref}'",
               ref_key=("baseline", "caption")),
)

STANDARD: tuple[str, ...] = tuple(s.name for s in METRICS if s.coco)  # the COCO toolkit's keys, BLEU-1..SPICE


def spec(name: str) -> MetricSpec:
    """The entry named ``name`` (the table's name or compare.py's column)."""
    for s in METRICS:
        if name in (s.name, s.compare.column if s.compare else None):
            return s
    raise KeyError(f"no metric {name!r} in stylecap.eval.metric_specs.METRICS")


def compared() -> list[MetricSpec]:
    """compare.py's columns, in their order."""
    return sorted((s for s in METRICS if s.compare is not None), key=lambda s: s.compare.order)


def tensorboard_scalars(metrics: dict, prefix: str) -> dict[str, float]:
    """{"<prefix>/<name>": value * scale} of every TensorBoard metric present in ``metrics`` (metrics.json's
    layout, or a flat {name: value} dict such as the epoch-end validation scores), in METRICS' order:
    on the tables' scale (CIDEr 76.6, not 0.766)."""
    out = {}
    for s in METRICS:
        v = s.value(metrics) if s.tensorboard else None
        if v is not None:
            out[f"{prefix}/{s.name}"] = v * s.scale
    return out


def scale_note() -> str:
    """'x100 except ...': the tables' header, from the list."""
    raw = [s.name for s in METRICS if s.table is not None and s.scale == 1]
    return "x100 except " + ", ".join(raw) if raw else "x100"
