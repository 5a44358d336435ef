"""`make lab` starts JupyterLab (as root too, which containers are) with the project's kernel."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

from acllib.store import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_lab_serves_the_notebooks_with_the_projects_kernel(tmp_path):
    port, token = _free_port(), "acl-repro-test"
    args = f"--no-browser --port {port} --IdentityProvider.token={token} --ServerApp.root_dir={REPO / 'notebooks'}"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    proc = subprocess.Popen(["make", "-s", "-C", str(REPO), "lab", f"LAB_ARGS={args}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}/api"
        status = None
        for _ in range(120):  # bounded: at most ~60 s for the server to come up
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{base}/status?token={token}", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.5)
        assert status == 200, proc.stdout.read1().decode(errors="replace")[-2000:] if proc.poll() is not None else "no answer"
        with urllib.request.urlopen(f"{base}/kernelspecs?token={token}", timeout=5) as r:
            assert "acl-repro" in json.load(r)["kernelspecs"]
        with urllib.request.urlopen(f"{base}/contents?token={token}", timeout=5) as r:
            names = {c["name"] for c in json.load(r)["content"]}
        assert "01_pilot_angles.ipynb" in names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this test started, nothing else
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _chromium() -> str:
    path = os.environ.get("ACL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "no Chromium: `make test` installs Debian's (apt-get install chromium), or set ACL_CHROMIUM"
    return path


def test_a_chapter_runs_in_jupyterlab_in_a_browser(tmp_path, cache):
    """A reader's path: `make lab`, open a chapter in the browser (headless Chromium driven by
    Playwright), Run All with the project's kernel against the cache, see its figures. The server
    serves a parameterized copy of the chapter (smoke profile), never notebooks/ itself."""
    import papermill
    from playwright.sync_api import sync_playwright

    name = "02_table1.ipynb"
    root = tmp_path / "lab"
    root.mkdir()
    papermill.execute_notebook(str(REPO / "notebooks" / name), str(root / name),
                               parameters={"profile": "smoke", "progress": False}, prepare_only=True)
    port, token = _free_port(), "acl-repro-test"
    args = f"--no-browser --port {port} --IdentityProvider.token={token}"
    env = {**os.environ, "ACL_CACHE": str(cache), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    proc = subprocess.Popen(["make", "-s", "-C", str(REPO), "lab", f"LAB_DIR={root}", f"LAB_ARGS={args}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(120):  # bounded: at most ~60 s for the server to come up
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-2000:]
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/lab/tree/{name}?token={token}")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
                page.wait_for_selector("text=Python (acl-repro)", timeout=60_000)  # the project's kernel
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                page.wait_for_selector(".jp-OutputArea-output img", timeout=300_000)
                page.wait_for_function("document.querySelectorAll('.jp-InputArea-prompt')[document.querySelectorAll('.jp-InputArea-prompt').length - 1].innerText.match(/\\[\\d+\\]/)",
                                       timeout=300_000)  # the last cell has run
                page.screenshot(path=str(tmp_path / "lab.png"))
                assert page.locator(".jp-OutputArea-output img").count() >= 2  # the pruning-path figures
                assert page.locator("[data-mime-type='application/vnd.jupyter.error']").count() == 0
                assert "Measured here: profile 'smoke'" in page.locator(".jp-Notebook").inner_text()
            finally:
                browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this test started, nothing else
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
