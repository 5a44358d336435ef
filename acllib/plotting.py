"""One look for every figure of the book: seaborn theme, one colour per method, provenance captions."""
from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

# Figure 2 of the paper draws CE in blue and CE+SCL in orange; every other method keeps one colour too.
_PALETTE = sns.color_palette("colorblind")
_MORE = sns.color_palette("dark")
METHOD_COLORS = {
    "CE": _PALETTE[0], "CE+SCL": _PALETTE[1], "ACL": _PALETTE[2], "ACL-Embed": _PALETTE[4],
    "JT": _PALETTE[3], "JT-MHA": _PALETTE[3], "ALT": _PALETTE[6], "ALT-MHA": _PALETTE[6],
    "2ST-linear": _PALETTE[7], "2ST-MHA": _PALETTE[5], "2ST-MHA+KD": _MORE[9],
    "2ST-linear ([CLS], no pooler)": _PALETTE[7], "2ST-linear (mean pooling)": _PALETTE[7],
    "ACL-CL": _PALETTE[2], "paper": (0.35, 0.35, 0.35),
}
# A method's MHA-exit twin keeps its colour and is dashed; everything else solid ("" = solid).
METHOD_DASHES = {m: ((4, 2) if m.endswith("-MHA") and m not in ("2ST-MHA",) else "") for m in METHOD_COLORS}


def setup() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=1.0)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def caption(profile: str, backbone: str, seeds, extra: str = "") -> str:
    """The line under every figure saying what produced it."""
    text = f"Measured here: profile '{profile}', backbone '{backbone}', seeds {list(seeds)}"
    return text + (f"; {extra}" if extra else "")


def add_caption(fig, text: str) -> None:
    """Write the provenance line under a figure, below its axis labels (never over them)."""
    fig.subplots_adjust(bottom=max(fig.subplotpars.bottom, 0.75 / fig.get_figheight()))
    fig.text(0.0, 0.0, text, fontsize=8, va="top")
