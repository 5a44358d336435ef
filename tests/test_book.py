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
    "00_summary": {"images": 0, "tables": 0, "paper": ["arXiv 2602.03563", "Scope of this build"], "caption": False},
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
    "09_claims": {"images": 0, "tables": 1, "paper": ["75°–105°", paper.numbers()["tsne"]["acl"]], "caption": False},
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
    elif name == "09_claims":  # every claim got a verdict from results: no chapter's results missing
        import pandas as pd
        from acllib import stats
        from acllib import claims as claims_lib
        claims = pd.read_csv(built_book.parents[1] / "claims.csv")
        assert set(claims.id) == {c.id for c in claims_lib.book_claims()}  # every chapter's results were there
        assert (claims.chapter == "07_early_exit").sum() == 2
        allowed = {stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE, stats.NOT_TESTABLE,
                   claims_lib.UNDERPOWERED, claims_lib.DIDNT_LEARN}
        assert set(claims.verdict) <= allowed and set(claims["verdict without correction"]) <= allowed
        tested = claims[claims.verdict.isin([stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE, claims_lib.UNDERPOWERED])]
        both = tested.dropna(subset=["p", "p (Holm)"])
        assert len(both) and (both["p (Holm)"] >= both["p"] - 1e-12).all()
        assert "p (Holm)" in html and stats.NOT_TESTABLE in html


@pytest.mark.parametrize("shift, verdict", [(5.0, "supported"), (-5.0, "contradicted")])
def test_claims_follow_the_results(built_book, cache, tmp_path, shift, verdict):
    """Acceptance: the claims table is computed from results. Rewrite Table 1's per-seed ACL scores
    (CE's plus `shift`, a little jitter per seed) in a copy of the smoke results, re-execute the
    claims notebook on it, and the verdict of "ACL beats CE" must follow."""
    import papermill
    import pandas as pd
    from acllib import stats
    copy = tmp_path / "data_cache"
    shutil.copytree(cache / "book", copy / "book")
    path = copy / "book" / "smoke" / "02_table1" / "per_seed.csv"
    t1 = pd.read_csv(path)
    ce = t1[t1.row == "CE"].set_index(["task", "seed"])["score"]
    is_acl = t1.row == "ACL"
    t1.loc[is_acl, "score"] = [ce[(t, s)] + shift + 0.001 * i
                               for i, (t, s) in enumerate(zip(t1.task[is_acl], t1.seed[is_acl]))]
    t1.to_csv(path, index=False)
    # the smoke profile's tiny random models do not clear the majority class: lower the floor, so
    # that the test is about the verdict following the scores, not about the learned check
    pd.DataFrame({"task": t1.task.unique(), "majority": -100.0}).to_csv(
        copy / "book" / "smoke" / "03_layer_curves" / "majority.csv", index=False)
    old = os.environ.get("ACL_CACHE")
    os.environ["ACL_CACHE"] = str(copy)  # the kernel inherits it
    try:
        papermill.execute_notebook(str(REPO / "notebooks" / "09_claims.ipynb"), str(tmp_path / "claims.ipynb"),
                                   parameters={"profile": "smoke"}, kernel_name="acl-repro", progress_bar=False)
    finally:
        os.environ["ACL_CACHE"] = old if old is not None else str(cache)
    claims = pd.read_csv(copy / "book" / "smoke" / "claims.csv")
    rows = claims[claims.id == "t1-beats-CE"]
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
    """The summary on the landing page is computed from the claims, not typed: its counts are
    claims.csv's, and every decided row links to its chapter."""
    import pandas as pd
    from acllib import stats
    claims = pd.read_csv(built_book.parents[1] / "claims.csv")
    html = (built_book / "executed" / "00_summary.html").read_text()
    # the paper's claims and our exploratory ones, each tallied in its own clause
    text = re.sub(r"<[^>]+>", "", html)
    paper_clause = re.search(r"over the (\d+) rows of the paper's claims[^:]*Holm-corrected: (.*?)\. Without the correction", text)
    # (the page also carries the cell's folded source, whose f-string has braces where the output has counts)
    explored_clause = re.search(r"a Holm family of their own\): ([^{}]*?)\.", text)
    assert paper_clause and explored_clause
    is_paper = claims.family == "the paper's claims"
    assert int(paper_clause.group(1)) == is_paper.sum()
    for clause, part in ((paper_clause.group(2), claims[is_paper]), (explored_clause.group(1), claims[~is_paper])):
        tally = dict(item.rsplit(": ", 1) for item in clause.split(", ")) if clause != "none" else {}
        assert {k: int(v) for k, v in tally.items()} == part.verdict.value_counts().to_dict()
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
