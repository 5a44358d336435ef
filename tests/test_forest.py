"""The forest plots draw what the claims table says: one estimate marker per row with an estimate,
its interval at the table's bounds, the margins where the table puts them (issue #28)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy.optimize import brentq  # noqa: E402
from scipy.stats import pearsonr  # noqa: E402

from acllib import claims, forest, stats  # noqa: E402

P, S = claims.FAMILIES["primary"], claims.FAMILIES["secondary"]
NAN = float("nan")


def _row(id, family, verdict, estimate, lo, hi, unit=" pts", level=0.95, reference=0.0, m_lo=NAN, m_hi=NAN,
         paper=NAN, seeds=8, task="sst2", note=""):
    return {"id": id, "claim": f"claim {id} in words", "task": task, "family": family, "verdict": verdict,
            "estimate": estimate, "lo": lo, "hi": hi, "unit": unit, "interval level": level, "reference": reference,
            "margin lo": m_lo, "margin hi": m_hi, "paper effect": paper, "seeds": seeds, "note": note}


@pytest.fixture
def table():
    return pd.DataFrame([
        _row("ni", P, stats.SUPPORTED, 0.3, -0.2, 0.8, level=0.90, m_lo=-1.0, paper=-0.1, seeds=29),
        _row("diff", P, stats.INCONCLUSIVE, 0.25, -0.1, 0.6),
        _row("eq", P, claims.UNDERPOWERED, 0.1, -1.3, 1.5, level=0.90, m_lo=-1.0, m_hi=1.0),
        _row("gone", P, claims.NOT_RUN, NAN, NAN, NAN, unit="", level=NAN, reference=NAN, seeds=0,
             note="no rows in the cache"),
        _row("var", S, stats.CONTRADICTED, 0.2, 0.05, 0.8, unit="× variance", reference=1.0),
        _row("band", S, stats.CONTRADICTED, 0.5, 0.2, 0.8, unit="share", level=NAN, reference=NAN, m_lo=0.9),
        _row("rob", S, stats.NOT_TESTABLE, NAN, NAN, NAN, unit="", level=NAN, reference=NAN, seeds=0, task=NAN),
    ])


def _artists(fig, prefix):
    out = {}
    for ax in fig.axes:
        for a in list(ax.lines) + list(ax.collections):
            gid = a.get_gid() or ""
            if gid.startswith(prefix + "|"):
                out.setdefault(gid.split("|", 1)[1], []).append(a)
    return out


def test_one_marker_per_row_with_an_estimate_and_intervals_equal_the_table(table):
    fig, undrawn = forest.forest(table, families=("primary", "secondary"))
    markers = _artists(fig, "estimate")
    drawn = table[table.estimate.notna()]
    assert sorted(markers) == sorted(forest.row_key(r) for _, r in drawn.iterrows())
    assert all(len(v) == 1 for v in markers.values())
    intervals = _artists(fig, "interval")
    for _, r in drawn.iterrows():
        (marker,) = markers[forest.row_key(r)]
        assert marker.get_offsets()[0][0] == pytest.approx(r.estimate)
        (line,) = intervals[forest.row_key(r)]
        assert list(line.get_xdata()) == pytest.approx([r.lo, r.hi])
    # the rows without an estimate are listed, not dropped
    assert set(undrawn.id) == {"gone", "rob"}
    text = forest.undrawn_text(undrawn)
    assert "claim gone in words (SST2): " + claims.NOT_RUN in text and stats.NOT_TESTABLE in text
    plt.close(fig)


def test_margins_references_and_the_papers_effect_where_the_table_puts_them(table):
    fig, _ = forest.forest(table, families=("primary", "secondary"))
    margins, refs, paper = _artists(fig, "margin"), _artists(fig, "reference"), _artists(fig, "paper")
    at = lambda lines: sorted(line.get_xdata()[0] for line in lines)
    assert at(margins["ni|sst2"]) == [-1.0]
    assert at(margins["eq|sst2"]) == [-1.0, 1.0]
    assert at(margins["band|sst2"]) == [0.9]
    assert "diff|sst2" not in margins and "var|sst2" not in margins
    assert at(refs["var|sst2"]) == [1.0] and at(refs["diff|sst2"]) == [0.0] and "band|sst2" not in refs
    assert list(paper) == ["ni|sst2"] and paper["ni|sst2"][0].get_offsets()[0][0] == pytest.approx(-0.1)
    # the variance ratio on a log axis, the shares' range dotted (not an interval), seeds in the labels
    scales = {ax.get_xlabel(): ax.get_xscale() for ax in fig.axes}
    assert scales[forest.AXIS_LABELS["× variance"]] == "log" and scales[forest.AXIS_LABELS[" pts"]] == "linear"
    (band,) = _artists(fig, "interval")["band|sst2"]
    assert band.get_linestyle() == ":"
    labels = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert any("29 seeds · 90% CI" in t for t in labels) and any("seeds' range" in t for t in labels)
    plt.close(fig)


def test_verdicts_have_distinct_marker_colour_and_shape():
    styles = list(forest.VERDICT_STYLE.values())
    assert len({(tuple(c), m, f) for c, m, f in styles}) == len(styles)
    assert set(forest.VERDICT_STYLE) == {stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE,
                                         claims.UNDERPOWERED, claims.DIDNT_LEARN}


def test_the_primary_figure_is_the_primary_family_only_and_fits_a_page(table):
    fig, undrawn = forest.forest(table)
    assert sorted(_artists(fig, "estimate")) == ["diff|sst2", "eq|sst2", "ni|sst2"]
    assert list(undrawn.id) == ["gone"]
    assert fig.get_figwidth() <= 8  # inches: at the book's 110 dpi, no wider than its page
    plt.close(fig)
    caption = forest.caption(table, "smoke")
    assert "profile 'smoke'" in caption and "SST2" in caption and "8–29 seeds" in caption and "Holm" in caption
    empty = table[table.id == "gone"]
    fig, undrawn = forest.forest(empty)  # nothing to draw: a figure that says so, the row listed
    assert not _artists(fig, "estimate") and list(undrawn.id) == ["gone"]
    plt.close(fig)


def test_variance_rows_of_the_claims_get_the_pitman_morgan_interval():
    rng = np.random.default_rng(0)
    z = rng.normal(size=6)
    a, b = 3 * (z + rng.normal(size=6)), z + rng.normal(size=6)
    per_seed = pd.DataFrame({"method": ["CE+SCL"] * 6 + ["CE"] * 6, "seed": list(range(6)) * 2,
                             "score": np.r_[a, b]})
    c = claims.Claim("v", "CE+SCL is less stable", "01", "t", "variance", "", a="CE+SCL", b="CE")
    seeds, _, estimate = claims._variance_case(c, per_seed)
    e = estimate(seeds)
    # the ratios theta at which the Pitman-Morgan test (scipy's pearsonr of a/sqrt(theta) + b and
    # a/sqrt(theta) - b) has p = 0.05, on either side of the sample ratio
    f = a.var(ddof=1) / b.var(ddof=1)
    p_at = lambda theta: pearsonr(a / np.sqrt(theta) + b, a / np.sqrt(theta) - b).pvalue - 0.05
    assert e["lo"] == pytest.approx(brentq(p_at, f * 1e-4, f), rel=1e-6)
    assert e["hi"] == pytest.approx(brentq(p_at, f, f * 1e4), rel=1e-6)
    assert e["lo"] < e["estimate"] < e["hi"] and e["reference"] == 1.0


def test_plot_to_a_file_of_unknown_format_is_one_line_naming_it(capsys):
    from acllib.__main__ import main
    assert main(["claims", "--profile", "smoke", "--plot", "verdicts.xyz"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'verdicts.xyz'" in err and "png" in err
