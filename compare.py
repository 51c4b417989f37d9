r"""Compare runs side by side: metrics table, seeds grouped (mean ± std), paired-bootstrap significance
against a baseline, and plots.

    python compare.py output/ablation/eval-* output/ablation/run-* --baseline style_mode=embedding \
        --output_path output/ablation/compare

PATHs are eval folders (metrics.json + predictions, from `train.py --mode eval` or `evaluate.py`) and run
folders (config.json + TensorBoard events, from train.py). An eval folder made by `train.py --mode eval`
knows its run (eval_config.json), so the two are shown as one entry. Each entry is labelled by the
settings in which the entries differ (e.g. `style_mode=token`), unless --labels is given; entries that
differ only in --seed form one group (two evaluations of one run, e.g. best.pt and last.pt, are told
apart by the checkpoint's name, never averaged as seeds). Writes comparison.csv / .md / .html / .json
and PNG plots to --output_path; the significance table gives p-values over a bootstrap of images.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from loguru import logger

from stylecap.eval.metric_specs import MetricSpec, compared
from stylecap.eval.significance import (bleu_statistic, group_statistic, mean_statistic, paired_bootstrap,
                                   stats_array)
from stylecap.utils import UserError, atomic_write_json, atomic_write_text, run_main, setup_logging

# settings that say where or how a run was executed, not what was trained: never part of a label
IGNORED = {"output_path", "resume", "config", "model_path", "mode", "device", "num_workers", "ddp_timeout",
           "max_checkpoint_num", "save_by", "save_step", "eval_step", "num_samples", "bs_eval", "train_captions",
           "clip_model_path", "clip_backend", "no_java", "allow_clip_mismatch", "segment", "gpt2_path"}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="eval folders and/or run folders")
    p.add_argument("--output_path", required=True, help="folder for comparison.{csv,md,html} and the plots")
    p.add_argument("--labels", nargs="+", help="one label per PATH (default: the settings in which they differ)")
    p.add_argument("--baseline", help="label of the baseline for the paired bootstrap (default: the first entry)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p


# ---------------------------------------------------------------------------------------------- loading
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); is this an eval or run folder?") from None


def _flat(prefix: str, d: dict) -> dict:
    return {f"{prefix}{k}": v for k, v in d.items() if not isinstance(v, (dict, list))}


def load_entry(path: Path) -> dict:
    """{"path", "settings", "metrics"?, "curves"?, "params"?} from an eval folder or a run folder."""
    if not path.is_dir():
        raise UserError(f"{path} is not a folder: give eval folders (metrics.json) or run folders (config.json)")
    entry: dict = {"path": str(path), "settings": {}}
    if (path / "metrics.json").is_file():
        entry["metrics"] = _read_json(path / "metrics.json")
        info = _read_json(path / "eval_config.json") if (path / "eval_config.json").is_file() else {}
        entry["settings"] = {**_flat("", info.get("train_args", {})), **_flat("decode.", info.get("decode", {}))}
        entry["params"] = info.get("trainable_parameters")
        entry["checkpoint"] = Path(info["model_path"]).name if info.get("model_path") else None  # best.pt, last.pt
        run = Path(info["model_path"]).parent.parent if info.get("model_path") else None
        entry["run_dir"] = str(run) if run and (run / "config.json").is_file() else None
    elif (path / "config.json").is_file():
        cfg = _read_json(path / "config.json")
        entry["settings"] = _flat("", cfg.get("args", {}))
        entry["params"] = cfg.get("trainable_parameters")
        entry["run_dir"] = str(path)
    else:
        raise UserError(f"{path} is neither an eval folder (metrics.json) nor a run folder (config.json)")
    if entry.get("run_dir"):
        entry["curves"] = read_curves(Path(entry["run_dir"]))
    return entry


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """val/CIDEr (x100, whichever scale the run wrote) and val/loss from the run's TensorBoard events:
    {tag: [(step, value)]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    from stylecap.eval.tensorboard import to_shown_scale
    return {t: to_shown_scale(t, [(e.step, e.value) for e in acc.Scalars(t)], _description(acc, t))
            for t in ("val/CIDEr", "val/loss") if t in tags}


def _description(acc, tag: str) -> str:
    """The summary description of a tag ('' when none): "x100" marks a metric written on the tables' scale."""
    try:
        return acc.SummaryMetadata(tag).summary_description
    except KeyError:
        return ""


def merge_runs_into_evals(entries: list[dict]) -> list[dict]:
    """A run folder given together with its eval folder becomes one entry."""
    evaluated = {e["run_dir"] for e in entries if "metrics" in e and e.get("run_dir")}
    return [e for e in entries if "metrics" in e or e.get("run_dir") not in evaluated]


def make_labels(entries: list[dict]) -> None:
    """label = the settings that differ between entries (seed excluded: it groups); group = label; entries
    that would share a label without differing in seed are told apart (separate_non_seed_groups)."""
    keys = sorted({k for e in entries for k in e["settings"]} - IGNORED)
    differ = [k for k in keys if len({json.dumps(e["settings"].get(k)) for e in entries}) > 1]
    shown = [k for k in differ if k != "seed"]
    for e in entries:
        e["label"] = ", ".join(f"{k}={e['settings'].get(k)}" for k in shown) or Path(e["path"]).name
        e["seed"] = e["settings"].get("seed")
    separate_non_seed_groups(entries)


def not_seed_replicas(members: list[dict]) -> bool:
    """Whether entries sharing a label are NOT one setting over different seeds: two of them have the
    same seed (best.pt and last.pt of one run, one checkpoint evaluated twice) or one has none recorded."""
    seeds = [json.dumps(e["seed"]) for e in members]
    return len(members) > 1 and ("null" in seeds or len(set(seeds)) < len(seeds))


def separate_non_seed_groups(entries: list[dict]) -> None:
    """Only entries that differ in --seed alone form a group (mean ± std over seeds). Entries that share
    a label otherwise get what tells them apart: the checkpoint's name, else the folder's name, else
    its path (e.g. `style_mode=token, checkpoint=best.pt`)."""
    tags = (lambda e: f"checkpoint={e.get('checkpoint')}", lambda e: Path(e["path"]).name, lambda e: e["path"])
    for tag in tags:
        for label in dict.fromkeys(e["label"] for e in entries):
            members = [e for e in entries if e["label"] == label]
            if not_seed_replicas(members) and len({tag(e) for e in members}) > 1:
                for e in members:
                    e["label"] = f"{label}, {tag(e)}"


def check_label_groups(entries: list[dict]) -> None:
    """--labels may put several entries under one label only when they are seeds of one setting."""
    for label in dict.fromkeys(e["label"] for e in entries):
        members = [e for e in entries if e["label"] == label]
        if not_seed_replicas(members):
            raise UserError(f"--labels gives {label!r} to {[e['path'] for e in members]}, with the same seed or none "
                            f"recorded (seeds {[e['seed'] for e in members]}): only runs that differ in --seed form a "
                            "group; give them different labels")


# ------------------------------------------------------------------------------------------- checking
def _image_key(rec: dict, by_image: bool):
    return rec["image_id"] if by_image else (rec["image_id"], rec.get("style"))


def check_comparable(entries: list[dict]) -> bool:
    """Same test set, same references, same tokenizer/segmentation, or a UserError. Returns whether
    images align by image id alone (every image scored once, as with one style per test image)."""
    scored = [e for e in entries if "metrics" in e]
    if not scored:
        return True
    by_image = all(len({r["image_id"] for r in e["metrics"]["per_image"]}) == len(e["metrics"]["per_image"])
                   for e in scored)
    first = scored[0]
    first_keys = {_image_key(r, by_image) for r in first["metrics"]["per_image"]}
    for e in scored[1:]:
        keys = {_image_key(r, by_image) for r in e["metrics"]["per_image"]}
        if keys != first_keys:
            extra = sorted(map(str, keys ^ first_keys))[:3]
            raise UserError(f"{first['path']} ({len(first_keys)} images) and {e['path']} ({len(keys)} images) were "
                            f"scored on different test sets (e.g. {extra}); evaluate every run on the same split")
        for field in ("references_sha256", "tokenizer", "segmentation"):
            a, b = first["metrics"].get(field), e["metrics"].get(field)
            if a != b:
                raise UserError(f"{first['path']} and {e['path']} differ in {field} ({a} vs {b}): scores made with "
                                "different references or tokenization cannot be compared; re-score both the same way")
    return by_image


# ------------------------------------------------------------------------------------------ the table
def columns() -> dict[str, MetricSpec]:
    """The table's metric columns, in order: each metric of metric_specs.METRICS with a ``compare`` part."""
    return {s.compare.column: s for s in compared()}


def row_values(m: dict) -> dict:
    """{column: value} of one metrics.json, None where absent, for every column."""
    return {column: s.value(m) for column, s in columns().items()}


def group_rows(entries: list[dict]) -> list[dict]:
    """One row per label: mean, std (n > 1) and n over its seeds."""
    rows = []
    for label in dict.fromkeys(e["label"] for e in entries):
        members = [e for e in entries if e["label"] == label]
        scored = [e for e in members if "metrics" in e]
        row = {"label": label, "n": len(scored), "seeds": [e["seed"] for e in members],
               "params": members[0].get("params"), "mean": {}, "std": {}}
        values = [row_values(e["metrics"]) for e in scored]
        for k in row_values({}):
            vals = [v[k] for v in values if v[k] is not None]
            row["mean"][k] = float(np.mean(vals)) if vals else None
            row["std"][k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        rows.append(row)
    return rows


SCALED = {k for k, s in columns().items() if s.compare.shown.scale == 100}  # shown x100, as papers do


def fmt(row: dict, k: str) -> str:
    """'mean ± std' of column k, as its metric spec shows it; '—' without a value."""
    v, s = row["mean"].get(k), row["std"].get(k)
    if v is None:
        return "—"
    shown = columns()[k].compare.shown
    return shown(v) + (f" ± {shown(s)}" if s is not None else "")


# -------------------------------------------------------------------------------------- significance
def per_image_arrays(e: dict, keys: list, by_image: bool) -> dict[str, np.ndarray | None]:
    recs = {_image_key(r, by_image): r for r in e["metrics"]["per_image"]}
    rows = [recs[k] for k in keys]
    out = {"CIDEr": np.array([r.get("CIDEr", np.nan) for r in rows], dtype=np.float64)}
    out["BLEU-4"] = stats_array([r["bleu_stats"] for r in rows]) if all("bleu_stats" in r for r in rows) else None
    hits = [r.get("style_top1") for r in rows]
    out["style top-1"] = np.array(hits, dtype=np.float64) if all(h is not None for h in hits) else None
    return out


def significance(entries: list[dict], baseline: str, by_image: bool, resamples: int, seed: int) -> dict:
    """Each label vs the baseline label, paired over images (a cluster bootstrap: each drawn image
    brings all its scored (image, style) rows). A group's value on a resample is the mean of its runs'
    (seeds') corpus metrics, as in the table."""
    scored = [e for e in entries if "metrics" in e]
    keys = sorted({_image_key(r, by_image) for r in scored[0]["metrics"]["per_image"]}, key=str)
    # the unit of resampling is the image: an image's rows (one per style) are drawn together
    images = [str(k if by_image else k[0]) for k in keys]
    stats = {"CIDEr": mean_statistic, "BLEU-4": bleu_statistic, "style top-1": mean_statistic}
    arrays = [(e["label"], per_image_arrays(e, keys, by_image)) for e in scored]  # once per entry

    def group(label: str, metric: str):
        members = [a[metric] for lab, a in arrays if lab == label]
        return None if any(m is None for m in members) else group_statistic(members, stats[metric])

    out = {}
    for label in dict.fromkeys(e["label"] for e in scored):
        if label != baseline:
            out[label] = {}
            for metric in stats:
                sys_, base = group(label, metric), group(baseline, metric)
                out[label][metric] = (None if sys_ is None or base is None
                                      else paired_bootstrap(sys_, base, len(keys), resamples, seed, clusters=images))
    return out


# ----------------------------------------------------------------------------------------- writing
def write_outputs(out: Path, rows: list[dict], sig: dict, baseline: str | None, plots: list[str],
                  context: dict | None = None) -> Path:
    cols = list(row_values({}))
    sig_header = significance_cells(sig, "")[0]
    csv_lines = [",".join(["label", "n", "seeds", "trainable_parameters"] + [c for k in cols for c in (k, f"{k} std")]
                          + sig_header)]
    for r in rows:
        cells = [json.dumps(r["label"]), str(r["n"]), json.dumps(" ".join(map(str, r["seeds"]))), str(r["params"] or "")]
        for k in cols:
            cells += ["" if r["mean"][k] is None else f"{r['mean'][k]:.6g}", "" if r["std"][k] is None else f"{r['std'][k]:.6g}"]
        csv_lines.append(",".join(cells + significance_cells(sig, r["label"])[1]))
    atomic_write_text(out / "comparison.csv", "\n".join(csv_lines) + "\n")

    head = ["run", "n"] + cols + ["trainable params"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        params = f"{r['params'] / 1e6:.1f}M" if r["params"] else "—"
        md.append("| " + " | ".join([r["label"], str(r["n"])] + [fmt(r, k) for k in cols] + [params]) + " |")
    sig_md = significance_markdown(sig, baseline)
    text = "\n".join(md + sig_md) + "\n"
    atomic_write_text(out / "comparison.md", text)
    atomic_write_json(out / "comparison.json", {"rows": rows, "significance": sig, "baseline": baseline,
                                                "context": context})
    html = _html(text, plots, context)
    atomic_write_text(out / "comparison.html", html)
    return out / "comparison.html"


SIG_COLUMNS = ("diff", "ci95 low", "ci95 high", "p_value")  # per metric, in comparison.csv


def significance_cells(sig: dict, label: str) -> tuple[list[str], list[str]]:
    """comparison.csv's significance columns ("CIDEr diff", ..., "CIDEr p_value" per metric) and one
    row's cells (empty for the baseline and where there is no per-image data)."""
    metrics = list(dict.fromkeys(m for per in sig.values() for m in per))
    header, cells = [f"{m} {c}" for m in metrics for c in SIG_COLUMNS], []
    for m in metrics:
        res = (sig.get(label) or {}).get(m)
        cells += ["" if res is None else f"{v:.6g}" for v in
                  ((res["diff"], *res["ci95"], res["p_value"]) if res else (None,) * len(SIG_COLUMNS))]
    return header, cells


def significance_markdown(sig: dict, baseline: str | None) -> list[str]:
    """The significance table of comparison.md (and .html): difference x100, its two-sided 95% interval
    and the one-sided p-value (share of resamples where the run is not better than the baseline)."""
    if not sig:
        return []
    counts = next((res for per in sig.values() for res in per.values() if res), None)
    unit = (f"{counts['images']} images, {counts['rows']} rows, {counts['resamples']} resamples" if counts else "")
    out = [f"\nPaired bootstrap over images against **{baseline}** ({unit}; each resample draws images with all "
           "their rows). Difference x100, its 95% interval, and the p-value: the share of resamples in which "
           "the run is not better than the baseline (one-sided; a tie counts as not better):\n",
           "| run | metric | difference | 95% interval | p-value |", "|---|---|---|---|---|"]
    for label, per in sig.items():
        for metric, res in per.items():
            if res is None:
                out.append(f"| {label} | {metric} | — | (no per-image data) | |")
            else:
                lo, hi = res["ci95"]
                out.append(f"| {label} | {metric} | {res['diff'] * 100:+.2f} | [{lo * 100:+.2f}, {hi * 100:+.2f}] "
                           f"| {res['p_value']:.3f} |")
    return out


def describe(entries: list[dict]) -> dict:
    """What was compared, for the page's title and header (and comparison.json's "context"): the date,
    the test set (references file, images, references_sha256) and every entry (label, seed, folders)."""
    import datetime
    scored = [e for e in entries if "metrics" in e]
    refs = sorted({str((e["metrics"].get("inputs") or {}).get("references")) for e in scored})
    first = scored[0]["metrics"] if scored else {}
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "test_set": {"references": refs, "images": len({r["image_id"] for r in first.get("per_image", [])}),
                         "references_sha256": first.get("references_sha256")},
            "entries": [{"label": e["label"], "seed": e.get("seed"), "path": e["path"], "run_dir": e.get("run_dir")}
                        for e in entries]}


def _inline(text: str) -> str:
    """One line of comparison.md as HTML: escaped, with **bold** rendered."""
    import html as h
    import re
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", h.escape(text))


def _html(markdown_tables: str, plots: list[str], context: dict | None = None) -> str:
    import html as h
    context = context or {"date": "", "test_set": {"references": [], "images": 0}, "entries": []}
    test = context["test_set"]
    groups = len(dict.fromkeys(e["label"] for e in context["entries"]))
    title = (f"StyleCap comparison: {groups} groups ({len(context['entries'])} runs) on "
             f"{', '.join(Path(r).name for r in test['references']) or 'no test set'}")
    body = [f"<h1>{h.escape(title)}</h1>",
            f"<p>{h.escape(context['date'])}; test set {h.escape(', '.join(test['references']))} "
            f"({test['images']} images, references sha256 {h.escape(str(test.get('references_sha256'))[:12])})</p>",
            "<table class='ctx'><tr><th>run</th><th>seed</th><th>eval or run folder</th><th>run folder</th></tr>" +
            "".join(f"<tr><td>{h.escape(e['label'])}</td><td>{h.escape(str(e['seed']))}</td><td>{h.escape(e['path'])}"
                    f"</td><td>{h.escape(str(e['run_dir'] or ''))}</td></tr>" for e in context["entries"]) + "</table>"]
    for block in markdown_tables.split("\n\n"):
        lines = [ln for ln in block.strip().splitlines() if ln.strip()]
        table = [ln for ln in lines if ln.startswith("|")]
        body += [f"<p>{_inline(ln)}</p>" for ln in lines if not ln.startswith("|")]
        if table:
            cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in table if not set(ln) <= set("|-")]
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells[0]) + "</tr>" +
                        "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
                        + "</table>")
    body += [f'<p><img src="{h.escape(p)}" alt="{h.escape(p)}"></p>' for p in plots]
    css = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
           ".ctx td,.ctx th{text-align:left}"
           "img{max-width:100%}")
    return (f"<!doctype html><meta charset='utf-8'><title>{h.escape(title)}</title><style>{css}</style>"
            + "".join(body))


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    out = Path(args.output_path)
    setup_logging(None)
    entries = [load_entry(Path(p)) for p in args.paths]
    if args.labels:
        if len(args.labels) != len(args.paths):
            raise UserError(f"--labels has {len(args.labels)} labels for {len(args.paths)} paths; give one per PATH")
        for e, label in zip(entries, args.labels):
            e["label"], e["seed"] = label, e["settings"].get("seed")
        entries = merge_runs_into_evals(entries)
        check_label_groups(entries)
    else:
        entries = merge_runs_into_evals(entries)
        make_labels(entries)
    by_image = check_comparable(entries)
    rows = group_rows(entries)
    scored_labels = [r["label"] for r in rows if r["n"]]
    baseline = args.baseline or (scored_labels[0] if scored_labels else None)
    if baseline is not None and baseline not in scored_labels:
        raise UserError(f"--baseline {baseline!r} is not one of the evaluated entries: {scored_labels}")
    sig = significance(entries, baseline, by_image, args.resamples, args.seed) if len(scored_labels) > 1 else {}
    from stylecap.eval.plots import comparison_plots
    plots = comparison_plots(out, entries, rows)
    path = write_outputs(out, rows, sig, baseline, plots, describe(entries))
    print((out / "comparison.md").read_text(encoding="utf-8"))
    logger.info(f"comparison of {len(entries)} entries in {len(rows)} groups: {path.resolve()}")
    return 0


if __name__ == "__main__":
    run_main(main)
