"""Every notebook executes with papermill at the smoke profile and the book builds with -W."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from acllib import paper
from acllib.store import REPO

CHAPTERS = {  # notebook -> what its page must show
    "00_summary": {"images": 1, "tables": 0, "paper": ["arXiv 2602.03563", "Scope of this build"], "caption": False},
    "01_pilot_angles": {"images": 2, "tables": 3, "paper": [paper.numbers()["pilot"]["ce"]["mean"],
                                                             paper.numbers()["pilot"]["ce+scl"]["mean"]]},
    "02_table1": {"images": 2, "tables": 2, "paper": [paper.table1("BERT", "ACL")["rte"], paper.table1("HeadPrune")["rte"],
                                                       paper.table1("TinyBERT (6L)")["rte"]]},
    "03_layer_curves": {"images": 1, "tables": 1, "paper": []},
    "04_table2_ablation": {"images": 0, "tables": 2, "paper": [paper.table2("- CE+SCL")["rte"]]},
    "05_table3_lambda": {"images": 1, "tables": 1, "paper": [paper.numbers()["table3"]["ce+scl"][-1]]},
    "06_tsne": {"images": 1, "tables": 1, "paper": [paper.numbers()["tsne"]["acl"]]},
    "07_early_exit": {"images": 1, "tables": 2, "paper": []},
    "08_few_shot": {"images": 2, "tables": 4, "paper": ["Gunel et al."]},
    "09_claims": {"images": 3, "tables": 3, "paper": ["75°–105°", paper.numbers()["tsne"]["acl"]], "caption": False},
    "10_differences": {"images": 0, "tables": 2, "paper": ["bert-base-uncased, roberta-base"], "caption": False},
    "11_provenance": {"images": 0, "tables": 4, "paper": [], "caption": False},
}


@pytest.fixture(scope="module")
def built_book(tmp_path_factory, cache):
    book = tmp_path_factory.mktemp("book") / "book"
    shutil.copytree(REPO / "book", book, ignore=shutil.ignore_patterns("_build", "executed", "_vendor"))
    env = {**os.environ, "ACL_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "book" / "build.py"), "--profile", "smoke",
                           "--book-dir", str(book)], capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (book / "build.log").write_text(proc.stdout + proc.stderr)
    shutil.copy(cache / "book" / "smoke" / "claims.csv", book / "claims.csv")
    return book / "_build" / "html"


def test_every_notebook_is_a_chapter():
    notebooks = sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))
    assert notebooks == sorted(CHAPTERS)
    toc = (REPO / "book" / "_toc.yml").read_text()
    for name in notebooks:
        assert f"executed/{name}" in toc


@pytest.mark.parametrize("name", sorted(CHAPTERS))
def test_chapter_shows_figures_tables_and_paper_numbers(built_book, name):
    html = (built_book / "executed" / f"{name}.html").read_text()
    want = CHAPTERS[name]
    assert len(re.findall(r"<img ", html)) >= want["images"]
    assert len(re.findall(r"<table", html)) >= want["tables"]
    for number in want["paper"]:
        assert f"{number}" in html
    for bad in ("Traceback", "Error", "Warning:"):
        assert bad not in html, f"{bad} in {name}"
    if want.get("caption", True):
        assert "Measured here: profile &#39;smoke&#39;" in html or "Measured here: profile 'smoke'" in html
    elif name == "09_claims":  # every claim of the plan has a row with a verdict, computed from the run cache
        import pandas as pd
        from acllib import stats
        from acllib import claims as claims_lib
        claims = pd.read_csv(built_book.parents[1] / "claims.csv")
        assert set(claims.id) == {c.id for c in claims_lib.book_claims()}
        assert (claims.chapter == "07_early_exit").sum() == 4
        allowed = set(claims_lib.VERDICT_ORDER)
        assert set(claims.verdict) <= allowed and set(claims["verdict without correction"]) <= allowed
        assert claims_lib.NOT_RUN not in set(claims.verdict)  # the build trained every planned run
        both = claims.dropna(subset=["p", "p (Holm)"])
        assert len(both) and (both["p (Holm)"] >= both["p"] - 1e-12).all()
        assert "p (Holm)" in html and stats.NOT_TESTABLE in html and "The primary family" in html


def _judge_cli(cache, out, *more):
    """python -m acllib claims, in process, on a cache: the claims table from the runs alone."""
    from acllib.__main__ import main
    old = os.environ.get("ACL_CACHE")
    os.environ["ACL_CACHE"] = str(cache)
    try:
        assert main(["claims", "--profile", "smoke", "--out", str(out), *more]) == 0
    finally:
        os.environ["ACL_CACHE"] = old if old is not None else ""
        if old is None:
            del os.environ["ACL_CACHE"]
    import pandas as pd
    return pd.read_csv(out)


def test_the_cli_gives_the_claims_chapters_table(built_book, cache, tmp_path):
    """python -m acllib claims on the smoke book's cache, without any notebook, equals the table the
    claims chapter rendered, and its ledger names the runs each claim rests on."""
    import json
    import pandas as pd
    chapter = pd.read_csv(built_book.parents[1] / "claims.csv")
    cli = _judge_cli(cache, tmp_path / "claims.csv", "--plot", str(tmp_path / "forest.png"))
    pd.testing.assert_frame_equal(cli, chapter)
    assert (tmp_path / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the forest plots, outside the book
    ledger = json.loads((tmp_path / "claims.json").read_text())
    t1 = [r for r in ledger["rows"] if r["claim"] == "p-atleast-CE"]
    assert t1 and all(len(r["runs"]) > 0 for r in t1)
    assert ledger["missing"] == []


@pytest.mark.parametrize("shift, verdict", [(5.0, "supported"), (-5.0, "contradicted")])
def test_claims_follow_the_results(built_book, cache, tmp_path, shift, verdict, monkeypatch):
    """Acceptance: the claims are computed from the runs. Rewrite the ACL runs' scores in a copy of
    the smoke cache (CE's plus `shift`, a little jitter per seed), judge again from that cache, and
    the verdict of "ACL is at least as high as CE" must follow."""
    import json
    from acllib import claims as claims_lib, plan, stats
    copy = tmp_path / "data_cache"
    shutil.copytree(cache, copy)  # runs, weights and the measurements on them (the claims read all three)
    t1 = plan.table1("smoke").part("row")
    for (label, b, task, seed), cfg in t1.items():
        if label != "ACL":
            continue
        ce = json.loads((copy / "runs" / f"{t1['CE', b, task, seed].hash}.json").read_text())
        path = copy / "runs" / f"{cfg.hash}.json"
        acl = json.loads(path.read_text())
        last = max(acl["score"], key=int)
        acl["score"][last] = ce["score"][max(ce["score"], key=int)] + shift + 0.01 * seed
        path.write_text(json.dumps(acl))
    # the smoke profile's tiny random models do not clear the majority class: lower the bar, so that
    # the test is about the verdict following the scores, not about the learned check
    monkeypatch.setattr(stats, "LEARNED_MARGIN", -1000.0)
    claims = _judge_cli(copy, tmp_path / "claims.csv")
    rows = claims[claims.id == "p-atleast-CE"]
    assert len(rows) == 2 and (rows.verdict == getattr(stats, verdict.upper())).all()  # one row per task


def test_math_is_served_from_the_build_not_a_cdn(built_book):
    """MathJax loads from the built book's _static, so math renders offline."""
    pages = {p: p.read_text() for p in built_book.rglob("*.html") if "mathjax" not in p.parts}
    loading = [p for p, html in pages.items() if "MathJax.js" in html]
    assert loading, "no page loads MathJax"
    for p in loading:
        src = re.search(r'<script[^>]+src="([^"]*MathJax\.js[^"]*)"', pages[p]).group(1)
        assert not src.startswith(("http:", "https:", "//")), (p.name, src)
        assert (p.parent / src.split("?")[0]).exists(), (p.name, src)
    assert not any("cdn.jsdelivr.net/npm/mathjax" in html for html in pages.values())
    import json
    config = json.loads(re.search(r"MathJax\.Hub\.Config\((.*?)\)</script>", pages[loading[0]], re.S).group(1))
    fonts = built_book / "mathjax" / "fonts" / "HTML-CSS"
    assert config["HTML-CSS"]["availableFonts"] and config["HTML-CSS"]["preferredFont"] in config["HTML-CSS"]["availableFonts"]
    for font in config["HTML-CSS"]["availableFonts"]:  # MathJax is told to use fonts the build serves
        assert (fonts / font).is_dir(), font


def test_the_build_log_carries_no_kernel_transport_noise(built_book):
    """Kernels run over Unix sockets (book/build.py's LocalIPCKernelManager): ipykernel's warning
    about unencrypted TCP, once per chapter before, is gone."""
    log = (built_book.parents[1] / "build.log").read_text()
    assert "== 01_pilot_angles" in log  # the log is the build's
    assert "without encryption" not in log


def test_the_build_shows_each_chapters_runs_done_of_runs_needed(built_book, cache):
    """book/build.py's counter takes its total from the plan (the chapter's planned runs not yet in
    the cache): every bar with a total ends at it ("k/k"), and the totals add up to the runs the
    build trained; chapters that plan no runs show no total."""
    import json
    log = (built_book.parents[1] / "build.log").read_text().replace("\r", "\n")
    totals = {}
    for name, k, n in re.findall(r"(\d\d_\w+): runs trained: +\d+%\|[^|]*\| *(\d+)/(\d+)", log):
        totals[name] = (int(k), int(n))
    assert totals and all(k == n for k, n in totals.values()), totals
    trained = json.loads((cache / "book" / "smoke" / "builds.json").read_text())[-1]["runs_trained"]
    assert sum(n for _, n in totals.values()) == trained
    assert "09_claims" not in totals and "00_summary" not in totals


def test_landing_page_counts_are_the_claims_tables(built_book):
    """The summary on the landing page is computed from the claims, not typed: it leads with the
    primary family's rows, its counts per family are claims.csv's, and every decided row links to
    its chapter."""
    import pandas as pd
    from acllib import claims as claims_lib, stats
    claims = pd.read_csv(built_book.parents[1] / "claims.csv")
    html = (built_book / "executed" / "00_summary.html").read_text()
    text = re.sub(r"<[^>]+>", "", html)
    assert text.index("The primary family") < text.index("Verdicts per family")
    for fam, name in claims_lib.FAMILIES.items():
        # (the page also carries the cell's folded source, whose f-string has braces where the output has counts)
        clause = re.search(re.escape(name) + r" \((\d+) rows\): Holm-corrected ([^{};]*?); without", text, re.I)
        assert clause, name
        part = claims[claims.family == name]
        assert int(clause.group(1)) == len(part)
        tally = dict(item.rsplit(": ", 1) for item in clause.group(2).split(", ")) if clause.group(2) != "none" else {}
        assert {k: int(v) for k, v in tally.items()} == part.verdict.value_counts().to_dict()
    primary = claims[claims.family == claims_lib.FAMILIES["primary"]]
    assert text.count("ACL scores at least as high as CE in full fine-tuning") >= (primary.id == "p-atleast-CE").sum()
    links = set(re.findall(r'href="([0-9][0-9]_[a-z0-9_]+\.html)"', html))
    assert "09_claims.html" in links
    for link in links:  # every link leads to a page of the book
        assert (built_book / "executed" / link).exists(), link
    for chapter in claims[claims.verdict.isin([stats.SUPPORTED, stats.CONTRADICTED])].chapter.unique():
        assert any(link.startswith(chapter) for link in links), chapter
    assert (built_book / "index.html").read_text().count("00_summary") >= 1  # the landing page


def test_the_book_runs_exactly_the_plan(built_book, cache):
    """Each chapter asks for exactly the runs acllib.plan defines for it (book/build.py has
    acllib.runs log every run asked for, per chapter), and the chapters without runs ask for none."""
    from acllib import plan
    ledger = cache / "book" / "smoke" / "ledger"
    for name, chapter in plan.CHAPTERS.items():
        asked = set((ledger / f"{name}.txt").read_text().split())
        planned = {c.hash for c in plan.with_stage1(chapter("smoke").configs())}
        assert asked == planned, f"{name}: {len(asked - planned)} runs outside the plan, {len(planned - asked)} planned but not asked for"
    for name in set(CHAPTERS) - set(plan.CHAPTERS):
        assert (ledger / f"{name}.txt").read_text() == "", name
