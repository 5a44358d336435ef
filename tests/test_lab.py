"""`make lab` starts JupyterLab (as root too, which containers are) with the project's kernel."""
import json
import os
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
