"""One look for every figure of the book: seaborn theme, one colour per method, provenance captions."""
from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

from .config import make_config

# Figure 2 of the paper draws CE in blue and CE+SCL in orange; every other method gets a colour of
# its own, far from every other (tests/test_plotting.py), so no two methods look alike anywhere in
# the book. Twins share their method's colour: JT-MHA and ALT-MHA are dashed, the linear-exit
# variants are drawn only beside 2ST-linear, ACL-CL is ACL's exit.
_PALETTE = sns.color_palette("colorblind")
_MORE = sns.color_palette("dark")
_BRIGHT = sns.color_palette("bright")
METHOD_COLORS = {
    "CE": _PALETTE[0], "CE+SCL": _PALETTE[1], "ACL": _PALETTE[2], "ACL-Embed": _PALETTE[4],
    "JT": _MORE[3], "ALT": _MORE[6], "2ST-linear": _PALETTE[7], "2ST-MHA": _PALETTE[9],
    "2ST-MHA+KD": _MORE[0], "paper": (0.2, 0.2, 0.2),
    # Table 1's half-depth and compressed models
    "direct": _BRIGHT[9], "head pruning": _BRIGHT[3], "BERT-of-Theseus": _BRIGHT[4],
    # ACL-Grad's gates (issue #27): Eq. 4 is ACL itself; its two controls
    "random gate": _MORE[1], "projection": _MORE[4],
}
TWINS = {"JT-MHA": "JT", "ALT-MHA": "ALT", "2ST-linear ([CLS], no pooler)": "2ST-linear",
         "2ST-linear (mean pooling)": "2ST-linear", "ACL-CL": "ACL", "Eq. 4": "ACL"}
METHOD_COLORS.update({twin: METHOD_COLORS[of] for twin, of in TWINS.items()})
# A method's MHA-exit twin keeps its colour and is dashed; everything else solid ("" = solid).
METHOD_DASHES = {m: ((4, 2) if m.endswith("-MHA") and m not in ("2ST-MHA",) else "") for m in METHOD_COLORS}


def setup() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=1.0)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def caption(profile: str, backbone: str, seeds, extra: str = "", tasks=None, stage2: bool = True) -> str:
    """The caption under every figure and table saying what produced it: profile, backbone, seeds,
    and for each of `tasks` its training examples and epochs (from the profile's configuration;
    2ST's stage-2 epochs too unless `stage2` is False, for chapters that run no 2ST)."""
    text = f"Measured here: profile '{profile}', backbone '{backbone}', seeds {list(seeds)}"
    if tasks:
        def data(t):
            cfg = make_config(profile, t, strategy="2st")  # a 2st config keeps the stage-2 fields (others reset them)
            size = f"{cfg.train_size:,}" if cfg.train_size else "all"
            return f"{t.upper()}: {size} training examples, {cfg.epochs} epochs" + (f" (stage 2 of 2ST: {cfg.stage2_epochs})" if stage2 else "")
        text += "; " + "; ".join(data(t) for t in tasks)
    return text + (f"; {extra}" if extra else "")


def fewer_seeds_text(fewer: dict) -> str:
    """{method: seeds} (plan.fewer_seeds) as one clause, methods on the same seeds together:
    "JT, ALT, 2ST-linear on seeds [1, 2, 3, 4]"; "" when there are none."""
    groups: dict[tuple, list[str]] = {}
    for m, s in fewer.items():
        groups.setdefault(tuple(s), []).append(m)
    return "; ".join(f"{', '.join(ms)} on seeds {list(s)}" for s, ms in groups.items())


def show_caption(text: str) -> None:
    """The one caption of the figure or table above it (call after plt.show() or display())."""
    from IPython.display import Markdown, display
    display(Markdown(f"*{text}*"))
