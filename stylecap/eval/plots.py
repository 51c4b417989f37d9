"""PNG plots for compare.py (matplotlib, headless): validation curves, metric bars, per-style and
per-group bars. Each function returns the file names it wrote (relative to the output folder)."""
from __future__ import annotations

from pathlib import Path

from stylecap.eval.metric_specs import compared

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


def curves(out: Path, entries: list[dict]) -> list[str]:
    """val/CIDEr and val/loss against the optimizer step, one line per run."""
    runs = [e for e in entries if e.get("curves")]
    if not runs:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, tag in zip(axes, ("val/CIDEr", "val/loss")):
        for e in runs:
            pts = e["curves"].get(tag, [])
            if pts:
                seed = f" (seed {e['seed']})" if e.get("seed") is not None else ""
                ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", label=e["label"] + seed)
        ax.set_title(tag)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return [_save(fig, out, "curves.png")]


def _bars(out: Path, name: str, title: str, labels: list[str], series: dict[str, list[float | None]],
          errors: dict[str, list[float | None]] | None = None) -> str:
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
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out, name)


def comparison_plots(out: Path, entries: list[dict], rows: list[dict]) -> list[str]:
    """All plots for compare.py's rows (grouped runs) and entries (single runs, for curves)."""
    written = curves(out, entries)
    scored = [r for r in rows if r["n"]]
    if not scored:
        return written
    metrics = [m for m in METRIC_BARS if any(r["mean"].get(m) is not None for r in scored)]
    written.append(_bars(out, "metrics.png", "metrics (x100; error bars: std over seeds)", metrics,
                         {r["label"]: [None if r["mean"][m] is None else 100 * r["mean"][m] for m in metrics] for r in scored},
                         {r["label"]: [None if r["std"][m] is None else 100 * r["std"][m] for m in metrics] for r in scored}))
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
                vals.append(100 * sum(cs) / len(cs) if cs else None)
            series[label] = vals
        written.append(_bars(out, name, f"CIDEr x100 {key.replace('_', ' ')}", groups, series))
    return written
