"""PNG plots for evaluation reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from nearest_prompt.common.extras import require

from .evaluate import EvalReport


def plot_report(report: EvalReport, path: str | Path) -> Path:
    """Left: score distribution per method. Right: score against confidence for methods that have one.
    Writes ``path`` directly: callers write through ``common.atomic.atomic_path``."""
    require("eval", what="the eval report's plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    with_conf = [m for m in report.methods if m.confidence is not None]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(report.methods) + 2.5))
    ax = axes[0]
    ax.boxplot([m.scores for m in report.methods], vert=False, showmeans=True)
    ax.set_yticks(range(1, len(report.methods) + 1), [m.name for m in report.methods], fontsize=8)
    ax.set_xlabel("cosine to MiniLM(true prompt)")
    ax.set_title(f"score per method (n={len(report.items)})")
    ax.invert_yaxis()
    ax = axes[1]
    for m in with_conf[:4]:
        ax.scatter(m.confidence, m.scores, s=8, alpha=0.5, label=m.name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("score")
    ax.set_title("score against confidence")
    if with_conf:
        ax.legend(fontsize=7)
    fig.suptitle(report.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path
