"""PNG plots for compare.py (matplotlib, headless): validation curves, metric bars, per-style and
per-group bars. Each function returns the file names it wrote (relative to the output folder)."""
from __future__ import annotations

from pathlib import Path

from stylecap.eval.metric_specs import compared, spec

METRIC_BARS = tuple(s.compare.column for s in compared() if s.compare.plotted)  # BLEU-4 .. SPICE, style top-1


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path, name: str) -> str:
    from stylecap.utils import atomic_write
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    _plt().close(fig)
    return name


CURVES = {"val/CIDEr": "validation CIDEr (x100)", "val/loss": "validation loss (per token)"}


def curves_figure(entries: list[dict]):
    """val/CIDEr (x100, as the tables; compare.read_curves converts older raw runs) and val/loss against
    the optimizer step, one line per run; labelled axes."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (tag, ylabel) in zip(axes, CURVES.items()):
        for e in entries:
            pts = (e.get("curves") or {}).get(tag, [])
            if pts:
                seed = f" (seed {e['seed']})" if e.get("seed") is not None else ""
                ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", label=e["label"] + seed)
        ax.set_title(tag)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def curves(out: Path, entries: list[dict]) -> list[str]:
    """curves.png (curves_figure) when some entry has curves."""
    runs = [e for e in entries if e.get("curves")]
    return [_save(curves_figure(runs), out, "curves.png")] if runs else []


def _bars_figure(title: str, ylabel: str, labels: list[str], series: dict[str, list[float | None]],
                 errors: dict[str, list[float | None]] | None = None):
    """Grouped bars: one group per label, one bar per series; ``errors[series]`` draws its error bars
    (absent or None: none)."""
    import numpy as np
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * max(1, len(series)) / 2), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name_, vals) in enumerate(series.items()):
        ys = [np.nan if v is None else v for v in vals]
        err = None
        if errors and errors.get(name_):
            err = [0 if e is None else e for e in errors[name_]]
        ax.bar(x + i * width - 0.4 + width / 2, ys, width, yerr=err, label=name_, capsize=2)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def metrics_figure(rows: list[dict]):
    """metrics.png: METRIC_BARS x100 per row (a group of seeds); the legend gives each row's n, and
    only rows with n > 1 get error bars (sample std over seeds): one seed has no spread to draw."""
    metrics = [m for m in METRIC_BARS if any(r["mean"].get(m) is not None for r in rows)]
    scaled = lambda m, v: None if v is None else spec(m).scale * v  # all x100 (the list says so)
    series = {f"{r['label']} (n={r['n']})": [scaled(m, r["mean"].get(m)) for m in metrics] for r in rows}
    errors = {f"{r['label']} (n={r['n']})": [scaled(m, r["std"].get(m)) for m in metrics] if r["n"] > 1 else None
              for r in rows}
    several = any(r["n"] > 1 for r in rows)
    title = "metrics" + ("; error bars: std over seeds (n > 1)" if several else "; one seed each: no error bars")
    return _bars_figure(title, "score (x100)", metrics, series, errors)


def comparison_plots(out: Path, entries: list[dict], rows: list[dict]) -> list[str]:
    """All plots for compare.py's rows (grouped runs) and entries (single runs, for curves)."""
    written = curves(out, entries)
    scored = [r for r in rows if r["n"]]
    if not scored:
        return written
    written.append(_save(metrics_figure(scored), out, "metrics.png"))
    for key, name in (("per_style", "per_style.png"), ("per_group", "per_group.png")):
        groups = sorted({g for e in entries if "metrics" in e for g in (e["metrics"].get(key) or {})})
        if not groups:
            continue
        series = {}
        for label in (r["label"] for r in scored):
            members = [e for e in entries if e.get("label") == label and "metrics" in e]
            vals = []
            for g in groups:
                cs = [(e["metrics"][key].get(g) or {}).get("CIDEr") for e in members]
                cs = [c for c in cs if c is not None]
                vals.append(spec("CIDEr").scale * sum(cs) / len(cs) if cs else None)
            series[label] = vals
        written.append(_save(_bars_figure(f"CIDEr {key.replace('_', ' ')}", "CIDEr (x100)", groups, series), out, name))
    return written
