"""Forest plots of the claims table (acllib.claims.judge): one line per claim row, its estimate and
interval in the unit of its test against the no-effect value and the claim's margins, the verdict
as the marker's colour and shape, the paper's own effect beside it. Drawn from the table alone, so
the book, `python -m acllib claims --plot FILE` and a user's own profile draw the same figure.

Rows of a family are grouped by unit (points, degrees, shares, variance ratios, exits ...), one
panel per unit with its own x axis; the variance ratios on a log axis. Rows with nothing to draw
(not testable here, runs missing, a compared model that did not learn) are listed under the plot."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import claims, stats
from .config import make_config

_C = sns.color_palette("colorblind")
# verdict -> (colour, marker, filled): shape and colour both change, so print in grey still reads
VERDICT_STYLE = {
    stats.SUPPORTED: (_C[2], "o", True),
    stats.CONTRADICTED: (_C[3], "X", True),
    stats.INCONCLUSIVE: ((0.45, 0.45, 0.45), "o", False),
    claims.UNDERPOWERED: (_C[1], "v", False),
    claims.DIDNT_LEARN: (_C[4], "s", False),
}
MARGIN_COLOR = _C[3]
PAPER_COLOR = (0.1, 0.1, 0.1)
# the x axis of each unit: what the estimate is (intervals' levels are in each row's label)
AXIS_LABELS = {
    " pts": "A − B (the claim's first method − its second), points of the task's metric",
    "°": "A − B, degrees",
    " (share)": "A − B, share of batches over 90°",
    "share": "share of batches (line: range over seeds)",
    "× variance": "variance ratio A / B (log scale)",
    "exits": "exits where A is higher (line: shown higher, 95%, to all)",
    "×": "A − B, speed-up at the common target",
    "": "A − B",
    " pts (sd over λ)": "A − B, each seed's sd over λ, points",
    " pts (largest |Δ| over λ)": "largest |mean at λ − mean at λ = 0.02|, points",
}
LABEL_WIDTH = 44  # characters per line of a row's label: the figure fits a laptop-wide page


def row_key(row) -> str:
    """The id of a row's artists in the figure (gid): claim id and task."""
    return f"{row['id']}|{row['task']}"


def drawable(table: pd.DataFrame) -> pd.Series:
    """Rows with an estimate to draw."""
    return table["estimate"].notna() & table["verdict"].isin(list(VERDICT_STYLE))


def row_label(row) -> str:
    level = row.get("interval level")
    if len(_finite(row.get("lo"), row.get("hi"))) < 2:
        what = "no interval"  # a sign test (no spread) or an intersection-union over lambda
    else:
        what = f"{level:.0%} CI" if isinstance(level, float) and np.isfinite(level) else "seeds' range"
    text = textwrap.fill(str(row["claim"]), LABEL_WIDTH)
    return f"{text}\n{str(row['task']).upper()} · {int(row['seeds'])} seeds · {what}"


def _finite(*xs) -> list[float]:
    return [float(x) for x in xs if x is not None and isinstance(x, (int, float, np.floating)) and np.isfinite(x)]


def _panel(ax, rows: pd.DataFrame, unit: str) -> None:
    n = len(rows)
    ys = np.arange(n)[::-1]  # first row on top
    log = unit == "× variance"
    xs = []
    for y, (_, r) in zip(ys, rows.iterrows()):
        key = row_key(r)
        colour, marker, filled = VERDICT_STYLE[r["verdict"]]
        for ref in _finite(r.get("reference")):
            ax.plot([ref, ref], [y - 0.5, y + 0.5], color="0.25", lw=0.9, zorder=1, gid=f"reference|{key}")
        for name in ("margin lo", "margin hi"):
            for m in _finite(r.get(name)):
                ax.plot([m, m], [y - 0.42, y + 0.42], color=MARGIN_COLOR, lw=1.4, ls=(0, (3, 2)), zorder=2,
                        gid=f"margin|{key}")
        lo, hi = r.get("lo"), r.get("hi")
        if len(_finite(lo, hi)) == 2:
            ranged = not np.isfinite(r.get("interval level", np.nan))  # a range over seeds, not an interval
            ax.plot([lo, hi], [y, y], color=colour, lw=1.2 if ranged else 2.2, ls=":" if ranged else "-",
                    solid_capstyle="butt", zorder=3, gid=f"interval|{key}")
        ax.scatter([r["estimate"]], [y], s=58, marker=marker, zorder=4, linewidths=1.6, gid=f"estimate|{key}",
                   facecolors=[colour] if filled else ["white"], edgecolors=[colour])
        for e in _finite(r.get("paper effect")):
            ax.scatter([e], [y + 0.28], s=30, marker="D", facecolors="none", edgecolors=[PAPER_COLOR],
                       linewidths=1.0, zorder=4, gid=f"paper|{key}")
        xs += _finite(r["estimate"], lo, hi, r.get("reference"), r.get("margin lo"), r.get("margin hi"),
                      r.get("paper effect"))
    ax.set_yticks(ys, [row_label(r) for _, r in rows.iterrows()], fontsize=7.5)
    ax.set_ylim(-0.6, n - 0.4)
    ax.grid(axis="y", visible=False)
    if log:
        ax.set_xscale("log")
        pos = [x for x in xs if x > 0]
        if pos:
            ax.set_xlim(min(pos) / 1.5, max(pos) * 1.5)
    elif xs:
        lo, hi = min(xs), max(xs)
        pad = 0.08 * (hi - lo) if hi > lo else max(abs(lo) * 0.1, 0.5)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel(AXIS_LABELS.get(unit, unit.strip() or "estimate"), fontsize=8.5)
    ax.tick_params(axis="x", labelsize=8)


def _legend_handles(verdicts) -> list:
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], ls="", marker=VERDICT_STYLE[v][1], color=VERDICT_STYLE[v][0], markersize=7,
                      markerfacecolor=VERDICT_STYLE[v][0] if VERDICT_STYLE[v][2] else "white", label=v)
               for v in VERDICT_STYLE if v in set(verdicts)]
    handles += [Line2D([], [], ls="", marker="D", color=PAPER_COLOR, markerfacecolor="none", markersize=5,
                       label="the paper's own effect"),
                Line2D([], [], color=MARGIN_COLOR, ls=(0, (3, 2)), label="margin the claim must clear"),
                Line2D([], [], color="0.25", lw=0.9, label="no effect")]
    return handles


def forest(table: pd.DataFrame, families=("primary",), title: bool = True):
    """One figure: for each family (claims.FAMILIES keys) its drawable rows, one panel per unit.
    Returns (figure, the rows not drawn: id, claim, task, verdict, note)."""
    blocks, undrawn = [], []
    for fam in families:
        rows = table[table["family"] == claims.FAMILIES[fam]]
        draw = drawable(rows)
        undrawn.append(rows.loc[~draw, ["id", "claim", "task", "verdict", "note"]])
        shown = rows[draw]
        for unit in dict.fromkeys(shown["unit"].fillna("")):
            blocks.append((fam, unit, shown[shown["unit"].fillna("") == unit]))
    undrawn = pd.concat(undrawn) if undrawn else pd.DataFrame()
    if not blocks:
        fig, ax = plt.subplots(figsize=(7.5, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no row of " + ", ".join(families) + " has an estimate yet", ha="center", va="center")
        return fig, undrawn
    heights = [len(b[2]) * 0.62 + 0.9 for b in blocks]
    fig, axes = plt.subplots(len(blocks), 1, figsize=(7.5, sum(heights) + 0.9), layout="constrained",
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    seen = None
    for ax, (fam, unit, rows) in zip(axes[:, 0], blocks):
        _panel(ax, rows, unit)
        if title and fam != seen:
            ax.set_title(claims.FAMILIES[fam][0].upper() + claims.FAMILIES[fam][1:], fontsize=10, loc="left",
                         fontweight="bold")
        seen = fam
    shown = pd.concat([b[2] for b in blocks])
    fig.legend(handles=_legend_handles(shown["verdict"]), loc="outside lower center", ncol=3, fontsize=7.5, frameon=False)
    return fig, undrawn


def caption(table: pd.DataFrame, profile: str, families=("primary",)) -> str:
    """What produced the figure: profile, backbone and tasks, seeds (per row, in its label), the
    intervals' levels and the verdicts' error control."""
    rows = table[table["family"].isin([claims.FAMILIES[f] for f in families]) & drawable(table)]
    # a row's task label is "rte", "rte [roberta-base]" or "rte, size 16"; not-testable rows have none
    tasks = sorted({str(t).split(" [")[0].split(",")[0] for t in rows["task"]} - {"", "nan"})
    backbones = sorted({make_config(profile, t).backbone for t in tasks}) if tasks else []
    seeds = f"{int(rows.seeds.min())}–{int(rows.seeds.max())} seeds per row (in each label)" if len(rows) else "no seeds"
    return (f"Measured here: profile '{profile}', backbone {', '.join(backbones) or '–'}, "
            f"task{'s' if len(tasks) != 1 else ''} {', '.join(t.upper() for t in tasks) or '–'}, {seeds}. "
            "Lines: 95% intervals of paired differences (and of the variance ratio, Pitman-Morgan), 90% intervals "
            "for non-inferiority and equivalence (the level of their one-sided 5% tests), the range over seeds for "
            "shares of batches; verdicts under Holm's step-down within each family at 5%, a marker's colour and shape "
            "its verdict. Computed by acllib.claims from the run cache; drawn by acllib.forest.")


def undrawn_text(undrawn: pd.DataFrame) -> str:
    """The rows a forest plot cannot draw, one line each (for under the figure)."""
    if undrawn is None or undrawn.empty:
        return ""
    lines = [f"- {r['claim']}" + (f" ({str(r['task']).upper()})" if isinstance(r["task"], str) and r["task"] else "")
             + f": {r['verdict']}" + (f" — {r['note']}" if isinstance(r["note"], str) and r["note"] else "")
             for _, r in undrawn.iterrows()]
    return "Not drawn (nothing to estimate):\n" + "\n".join(lines)
