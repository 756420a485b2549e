"""Figures of the built-in suites (matplotlib, Agg; the report embeds them)."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from anira.plots import styled  # noqa: E402

COLORS = {"static": "#4c72b0", "execution": "#dd8452", "both": "#55a868", "size": "#8c8c8c"}


@styled
def attribution_figure(result: dict[str, Any]) -> Figure:
    """ΔR² per feature (full model, coloured by kind; hatched = below the keep
    threshold) and the static / execution split of explained variance."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    feats = sorted(result["full"]["features"], key=lambda f: -f["delta_r2"])
    x = np.arange(len(feats))
    ax.bar(x, [100 * f["delta_r2"] for f in feats], color=[COLORS[f["kind"]] for f in feats],
           hatch=None, edgecolor="black", linewidth=0.5)
    for i, f in enumerate(feats):
        if not f.get("kept"):
            ax.patches[i].set_hatch("//")
            ax.patches[i].set_alpha(0.5)
    ax.axhline(100 * result["thresholds"]["min_delta_r2"], color="black", linestyle=":", linewidth=1)
    ax.set_xticks(x, [f["name"] for f in feats], rotation=40, ha="right")
    ax.set_ylabel("ΔR² (%)")
    ax.set_title(f"ΔR² per feature (R² = {result['full']['r2']:.3f}; hatched: dropped)")
    handles = [matplotlib.patches.Patch(color=COLORS[k], label=k) for k in ("static", "execution")]
    ax.legend(handles=handles, frameon=False)

    labels, unique, shares, errs = [], [], [], []
    boot = result.get("bootstrap") or {}
    for kind in ("static", "execution"):
        labels.append(kind)
        unique.append(100 * result["selected"]["delta_r2_kind"].get(kind, 0.0))
        share = result.get(f"share_{kind}")
        shares.append(100 * share if share is not None and np.isfinite(share) else 0.0)
        ci = boot.get(f"share_{kind}_ci")
        errs.append([100 * (shares[-1] / 100 - ci[0]), 100 * (ci[1] - shares[-1] / 100)] if ci and np.all(np.isfinite(ci)) else [0, 0])
    xi = np.arange(2)
    ax2.bar(xi - 0.2, unique, 0.4, color=[COLORS[k] for k in labels], alpha=0.55, label="unique ΔR² (%)")
    ax2.bar(xi + 0.2, shares, 0.4, color=[COLORS[k] for k in labels], yerr=np.array(errs).T,
            capsize=3, label="share of R² (%)", edgecolor="black", linewidth=0.5)
    ax2.set_xticks(xi, labels)
    ax2.set_ylim(0, 125)  # headroom for the legend above the bars (shares are at most 100 %)
    ax2.set_yticks(range(0, 101, 20))
    ax2.set_title(f"by kind (reading: {result['reading']})")
    ax2.legend(frameon=False, loc="upper center", ncol=2, fontsize=7.5)
    return fig


@styled
def decision_figure(result: dict[str, Any]) -> Figure:
    """AUROC and balanced accuracy per feature set (mean ± std over folds) with baselines."""
    fig = Figure(figsize=(7.5, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    names = [n for n in ("static", "execution", "both") if n in result["sets"]]
    for ax, metric, title in zip(axes, ("auroc", "balanced_accuracy"), ("AUROC", "balanced accuracy")):
        means = [result["sets"][n][metric]["mean"] for n in names]
        stds = [np.nan_to_num(result["sets"][n][metric]["std"]) for n in names]
        ax.bar(np.arange(len(names)), means, yerr=stds, capsize=3, color=[COLORS[n] for n in names],
               edgecolor="black", linewidth=0.5)
        styles = {"majority": ":", "shuffled": "--", "iteration_only": "-."}
        for base, style in styles.items():
            if base in result["baselines"]:
                value = result["baselines"][base][metric]["mean"]
                if value is not None and np.isfinite(value):
                    ax.axhline(value, color="black", linestyle=style, linewidth=1, label=base.replace("_", " "))
        ax.set_xticks(np.arange(len(names)), names)
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
    fig.legend(*axes[0].get_legend_handles_labels(), title="baselines", frameon=False, loc="outside right center")
    v = result["verdict"]
    fig.suptitle(f"decision probes ({result['mode']}): verdict {v['label']}")
    return fig
