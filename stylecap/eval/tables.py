"""The printed metrics table (and the rows the HTML report shares)."""
from __future__ import annotations

from stylecap.eval.metric_specs import METRICS, MetricSpec, Shown, lookup, scale_note

_X100 = Shown(100, 2)


def fmt100(v) -> str:
    return "-" if v is None else _X100(v)


def _row(spec: MetricSpec, metrics: dict, skipped: dict) -> tuple[str, str, str] | None:
    """The table's row of one metric, or None when it has none (see MetricSpec.missing)."""
    shown, value = spec.table, spec.value(metrics)
    if value is None:
        reason = skipped.get(spec.skip_key or spec.name)
        if spec.missing == "skipped" or (spec.missing == "skipped_if_reason" and reason is not None):
            return spec.name, "skipped", reason if reason is not None else "not computed"
        if spec.missing != "dash" or not metrics.get(spec.key[0]):
            return None
    ref = lookup(metrics, spec.ref_key) if spec.ref_key else None
    ref_text = "-" if ref is None else ref if isinstance(ref, str) else shown(ref)
    return spec.name, "-" if value is None else shown(value), spec.note.format(ref=ref_text)


def table_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(name, value, note) rows of the summary table, one per metric of METRICS that has one; shared
    by format_table and the HTML report."""
    skipped = metrics.get("skipped", {})
    rows = [_row(spec, metrics, skipped) for spec in METRICS if spec.table is not None]
    return [r for r in rows if r is not None]


def segmentation_line(metrics: dict) -> str:
    """'segmentation: zh, char' (the references' language, method used), or '' when absent; a mixed set
    adds its images of each kind and where SPICE ran: 'segmentation: mixed (3 zh, 7 en images), char;
    SPICE on the 7 non-Chinese images only (...)'."""
    seg = metrics.get("segmentation")
    if not seg:
        return ""
    kinds = f" ({seg['images']['zh']} zh, {seg['images']['en']} en images)" if seg.get("images") else ""
    spice = f"; SPICE {seg['spice']}" if seg.get("spice") else ""
    return f"segmentation: {seg['language']}{kinds}, {seg['method']}{spice}"


def format_table(metrics: dict) -> str:
    """The printed summary: one row per metric; caption metrics and shares x100 like papers."""
    rows = table_rows(metrics)
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'metric':<{width}}value ({scale_note()})"]
    for name, value, note in rows:
        note = f" ({note})" if note else ""
        lines.append(f"{name:<{width}}{value}{note}")
    counts = metrics.get("counts")
    if counts:
        lines.append(f"scored {counts['scored']} of {counts['reference_keys']} referenced "
                     f"{'image/style pairs' if counts['styled_matching'] else 'images'}; "
                     f"{counts['unmatched_predictions']} unmatched predictions, "
                     f"{counts['missing_predictions']} missing predictions; tokenizer {metrics.get('tokenizer')}; "
                     f"{segmentation_line(metrics)}")
    return "\n".join(lines)
