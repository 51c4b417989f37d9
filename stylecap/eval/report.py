"""A static, single-file HTML report of an evaluation: tables plus images with their captions.

Images are embedded as base64 JPEG thumbnails, so the page opens from disk (or as an e-mail
attachment) without a server and without the image folder. Every piece of text goes through
html.escape: captions are model output and user data.
"""
from __future__ import annotations

import base64
import html
import io
import shlex
import sys
from collections import defaultdict
from pathlib import Path

from stylecap.eval.matching import image_stem, match_predictions
from stylecap.eval.metric_specs import METRICS, STANDARD, scale_note  # STANDARD: scored per style and group too
from stylecap.eval.tables import fmt100, segmentation_line, table_rows
from stylecap.utils import atomic_write_text

THUMB_PX = 160

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 24px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:14px}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;display:flex;gap:10px}
.about td:first-child{font-weight:600;white-space:nowrap} .about td{font-family:monospace;font-size:13px}
.card img,.ph{width:160px;height:160px;object-fit:contain;background:#eee;flex:none}
.ph{display:flex;align-items:center;justify-content:center;color:#888;font-size:12px;text-align:center}
.pred{margin:2px 0;font-size:14px} .style{font-weight:600;color:#3a5a9b}
.cider{color:#777;font-size:12px} .refs{color:#555;font-size:12px;margin-top:6px}
.skip{color:#a33}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def thumbnail(path) -> str | None:
    """A data: URI of a ~160 px JPEG thumbnail, or None when the image cannot be read."""
    from stylecap.clip_utils import ImageLoadError, load_image
    if path is None:
        return None
    try:
        img = load_image(path, allow_truncated=True, min_size=THUMB_PX, fast_jpeg_decode=True)  # display only
        img.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
    except (ImageLoadError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = [f"<td class='num'>{_e(c)}</td>" if i >= numeric_from else f"<td>{_e(c)}</td>"
                 for i, c in enumerate(row)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _metric_table(metrics: dict) -> str:
    rows = []
    for name, value, note in table_rows(metrics):
        cls = " class='skip'" if value == "skipped" else ""
        rows.append(f"<tr><td>{_e(name)}</td><td class='num'>{_e(value)}</td><td{cls}>{_e(note)}</td></tr>")
    return (f"<table><tr><th>metric</th><th>value ({_e(scale_note())})</th><th>note</th></tr>"
            + "\n".join(rows) + "</table>")


def _breakdown(title: str, section: dict, with_group: bool) -> str:
    if not section:
        return ""
    header = ["style" if with_group else "group"] + (["group"] if with_group else []) + ["n"] + list(STANDARD)
    rows = []
    for name, vals in section.items():
        rows.append([name] + ([vals.get("group", "")] if with_group else []) + [vals.get("n", "")]
                    + [fmt100(vals.get(m)) for m in STANDARD])
    return f"<h2>{_e(title)} (x100)</h2>" + _table(header, rows, numeric_from=2 if with_group else 1)


def _fidelity(fid: dict | None) -> str:
    if not fid:
        return ""
    f = lambda v: "-" if v is None else f"{100 * v:.2f}"  # shares x100, as every table
    rows = [[who, f(fid[who]["top1"]), f(fid[who]["top5"]), fid[who]["n"]] for who in ("generated", "references")]
    per = [[s, f(v)] for s, v in fid.get("per_style_top1", {}).items()]
    clf = fid.get("classifier", {})
    return ("<h2>Style fidelity</h2><p>" + _e(f"{clf.get('model', '')}, trained on {clf.get('n_train')} captions "
            f"of {clf.get('n_styles')} styles; generated captions are scored against the requested style.")
            + "</p>" + _table(["captions", "top-1 (x100)", "top-5 (x100)", "n"], rows)
            + (_table(["requested style", "top-1 (generated, x100)"], per) if per else ""))


def _style_ppl(ppl: dict | None) -> str:
    if not ppl or ppl.get("generated") is None:
        return ""
    lm = ppl.get("lm", {})
    rows = [[s, f"{v:.1f}", "-" if ppl["per_style_references"].get(s) is None else f"{ppl['per_style_references'][s]:.1f}"]
            for s, v in ppl["per_style"].items()]
    refs = "-" if ppl.get("references") is None else f"{ppl['references']:.1f}"
    return ("<h2>Style perplexity</h2><p>" + _e(f"order-{lm.get('order')} n-gram LM per style ({lm.get('smoothing')}), "
            f"trained on the training captions; lower is better. Generated: {ppl['generated']:.1f}; human "
            f"references: {refs}.") + "</p>" + _table(["requested style", "generated", "references"], rows))


def _diversity(div: dict) -> str:
    """The diversity measures, each shown as the metric list shows it (x100 for shares); the rest as
    counts or 2 digits."""
    if not div:
        return ""
    shown = {s.key[1]: s.table for s in METRICS if s.key[0] == "diversity" and s.table}
    def fmt(k: str, v):
        if v is None:
            return "-"
        if k in shown:
            return shown[k](v) + (" (x100)" if shown[k].scale == 100 else "")
        return f"{v:.2f}" if isinstance(v, float) else v
    return "<h2>Diversity</h2>" + _table(["measure", "value"], [[k, fmt(k, v)] for k, v in div.items()])


def reproduce_command(eval_config: dict, report_path: Path) -> str:
    """The command that makes this folder again: eval mode with the checkpoint, the data, the folder and
    the decoding flags that differ from their defaults (evaluate.py --model_path takes the same flags)."""
    from models.decoding import DecodeConfig
    from dataclasses import asdict
    cmd = ["python", "train.py", "--mode", "eval", "--model_path", eval_config.get("model_path", "?"),
           "--data_path", eval_config.get("data_path", "?"), "--output_path", str(report_path.parent)]
    default = asdict(DecodeConfig())
    for k, v in (eval_config.get("decode") or {}).items():
        if k != "max_len" and v != default.get(k):
            cmd += ["--decode" if k == "strategy" else f"--{k}", str(v)]
    return shlex.join(cmd)


def _about(path: Path, metrics: dict) -> str:
    """What was evaluated, how and when: the checkpoint (eval_config.json beside the report, written by
    eval mode), the data files (metrics.json's inputs), the decoding, the date and the command."""
    import datetime
    import json
    cfg_path = path.parent / "eval_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    inputs = metrics.get("inputs") or {}
    step = cfg.get("checkpoint_step")
    rows = [["date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")]]
    if cfg:
        rows += [["checkpoint", cfg.get("model_path", "") + ("" if step is None else f" (step {step})")],
                 ["data", cfg.get("data_path", "")],
                 ["decoding", ", ".join(f"{k}={v}" for k, v in (cfg.get("decode") or {}).items())]]
    if Path(sys.argv[0]).name in ("train.py", "evaluate.py"):  # run from the command line: its very command
        rows.append(["command", shlex.join(["python", *sys.argv])])
    elif cfg:  # called from Python (tests, notebooks): the eval-mode command that remakes the folder
        rows.append(["command (rebuilt; scoring flags such as --no_java not recorded)", reproduce_command(cfg, path)])
    rows += [[k, inputs[k]] for k in ("predictions", "references", "train_captions", "code_version") if inputs.get(k)]
    rows.append(["scoring", f"tokenizer {metrics.get('tokenizer')}; {segmentation_line(metrics)}"])
    return "<table class='about'>" + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _images_heading(shown: int, total: int, path: Path, metrics: dict) -> str:
    """Which images the report shows, and the command that shows them all."""
    if shown == total:
        return f"<h2 id='images'>Images (all {total})</h2>"
    inputs = metrics.get("inputs") or {}
    cmd = shlex.join(["python", "evaluate.py", "--predictions", inputs.get("predictions", "predictions.jsonl"),
                      "--references", inputs.get("references", "REFERENCES"), "--output_path",
                      str(path.with_name("metrics_all.json")), "--report", str(path.with_name("report_all.html")),
                      "--max_report_images", "0"])
    return (f"<h2 id='images'>Images (the first {shown} of {total})</h2><p>The first {shown} images of the predictions, "
            f"in their order; every caption is in predictions.jsonl. To show all, score again with "
            f"<code>--max_report_images 0</code> (add --image_dir for thumbnails):</p><p><code>{_e(cmd)}</code></p>")


def _image_index(image_paths: dict) -> dict:
    """Exact ids plus basename-without-extension forms, so '1000092795' finds '1000092795.jpg'."""
    index = {image_stem(k): v for k, v in image_paths.items()}
    index.update(image_paths)
    return index


def write_report(path, predictions: list[dict], references: list[dict], metrics: dict,
                 image_paths: dict[str, str] | None = None, max_images: int = 60) -> None:
    """Write the HTML report to ``path`` atomically (see the module docstring); ``max_images`` <= 0: all."""
    mt = match_predictions(predictions, references)
    per_image = {(r["image_id"], r.get("style")): r for r in metrics.get("per_image", [])}
    preds_by_image: dict[str, list] = defaultdict(list)
    for p, key in zip(predictions, mt.pred_keys):
        image_id = mt.image_of(key) if key is not None else str(p["image"])
        style = mt.styles.get(key) if key is not None else p.get("style")
        score = per_image.get((image_id, style), {}).get("CIDEr") if key is not None else None
        preds_by_image[image_id].append((p.get("style"), p["caption"], score, key is None))
    refs_by_image: dict[str, list] = defaultdict(list)
    for r in references:
        refs_by_image[str(r["image_id"])].append((r.get("style"), r["caption"]))

    cards, index = [], _image_index(image_paths or {})
    for image_id in list(preds_by_image)[:max_images] if max_images > 0 else list(preds_by_image):
        cards.append(_card(image_id, index, preds_by_image[image_id], refs_by_image.get(image_id, [])))

    counts = metrics.get("counts") or {}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>StyleCap evaluation</title>",
        f"<style>{CSS}</style></head><body><h1>StyleCap evaluation</h1>",
        _about(Path(path), metrics),
        "<h2>Metrics</h2>", _metric_table(metrics),
        _breakdown("Per style", metrics.get("per_style") or {}, True),
        _breakdown("Per group", metrics.get("per_group") or {}, False),
        _diversity(metrics.get("diversity") or {}),
        _fidelity(metrics.get("style_fidelity")),
        _style_ppl(metrics.get("style_ppl")),
        "<h2>Counts</h2>" + _table(["count", "value"], [[k, v] for k, v in counts.items()]) if counts else "",
        _images_heading(len(cards), len(preds_by_image), Path(path), metrics), "<div class='grid'>", "\n".join(cards),
        "</div></body></html>",
    ]
    atomic_write_text(Path(path), "\n".join(parts) + "\n")


def _card(image_id: str, index: dict, preds: list, refs: list) -> str:
    """One image: its thumbnail, its captions (style, CIDEr x100) and its references."""
    uri = thumbnail(index.get(image_id) or index.get(image_stem(image_id)))
    img = (f"<img src='{uri}' alt='{_e(image_id)}'>" if uri
           else f"<div class='ph'>no image<br>{_e(image_id)}</div>")
    lines = []
    for style, caption, score, unmatched in preds:
        tag = f"<span class='style'>{_e(style)}</span>: " if style else ""
        note = " <span class='skip'>(no references)</span>" if unmatched else \
            "" if score is None else f" <span class='cider'>CIDEr {100 * score:.1f}</span>"
        lines.append(f"<div class='pred'>{tag}{_e(caption)}{note}</div>")
    ref_lines = "".join(f"<div>{_e(s) + ': ' if s else ''}{_e(c)}</div>" for s, c in refs)
    return (f"<div class='card'>{img}<div><div class='cider'>{_e(image_id)}</div>{''.join(lines)}"
            f"<div class='refs'><b>references</b>{ref_lines or ' none'}</div></div></div>")
