"""Plot of pseudo-label rounds: validation (and test) WAF per round over the pseudo-labels each
took."""

from __future__ import annotations

from pathlib import Path


def plot_rounds(rounds: list[dict], path, test_waf: dict[int, float] | None = None) -> Path:
    """Write a PNG of `rounds` (the `rounds` list of `rounds/summary.json`): WAF lines on the left
    axis, pseudo-labels added per round as bars on the right; `test_waf` maps round -> test WAF."""
    # Figure + the Agg canvas directly, as in `plot_confusion`: no pyplot, so no global backend
    # switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not rounds:
        raise ValueError("plot_rounds: expected at least one round (the `rounds` list of "
                         "rounds/summary.json, round 0 being the plain `ecmf train` run), got none")
    rounds = sorted(rounds, key=lambda r: int(r["round"]))
    xs = [int(r["round"]) for r in rounds]
    test_waf = {int(k): float(v) for k, v in (test_waf or {}).items()}
    unknown = sorted(set(test_waf) - set(xs))
    if unknown:
        raise ValueError(f"plot_rounds: test_waf has round(s) {unknown} that are not among the "
                         f"rounds {xs}")

    fig = Figure(figsize=(7.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bars_ax = ax.twinx()
    # Bars behind the lines: the twin axis is drawn on top unless the left axis is raised.
    ax.set_zorder(bars_ax.get_zorder() + 1)
    ax.patch.set_visible(False)

    bars = bars_ax.bar(xs, [int(r["added"]) for r in rounds], width=0.6, color="tab:gray",
                       alpha=0.35, label="pseudo-labels added")
    handles = [ax.plot(xs, [float(r["val_waf"]) for r in rounds], marker="o", color="tab:blue",
                       label="validation WAF (out-of-fold)")[0]]
    if test_waf:
        tx = sorted(test_waf)
        handles += ax.plot(tx, [test_waf[k] for k in tx], marker="s", linestyle="--",
                           color="tab:orange", label="test WAF")
    handles.append(bars)

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("WAF")
    bars_ax.set_ylabel("pseudo-labels added")
    bars_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Pseudo-label rounds")
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out
