"""Execute every notebook with papermill into book/executed/, then build the book with -W.

python book/build.py [--profile cpu] [--only NAME ...] [--no-build]
"""
from __future__ import annotations

import argparse
import re
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import papermill
from jupyter_client.manager import AsyncKernelManager
from traitlets import default

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# The landing page summarises the claims, so it runs after every chapter although it comes first.
RUN_LAST = ("00_summary",)


class LocalIPCKernelManager(AsyncKernelManager):
    """Kernels talk to papermill over Unix sockets in a private temporary folder instead of TCP
    ports on localhost: nothing listens on the network, and ipykernel no longer warns in every
    chapter that its TCP traffic is unencrypted."""

    @default("transport")
    def _transport_default(self):
        return "ipc"

    @default("ip")
    def _ip_default(self):  # for ipc, the sockets' path prefix
        import atexit
        import shutil
        import tempfile
        folder = tempfile.mkdtemp(prefix="acl-kernel-")
        atexit.register(shutil.rmtree, folder, True)
        return str(Path(folder) / "kernel")

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        # The kernel's own stderr (a crash report; its complaints when an interrupted build goes away
        # under it) goes to a log beside the executed chapter, not into the build's output.
        log = os.environ.get("ACL_KERNEL_LOG")
        if log and "stderr" not in kw:
            kw["stderr"] = open(log, "ab")
        return await super()._async_launch_kernel(kernel_cmd, **kw)


def runs_to_train(name: str, profile: str) -> int | None:
    """How many of a chapter's planned runs (acllib.plan, stage 1s included) are not in the cache;
    None for a chapter that plans none."""
    from acllib import plan, runs
    if name not in plan.CHAPTERS:
        return None
    return sum(runs.load_result(c) is None for c in plan.book_plan(profile, [name])[name])


class RunCounter:
    """What a chapter is doing, in place of papermill's cell counter: the runs it has finished
    (result files written to the cache) of the runs it still needs (from the plan), the time per
    run and an ETA, refreshed every few seconds."""

    def __init__(self, chapter: str, every: float = 5.0, total: int | None = None):
        import threading
        from tqdm import tqdm
        from acllib import store
        self.runs = store.cache_dir("runs")
        self.before = self._count()
        self.bar = tqdm(desc=f"{chapter}: runs trained", unit="run", mininterval=every, dynamic_ncols=True,
                        total=total or None)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, args=(every,), daemon=True)

    def _count(self) -> int:
        return sum(1 for _ in self.runs.glob("*.json"))

    def _watch(self, every: float) -> None:
        while not self.stop.wait(every):
            self.bar.update(self._count() - self.before - self.bar.n)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.bar.update(self._count() - self.before - self.bar.n)
        self.bar.close()
        return False


def fold_parameters(path: Path) -> None:
    """Show a chapter's parameters once: the notebook's defaults cell and the cell papermill injects
    after it are hidden in the book, and one line in their place gives the values this build used."""
    import nbformat
    nb = nbformat.read(path, as_version=4)
    tags = [set(c.get("metadata", {}).get("tags", [])) for c in nb.cells]
    injected = [i for i, t in enumerate(tags) if "injected-parameters" in t]
    if not injected:
        return
    defaults = "\n".join(c.source for c, t in zip(nb.cells, tags) if "parameters" in t)
    values = [line for line in nb.cells[injected[0]].source.splitlines() if line.strip() and not line.startswith("#")
              and re.search(rf"^{re.escape(line.split('=')[0].strip())}\s*=", defaults, re.M)]  # the notebook's own
    for i, t in enumerate(tags):
        if t & {"parameters", "injected-parameters"}:
            nb.cells[i].metadata["tags"] = sorted(t | {"remove-cell"})
    line = nbformat.v4.new_markdown_cell("**Parameters of this build:** " + ", ".join(f"`{v.strip()}`" for v in values)
                                         + " (`papermill -p NAME VALUE` overrides any parameter of the notebook).")
    line.metadata["tags"] = ["parameters-of-this-build"]
    nb.cells.insert(injected[0] + 1, line)
    nbformat.write(nb, path)


def execute(name: str, profile: str, executed: Path) -> float:
    """Run one notebook; the executed copy replaces the old one only when the run succeeded."""
    executed.mkdir(exist_ok=True)
    out = executed / f"{name}.ipynb"
    tmp = executed / f".{name}.partial.ipynb"
    t0 = time.perf_counter()
    # the runs the chapter asks for (acllib.runs.note_requested), held against acllib.plan by the tests
    from acllib import store
    ledger = store.cache_dir("book", profile, "ledger") / f"{name}.txt"
    ledger.write_text("")
    os.environ["ACL_RUN_LEDGER"] = str(ledger)
    os.environ["ACL_KERNEL_LOG"] = str(executed / f".{name}.kernel.log")
    try:
        with RunCounter(name, total=runs_to_train(name, profile)):
            papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(tmp), kernel_name="acl-repro",
                                       parameters={"profile": profile, "progress": False},
                                       cwd=str(NOTEBOOKS), progress_bar=False,
                                       kernel_manager_class=LocalIPCKernelManager)
    except KeyboardInterrupt:
        raise
    except papermill.PapermillExecutionError as err:
        if err.ename == "KeyboardInterrupt":  # the kernel got the Ctrl-C first
            raise KeyboardInterrupt from None
        print(f"notebook {name} failed; its partial output is in {tmp}", file=sys.stderr)
        raise
    except BaseException:
        print(f"notebook {name} failed; its partial output is in {tmp}", file=sys.stderr)
        raise
    fold_parameters(tmp)
    os.replace(tmp, out)
    return time.perf_counter() - t0


def day_speed(repeats: int = 5) -> float:
    """Seconds per CE training step of the cpu profile's model (acllib.cost.ce_step_seconds)."""
    from acllib import cost
    return cost.ce_step_seconds(repeats)


def vendor_mathjax(book: Path) -> None:
    """Copy MathJax (2.7, from the jupyter-server-mathjax wheel) into book/_vendor, which the build
    serves as is (html_extra_path), so that math renders without network: the default loads
    MathJax 3 from a CDN (_config.yml's mathjax_path points here instead). Not into _static:
    scripts found there get loaded on every page."""
    import shutil
    import jupyter_server_mathjax
    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = book / "_vendor" / "mathjax"
    if not (target / "MathJax.js").exists():
        tmp = target.with_name("mathjax.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        tmp.rename(target)  # a copy cut short never passes as complete


def main(argv=None) -> int:
    """Build the book; Ctrl-C ends it with one line and status 130, every finished run kept (each
    run's files are written atomically, a chapter's executed page only when it completed)."""
    from acllib import store
    store.reraise_swallowed_ctrl_c()
    before = len(list(store.cache_dir("runs").glob("*.json")))
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # The chapter's kernel died with the Ctrl-C; nbclient's cell task then ends in DeadKernelError,
        # which nobody awaits any more, and asyncio logs it with a traceback when the task is collected
        # at exit (seen in about one build in three). The build is over: that is noise, not news.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        kept = len(list(store.cache_dir("runs").glob("*.json")))
        print(f"\ninterrupted: {kept - before} runs finished in this build and every earlier one are kept in "
              f"{store.cache_dir('runs')}; `make book` resumes where it stopped", file=sys.stderr)
        return 130


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--only", nargs="*", default=None, help="notebook names (default: all)")
    parser.add_argument("--no-build", action="store_true", help="execute only, do not build the book")
    parser.add_argument("--book-dir", default=str(ROOT / "book"), help="the book's sources (tests use a copy)")
    parser.add_argument("--ray", metavar="ADDRESS", help="train the chapters' missing runs on Ray first "
                        "(local|auto|HOST:PORT; acllib.sweep), inside the build's timing and record")
    args = parser.parse_args(argv)
    book = Path(args.book_dir).resolve()
    executed = book / "executed"
    names = args.only or sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    names.sort(key=lambda n: n in RUN_LAST)  # stable: the chapters keep their order
    from acllib import store  # timings live beside the chapters' results, per profile
    timings_path = store.cache_dir("book", args.profile) / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    runs_dir = store.cache_dir("runs")
    runs_before = len(list(runs_dir.glob("*.json")))
    speed = day_speed() if args.profile != "smoke" and args.only is None else None
    prior = None  # the training rate the estimate assumes: the sweep bar's ETA starts from it
    if speed is not None:
        print(f"day_speed: {speed:.3f} s per CE step (cpu profile, RTE batch of 32)", flush=True)
        from acllib import cost, plan
        estimate = plan.build_estimate(args.profile, step_s=speed)
        print(cost.describe_estimate(estimate), flush=True)
        prior = estimate["flops_per_s"] / estimate["overhead"]
    t_start = time.perf_counter()
    sweep_minutes = None
    if args.ray:
        from acllib import plan
        from acllib.sweep import sweep
        chapters = None if args.only is None else [n for n in names if n in plan.CHAPTERS]
        if chapters != []:
            print(f"== the chapters' missing runs on Ray ({args.ray})", flush=True)
            counts = sweep(args.profile, chapters, address=args.ray, prior_flops_per_s=prior)
            sweep_minutes = (time.perf_counter() - t_start) / 60
            print(f"   done in {sweep_minutes:.1f} min: {counts}", flush=True)
    for name in names:
        print(f"== {name} (profile {args.profile})", flush=True)
        seconds = execute(name, args.profile, executed)
        # The largest resident set of any finished child so far (the kernels are our children):
        # when it grows during a notebook, it is that notebook's peak.
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
        timings[name] = {"profile": args.profile, "seconds": seconds, "max_child_rss_gb_so_far": round(peak_gb, 2)}
        store.write_json(timings_path, timings)
        print(f"   done in {seconds / 60:.1f} min", flush=True)
    # An executed chapter whose notebook was renamed or removed would be an orphan page (-W fails)
    sources = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    for stale in executed.glob("*.ipynb"):
        if stale.stem not in sources and not stale.name.startswith("."):
            stale.unlink()
    code = 0
    if not args.no_build:
        vendor_mathjax(book)
        jb = Path(sys.executable).with_name("jupyter-book")
        code = subprocess.call([str(jb), "build", str(book), "-W", "-n", "--keep-going"])
    minutes = (time.perf_counter() - t_start) / 60
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    runs_after = len(list(runs_dir.glob("*.json")))
    # A build record for `make bench`: cold = it started from an empty run cache, warm = it trained nothing.
    record = {"finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), "minutes": round(minutes, 2),
              "notebooks": len(names), "html": not args.no_build, "exit_code": code,
              "whole_book": args.only is None and not args.no_build,  # what `make book` does
              "runs_before": runs_before, "runs_trained": runs_after - runs_before,
              "kind": "cold" if runs_before == 0 else ("warm" if runs_after == runs_before else "partial"),
              "peak_rss_gb": round(peak_gb, 2), "commit": _commit(),
              "ce_step_s": None if speed is None else round(speed, 4),
              # numbers differ between bf16 and fp32 machines (the run hashes already do): say which built it
              "precision": _precision(), "cpu": _cpu(),
              "trained_on": f"ray ({args.ray})" if args.ray else "sequential",
              "sweep_minutes": None if sweep_minutes is None else round(sweep_minutes, 2),
              "chapter_minutes": {n: round(timings[n]["seconds"] / 60, 2) for n in names if n in timings}}
    builds_path = store.cache_dir("book", args.profile) / "builds.json"
    builds = json.loads(builds_path.read_text()) if builds_path.exists() else []
    store.write_json(builds_path, builds + [record])
    print(f"book_minutes: {minutes:.1f} ({record['kind']} build: {record['runs_trained']} runs trained, "
          f"{len(names)} notebooks{'' if args.no_build else ' and the HTML build'})")
    print(f"peak_rss_gb: {peak_gb:.2f} (largest process)")
    return code


def _precision() -> str:
    from acllib.config import resolve_precision
    return resolve_precision("auto")


def _cpu() -> str:
    from acllib.results import cpu_model
    return cpu_model()


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
