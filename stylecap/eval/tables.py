"""The printed metrics table (and the rows the HTML report shares)."""
from __future__ import annotations

from stylecap.eval.coco_metrics import STANDARD


def fmt100(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def table_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(name, value, note) rows of the summary table; shared by format_table and the HTML report."""
    skipped = metrics.get("skipped", {})
    rows = []
    for m in STANDARD:
        v = metrics.get(m)
        rows.append((m, fmt100(v), "") if v is not None else (m, "skipped", skipped.get(m, "not computed")))
    cs = metrics.get("clip_score")
    if cs:
        rows.append(("CLIP-S", f"{cs['CLIP-S']:.4f}", "0-2.5 scale"))
        if cs.get("RefCLIP-S") is not None:
            rows.append(("RefCLIP-S", f"{cs['RefCLIP-S']:.4f}", "0-2.5 scale"))
    elif "CLIPScore" in skipped:
        rows.append(("CLIP-S", "skipped", skipped["CLIPScore"]))
    div = metrics.get("diversity")
    if div:
        rows += [("distinct-1", f"{div['distinct-1']:.4f}", "unique / all unigrams"),
                 ("distinct-2", f"{div['distinct-2']:.4f}", "unique / all bigrams"),
                 ("vocab size", str(div["vocab_size"]), "")]
        if div.get("copied") is not None:
            rows.append(("copied", f"{div['copied']:.4f}", "share of captions copied from training"))
    fid = metrics.get("style_fidelity")
    if fid:
        g, r = fid["generated"], fid["references"]
        for k in ("top1", "top5"):
            gv = "-" if g[k] is None else f"{g[k]:.4f}"
            rv = "-" if r[k] is None else f"{r[k]:.4f}"
            rows.append((f"style {k}", gv, f"human references: {rv}"))
    ppl = metrics.get("style_ppl")
    if ppl and ppl.get("generated") is not None:
        rv = "-" if ppl.get("references") is None else f"{ppl['references']:.1f}"
        rows.append(("style ppl", f"{ppl['generated']:.1f}", f"trigram LM of the style (lower is better); human references: {rv}"))
    base = metrics.get("baseline")
    if base and base.get("CIDEr") is not None:
        rows.append(("baseline CIDEr", fmt100(base["CIDEr"]), f"always '{base['caption']}'"))
    return rows


def segmentation_line(metrics: dict) -> str:
    """'segmentation: zh, char' (language detected from the text, method used), or '' when absent."""
    seg = metrics.get("segmentation")
    return f"segmentation: {seg['language']}, {seg['method']}" if seg else ""


def format_table(metrics: dict) -> str:
    """The printed summary: one row per metric; standard metrics x100 like papers."""
    rows = table_rows(metrics)
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'metric':<{width}}value (BLEU..SPICE x100)"]
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
