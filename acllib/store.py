"""Files under data_cache/: where they go and how they are written (atomically, never half)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    """$ACL_CACHE if set, else the repo's data_cache/."""
    return Path(os.environ.get("ACL_CACHE") or REPO / "data_cache")


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic(path: Path, write) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, allow_nan=True)
    _atomic(path, write)


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def reraise_swallowed_ctrl_c() -> None:
    """Make a Ctrl-C that lands inside a finalizer or a weakref callback stop the program anyway:
    Python reports such a KeyboardInterrupt as "Exception ignored" (with a traceback) and goes on,
    so a command would finish instead of stopping. This unraisable hook says nothing for it and
    sends the signal again a moment later from another thread (sent at once, it would be raised
    inside the hook and swallowed again), to be raised where it can stop the program; other reports
    as before. For the command lines (python -m acllib, book/build.py), not for library use."""
    import signal
    import sys
    import threading
    default = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
            return
        default(unraisable)
    sys.unraisablehook = hook
