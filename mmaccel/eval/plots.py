"""Figures of a method comparison (matplotlib, Agg backend: files only, no display).

Owns: the speed-vs-quality scatter (forward-pass ratio and wall-clock ratio against ``ar``
on x; prompt accuracy and Frechet distance on y; one labelled point per method) and the
accepted-tokens-per-step histogram of every method.

Must never: compute a figure itself (it draws the ``summary.summarise`` dict) or open a window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPEED_AXES = (("nfe_ratio_vs_ar", "forward passes / ar's"), ("wall_clock_ratio_vs_ar", "wall-clock / ar's"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # before pyplot is imported; a no-op when it already is Agg
    import matplotlib.pyplot as plt

    return plt


def plot_speed_quality(summary: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Scatter of speed ratios (x) against prompt accuracy and FD (y); None without a quality figure."""
    from mmaccel.eval.summary import fd_column

    fd_key, fd_label = fd_column(summary) or (None, "")
    quality = [(k, t) for k, t in (("accuracy", "prompt accuracy (higher is better)"),
                                   (fd_key, f"{fd_label} (lower is better)"))
               if k and all(k in s for s in summary.values())]  # fmt: skip
    if not quality or not all("nfe_ratio_vs_ar" in s for s in summary.values()):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(quality), len(SPEED_AXES), figsize=(5.5 * len(SPEED_AXES), 4 * len(quality)),
                             squeeze=False)  # fmt: skip
    for i, (qkey, qtitle) in enumerate(quality):
        for j, (skey, stitle) in enumerate(SPEED_AXES):
            ax = axes[i][j]
            for n, (label, s) in enumerate(summary.items()):
                ax.scatter(s[skey], s[qkey], color=f"C{n % 10}", s=40)
                ax.annotate(label, (s[skey], s[qkey]), textcoords="offset points", xytext=(5, 4), fontsize=8)
            ax.axvline(1.0, color="0.8", lw=0.8, zorder=0)
            ax.set_xlabel(f"{stitle} (lower is faster)")
            ax.set_ylabel(qtitle)
            ax.grid(alpha=0.3)
    fig.suptitle("speed vs quality (same prompts and seeds; ratios against ar from the same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_histograms(summary: dict[str, dict[str, Any]], path: Path, max_k: int = 32) -> Path | None:
    """One bar chart per method: fraction of verify steps that emitted k tokens (k up to ``max_k``,
    or to the largest k a step emitted)."""
    hists = {label: s["accepted_histogram"] for label, s in summary.items() if s.get("accepted_histogram")}
    if not hists:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(hists), 1, figsize=(7, 1.9 * len(hists) + 0.6), sharex=True, squeeze=False)
    for n, (ax, (label, hist)) in enumerate(zip(axes[:, 0], hists.items(), strict=True)):
        total = sum(hist) or 1
        # every count up to max_k, and beyond it up to the last one used (a masked-set step may
        # emit any number of tokens up to the image's)
        used = max((k for k, c in enumerate(hist) if c), default=0)
        ks = list(range(min(len(hist), max(max_k, used) + 1)))
        ax.bar(ks, [hist[k] / total for k in ks], color=f"C{n % 10}")
        mean = sum(k * c for k, c in enumerate(hist)) / total
        ax.set_title(f"{label}: {mean:.2f} tokens per step on average", fontsize=9)
        ax.set_ylabel("fraction")
    axes[-1, 0].set_xlabel("tokens emitted by one verify step")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
